"""Desired/reported state and the command lifecycle, on the database.

Every state change is one transaction on a locked `device_states` row; every command
transition is one conditional UPDATE (`… WHERE status IN (…) RETURNING`), so concurrent
API processes, workers and the scheduler never record a transition twice.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from sensorium.control.models import (
    EXPIRED,
    FAILED,
    FINAL_STATUSES,
    OPEN_STATUSES,
    QUEUED,
    SENT,
    SUCCEEDED,
    Command,
    DeviceState,
)
from sensorium.db import dialect_insert, epoch_ms
from sensorium.errors import Conflict, NotFound, PreconditionFailed, RateLimited
from sensorium.live.bus import Event
from sensorium.protocol import (
    CommandMessage,
    CommandResult,
    StateDocument,
    merge_patch,
    validate_state,
)

# Commands handed to a long-polling device at once.
POLL_BATCH = 10

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


_last_id = 0


def new_command_id(now_ms: int | None = None) -> str:
    """A command id: "c_" and a ULID in lower case (48 bits of milliseconds, 80 random
    bits). Ids sort by creation time, so they double as the history cursor and the
    delivery order; within one millisecond a process counts up from its last id (ULID's
    monotonic variant)."""
    global _last_id
    value = ((now_ms if now_ms is not None else epoch_ms()) << 80) | secrets.randbits(80)
    if value >> 80 <= _last_id >> 80:
        value = _last_id + 1
    _last_id = value
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "c_" + "".join(reversed(chars))


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    # Always with milliseconds, so the strings sort like the times they stand for.
    stamp = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


# --- state ---------------------------------------------------------------------------------


def empty_state(device_id: str) -> DeviceState:
    return DeviceState(
        device_id=device_id,
        desired={},
        desired_version=0,
        reported={},
        reported_version=0,
        controls=[],
        revision=0,
    )


async def read_state(session: AsyncSession, device_id: str) -> DeviceState:
    row = await session.get(DeviceState, device_id, populate_existing=True)
    return row if row is not None else empty_state(device_id)


async def _locked_state(session: AsyncSession, device_id: str) -> DeviceState:
    """The device's state row, created if missing, locked until the transaction ends."""
    blank = empty_state(device_id)
    await session.execute(
        dialect_insert(session, DeviceState)
        .values(
            device_id=device_id,
            desired=blank.desired,
            desired_version=0,
            reported=blank.reported,
            reported_version=0,
            controls=blank.controls,
            revision=0,
        )
        .on_conflict_do_nothing(index_elements=["device_id"])
    )
    row = await session.get(DeviceState, device_id, with_for_update=True, populate_existing=True)
    assert row is not None
    return row


def _same(a: Any, b: Any) -> bool:
    # JSON true and 1 are different values to a device, though equal in Python.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def pending_keys(row: DeviceState) -> list[str]:
    """Desired keys the device has not (yet) reported with the desired value."""
    reported = row.reported or {}
    return sorted(k for k, v in (row.desired or {}).items() if not _same(reported.get(k), v))


def state_etag(row: DeviceState) -> str:
    return f'"{row.revision}"'


def state_public(row: DeviceState) -> dict[str, Any]:
    return {
        "device_id": row.device_id,
        "desired": row.desired or {},
        "desired_version": row.desired_version or 0,
        "desired_at": _iso(row.desired_ms),
        "reported": row.reported or {},
        "reported_version": row.reported_version or 0,
        "reported_at": _iso(row.reported_ms),
        "pending": pending_keys(row),
        "controls": row.controls or [],
    }


def desired_document(row: DeviceState) -> StateDocument:
    return StateDocument(row.desired_version or 0, dict(row.desired or {}))


def state_event(row: DeviceState, *, now_ms: int) -> Event:
    return Event("state", row.device_id, {"state": state_public(row)}, now_ms)


async def set_desired(
    session: AsyncSession,
    *,
    device_id: str,
    patch: object,
    if_match: int | None = None,
    now_ms: int | None = None,
) -> tuple[DeviceState, bool]:
    """Apply a merge patch to the desired state; the version increases when it changed.
    Returns the row and whether anything changed."""
    patch = validate_state(patch, field="body")
    row = await _locked_state(session, device_id)
    if if_match is not None and if_match != row.desired_version:
        raise PreconditionFailed(
            f"the desired state is at version {row.desired_version}, not {if_match}",
            field="if-match",
        )
    desired = merge_patch(row.desired or {}, patch)
    validate_state(desired, field="body")
    if desired == row.desired and all(_same(desired[k], row.desired[k]) for k in desired):
        return row, False
    row.desired = desired
    row.desired_version = (row.desired_version or 0) + 1
    row.desired_ms = now_ms if now_ms is not None else epoch_ms()
    row.revision = (row.revision or 0) + 1
    await session.flush()
    return row, True


async def record_reported(
    session: AsyncSession, *, device_id: str, report: StateDocument, now_ms: int | None = None
) -> DeviceState:
    """Merge what the device says it applied into its reported state."""
    row = await _locked_state(session, device_id)
    reported = merge_patch(row.reported or {}, report.state)
    validate_state(reported, field="state")
    row.reported = reported
    row.reported_version = report.version
    row.reported_ms = now_ms if now_ms is not None else epoch_ms()
    row.revision = (row.revision or 0) + 1
    await session.flush()
    return row


async def set_controls(
    session: AsyncSession, *, device_id: str, controls: list[dict[str, Any]]
) -> DeviceState:
    row = await _locked_state(session, device_id)
    row.controls = controls
    row.revision = (row.revision or 0) + 1
    await session.flush()
    return row


