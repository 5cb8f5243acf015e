"""Registering devices, their credentials, and what they report about themselves."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from sensorium.alerts import engine as alerts
from sensorium.db import epoch_ms, utcnow
from sensorium.devices.models import Device, DeviceCredential, DeviceLog, DeviceStatusEvent
from sensorium.devices.schemas import DevicePublic, DeviceStatus
from sensorium.energy.models import EnergyDay, EnergyHour, EnergyMonth
from sensorium.errors import Conflict, Invalid, NotFound
from sensorium.live.bus import Event, status_event
from sensorium.protocol import (
    InvalidMac,
    LogRecord,
    StatusReport,
    is_canonical_mac,
    mac_to_int,
    normalize_mac,
)
from sensorium.telemetry.models import LatestValue, Point, Rollup, Series
from sensorium.users.models import User
from sensorium.users.security import hash_token, new_token


class CredentialSink(Protocol):
    """Told about credential changes inside the same transaction (the MQTT broker outbox)."""

    async def device_created(self, session: AsyncSession, device_id: str, token: str) -> None: ...
    async def password_changed(self, session: AsyncSession, device_id: str, token: str) -> None: ...
    async def device_disabled(self, session: AsyncSession, device_id: str) -> None: ...
    async def device_deleted(self, session: AsyncSession, device_id: str) -> None: ...


DEVICE_TOKEN_PREFIX = "sdt_"
# An online device is considered gone after this many reporting intervals of silence.
OFFLINE_INTERVALS = 3


def _not_found(device_id: str) -> NotFound:
    return NotFound(f"device {device_id} not found", field="device_id", code="device_not_found")


def offline_deadline_ms(*, now_ms: int, interval_s: int | None, offline_after_s: int) -> int:
    window_s = interval_s * OFFLINE_INTERVALS if interval_s else offline_after_s
    return now_ms + window_s * 1000


def effective_status(device: Device, *, now_ms: int) -> DeviceStatus:
    """ "online" only while data keeps arriving; the stored status alone goes stale."""
    if device.status == "new":
        return "new"
    if device.status == "online" and (device.offline_at_ms or 0) > now_ms:
        return "online"
    return "offline"


def live_status(device: Device, *, reason: str, now_ms: int) -> Event:
    """The live-bus event telling browsers a device's current status."""
    return status_event(
        device.id,
        online=effective_status(device, now_ms=now_ms) == "online",
        reason=reason,
        now_ms=now_ms,
        fw=device.firmware_version,
        info=device.info or {},
    )


def to_public(device: Device, *, now_ms: int | None = None) -> DevicePublic:
    return DevicePublic(
        id=device.id,
        name=device.name,
        location=device.location,
        status=effective_status(device, now_ms=now_ms if now_ms is not None else epoch_ms()),
        registered_at=device.registered_at,
        last_seen=device.last_seen,
        firmware_version=device.firmware_version,
        info=device.info or {},
    )


async def register_device(
    session: AsyncSession,
    *,
    owner: User,
    mac: str,
    name: str,
    location: str = "",
    broker: CredentialSink | None = None,
) -> tuple[Device, str]:
    """Register a device by MAC; returns it and its token, which is never stored in clear."""
    try:
        device_id = normalize_mac(mac)
    except InvalidMac as exc:
        raise Invalid(exc.message, field="mac", code="invalid_mac") from None
    if await session.get(Device, device_id) is not None:
        raise Conflict(
            f"a device with MAC {device_id} is already registered",
            field="mac",
            code="device_exists",
        )
    device = Device(id=device_id, owner_id=owner.id, name=name.strip(), location=location.strip())
    token = new_token(DEVICE_TOKEN_PREFIX)
    session.add(device)
    session.add(DeviceCredential(device_id=device_id, token_hash=hash_token(token)))
    try:
        await session.flush()
    except IntegrityError:
        raise Conflict(
            f"a device with MAC {device_id} is already registered",
            field="mac",
            code="device_exists",
        ) from None
    if broker is not None:
        await broker.device_created(session, device_id, token)
    return device, token


