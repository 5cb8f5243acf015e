"""Energy over HTTP: sites and their tariffs, summaries and series (JSON and CSV)."""

from __future__ import annotations

import csv
import io
import logging
from datetime import date, datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query, Response, status
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from sensorium.api.context import AppContext
from sensorium.api.deps import ContextDep, CurrentUser, SessionDep
from sensorium.db import epoch_ms
from sensorium.energy import service
from sensorium.energy.meters import CacheEntries, save_cache
from sensorium.energy.models import MAINS, Site, Tariff
from sensorium.energy.schemas import (
    Interval,
    MeterPublic,
    Period,
    SeriesPublic,
    SiteCreate,
    SiteList,
    SitePublic,
    SiteUpdate,
    SummaryPublic,
    TariffIn,
    TariffPublic,
    WindowIn,
)
from sensorium.errors import Invalid
from sensorium.telemetry import buckets

log = logging.getLogger(__name__)
router = APIRouter(prefix="/energy", tags=["energy"])


# --- sites -----------------------------------------------------------------------------------


def _tariff_public(tariff: Tariff) -> TariffPublic:
    return TariffPublic(
        site_id=tariff.site_id,
        currency=tariff.currency,
        price_per_kwh=tariff.price_per_kwh,
        standing_charge_per_day=tariff.standing_charge_per_day,
        co2_g_per_kwh=tariff.co2_g_per_kwh,
        windows=[WindowIn.model_validate(w) for w in tariff.windows],
    )


async def _site_public(session: AsyncSession, site: Site) -> SitePublic:
    meters = await service.meters_of(session, site_id=site.id)
    tariff = await session.get(Tariff, site.id)
    public = [MeterPublic(device_id=d, name=n, role=r) for d, n, r in meters]
    return SitePublic(
        id=site.id,
        name=site.name,
        max_gap_s=site.max_gap_s,
        mains=next((m for m in public if m.role == MAINS), None),
        submeters=[m for m in public if m.role != MAINS],
        tariff=_tariff_public(tariff) if tariff is not None else None,
        created_at=site.created_at,
    )


@router.post("/sites", status_code=status.HTTP_201_CREATED)
async def create_site(body: SiteCreate, user: CurrentUser, session: SessionDep) -> SitePublic:
    """A site groups your devices: an optional mains meter and sub-meters (a device
    belongs to at most one site)."""
    site = await service.create_site(
        session,
        owner=user,
        name=body.name,
        mains=body.mains,
        submeters=body.submeters,
        max_gap_s=body.max_gap_s,
    )
    return await _site_public(session, site)


@router.get("/sites")
async def list_sites(user: CurrentUser, session: SessionDep) -> SiteList:
    sites = await service.list_sites(session, owner=user)
    return SiteList(items=[await _site_public(session, s) for s in sites])


@router.get("/sites/{site_id}")
async def get_site(site_id: int, user: CurrentUser, session: SessionDep) -> SitePublic:
    return await _site_public(session, await service.get_site(session, owner=user, site_id=site_id))


@router.patch("/sites/{site_id}")
async def update_site(
    site_id: int, body: SiteUpdate, user: CurrentUser, session: SessionDep
) -> SitePublic:
    """Change the name, the gap limit or the meters; `submeters` replaces the list."""
    changes = body.model_dump(include=body.model_fields_set)
    site = await service.update_site(session, owner=user, site_id=site_id, changes=changes)
    return await _site_public(session, site)


