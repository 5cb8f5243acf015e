"""Time buckets for aggregated queries: fixed widths, and calendar days/weeks/months in an
IANA time zone (aligned to local midnight, Monday, the 1st), exact across DST changes."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sensorium.errors import Invalid

MINUTE = 60_000
FIXED_MS = {
    "1m": MINUTE,
    "5m": 5 * MINUTE,
    "15m": 15 * MINUTE,
    "1h": 60 * MINUTE,
    "6h": 360 * MINUTE,
}
CALENDAR = ("1d", "1w", "1mo")
INTERVALS = ("auto", "raw", *FIXED_MS, *CALENDAR)
# `auto` picks the coarsest interval that still gives at least this many buckets.
AUTO_MIN_BUCKETS = 500
MAX_BUCKETS = 20_000


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise Invalid(f"unknown time zone {name!r}", field="tz", code="invalid_tz") from None


def pick_auto(from_ms: int, to_ms: int) -> str:
    """The coarsest interval giving ≥ AUTO_MIN_BUCKETS buckets; raw for short spans."""
    span = to_ms - from_ms
    best = "raw"
    for name, width in FIXED_MS.items():
        if span / width >= AUTO_MIN_BUCKETS:
            best = name
    if span / 86_400_000 >= AUTO_MIN_BUCKETS:
        best = "1d"
    return best


@dataclass(frozen=True, slots=True)
class Buckets:
    """Bucket start times (epoch ms), plus the end of the last one."""

    starts: list[int]
    end: int
    # The bucket width in ms for fixed intervals; None for calendar ones.
    width: int | None = None

    def bounds(self) -> list[tuple[int, int]]:
        edges = [*self.starts, self.end]
        return list(itertools.pairwise(edges))


def _local_midnight(day: date, tz: ZoneInfo) -> int:
    # Midnight may not exist on a DST day in some zones; fold=0 picks the first instant.
    return int(datetime(day.year, day.month, day.day, tzinfo=tz).timestamp() * 1000)


def calendar_buckets(interval: str, from_ms: int, to_ms: int, tz: ZoneInfo) -> Buckets:
    """Local days, Monday-weeks or months covering [from_ms, to_ms)."""
    first = datetime.fromtimestamp(from_ms / 1000, tz).date()
    if interval == "1w":
        first -= timedelta(days=first.weekday())
    elif interval == "1mo":
        first = first.replace(day=1)
    starts: list[int] = []
    day = first
    while True:
        start = _local_midnight(day, tz)
        if start >= to_ms:
            break
        starts.append(start)
        if len(starts) > MAX_BUCKETS:
            raise Invalid("too many buckets; choose a coarser interval", field="interval")
        if interval == "1d":
            day += timedelta(days=1)
        elif interval == "1w":
            day += timedelta(days=7)
        else:
            day = (day.replace(day=28) + timedelta(days=4)).replace(day=1)
    return Buckets(starts, _local_midnight(day, tz))


def fixed_buckets(interval: str, from_ms: int, to_ms: int, tz: ZoneInfo) -> Buckets:
    """Fixed-width buckets aligned to the zone's wall clock (so 15-minute buckets start at
    :00/:15/... even in zones with a :30 or :45 offset)."""
    width = FIXED_MS[interval]
    offset = int(datetime.fromtimestamp(from_ms / 1000, tz).utcoffset().total_seconds() * 1000)  # type: ignore[union-attr]
    first = (from_ms + offset) // width * width - offset
    count = -(-(to_ms - first) // width)
    if count > MAX_BUCKETS:
        raise Invalid("too many buckets; choose a coarser interval", field="interval")
    starts = [first + i * width for i in range(count)]
    return Buckets(starts, first + count * width, width)


def buckets(interval: str, from_ms: int, to_ms: int, tz: ZoneInfo) -> Buckets:
    if interval in CALENDAR:
        return calendar_buckets(interval, from_ms, to_ms, tz)
    return fixed_buckets(interval, from_ms, to_ms, tz)


def iso(ts_ms: int, tz: ZoneInfo) -> str:
    """ISO-8601 with milliseconds and the zone's offset at that instant. (isoformat's
    timespec costs more than the rest together: 1.6 µs a call instead of 2.7, which
    counts on a page of 10,000 buckets; the result is the same.)"""
    seconds, ms = divmod(ts_ms, 1000)
    text = datetime.fromtimestamp(seconds, tz).isoformat()
    return f"{text[:19]}.{ms:03d}{text[19:]}"