async def get_device(session: AsyncSession, *, owner: User, device_id: str) -> Device:
    """The owner's device; someone else's device is NotFound too, so ids do not leak."""
    device = await session.get(Device, device_id) if is_canonical_mac(device_id) else None
    if device is None or device.owner_id != owner.id:
        raise _not_found(device_id)
    return device


async def list_devices(
    session: AsyncSession,
    *,
    owner: User,
    status: DeviceStatus | None = None,
    name: str | None = None,
    limit: int = 50,
    offset: int = 0,
    now_ms: int | None = None,
) -> tuple[list[Device], int]:
    now_ms = now_ms if now_ms is not None else epoch_ms()
    query = select(Device).where(Device.owner_id == owner.id)
    if name:
        pattern = "%" + name.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(func.lower(Device.name).like(pattern + "%", escape="\\"))
    if status == "new":
        query = query.where(Device.status == "new")
    elif status == "online":
        query = query.where(Device.status == "online", Device.offline_at_ms > now_ms)
    elif status == "offline":
        query = query.where(
            Device.status != "new",
            (Device.status != "online") | (func.coalesce(Device.offline_at_ms, 0) <= now_ms),
        )
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    rows = await session.scalars(query.order_by(Device.name, Device.id).limit(limit).offset(offset))
    return list(rows), int(total or 0)


async def update_device(
    session: AsyncSession,
    *,
    owner: User,
    device_id: str,
    name: str | None = None,
    location: str | None = None,
) -> Device:
    device = await get_device(session, owner=owner, device_id=device_id)
    if name is not None:
        device.name = name.strip()
    if location is not None:
        device.location = location.strip()
    await session.flush()
    return device


async def delete_device(
    session: AsyncSession, *, owner: User, device_id: str, broker: CredentialSink | None = None
) -> None:
    """Delete a device with its credentials and all its data, in one transaction."""
    device = await get_device(session, owner=owner, device_id=device_id)
    # The device row goes first: the batch writer only stores points for devices it can
    # still update, so no point can slip in after the data is deleted.
    await session.execute(delete(Device).where(Device.id == device.id))
    num = mac_to_int(device.id)
    # Its series ids stay reserved (models.Series); the points under them go.
    ids = list(await session.scalars(select(Series.id).where(Series.device == num)))
    if ids:
        await session.execute(delete(Point).where(Point.series.in_(ids)))
    await session.execute(delete(LatestValue).where(LatestValue.device == num))
    await session.execute(delete(Rollup).where(Rollup.device == num))
    await session.execute(delete(EnergyHour).where(EnergyHour.device == num))
    await session.execute(delete(EnergyDay).where(EnergyDay.device == num))
    await session.execute(delete(EnergyMonth).where(EnergyMonth.device == num))
    await session.execute(delete(DeviceCredential).where(DeviceCredential.device_id == device.id))
    if broker is not None:
        await broker.device_deleted(session, device.id)


async def rotate_token(
    session: AsyncSession,
    *,
    owner: User,
    device_id: str,
    grace_s: int,
    broker: CredentialSink | None = None,
) -> tuple[str, datetime | None]:
    """Issue a new token; the current ones keep working for `grace_s` seconds."""
    device = await get_device(session, owner=owner, device_id=device_id)
    now = utcnow()
    valid_until = now + timedelta(seconds=grace_s) if grace_s > 0 else None
    live = DeviceCredential.device_id == device.id, DeviceCredential.revoked_at.is_(None)
    if valid_until is None:
        await session.execute(update(DeviceCredential).where(*live).values(revoked_at=now))
    else:
        # Never extend a token that already expires sooner (a rotation within a grace period).
        await session.execute(
            update(DeviceCredential)
            .where(*live)
            .where(
                (DeviceCredential.expires_at.is_(None))
                | (DeviceCredential.expires_at > valid_until)
            )
            .values(expires_at=valid_until)
        )
    token = new_token(DEVICE_TOKEN_PREFIX)
    session.add(DeviceCredential(device_id=device.id, token_hash=hash_token(token)))
    await session.flush()
    if broker is not None:
        await broker.password_changed(session, device.id, token)
    return token, valid_until