@router.delete("/sites/{site_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_site(site_id: int, user: CurrentUser, session: SessionDep) -> Response:
    """Delete the site and its tariff; its devices and their data stay."""
    await service.delete_site(session, owner=user, site_id=site_id)
    return Response(status_code=204)


@router.put("/sites/{site_id}/tariff")
async def set_tariff(
    site_id: int, body: TariffIn, user: CurrentUser, session: SessionDep
) -> TariffPublic:
    """Set the site's tariff: a flat price per kWh, time-of-use windows in local time
    (may cross midnight; on all days, weekdays or weekend days; must not overlap), a daily
    standing charge and an optional CO2 factor."""
    return _tariff_public(await service.set_tariff(session, owner=user, site_id=site_id, body=body))


@router.get("/sites/{site_id}/tariff")
async def get_tariff(site_id: int, user: CurrentUser, session: SessionDep) -> TariffPublic:
    return _tariff_public(await service.get_tariff(session, owner=user, site_id=site_id))


@router.delete("/sites/{site_id}/tariff", status_code=status.HTTP_204_NO_CONTENT)
async def delete_tariff(site_id: int, user: CurrentUser, session: SessionDep) -> Response:
    await service.delete_tariff(session, owner=user, site_id=site_id)
    return Response(status_code=204)


# --- figures ---------------------------------------------------------------------------------


def parse_time(value: str | None, field: str, tz: ZoneInfo) -> int | None:
    """Epoch milliseconds, ISO-8601 with an offset, or a local date/time in `tz`."""
    if value is None or value == "":
        return None
    if value.lstrip("-").isdigit():
        return int(value)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise Invalid(
            f"{field} must be epoch milliseconds or an ISO-8601 date/time",
            field=field,
            code="invalid_time",
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    return int(parsed.timestamp() * 1000)


SiteQuery = Annotated[int | None, Query(description="Site id (or give `device`)")]
DeviceQuery = Annotated[str | None, Query(description="Device id (or give `site`)")]
TzQuery = Annotated[str, Query(description="IANA time zone of days, weeks, months")]


async def _store(ctx: AppContext, cache: CacheEntries) -> None:
    """Keep the hours and days computed for this answer. Only a cache: failing to store it
    (a busy SQLite writer) costs the next request time, not correctness."""
    if not cache:
        return
    try:
        async with ctx.sessions() as session, session.begin():
            await save_cache(session, cache)
    except SQLAlchemyError as exc:
        log.warning(
            "energy: could not store %d cached hours, %d days: %s",
            len(cache.rows),
            len(cache.days),
            exc,
        )


async def _summary(
    ctx: AppContext,
    user: Any,
    session: AsyncSession,
    site: int | None,
    device: str | None,
    period: str,
    at: str | None,
    tz: str,
) -> SummaryPublic:
    zone = buckets.zone(tz)
    scope = await service.resolve_scope(session, owner=user, site_id=site, device_id=device)
    now = epoch_ms()
    at_ms = parse_time(at, "at", zone)
    cache = CacheEntries()
    result = await service.summary(
        session,
        scope=scope,
        period=period,
        at_ms=now if at_ms is None else at_ms,
        tz=zone,
        now_ms=now,
        cache=cache,
    )
    await _store(ctx, cache)
    return SummaryPublic.model_validate(result)


@router.get("/summary")
async def summary(
    user: CurrentUser,
    session: SessionDep,
    ctx: ContextDep,
    site: SiteQuery = None,
    device: DeviceQuery = None,
    period: Period = "day",
    at: Annotated[
        str | None, Query(description="The point in time the period runs to (default: now)")
    ] = None,
    tz: TzQuery = "UTC",
) -> SummaryPublic:
    """kWh, cost and CO2 of the day/week/month/year holding `at` so far, against the
    previous one up to the same point; peak power and when; base load; the hourly profile;
    for a site, each meter and the unmetered remainder."""
    return await _summary(ctx, user, session, site, device, period, at, tz)


def _csv(rows: list[list[Any]], filename: str) -> Response:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    return Response(
        out.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.get(
    "/summary.csv",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}, "description": "CSV"}},
)
async def summary_csv(
    user: CurrentUser,
    session: SessionDep,
    ctx: ContextDep,
    site: SiteQuery = None,
    device: DeviceQuery = None,
    period: Period = "day",
    at: str | None = None,
    tz: TzQuery = "UTC",
) -> Response:
    """The summary as CSV: the total, then each meter and the unmetered remainder."""
    s = await _summary(ctx, user, session, site, device, period, at, tz)
    cur, prev = s.current, s.previous
    rows: list[list[Any]] = [
        ["row", "device_id", "name", "start", "end", "kwh", "energy_cost", "standing_charge",
         "cost", "co2_kg", "currency", "previous_start", "previous_end", "previous_kwh",
         "previous_cost", "change_pct"],
        ["total", s.device_id, s.name, cur.start, cur.end, cur.kwh, cur.energy_cost,
         cur.standing_charge, cur.cost, cur.co2_kg, s.currency, prev.start, prev.end, prev.kwh,
         prev.cost, s.change_pct],
    ]  # fmt: skip
    if s.site_id is not None:
        for m in s.meters:
            rows.append(
                [m.role, m.device_id, m.name, cur.start, cur.end, m.kwh, m.energy_cost, None,
                 None, None, s.currency, prev.start, prev.end, m.previous_kwh, None, None]
            )  # fmt: skip
        if s.unmetered_kwh is not None:
            rows.append(
                ["unmetered", None, None, cur.start, cur.end, s.unmetered_kwh, s.unmetered_cost,
                 None, None, None, s.currency, None, None, None, None, None]
            )  # fmt: skip
    return _csv(rows, "energy-summary.csv")


