"""Time-of-use tariffs: which price applies at a local time, and where windows overlap.

A window applies on the days it starts ("weekday" 23:00-07:00 covers Friday night into
Saturday morning) and may cross midnight; start == end means the whole day. Times are
local wall-clock minutes, so a window follows the site's time zone across DST changes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray

DAY_MIN = 1440
WEEK_MIN = 7 * DAY_MIN
DAYS = {"all": range(7), "weekday": range(5), "weekend": range(5, 7)}


@dataclass(frozen=True, slots=True)
class Window:
    start_min: int  # minutes after local midnight
    end_min: int
    days: str  # a key of DAYS
    price_per_kwh: float
    name: str = ""

    def minutes_of_week(self) -> list[tuple[int, int]]:
        """The [start, end) minute-of-week ranges (Monday 00:00 = 0) the window covers."""
        length = (self.end_min - self.start_min) % DAY_MIN or DAY_MIN
        out: list[tuple[int, int]] = []
        for day in DAYS[self.days]:
            start = day * DAY_MIN + self.start_min
            end = start + length
            if end <= WEEK_MIN:
                out.append((start, end))
            else:  # Sunday night into Monday morning
                out += [(start, WEEK_MIN), (0, end - WEEK_MIN)]
        return out


def parse_hhmm(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


def hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def find_overlap(windows: Sequence[Window]) -> tuple[int, int, int] | None:
    """(first window, second window, minute of week) where two windows both apply, if any."""
    owner = [-1] * WEEK_MIN
    for index, window in enumerate(windows):
        for start, end in window.minutes_of_week():
            for minute in range(start, end):
                if owner[minute] >= 0:
                    return owner[minute], index, minute
                owner[minute] = index
    return None


class PriceTable:
    """The price per kWh for every minute of the week."""

    def __init__(self, flat: float, windows: Sequence[Window]) -> None:
        self.flat = flat
        self.windows = list(windows)
        self._by_minute: list[float] = [flat] * WEEK_MIN
        self._table: NDArray[np.float64] | None = None  # _by_minute as an array, when used
        for window in windows:
            for start, end in window.minutes_of_week():
                self._by_minute[start:end] = [window.price_per_kwh] * (end - start)

    def at(self, local: datetime) -> float:
        return self._by_minute[local.weekday() * DAY_MIN + local.hour * 60 + local.minute]

    def at_minute(self, minute: int) -> float:
        """The price at a local wall-clock minute counted from 1970-01-01 00:00 (a
        Thursday: its minute of the week is 3 days in)."""
        return self._by_minute[(minute + 3 * DAY_MIN) % WEEK_MIN]

    def at_minutes(self, minutes: NDArray[np.int64]) -> NDArray[np.float64]:
        """`at_minute` of many minutes at once."""
        if self._table is None:
            self._table = np.array(self._by_minute, dtype=np.float64)
        prices: NDArray[np.float64] = self._table[(minutes + 3 * DAY_MIN) % WEEK_MIN]
        return prices

    def changes(self, start_ms: int, end_ms: int, tz: ZoneInfo) -> list[int]:
        """The instants in (start_ms, end_ms) where a window begins or ends: the points where
        the price may change, so a stretch between two of them has one price."""
        if not self.windows:
            return []
        edges = tuple(
            sorted({w.start_min for w in self.windows} | {w.end_min for w in self.windows})
        )
        first = datetime.fromtimestamp(start_ms / 1000, tz).date() - timedelta(days=1)
        last = datetime.fromtimestamp(end_ms / 1000, tz).date()
        instants = _instants_between(first, last, edges, tz)
        inside: list[int] = instants[(instants > start_ms) & (instants < end_ms)].tolist()
        return inside


@functools.lru_cache(maxsize=256)
def _instants_between(
    first: date, last: date, minutes: tuple[int, ...], tz: ZoneInfo
) -> NDArray[np.int64]:
    """`_instants` of every day from `first` to `last`, in order, as one array
    (remembered: a summary asks for the same days again until its period's end moves to
    the next day). Read-only, as it is shared."""
    out: list[int] = []
    day = first
    while day <= last:
        out += _instants(day, minutes, tz)
        day += timedelta(days=1)
    instants = np.array(out, dtype=np.int64)
    instants.flags.writeable = False
    return instants


@functools.lru_cache(maxsize=1 << 14)
def _instants(day: date, minutes: tuple[int, ...], tz: ZoneInfo) -> tuple[int, ...]:
    """The instants (epoch ms) of these local wall-clock minutes on `day` (remembered: a
    year's summary asks for two years of days)."""
    return tuple(
        int(datetime(day.year, day.month, day.day, m // 60, m % 60, tzinfo=tz).timestamp() * 1000)
        for m in minutes
    )