# --- commands ------------------------------------------------------------------------------


def command_public(command: Command) -> dict[str, Any]:
    return {
        "id": command.id,
        "device_id": command.device_id,
        "name": command.name,
        "params": command.params or {},
        "status": command.status,
        "created_at": _iso(command.created_ms),
        "sent_at": _iso(command.sent_ms),
        "done_at": _iso(command.done_ms),
        "expires_at": _iso(command.expires_ms),
        "result": command.result,
        "error": command.error,
    }


def command_message(command: Command) -> CommandMessage:
    return CommandMessage(command.id, command.name, command.params or {}, command.expires_ms)


def command_event(command: Command, *, now_ms: int) -> Event:
    return Event("command", command.device_id, {"command": command_public(command)}, now_ms)


async def create_command(
    session: AsyncSession,
    *,
    device_id: str,
    name: str,
    params: dict[str, Any],
    timeout_s: int,
    max_pending: int,
    now_ms: int | None = None,
) -> Command:
    now_ms = now_ms if now_ms is not None else epoch_ms()
    pending, first_expiry = (
        await session.execute(
            select(func.count(), func.min(Command.expires_ms)).where(
                Command.device_id == device_id,
                Command.status.in_(OPEN_STATUSES),
                Command.expires_ms > now_ms,
            )
        )
    ).one()
    if pending >= max_pending:
        raise RateLimited(
            f"{pending} commands are still waiting for this device (at most {max_pending})",
            retry_after=(int(first_expiry) - now_ms) // 1000 + 1,
        )
    command = Command(
        id=new_command_id(now_ms),
        device_id=device_id,
        name=name,
        params=params,
        status=QUEUED,
        created_ms=now_ms,
        expires_ms=now_ms + timeout_s * 1000,
    )
    session.add(command)
    await session.flush()
    return command


async def get_command(session: AsyncSession, *, device_id: str, command_id: str) -> Command:
    command = await session.get(Command, command_id, populate_existing=True)
    if command is None or command.device_id != device_id:
        raise NotFound(f"command {command_id[:40]} not found", code="command_not_found")
    return command


async def list_commands(
    session: AsyncSession,
    *,
    device_id: str,
    limit: int,
    before: str | None = None,
    status: str | None = None,
) -> list[Command]:
    """Newest first; `before` is the id of the last command of the previous page."""
    query = select(Command).where(Command.device_id == device_id)
    if before is not None:
        query = query.where(Command.id < before)
    if status is not None:
        query = query.where(Command.status == status)
    return list(await session.scalars(query.order_by(Command.id.desc()).limit(limit)))


async def _transition(session: AsyncSession, stmt: Any) -> list[Command]:
    rows = await session.scalars(
        stmt.returning(Command).execution_options(synchronize_session=False, populate_existing=True)
    )
    return sorted(rows, key=lambda c: c.id)


async def claim_queued(
    session: AsyncSession, *, device_id: str, now_ms: int | None = None, limit: int = POLL_BATCH
) -> list[Command]:
    """Mark the device's oldest queued, unexpired commands sent; they are the caller's to
    deliver, in the returned (creation) order."""
    now_ms = now_ms if now_ms is not None else epoch_ms()
    oldest = (
        select(Command.id)
        .where(
            Command.device_id == device_id, Command.status == QUEUED, Command.expires_ms > now_ms
        )
        .order_by(Command.id)
        .limit(limit)
        .scalar_subquery()
    )
    return await _transition(
        session,
        update(Command)
        .where(Command.id.in_(oldest), Command.status == QUEUED)
        .values(status=SENT, sent_ms=now_ms),
    )


async def unclaim(session: AsyncSession, *, command_ids: list[str]) -> list[Command]:
    """Back to queued: their delivery failed before they left this server."""
    if not command_ids:
        return []
    return await _transition(
        session,
        update(Command)
        .where(Command.id.in_(command_ids), Command.status == SENT)
        .values(status=QUEUED, sent_ms=None),
    )


async def record_result(
    session: AsyncSession,
    *,
    device_id: str,
    command_id: str,
    result: CommandResult,
    now_ms: int | None = None,
) -> Command:
    """The device's answer finishes the command: succeeded (status ok) or failed."""
    now_ms = now_ms if now_ms is not None else epoch_ms()
    done = await _transition(
        session,
        update(Command)
        .where(
            Command.id == command_id,
            Command.device_id == device_id,
            Command.status.in_(OPEN_STATUSES),
            Command.expires_ms > now_ms,
        )
        .values(
            status=SUCCEEDED if result.status == "ok" else FAILED,
            done_ms=now_ms,
            result=result.result,
            error=result.error,
        ),
    )
    if done:
        return done[0]
    command = await get_command(session, device_id=device_id, command_id=command_id)
    if command.status in FINAL_STATUSES:
        raise Conflict(f"command {command.id} is already {command.status}", code="command_finished")
    raise Conflict(f"command {command.id} has expired", code="command_expired")


async def expire_due(session: AsyncSession, *, now_ms: int | None = None) -> list[Command]:
    """Commands whose time ran out before they finished become expired (the scheduler)."""
    now_ms = now_ms if now_ms is not None else epoch_ms()
    return await _transition(
        session,
        update(Command)
        .where(Command.status.in_(OPEN_STATUSES), Command.expires_ms <= now_ms)
        .values(status=EXPIRED, done_ms=now_ms),
    )
