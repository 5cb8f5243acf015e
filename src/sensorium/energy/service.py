"""Sites, tariffs, and energy figures: per device and per site, in local time, with cost.

Each meter's energy per time slot comes from energy.meters; this module groups meters
into sites, slots into local hours/days/months and tariff windows, and prices them.
"""

from __future__ import annotations

import asyncio
import functools
import statistics
from bisect import bisect_left, bisect_right
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import BigInteger, Float, and_, bindparam, delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from sensorium.db import epoch_ms
from sensorium.devices.models import Device
from sensorium.devices.service import get_device
from sensorium.energy import tariffs
from sensorium.energy.integrate import HOUR_MS, Slots, Stretch, sequential_sum, sorted_unique
from sensorium.energy.meters import (
    POWER_KEY,
    CacheEntries,
    MeterEnergy,
    custom_plans,
    key_ids,
    meters_energy,
    month_bounds,
    remember_key_ids,
    save_cache,
)
from sensorium.energy.models import MAINS, SUB, Site, SiteMeter, Tariff
from sensorium.energy.schemas import SeriesRow, TariffIn
from sensorium.errors import Conflict, Invalid, NotFound
from sensorium.protocol import mac_to_int
from sensorium.telemetry import buckets
from sensorium.telemetry.models import LatestValue, Point, Rollup
from sensorium.telemetry.series import of as series_of
from sensorium.users.models import User

DEFAULT_MAX_GAP_S = 900
MINUTE_MS = 60_000
DAY_MS = 86_400_000
# The longest ranges a request may cover, so one request cannot read years of hours.
MAX_SPAN_MS = {"1h": 93 * 86_400_000, "1d": 1_100 * 86_400_000, "1mo": 3_700 * 86_400_000}
NIGHT_HOURS = range(6)  # local 00:00-06:00, where base load is measured
_A = TypeVar("_A")
_B = TypeVar("_B")


# --- sites -----------------------------------------------------------------------------------


def _site_not_found(site_id: int) -> NotFound:
    return NotFound(f"site {site_id} not found", field="site", code="site_not_found")


async def get_site(session: AsyncSession, *, owner: User, site_id: int) -> Site:
    """The owner's site; someone else's site is NotFound too, so ids do not leak."""
    site = await session.get(Site, site_id)
    if site is None or site.owner_id != owner.id:
        raise _site_not_found(site_id)
    return site


async def list_sites(session: AsyncSession, *, owner: User) -> list[Site]:
    rows = await session.scalars(
        select(Site).where(Site.owner_id == owner.id).order_by(Site.name, Site.id)
    )
    return list(rows)


async def meters_of(session: AsyncSession, *, site_id: int) -> list[tuple[str, str, str]]:
    """(device id, device name, role) of a site's meters, mains first."""
    rows = await session.execute(
        select(SiteMeter.device_id, Device.name, SiteMeter.role)
        .join(Device, Device.id == SiteMeter.device_id)
        .where(SiteMeter.site_id == site_id)
        .order_by(SiteMeter.role, Device.name, Device.id)
    )
    return [(d, n, r) for d, n, r in rows]


async def _set_meters(
    session: AsyncSession, *, owner: User, site: Site, mains: str | None, submeters: Sequence[str]
) -> None:
    """Replace the site's meters; every device must be the owner's and in no other site."""
    ids: list[tuple[str, str]] = []
    if mains is not None:
        ids.append(((await get_device(session, owner=owner, device_id=mains)).id, MAINS))
    for index, device_id in enumerate(submeters):
        device = await get_device(session, owner=owner, device_id=device_id)
        if any(existing == device.id for existing, _ in ids):
            raise Invalid(
                f"device {device.id} is listed twice",
                field=f"submeters.{index}",
                code="duplicate_meter",
            )
        ids.append((device.id, SUB))
    taken = await session.execute(
        select(SiteMeter.device_id, Site.name)
        .join(Site, Site.id == SiteMeter.site_id)
        .where(SiteMeter.device_id.in_([d for d, _ in ids]), SiteMeter.site_id != site.id)
    )
    for device_id, other in taken:
        raise Conflict(
            f"device {device_id} already meters site {other!r}",
            field="mains" if (device_id, MAINS) in ids else "submeters",
            code="meter_in_other_site",
        )
    await session.execute(delete(SiteMeter).where(SiteMeter.site_id == site.id))
    session.add_all(SiteMeter(device_id=d, site_id=site.id, role=role) for d, role in ids)
    await session.flush()


async def create_site(
    session: AsyncSession,
    *,
    owner: User,
    name: str,
    mains: str | None = None,
    submeters: Sequence[str] = (),
    max_gap_s: int = DEFAULT_MAX_GAP_S,
) -> Site:
    site = Site(owner_id=owner.id, name=name.strip(), max_gap_s=max_gap_s)
    session.add(site)
    await session.flush()
    await _set_meters(session, owner=owner, site=site, mains=mains, submeters=submeters)
    return site