async def revoke_tokens(
    session: AsyncSession, *, owner: User, device_id: str, broker: CredentialSink | None = None
) -> None:
    """Revoke every token of the device at once; a rotation issues a new one."""
    device = await get_device(session, owner=owner, device_id=device_id)
    await session.execute(
        update(DeviceCredential)
        .where(DeviceCredential.device_id == device.id, DeviceCredential.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    if broker is not None:
        await broker.device_disabled(session, device.id)


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """Who a device token belongs to, and until when that answer may be cached."""

    device_id: str
    expires_at: datetime | None


async def identify_device(session: AsyncSession, *, token: str) -> DeviceIdentity | None:
    """The device a token belongs to, or None for unknown, revoked or expired tokens."""
    now = utcnow()
    row = (
        await session.execute(
            select(DeviceCredential.device_id, DeviceCredential.expires_at).where(
                DeviceCredential.token_hash == hash_token(token),
                DeviceCredential.revoked_at.is_(None),
            )
        )
    ).first()
    if row is None or (row.expires_at is not None and row.expires_at <= now):
        return None
    return DeviceIdentity(device_id=row.device_id, expires_at=row.expires_at)


@dataclass(slots=True)
class StatusRecorded:
    device: Device
    # The device (re)connected: it was offline (or new), or its uptime went back (it
    # rebooted). Its desired state and waiting commands are worth sending again then; not
    # at every heartbeat.
    reconnected: bool


async def record_status(
    session: AsyncSession,
    *,
    device_id: str,
    report: StatusReport,
    offline_after_s: int,
    now_ms: int | None = None,
    reason: str = "status",
    transport: str | None = None,
) -> Device:
    """Store what a device says about itself (firmware, RSSI, uptime, online or not);
    `transport` is how it said it ("mqtt", "http"), which is where its commands go."""
    recorded = await record_statuses(
        session,
        reports=[(device_id, report)],
        offline_after_s=offline_after_s,
        now_ms=now_ms,
        reason=reason,
        transport=transport,
    )
    if device_id not in recorded:
        raise _not_found(device_id)
    return recorded[device_id].device


async def record_statuses(
    session: AsyncSession,
    *,
    reports: Sequence[tuple[str, StatusReport]],
    offline_after_s: int,
    now_ms: int | None = None,
    reason: str = "status",
    transport: str | None = None,
) -> dict[str, StatusRecorded]:
    """`record_status` for many devices (at most one report each) in a few statements:
    what MQTT ingest does with the heartbeats of a fleet. Devices that do not exist are
    left out of the answer."""
    now_ms = now_ms if now_ms is not None else epoch_ms()
    wanted = dict(reports)
    if len(wanted) != len(reports):
        raise ValueError("one status report per device")
    # Locked in id order (as the batch writer does), so two workers cannot deadlock.
    found = {
        device.id: device
        for device in await session.scalars(
            select(Device)
            .where(Device.id.in_(sorted(wanted)))
            .order_by(Device.id)
            .with_for_update()
        )
    }
    online = sorted(d for d in found if wanted[d].online is not False)
    offline = sorted(d for d in found if wanted[d].online is False)
    # Transitions are decided by conditional UPDATEs, not by what was read above: the batch
    # writer may mark a device online concurrently (SQLite has no row locks), and each
    # transition must be recorded exactly once.
    transitions: set[str] = set()
    for ids, new_status in ((online, "online"), (offline, "offline")):
        if not ids:
            continue
        changed = await session.execute(
            update(Device)
            .where(Device.id.in_(ids), Device.status != new_status)
            .values(status=new_status)
            .returning(Device.id)
            .execution_options(synchronize_session=False)
        )
        transitions.update(changed.scalars())
        for device_id in ids:
            set_committed_value(found[device_id], "status", new_status)
    for device_id in sorted(transitions):
        is_online = wanted[device_id].online is not False
        session.add(
            DeviceStatusEvent(device_id=device_id, ts=now_ms, online=is_online, reason=reason)
        )
        if not is_online:
            await alerts.device_offline(session, device_id=device_id, at_ms=now_ms)
    if online:
        await alerts.devices_back(session, device_ids=online, at_ms=now_ms)
    recorded: dict[str, StatusRecorded] = {}
    for device_id, device in found.items():
        report = wanted[device_id]
        is_online = report.online is not False
        info = dict(device.info or {})
        before = info.get("uptime_s")
        rebooted = (
            report.uptime_s is not None and isinstance(before, int) and report.uptime_s < before
        )
        if transport is not None and is_online:
            device.transport = transport
        if report.fw is not None:
            device.firmware_version = report.fw
        if report.interval_s is not None:
            device.interval_s = report.interval_s
        for field in ("rssi", "uptime_s", "ip", "free_heap"):
            value = getattr(report, field)
            if value is not None:
                info[field] = value
        device.info = info
        if is_online:
            device.last_seen = utcnow()
            device.offline_at_ms = offline_deadline_ms(
                now_ms=now_ms, interval_s=device.interval_s, offline_after_s=offline_after_s
            )
        else:
            device.offline_at_ms = now_ms
        recorded[device_id] = StatusRecorded(
            device, reconnected=is_online and (device_id in transitions or rebooted)
        )
    await session.flush()
    return recorded


async def mark_silent_devices_offline(
    session: AsyncSession, *, now_ms: int | None = None
) -> list[str]:
    """Devices whose data stopped for 3 reporting intervals become offline (the scheduler)."""
    now_ms = now_ms if now_ms is not None else epoch_ms()
    result = await session.execute(
        update(Device)
        .where(Device.status == "online", Device.offline_at_ms <= now_ms)
        .values(status="offline")
        .returning(Device.id, Device.offline_at_ms)
    )
    silent = list(result.all())
    for row in silent:
        session.add(
            DeviceStatusEvent(
                device_id=row.id, ts=row.offline_at_ms, online=False, reason="timeout"
            )
        )
        await alerts.device_offline(session, device_id=row.id, at_ms=row.offline_at_ms)
    return [row.id for row in silent]


async def status_history(
    session: AsyncSession, *, device_id: str, limit: int = 100
) -> list[DeviceStatusEvent]:
    rows = await session.scalars(
        select(DeviceStatusEvent)
        .where(DeviceStatusEvent.device_id == device_id)
        .order_by(DeviceStatusEvent.ts.desc(), DeviceStatusEvent.id.desc())
        .limit(limit)
    )
    return list(rows)


MAX_LOG_LINES = 1000


async def append_log(session: AsyncSession, *, device_id: str, record: LogRecord) -> None:
    """Keep a device's newest MAX_LOG_LINES log lines."""
    if await session.get(Device, device_id) is None:
        raise _not_found(device_id)
    session.add(
        DeviceLog(device_id=device_id, ts=record.ts, level=record.level, message=record.msg)
    )
    await session.flush()
    cutoff = await session.scalar(
        select(DeviceLog.id)
        .where(DeviceLog.device_id == device_id)
        .order_by(DeviceLog.id.desc())
        .offset(MAX_LOG_LINES)
        .limit(1)
    )
    if cutoff is not None:
        await session.execute(
            delete(DeviceLog).where(DeviceLog.device_id == device_id, DeviceLog.id <= cutoff)
        )


async def list_logs(
    session: AsyncSession, *, device_id: str, limit: int = 100, level: str | None = None
) -> list[DeviceLog]:
    query = select(DeviceLog).where(DeviceLog.device_id == device_id)
    if level is not None:
        query = query.where(DeviceLog.level == level)
    rows = await session.scalars(query.order_by(DeviceLog.id.desc()).limit(limit))
    return list(rows)