def _default_range(interval: str, tz: ZoneInfo, now: int) -> tuple[int, int]:
    """The current local day (1h), month (1d) or year (1mo)."""
    today = service.local(now, tz).date()
    if interval == "1h":
        first, last = today, today + timedelta(days=1)
    elif interval == "1d":
        first = today.replace(day=1)
        last = (first + timedelta(days=32)).replace(day=1)
    else:
        first, last = date(today.year, 1, 1), date(today.year + 1, 1, 1)
    return service.local_ms(first, tz), service.local_ms(last, tz)


async def _series(
    ctx: AppContext,
    user: Any,
    session: AsyncSession,
    site: int | None,
    device: str | None,
    interval: str,
    from_: str | None,
    to: str | None,
    tz: str,
) -> SeriesPublic:
    zone = buckets.zone(tz)
    scope = await service.resolve_scope(session, owner=user, site_id=site, device_id=device)
    now = epoch_ms()
    default_from, default_to = _default_range(interval, zone, now)
    from_ms = parse_time(from_, "from", zone)
    to_ms = parse_time(to, "to", zone)
    cache = CacheEntries()
    result = await service.series(
        session,
        scope=scope,
        interval=interval,
        from_ms=default_from if from_ms is None else from_ms,
        to_ms=default_to if to_ms is None else to_ms,
        tz=zone,
        now_ms=now,
        cache=cache,
    )
    await _store(ctx, cache)
    return SeriesPublic.model_validate(result)


FromQuery = Annotated[
    str | None,
    Query(alias="from", description="Start (inclusive): epoch ms, ISO-8601, or local date"),
]
ToQuery = Annotated[str | None, Query(description="End (exclusive)")]


@router.get("/series")
async def series(
    user: CurrentUser,
    session: SessionDep,
    ctx: ContextDep,
    site: SiteQuery = None,
    device: DeviceQuery = None,
    interval: Interval = "1d",
    from_: FromQuery = None,
    to: ToQuery = None,
    tz: TzQuery = "UTC",
) -> SeriesPublic:
    """kWh and cost per local hour, day or month (default: this day, month or year); for a
    site, per meter and the unmetered remainder. Stretches without data are listed in
    `missing` and count as nothing."""
    return await _series(ctx, user, session, site, device, interval, from_, to, tz)


@router.get(
    "/series.csv",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}, "description": "CSV"}},
)
async def series_csv(
    user: CurrentUser,
    session: SessionDep,
    ctx: ContextDep,
    site: SiteQuery = None,
    device: DeviceQuery = None,
    interval: Interval = "1d",
    from_: FromQuery = None,
    to: ToQuery = None,
    tz: TzQuery = "UTC",
) -> Response:
    """The series as CSV, one line per bucket; sites add a kWh column per meter."""
    s = await _series(ctx, user, session, site, device, interval, from_, to, tz)
    meters = list(s.rows[0].meters) if s.rows else []
    header = ["start", "kwh", "energy_cost", "standing_charge", "cost", "co2_kg", "missing_ms"]
    header += [f"kwh_{m}" for m in meters]
    site_rows = s.site_id is not None and any(r.unmetered_kwh is not None for r in s.rows)
    if site_rows:
        header.append("unmetered_kwh")
    rows: list[list[Any]] = [header]
    for r in s.rows:
        line: list[Any] = [r.start, r.kwh, r.energy_cost, r.standing_charge, r.cost, r.co2_kg,
                           r.missing_ms]  # fmt: skip
        line += [r.meters[m] for m in meters]
        if site_rows:
            line.append(r.unmetered_kwh)
        rows.append(line)
    return _csv(rows, "energy-series.csv")