async def update_site(
    session: AsyncSession, *, owner: User, site_id: int, changes: dict[str, Any]
) -> Site:
    """Apply the fields present in `changes` (name, mains, submeters, max_gap_s)."""
    site = await get_site(session, owner=owner, site_id=site_id)
    if changes.get("name") is not None:
        site.name = str(changes["name"]).strip()
    if changes.get("max_gap_s") is not None:
        site.max_gap_s = int(changes["max_gap_s"])
    if "mains" in changes or changes.get("submeters") is not None:
        current = await meters_of(session, site_id=site.id)
        mains = changes["mains"] if "mains" in changes else _mains_of(current)
        subs = changes.get("submeters")
        if subs is None:
            subs = [d for d, _n, role in current if role == SUB]
        await _set_meters(session, owner=owner, site=site, mains=mains, submeters=subs)
    await session.flush()
    return site


def _mains_of(meters: Sequence[tuple[str, str, str]]) -> str | None:
    return next((d for d, _n, role in meters if role == MAINS), None)


async def delete_site(session: AsyncSession, *, owner: User, site_id: int) -> None:
    site = await get_site(session, owner=owner, site_id=site_id)
    await session.execute(delete(SiteMeter).where(SiteMeter.site_id == site.id))
    await session.execute(delete(Tariff).where(Tariff.site_id == site.id))
    await session.execute(delete(Site).where(Site.id == site.id))


# --- tariffs ---------------------------------------------------------------------------------


def windows_of(tariff: Tariff | None) -> list[tariffs.Window]:
    if tariff is None:
        return []
    return [
        tariffs.Window(
            tariffs.parse_hhmm(w["start"]),
            tariffs.parse_hhmm(w["end"]),
            w.get("days", "all"),
            float(w["price_per_kwh"]),
            w.get("name", ""),
        )
        for w in tariff.windows
    ]


async def set_tariff(session: AsyncSession, *, owner: User, site_id: int, body: TariffIn) -> Tariff:
    """Create or replace the site's tariff. Windows may not overlap (422)."""
    site = await get_site(session, owner=owner, site_id=site_id)
    windows = [w.model_dump() for w in body.windows]
    parsed = [
        tariffs.Window(
            tariffs.parse_hhmm(w.start), tariffs.parse_hhmm(w.end), w.days, w.price_per_kwh
        )
        for w in body.windows
    ]
    overlap = tariffs.find_overlap(parsed)
    if overlap is not None:
        first, second, minute = overlap
        day = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")[minute // tariffs.DAY_MIN]
        raise Invalid(
            f"windows {first} and {second} overlap (both apply on {day} at "
            f"{tariffs.hhmm(minute % tariffs.DAY_MIN)})",
            field=f"windows.{second}",
            code="overlapping_windows",
        )
    tariff = await session.get(Tariff, site.id)
    if tariff is None:
        tariff = Tariff(site_id=site.id)
        session.add(tariff)
    tariff.currency = body.currency
    tariff.price_per_kwh = body.price_per_kwh
    tariff.standing_charge_per_day = body.standing_charge_per_day
    tariff.co2_g_per_kwh = body.co2_g_per_kwh
    tariff.windows = windows
    await session.flush()
    return tariff


async def get_tariff(session: AsyncSession, *, owner: User, site_id: int) -> Tariff:
    site = await get_site(session, owner=owner, site_id=site_id)
    tariff = await session.get(Tariff, site.id)
    if tariff is None:
        raise NotFound(f"site {site_id} has no tariff", field="site", code="tariff_not_found")
    return tariff


async def delete_tariff(session: AsyncSession, *, owner: User, site_id: int) -> None:
    site = await get_site(session, owner=owner, site_id=site_id)
    await session.execute(delete(Tariff).where(Tariff.site_id == site.id))


# --- what a figure is about ------------------------------------------------------------------


@dataclass(slots=True)
class Scope:
    """A site or one device: its meters, and the tariff and gap limit that apply."""

    name: str
    site_id: int | None
    device_id: str | None
    # (device id, name, role); a device scope has one meter of role "device".
    meters: list[tuple[str, str, str]]
    tariff: Tariff | None
    max_gap_ms: int
    # Whether the standing charge belongs to these figures: a site's, or its mains meter's.
    standing: bool

    @property
    def has_mains(self) -> bool:
        return any(role == MAINS for _d, _n, role in self.meters)


async def resolve_scope(
    session: AsyncSession, *, owner: User, site_id: int | None, device_id: str | None
) -> Scope:
    if (site_id is None) == (device_id is None):
        raise Invalid("give exactly one of site and device", field="site", code="invalid_scope")
    if site_id is not None:
        site = await get_site(session, owner=owner, site_id=site_id)
        return Scope(
            name=site.name,
            site_id=site.id,
            device_id=None,
            meters=await meters_of(session, site_id=site.id),
            tariff=await session.get(Tariff, site.id),
            max_gap_ms=site.max_gap_s * 1000,
            standing=True,
        )
    assert device_id is not None
    device = await get_device(session, owner=owner, device_id=device_id)
    membership = (
        await session.execute(
            select(SiteMeter.role, Site).join(Site).where(SiteMeter.device_id == device.id)
        )
    ).first()
    role: str | None = membership[0] if membership else None
    home: Site | None = membership[1] if membership else None
    return Scope(
        name=device.name,
        site_id=None,
        device_id=device.id,
        meters=[(device.id, device.name, "device")],
        tariff=await session.get(Tariff, home.id) if home is not None else None,
        max_gap_ms=(home.max_gap_s if home is not None else DEFAULT_MAX_GAP_S) * 1000,
        standing=role == MAINS,
    )


