"""Telemetry ingest for devices, and latest values and history for their owners."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from sensorium.api.body import read_json_body
from sensorium.api.context import AppContext
from sensorium.api.deps import ContextDep, CurrentDevice, CurrentUser, SessionDep
from sensorium.api.metrics import INGEST_DOCUMENTS, INGEST_POINTS, INGEST_REJECTED
from sensorium.db import epoch_ms
from sensorium.devices.service import get_device, list_devices
from sensorium.errors import Invalid, SensoriumError
from sensorium.protocol import ProtocolError, parse_readings
from sensorium.telemetry import buckets, service
from sensorium.telemetry.schemas import (
    Accepted,
    LatestPublic,
    Order,
    PointPage,
    SeriesPage,
)

router = APIRouter(prefix="/devices/{device_id}/telemetry", tags=["telemetry"])

_EXAMPLES = {
    "flat": {"summary": "Values now", "value": {"temperature": 21.5, "humidity": 40.2}},
    "timestamped": {
        "summary": "One timestamped reading",
        "value": {"ts": 1763900000000, "values": {"temperature": 21.5}},
    },
    "batch": {
        "summary": "A batch (backfill)",
        "value": [
            {"ts": 1763900000000, "values": {"power": 230.1}},
            {"ts": 1763900001000, "values": {"power": 229.8}},
        ],
    },
}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    tags=["device API"],
    response_model=Accepted,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {}, "examples": _EXAMPLES}},
        }
    },
)
async def ingest(device: CurrentDevice, request: Request, ctx: ContextDep) -> Response:
    """A device sends readings (PROTOCOL.md): a flat object, one `{ts, values}` object or
    a list of up to 1000 of them. Nothing of a document with a bad entry is stored."""
    now = epoch_ms()
    oldest = now - ctx.settings.raw_retention_days * 86_400_000
    try:
        readings = parse_readings(await read_json_body(request), now_ms=now, oldest_ms=oldest)
    except (ProtocolError, SensoriumError) as exc:  # bad document, type or size
        INGEST_REJECTED.labels("http", exc.code).inc()
        raise
    stored = await ctx.writer.write(device, readings)
    INGEST_DOCUMENTS.labels("http").inc()
    INGEST_POINTS.labels("http").inc(stored)
    return Response(
        orjson.dumps({"accepted": stored}), status_code=202, media_type="application/json"
    )


@router.get("/latest")
async def latest(device_id: str, user: CurrentUser, session: SessionDep) -> LatestPublic:
    """The newest reading of every key the device has sent."""
    device = await get_device(session, owner=user, device_id=device_id)
    return LatestPublic(
        device_id=device.id, values=await service.latest(session, device_id=device.id)
    )


def _parse_time(value: str | None, field: str) -> int | None:
    """Epoch milliseconds or an ISO-8601 time with offset."""
    if value is None or value == "":
        return None
    if value.lstrip("-").isdigit():
        return int(value)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise Invalid(
            f"{field} must be epoch milliseconds or ISO-8601 with a UTC offset",
            field=field,
            code="invalid_time",
        )
    return int(parsed.timestamp() * 1000)


@router.get("", response_model=PointPage | SeriesPage)
async def history(
    device_id: str,
    user: CurrentUser,
    session: SessionDep,
    keys: Annotated[str | None, Query(description="Comma-separated keys; all when omitted")] = None,
    from_: Annotated[
        str | None, Query(alias="from", description="Start (inclusive): epoch ms or ISO-8601")
    ] = None,
    to: Annotated[str | None, Query(description="End (exclusive): epoch ms or ISO-8601")] = None,
    interval: Annotated[
        str,
        Query(
            pattern="^(" + "|".join(buckets.INTERVALS) + ")$",
            description="raw points, a fixed bucket width, calendar 1d/1w/1mo in `tz`, or "
            "auto (the coarsest giving at least 500 buckets)",
        ),
    ] = "raw",
    agg: Annotated[
        str, Query(description="Aggregates per bucket: " + ",".join(service.AGGREGATES))
    ] = "avg,min,max",
    tz: Annotated[str, Query(description="IANA time zone for calendar buckets")] = "UTC",
    limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE)] = 1000,
    order: Order = "asc",
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """Raw readings ordered by time (oldest first by default), paginated by cursor; or,
    with `interval`, aggregates per time bucket (min/avg/max bands for charts)."""
    device = await get_device(session, owner=user, device_id=device_id)
    key_list = [k.strip() for k in keys.split(",") if k.strip()] if keys else None
    from_ms, to_ms = _parse_time(from_, "from"), _parse_time(to, "to")
    if interval != "raw":
        zone = buckets.zone(tz)
        end = to_ms if to_ms is not None else epoch_ms()
        start = from_ms if from_ms is not None else end - 86_400_000
        if start >= end:
            raise Invalid("from must be before to", field="from", code="invalid_range")
        resolved = buckets.pick_auto(start, end) if interval == "auto" else interval
        if resolved != "raw":
            aggs = [a.strip() for a in agg.split(",") if a.strip()]
            unknown = set(aggs) - set(service.AGGREGATES)
            if unknown or not aggs:
                raise Invalid(
                    f"agg must be a list of {', '.join(service.AGGREGATES)}",
                    field="agg",
                    code="invalid_agg",
                )
            series = await service.aggregate(
                session, device_id=device.id, keys=key_list, from_ms=start, to_ms=end,
                interval=resolved, aggs=aggs, tz=zone,
            )  # fmt: skip
            return json_response(series_page(device.id, resolved, tz, zone, aggs, series))
        from_ms, to_ms = start, end
    points, next_cursor = await service.query_points(
        session,
        device_id=device.id,
        keys=key_list,
        from_ms=from_ms,
        to_ms=to_ms,
        limit=limit,
        order=order,
        cursor=cursor,
    )
    page = {"device_id": device.id, "order": order, "points": points, "next_cursor": next_cursor}
    return json_response(page)


def series_page(
    device_id: str,
    interval: str,
    tz: str,
    zone: ZoneInfo,
    aggs: list[str],
    series: dict[str, list[dict[str, float | int]]],
) -> dict[str, Any]:
    """A SeriesPage as plain data (service.aggregate's rows plus each bucket's local start)."""
    iso = buckets.iso
    shown = {
        key: [{**row, "start": iso(int(row["bucket"]), zone)} for row in rows]
        for key, rows in series.items()
    }
    return {"device_id": device_id, "interval": interval, "tz": tz, "aggs": aggs, "series": shown}


def json_response(page: dict[str, Any]) -> Response:
    """History pages hold up to 10,000 rows: built as plain data and serialized once by
    orjson, not validated row by row (~10 µs a row) against the response model, which
    still documents them."""
    return Response(orjson.dumps(page), media_type="application/json")


csv_router = APIRouter(prefix="/devices/{device_id}", tags=["telemetry"])


@dataclass
class CsvQuery:
    """What to export; the same parameters as the JSON history."""

    keys: Annotated[str | None, Query(description="Comma-separated keys; all when omitted")] = None
    from_: Annotated[str | None, Query(alias="from")] = None
    to: Annotated[str | None, Query()] = None
    interval: Annotated[str, Query(pattern="^(" + "|".join(buckets.INTERVALS) + ")$")] = "raw"
    tz: Annotated[str, Query()] = "UTC"


CsvQueryDep = Annotated[CsvQuery, Depends()]


@csv_router.get(
    "/telemetry.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "CSV, streamed"}},
)
async def history_csv(
    device_id: str, user: CurrentUser, session: SessionDep, ctx: ContextDep, query: CsvQueryDep
) -> StreamingResponse:
    """CSV of the same data as the JSON endpoint: `ts,key,value` for raw readings (streamed
    with constant memory, any range) or `bucket,key,min,avg,max,count` per bucket. Times
    are ISO-8601 in `tz`."""
    device = await get_device(session, owner=user, device_id=device_id)
    await session.close()
    return _csv_response(ctx, [device.id], query, f"{device.id}.csv")


fleet_csv_router = APIRouter(tags=["telemetry"])
MAX_EXPORT_DEVICES = 100


@fleet_csv_router.get(
    "/telemetry.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "CSV, streamed"}},
)
async def fleet_csv(
    user: CurrentUser,
    session: SessionDep,
    ctx: ContextDep,
    query: CsvQueryDep,
    devices: Annotated[
        str | None, Query(description="Comma-separated device ids; all of yours when omitted")
    ] = None,
) -> StreamingResponse:
    """Several devices in one CSV, a `device` column first: `device,ts,key,value` (raw,
    streamed with constant memory) or `device,bucket,key,min,avg,max,count`. At most 100
    devices; a device that is not yours is a 404, as if it did not exist."""
    if devices:
        wanted = list(dict.fromkeys(d.strip() for d in devices.split(",") if d.strip()))
        if len(wanted) > MAX_EXPORT_DEVICES:
            raise Invalid(f"at most {MAX_EXPORT_DEVICES} devices", field="devices")
        ids = [(await get_device(session, owner=user, device_id=d)).id for d in wanted]
    else:
        owned, _total = await list_devices(
            session, owner=user, status=None, name=None, limit=MAX_EXPORT_DEVICES, offset=0
        )
        ids = [d.id for d in owned]
    await session.close()
    return _csv_response(ctx, ids, query, "telemetry.csv", fleet=True)


def _csv_response(
    ctx: AppContext,
    device_ids: list[str],
    query: CsvQuery,
    filename: str,
    *,
    fleet: bool = False,
) -> StreamingResponse:
    """The CSV body for one device or several (`fleet`: a leading device column). Nothing
    is held for the whole range: raw points stream through a server-side cursor, buckets
    are computed one device at a time."""
    zone = buckets.zone(query.tz)
    keys, interval = query.keys, query.interval
    key_list = [k.strip() for k in keys.split(",") if k.strip()] if keys else None
    from_ms, to_ms = _parse_time(query.from_, "from"), _parse_time(query.to, "to")
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    if interval != "raw":
        end = to_ms if to_ms is not None else epoch_ms()
        start = from_ms if from_ms is not None else end - 86_400_000
        resolved = buckets.pick_auto(start, end) if interval == "auto" else interval
        if resolved != "raw":
            # Checked before the response starts: a bad range is a 422, not a cut-off body.
            buckets.buckets(resolved, start, end, zone)
            rows = _bucket_rows(ctx, device_ids, key_list, start, end, resolved, zone, fleet)
            return StreamingResponse(rows, media_type="text/csv", headers=headers)
        from_ms, to_ms = start, end
    rows = _raw_rows(ctx, device_ids, key_list, from_ms, to_ms, zone, fleet)
    return StreamingResponse(rows, media_type="text/csv", headers=headers)


async def _bucket_rows(
    ctx: AppContext,
    device_ids: list[str],
    keys: list[str] | None,
    from_ms: int,
    to_ms: int,
    interval: str,
    zone: ZoneInfo,
    fleet: bool,
) -> AsyncIterator[bytes]:
    yield b"device,bucket,key,min,avg,max,count\n" if fleet else b"bucket,key,min,avg,max,count\n"
    for device_id in device_ids:
        prefix = f"{device_id}," if fleet else ""
        async with ctx.sessions() as session:
            series = await service.aggregate(
                session, device_id=device_id, keys=keys, from_ms=from_ms, to_ms=to_ms,
                interval=interval, aggs=["min", "avg", "max", "count"], tz=zone,
            )  # fmt: skip
        for key, series_rows in sorted(series.items()):
            yield "".join(
                f"{prefix}{buckets.iso(int(r['bucket']), zone)},{key},{r['min']},"
                f"{r['avg']},{r['max']},{r['count']}\n"
                for r in series_rows
            ).encode()


async def _raw_rows(
    ctx: AppContext,
    device_ids: list[str],
    keys: list[str] | None,
    from_ms: int | None,
    to_ms: int | None,
    zone: ZoneInfo,
    fleet: bool,
) -> AsyncIterator[bytes]:
    yield b"device,ts,key,value\n" if fleet else b"ts,key,value\n"
    for device_id in device_ids:
        prefix = f"{device_id}," if fleet else ""
        async with ctx.sessions() as session:
            async for chunk in service.stream_points(
                session, device_id=device_id, keys=keys, from_ms=from_ms, to_ms=to_ms
            ):
                yield "".join(
                    f"{prefix}{buckets.iso(ts, zone)},{key},{value}\n" for ts, key, value in chunk
                ).encode()