# --- figures ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1 << 17)
def local(ms: int, tz: ZoneInfo) -> datetime:
    """The local time of an instant (remembered: a year's summary converts every hour
    of two years several times over; datetimes are immutable, so sharing them is safe)."""
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone(tz)


def _offset_of(ms: int, tz: ZoneInfo) -> int:
    offset = datetime.fromtimestamp(ms / 1000, UTC).astimezone(tz).utcoffset()
    return int(offset.total_seconds() * 1000) if offset else 0


@functools.lru_cache(maxsize=1024)
def _transitions(tz: ZoneInfo, first_day: int, last_day: int) -> tuple[list[int], list[int]]:
    """The instants in [first_day, last_day] (UTC midnights) where the zone's offset
    changes, and its offset before the first and from each on (ms). Sampled at every UTC
    midnight, each change then found to the ms by bisection: no zone in the tz database
    changes its offset twice within 24 hours (none since 1970)."""
    edges: list[int] = []
    offsets = [_offset_of(first_day, tz)]
    for day in range(first_day + DAY_MS, last_day + 1, DAY_MS):
        offset = _offset_of(day, tz)
        if offset == offsets[-1]:
            continue
        lo, hi = day - DAY_MS, day  # the old offset at lo, the new one at hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _offset_of(mid, tz) == offsets[-1]:
                lo = mid
            else:
                hi = mid
        edges.append(hi)
        offsets.append(offset)
    return edges, offsets


def offsets_ms(instants: NDArray[np.int64], tz: ZoneInfo) -> NDArray[np.int64]:
    """Each instant's offset from UTC in ms, without a datetime per instant (a year's
    summary has 8,800 hourly slots): the zone's changes over their span (remembered),
    then a binary search per instant."""
    if not len(instants):
        return np.zeros(0, dtype=np.int64)
    lo, hi = int(instants.min()), int(instants.max())
    edges, offsets = _transitions(tz, lo - lo % DAY_MS, hi - hi % DAY_MS + DAY_MS)
    if not edges:
        return np.full(len(instants), offsets[0], dtype=np.int64)
    where = np.searchsorted(np.asarray(edges, dtype=np.int64), instants, side="right")
    return np.asarray(offsets, dtype=np.int64)[where]


def local_minutes(instants: Sequence[int] | NDArray[np.int64], tz: ZoneInfo) -> NDArray[np.int64]:
    """Each instant's local wall-clock time as whole minutes since 1970-01-01 00:00 local
    time: its local date, hour and minute without a datetime per instant. m // 1440 is
    the local day, m // 60 % 24 the hour."""
    t = np.asarray(instants, dtype=np.int64)
    result: NDArray[np.int64] = (t + offsets_ms(t, tz)) // MINUTE_MS
    return result


def local_ms(day: date, tz: ZoneInfo, at: datetime | None = None) -> int:
    t = at.time() if at is not None else datetime.min.time()
    return int(datetime.combine(day, t, tzinfo=tz).timestamp() * 1000)


def price_table(tariff: Tariff | None) -> tariffs.PriceTable | None:
    if tariff is None:
        return None
    return _price_table(float(tariff.price_per_kwh), tuple(windows_of(tariff)))


@functools.lru_cache(maxsize=64)
def _price_table(flat: float, windows: tuple[tariffs.Window, ...]) -> tariffs.PriceTable:
    """A tariff's table, remembered by its content (a week of minutes: building it and its
    array took ~1 ms of every summary)."""
    return tariffs.PriceTable(flat, windows)


def make_cuts(
    start: int,
    end: int,
    tz: ZoneInfo,
    *,
    edges: Sequence[int] = (),
    prices: tariffs.PriceTable | None = None,
    local_hours: bool = False,
) -> list[int]:
    """Slot edges for [start, end): every UTC hour (the unit of the cache), the given
    edges, every instant the price may change, and with `local_hours` every local hour
    (differs from UTC hours in zones with a :30 or :45 offset)."""
    first = start - start % HOUR_MS
    parts = [
        np.array([start, end], dtype=np.int64),
        np.arange(first + HOUR_MS, end, HOUR_MS, dtype=np.int64),
        np.array([e for e in edges if start < e < end], dtype=np.int64),
    ]
    if local_hours:
        hours = np.arange(first, end, HOUR_MS, dtype=np.int64)
        shift = -offsets_ms(hours, tz) % HOUR_MS
        local_hour = hours + shift
        parts.append(local_hour[(shift != 0) & (local_hour > start) & (local_hour < end)])
    if prices is not None:
        parts.append(np.array(prices.changes(start, end, tz), dtype=np.int64))
    return sorted_unique(np.concatenate(parts))


@dataclass(slots=True)
class ScopeEnergy:
    meters: list[tuple[tuple[str, str, str], MeterEnergy]]
    total: Slots
    unmetered: Slots | None
    missing: list[Stretch]
    estimated: bool


async def scope_energy(
    session: AsyncSession,
    *,
    scope: Scope,
    cuts: Sequence[int],
    now_ms: int,
    cache: CacheEntries | None,
    unmetered: bool = True,
) -> ScopeEnergy:
    """Every meter's energy, the scope's total (the mains meter when there is one, else the
    sum of the meters) and, with a mains meter and `unmetered`, the unmetered remainder
    (mains - subs; a summary's previous period does not show it)."""
    energies = await meters_energy(
        session,
        device_ids=[meter[0] for meter in scope.meters],
        cuts=cuts,
        max_gap_ms=scope.max_gap_ms,
        now_ms=now_ms,
        cache=cache,
    )
    meters = list(zip(scope.meters, energies, strict=True))
    mains = [e for (_d, _n, role), e in meters if role == MAINS]
    subs = [e for (_d, _n, role), e in meters if role != MAINS]
    template = energies[0].slots.cuts if energies else Slots.over(cuts).cuts
    remainder: Slots | None = None
    if mains:
        total, counted = mains[0].slots, mains
        if unmetered:
            remainder = total.merged(Slots.sum_of(template, [e.slots for e in subs]), -1.0)
    else:
        total, counted = Slots.sum_of(template, [e.slots for e in subs]), subs
    return ScopeEnergy(
        meters=meters,
        total=total,
        unmetered=remainder,
        missing=_union(m for e in counted for m in e.missing),
        estimated=any(e.estimated for _m, e in meters),
    )


def _union(stretches: Any) -> list[Stretch]:
    out: list[Stretch] = []
    for a, b in sorted(stretches):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(b, out[-1][1]))
        else:
            out.append((a, b))
    return out


def slot_prices(
    slots: Slots,
    prices: tariffs.PriceTable | None,
    tz: ZoneInfo,
    minutes: NDArray[np.int64] | None = None,
) -> NDArray[np.float64]:
    """The price per kWh of each slot (one price per slot: price changes are slot edges).
    `minutes`: local_minutes of the slots' cuts, when known."""
    n = len(slots.wh)
    if prices is None:
        return np.zeros(n)
    if not prices.windows:
        return np.full(n, prices.flat)
    if minutes is None:
        minutes = local_minutes(slots.cuts, tz)
    return prices.at_minutes(minutes[:n])


def local_days(start: int, end: int, tz: ZoneInfo) -> list[date]:
    """The local dates [start, end) touches."""
    if end <= start:
        return []
    first, last = local(start, tz).date(), local(end - 1, tz).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def local_day_count(start: int, end: int, tz: ZoneInfo) -> int:
    """How many local dates [start, end) touches: len(local_days(...))."""
    if end <= start:
        return 0
    return (local(end - 1, tz).date() - local(start, tz).date()).days + 1


def _stretches(stretches: Sequence[Stretch], tz: ZoneInfo) -> list[dict[str, Any]]:
    return [
        {"start": buckets.iso(a, tz), "end": buckets.iso(b, tz), "start_ms": a, "end_ms": b}
        for a, b in stretches
    ]


def figures(
    energy: ScopeEnergy,
    scope: Scope,
    tz: ZoneInfo,
    prices: tariffs.PriceTable | None,
    per_slot: NDArray[np.float64] | None = None,
) -> dict[str, Any]:
    slots = energy.total
    kwh = slots.total() / 1000.0
    tariff = scope.tariff
    energy_cost = standing = cost = co2 = None
    if tariff is not None:
        if per_slot is None:
            per_slot = slot_prices(slots, prices, tz)
        energy_cost = _slot_cost(slots, per_slot)
        days = local_day_count(slots.start, slots.end, tz)
        standing = days * tariff.standing_charge_per_day if scope.standing else 0.0
        cost = energy_cost + standing
        if tariff.co2_g_per_kwh is not None:
            co2 = kwh * tariff.co2_g_per_kwh / 1000.0
    return {
        "start": buckets.iso(slots.start, tz),
        "end": buckets.iso(slots.end, tz),
        "start_ms": slots.start,
        "end_ms": slots.end,
        "kwh": kwh,
        "energy_cost": energy_cost,
        "standing_charge": standing,
        "cost": cost,
        "co2_kg": co2,
        "missing": _stretches(energy.missing, tz),
        "estimated": energy.estimated,
    }


def period_bounds(period: str, at_ms: int, tz: ZoneInfo) -> tuple[int, int, int]:
    """(start of the period holding `at`, start of the previous period, and the same
    elapsed point in it: the same local weekday/day of month/date and time of day,
    clamped to the previous period's end when it is shorter)."""
    now = local(at_ms, tz)
    today = now.date()
    if period == "day":
        start, prev = today, today - timedelta(days=1)
        same = prev
    elif period == "week":
        start = today - timedelta(days=today.weekday())
        prev = start - timedelta(days=7)
        same = today - timedelta(days=7)
    elif period == "month":
        start = today.replace(day=1)
        prev = (start - timedelta(days=1)).replace(day=1)
        same = prev.replace(day=min(today.day, (start - timedelta(days=1)).day))
        if today.day > (start - timedelta(days=1)).day:
            same = start  # the previous month is shorter: all of it
    elif period == "year":
        start, prev = date(today.year, 1, 1), date(today.year - 1, 1, 1)
        try:
            same = today.replace(year=today.year - 1)
        except ValueError:  # 29 February
            same = date(today.year - 1, 3, 1)
    else:
        raise Invalid("period must be day, week, month or year", field="period")
    start_ms, prev_ms = local_ms(start, tz), local_ms(prev, tz)
    same_ms = local_ms(same, tz, None if same == start else now)
    return start_ms, prev_ms, max(prev_ms, min(same_ms, start_ms))


def base_load_w(
    slots: Slots, tz: ZoneInfo, until: int, minutes: NDArray[np.int64] | None = None
) -> float | None:
    """The typical night minimum: per local night, the lowest average power of a complete
    slot of at least half an hour between 00:00 and 06:00; the median over nights.
    `minutes`: local_minutes of the slots' cuts, when known."""
    if minutes is None:
        minutes = local_minutes(slots.cuts, tz)
    n = len(slots.wh)
    if not n:
        return None
    cuts = np.asarray(slots.cuts, dtype=np.int64)
    a, b, first = cuts[:-1], cuts[1:], minutes[:n]
    night = NIGHT_HOURS.stop * 60  # the first local minute of the day past the night
    last = local_minutes(b - 1, tz)  # the slot's last local minute
    usable = (
        (first % 1440 < night)
        & (b - a >= HOUR_MS // 2)
        & (b <= until)
        & (np.asarray(slots.missing_ms, dtype=np.int64) == 0)
        & (last % 1440 < night)
    )
    if not usable.any():
        return None
    watts = slots.wh[usable] * HOUR_MS / (b - a)[usable]
    days, which = np.unique(first[usable] // 1440, return_inverse=True)
    lowest = np.full(len(days), np.inf)
    np.minimum.at(lowest, which, watts)
    return float(statistics.median(lowest.tolist()))


def hourly_profile(
    slots: Slots, tz: ZoneInfo, until: int, minutes: NDArray[np.int64] | None = None
) -> list[float | None]:
    """Average kWh in each local hour of the day (0-23), over the days it occurred.
    `minutes`: local_minutes of the slots' cuts, when known."""
    if minutes is None:
        minutes = local_minutes(slots.cuts, tz)
    n = len(slots.wh)
    k = min(n, bisect_left(slots.cuts, until, hi=n))  # slots that start before `until`
    # Wh per local hour since 1970 (in time order: local hours never go back but repeat
    # at a DST change, where the same hour follows itself), then per hour of the day.
    hours, which = np.unique(minutes[:k] // 60, return_inverse=True)
    per_hour = np.bincount(which, weights=slots.wh[:k], minlength=len(hours))
    sums = np.bincount(hours % 24, weights=per_hour / 1000.0, minlength=24)
    counts = np.bincount(hours % 24, minlength=24)
    return [float(s) / int(c) if c else None for s, c in zip(sums, counts, strict=True)]


def _big(name: str) -> Any:
    return bindparam(name, type_=BigInteger)


@functools.lru_cache(maxsize=1)
def _peak_statements() -> dict[str, Any]:
    """The peak's statements, built once (building them took longer than running them):
    the first highest hour or day rollup, the first highest raw point, and the first time
    a maximum was reached within an hour (raw points, else minute rollups). Parameters:
    the device and key, the range [a, b) and, with days, the whole UTC days [day_a, day_b)
    in it."""

    def hours(lo: str, hi: str) -> Any:
        return and_(Rollup.grain == HOUR_MS, Rollup.bucket >= _big(lo), Rollup.bucket < _big(hi))

    def first_highest(where: Any) -> Any:
        return (
            select(Rollup.vmax, Rollup.bucket, Rollup.grain)
            .where(Rollup.device == _big("device"), Rollup.key_id == _big("key"), where)
            .order_by(Rollup.vmax.desc(), Rollup.bucket)
            .limit(1)
        )

    series = series_of(_big("device"), _big("key"))
    in_range = (Point.series == series, Point.ts >= _big("a"), Point.ts < _big("b"))
    return {
        "hours": first_highest(hours("a", "b")),
        "hours_and_days": first_highest(
            or_(
                hours("a", "day_a"),
                and_(
                    Rollup.grain == DAY_MS,
                    Rollup.bucket >= _big("day_a"),
                    Rollup.bucket < _big("day_b"),
                ),
                hours("day_b", "b"),
            )
        ),
        "raw": select(Point.value, Point.ts)
        .where(*in_range)
        .order_by(Point.value.desc(), Point.ts)
        .limit(1),
        "raw_time": select(Point.ts)
        .where(*in_range, Point.value == bindparam("watts", type_=Float))
        .order_by(Point.ts)
        .limit(1),
        "minute_time": select(Rollup.bucket)
        .where(
            Rollup.device == _big("device"),
            Rollup.key_id == _big("key"),
            Rollup.grain == MINUTE_MS,
            Rollup.bucket >= _big("a"),
            Rollup.bucket < _big("b"),
            Rollup.vmax == bindparam("watts", type_=Float),
        )
        .order_by(Rollup.bucket)
        .limit(1),
    }


async def _peak_hour(
    session: AsyncSession, device: int, key_id: int, a: int, b: int
) -> tuple[float, int] | None:
    """The first whole hour in [a, b) with the highest maximum, and that maximum: from
    the day rollups of the whole UTC days in it and the hour rollups of the rest, then
    the day's hours when a day has it (a year is 365 day rollups, not 8,760 hours; a day's
    maximum is its hours' maximum, and a day starts before its hours, so the first hour
    found is the first with that maximum)."""
    day_a, day_b = -(-a // DAY_MS) * DAY_MS, b - b % DAY_MS
    statements = _peak_statements()
    params = {"device": device, "key": key_id, "a": a, "b": b}
    if day_a < day_b:
        row = (
            await session.execute(
                statements["hours_and_days"], {**params, "day_a": day_a, "day_b": day_b}
            )
        ).first()
    else:
        row = (await session.execute(statements["hours"], params)).first()
    if row is not None and row[2] == DAY_MS:  # that day's first hour with that maximum
        day = int(row[1])
        row = (
            await session.execute(statements["hours"], {**params, "a": day, "b": day + DAY_MS})
        ).first()
    return (float(row[0]), int(row[1])) if row is not None else None


async def peak_power(
    session: AsyncSession, *, device_id: str, start: int, end: int
) -> tuple[float, int] | None:
    """The highest power reading in [start, end) and when: whole hours from their
    rollups, the partial hours at the ends from the raw points; the time is then found
    in that hour's raw points (or its minute rollups once they are gone)."""
    await custom_plans(session)
    keys = await key_ids(session)
    if POWER_KEY not in keys or end <= start:
        return None
    device, key_id = mac_to_int(device_id), keys[POWER_KEY]
    statements = _peak_statements()
    inner_a = -(-start // HOUR_MS) * HOUR_MS
    inner_b = max(inner_a, end - end % HOUR_MS)
    best: tuple[float, int, bool] | None = None  # (watts, ts or hour, is an hour)
    row = await _peak_hour(session, device, key_id, inner_a, inner_b)
    if row is not None:
        best = (row[0], row[1], True)
    for a, b in ((start, min(inner_a, end)), (max(inner_b, start), end)):
        if a >= b:
            continue
        edge = {"device": device, "key": key_id, "a": a, "b": b}
        raw = (await session.execute(statements["raw"], edge)).first()
        if raw is not None and (best is None or raw[0] > best[0]):
            best = (float(raw[0]), int(raw[1]), False)
    if best is None:
        return None
    watts, at, is_hour = best
    if not is_hour:
        return watts, at
    params = {"device": device, "key": key_id, "a": at, "b": at + HOUR_MS, "watts": watts}
    for name in ("raw_time", "minute_time"):
        found = await session.scalar(statements[name], params)
        if found is not None:
            return watts, int(found)
    return watts, at


def slot_peak(slots: Slots) -> tuple[float, int] | None:
    """For meters without power readings: the highest average power over a slot of at
    least 15 minutes."""
    best: tuple[float, int] | None = None
    for i, wh in enumerate(slots.wh.tolist()):
        a, b = slots.cuts[i], slots.cuts[i + 1]
        if b - a < HOUR_MS // 4:
            continue
        watts = wh * HOUR_MS / (b - a)
        if best is None or watts > best[0]:
            best = (watts, a)
    return best


@functools.lru_cache(maxsize=1)
def _latest_statement() -> Any:
    return select(LatestValue.value, LatestValue.ts).where(
        LatestValue.device.in_(bindparam("devices", expanding=True)),
        LatestValue.key_id == _big("key"),
    )


async def now_power(session: AsyncSession, *, scope: Scope) -> tuple[float, int] | None:
    """The latest power of the scope: its mains meter or device, else the sum of its
    meters (when every one has a reading)."""
    keys = await key_ids(session)
    if POWER_KEY not in keys or not scope.meters:
        return None
    ids = [d for d, _n, role in scope.meters if role == MAINS] or [d for d, _n, _r in scope.meters]
    rows = list(
        await session.execute(
            _latest_statement(),
            {"devices": [mac_to_int(d) for d in ids], "key": keys[POWER_KEY]},
        )
    )
    if len(rows) != len(ids):
        return None
    return sum(float(v) for v, _t in rows), min(int(t) for _v, t in rows)


async def _alongside(
    session: AsyncSession,
    first: Callable[[], Awaitable[_A]],
    second: Callable[[AsyncSession], Awaitable[_B]],
) -> tuple[_A, _B]:
    """`first()` on `session` and `second(session)`. On PostgreSQL, `second` runs at the
    same time on a session of its own (a second connection, read only), so one's statements
    run in the database while the other's rows are turned into figures. On SQLite, one
    after the other on `session`: aiosqlite runs a connection's statements on one thread
    anyway, and a test's in-memory database has only one connection."""
    connection = await session.connection()
    if connection.dialect.name != "postgresql":
        one = await first()
        return one, await second(session)
    # Looked up once, for both: the second session's transaction takes them as its own.
    keys = await key_ids(session)
    async with AsyncSession(connection.engine) as other:
        await other.connection()
        remember_key_ids(other, keys)
        first_task = asyncio.ensure_future(first())
        second_task = asyncio.ensure_future(second(other))
        try:
            await asyncio.gather(first_task, second_task)
        except BaseException:
            # Neither may go on using its connection once the other failed.
            first_task.cancel()
            second_task.cancel()
            await asyncio.gather(first_task, second_task, return_exceptions=True)
            raise
    return first_task.result(), second_task.result()


async def summary(
    session: AsyncSession,
    *,
    scope: Scope,
    period: str,
    at_ms: int,
    tz: ZoneInfo,
    now_ms: int | None = None,
    cache: CacheEntries | None = None,
) -> dict[str, Any]:
    """The period holding `at` so far, the previous period up to the same point, peak,
    base load, hourly profile, and per-meter figures (a dict shaped as SummaryPublic)."""
    now_ms = now_ms if now_ms is not None else epoch_ms()
    start, prev_start, prev_at = period_bounds(period, at_ms, tz)
    prices = price_table(scope.tariff)
    cur_cuts = make_cuts(start, max(at_ms, start + 1), tz, prices=prices, local_hours=True)
    prev_cuts = make_cuts(prev_start, max(prev_at, prev_start + 1), tz, prices=prices)
    main = next((d for d, _n, role in scope.meters if role in (MAINS, "device")), None)
    # The previous period's hours go to `cache` after the current one's (see _alongside).
    side_cache = CacheEntries() if cache is not None else None

    async def previous_and_peak(on: AsyncSession) -> tuple[ScopeEnergy, tuple[float, int] | None]:
        previous = await scope_energy(
            on, scope=scope, cuts=prev_cuts, now_ms=now_ms, cache=side_cache, unmetered=False
        )
        found = await peak_power(on, device_id=main, start=start, end=at_ms) if main else None
        return previous, found

    current, (previous, found) = await _alongside(
        session,
        lambda: scope_energy(session, scope=scope, cuts=cur_cuts, now_ms=now_ms, cache=cache),
        previous_and_peak,
    )
    if cache is not None and side_cache is not None:
        cache.rows.extend(side_cache.rows)
        cache.days.extend(side_cache.days)
        cache.months.extend(side_cache.months)
    minutes = local_minutes(current.total.cuts, tz)
    per_slot = slot_prices(current.total, prices, tz, minutes)
    cur_fig = figures(current, scope, tz, prices, per_slot)
    prev_fig = figures(previous, scope, tz, prices)
    until = min(at_ms, now_ms) - scope.max_gap_ms
    change = None
    if prev_fig["kwh"] > 0:
        change = (cur_fig["kwh"] - prev_fig["kwh"]) / prev_fig["kwh"] * 100.0
    peak: dict[str, Any] | None = None
    kind = "reading"
    if found is None:
        found, kind = slot_peak(current.total), "slot_average"
    if found is not None:
        peak = {"w": found[0], "at": buckets.iso(found[1], tz), "at_ms": found[1], "kind": kind}
    meters = []
    for (meter, energy), (_m, before) in zip(current.meters, previous.meters, strict=True):
        meters.append(
            {
                "device_id": meter[0],
                "name": meter[1],
                "role": meter[2],
                "source": energy.source,
                "kwh": energy.slots.total() / 1000.0,
                "energy_cost": _slot_cost(energy.slots, per_slot) if prices else None,
                "previous_kwh": before.slots.total() / 1000.0,
                "missing": _stretches(energy.missing, tz),
            }
        )
    now = await now_power(session, scope=scope)
    unmetered = current.unmetered
    return {
        "site_id": scope.site_id,
        "device_id": scope.device_id,
        "name": scope.name,
        "period": period,
        "tz": tz.key,
        "at": buckets.iso(at_ms, tz),
        "currency": scope.tariff.currency if scope.tariff else None,
        "now": {"w": now[0], "ts": now[1]} if now else None,
        "current": cur_fig,
        "previous": prev_fig,
        "change_pct": change,
        "peak": peak,
        "base_load_w": base_load_w(current.total, tz, until, minutes),
        "hourly_profile": hourly_profile(current.total, tz, min(at_ms, now_ms), minutes),
        "meters": meters,
        "unmetered_kwh": unmetered.total() / 1000.0 if unmetered else None,
        "unmetered_cost": _slot_cost(unmetered, per_slot) if unmetered and prices else None,
    }


def _slot_cost(slots: Slots, per_slot: NDArray[np.float64]) -> float:
    if len(slots.wh) != len(per_slot):
        raise ValueError("a price per slot")
    return sequential_sum(slots.wh * per_slot) / 1000.0


async def series(
    session: AsyncSession,
    *,
    scope: Scope,
    interval: str,
    from_ms: int,
    to_ms: int,
    tz: ZoneInfo,
    now_ms: int | None = None,
    cache: CacheEntries | None = None,
) -> dict[str, Any]:
    """kWh and cost per local hour, day or month in [from, to) (a dict shaped as
    SeriesPublic); for sites, per meter and the unmetered remainder too."""
    now_ms = now_ms if now_ms is not None else epoch_ms()
    if interval not in MAX_SPAN_MS:
        raise Invalid("interval must be 1h, 1d or 1mo", field="interval", code="invalid_interval")
    if from_ms >= to_ms:
        raise Invalid("from must be before to", field="from", code="invalid_range")
    if to_ms - from_ms > MAX_SPAN_MS[interval]:
        days = MAX_SPAN_MS[interval] // 86_400_000
        raise Invalid(
            f"at most {days} days at interval {interval}", field="from", code="range_too_long"
        )
    plan = buckets.buckets(interval, from_ms, to_ms, tz)
    prices = price_table(scope.tariff)
    cuts = make_cuts(from_ms, to_ms, tz, edges=plan.starts, prices=prices)
    energy = await scope_energy(session, scope=scope, cuts=cuts, now_ms=now_ms, cache=cache)
    total = energy.total
    per_slot = slot_prices(total, prices, tz).tolist()
    starts = [s for s in plan.starts if s < to_ms]
    rows = [
        SeriesRow(
            start=buckets.iso(s, tz),
            bucket=s,
            kwh=0.0,
            energy_cost=0.0 if prices else None,
            standing_charge=0.0 if prices else None,
            cost=None,
            co2_kg=None,
            missing_ms=0,
            meters={},
            unmetered_kwh=0.0 if energy.unmetered else None,
        )
        for s in starts
    ]

    def row_of(ts: int) -> SeriesRow:
        return rows[max(0, bisect_right(starts, ts) - 1)]

    unmetered_wh = energy.unmetered.wh.tolist() if energy.unmetered is not None else []
    for i, wh in enumerate(total.wh.tolist()):
        row = row_of(total.cuts[i])
        row.kwh += wh / 1000.0
        row.missing_ms += total.missing_ms[i]
        if row.energy_cost is not None:
            row.energy_cost += wh / 1000.0 * per_slot[i]
        if energy.unmetered is not None and row.unmetered_kwh is not None:
            row.unmetered_kwh += unmetered_wh[i] / 1000.0
    if scope.site_id is not None:
        for (device_id, _n, _r), meter in energy.meters:
            for row in rows:
                row.meters[device_id] = 0.0
            for i, wh in enumerate(meter.slots.wh.tolist()):
                row_of(meter.slots.cuts[i]).meters[device_id] += wh / 1000.0
    tariff = scope.tariff
    if tariff is not None:
        if scope.standing:
            for day in local_days(from_ms, to_ms, tz):
                charged = row_of(max(local_ms(day, tz), from_ms))
                assert charged.standing_charge is not None
                charged.standing_charge += tariff.standing_charge_per_day
        for row in rows:
            assert row.energy_cost is not None
            assert row.standing_charge is not None
            row.cost = row.energy_cost + row.standing_charge
            if tariff.co2_g_per_kwh is not None:
                row.co2_kg = row.kwh * tariff.co2_g_per_kwh / 1000.0
    return {
        "site_id": scope.site_id,
        "device_id": scope.device_id,
        "interval": interval,
        "tz": tz.key,
        "currency": tariff.currency if tariff else None,
        "start": buckets.iso(from_ms, tz),
        "end": buckets.iso(to_ms, tz),
        "rows": [r.model_dump() for r in rows],
        "missing": _stretches(energy.missing, tz),
    }


async def precompute(sessions: Any, *, now_ms: int | None = None, days: int = 400) -> int:
    """Fill `energy_hours`, `energy_days` and `energy_months` for every site's meters over
    the last `days` complete UTC days, a UTC month at a time (a complete month's row is
    built from its days in the same walk), so no summary has to read raw points for them.
    Meant for the scheduler (hourly: only new or changed hours, days and months cost
    anything). `sessions` is an async_sessionmaker. Returns how many rows it stored."""
    now_ms = now_ms if now_ms is not None else epoch_ms()
    end = now_ms - now_ms % 86_400_000
    stored = 0
    async with sessions() as session:
        sites = list(await session.scalars(select(Site)))
        plans = [(site, await meters_of(session, site_id=site.id)) for site in sites]
    for site, meters in plans:
        if not meters:
            continue
        chunk_end = end
        while chunk_end > end - days * 86_400_000:
            chunk_start = max(month_bounds(chunk_end - 1)[0], end - days * 86_400_000)
            cache = CacheEntries()
            async with sessions() as session:
                await meters_energy(
                    session,
                    device_ids=[d for d, _n, _r in meters],
                    cuts=range(chunk_start, chunk_end + 1, HOUR_MS),
                    max_gap_ms=site.max_gap_s * 1000,
                    now_ms=now_ms,
                    cache=cache,
                )
            if cache:
                async with sessions() as session, session.begin():
                    await save_cache(session, cache)
                stored += len(cache.rows) + len(cache.days) + len(cache.months)
            chunk_end = chunk_start
    return stored
