"""The firmware registry, rollouts and the per-device update state machine, on the database.

A job's state moves only forward through PROTOCOL.md's states; the device's own word
"UPDATED" is not enough: a job is UPDATED when the device's status later carries the
target version, and FAILED ("rolled back") when, after UPDATING, it comes back with
another. Batches of a gradual rollout are started by the scheduler (`advance`).
"""

from __future__ import annotations

import base64
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from sensorium.config import Settings
from sensorium.db import epoch_ms
from sensorium.devices.models import Device
from sensorium.errors import Conflict, Invalid, NotFound
from sensorium.live.bus import Event
from sensorium.ota.models import (
    ACTIVE_ROLLOUT_STATES,
    ASSIGNED,
    CANCELLED,
    COMPLETED,
    DOWNLOADED,
    DOWNLOADING,
    FAILED,
    FINISHED,
    IN_FLIGHT,
    JOB_CANCELLED,
    PAUSED,
    PENDING,
    RUNNING,
    UPDATED,
    UPDATING,
    VERIFIED,
    Firmware,
    OtaJob,
    Rollout,
)
from sensorium.ota.signing import OtaKeys, decode_signature
from sensorium.ota.upload import Upload
from sensorium.protocol import InvalidMac, normalize_mac
from sensorium.protocol.ota import OtaAssignment, OtaProgress, is_semver
from sensorium.users.models import User

MAX_TITLE = 100
MAX_NOTES = 10_000
MAX_HISTORY = 50
UPLOAD_FIELDS = frozenset({"title", "version", "notes", "signature"})
_RANK = {ASSIGNED: 0, DOWNLOADING: 1, DOWNLOADED: 2, VERIFIED: 3, UPDATING: 4}


def firmware_dir(settings: Settings) -> Path:
    return settings.data_dir / "firmware"


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    stamp = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


# --- firmware ------------------------------------------------------------------------------


async def add_firmware(
    session: AsyncSession,
    *,
    owner: User,
    upload: Upload,
    keys: OtaKeys,
    directory: Path,
    now_ms: int | None = None,
) -> Firmware:
    """Register an uploaded image (its file moves into `directory`). The signature is
    either the uploaded one, verified against the configured public key, or made here
    with the signing key. The caller commits, and removes `directory / blob` if that
    fails."""
    fields = upload.fields
    unknown = sorted(set(fields) - UPLOAD_FIELDS)
    if unknown:
        raise Invalid(f"unknown form field '{unknown[0][:64]}'", field=unknown[0][:64])
    title = fields.get("title", "").strip()
    if not title or len(title) > MAX_TITLE:
        raise Invalid(f"'title' must be 1-{MAX_TITLE} characters", field="title")
    version = fields.get("version", "").strip()
    if not is_semver(version):
        raise Invalid(
            "'version' must be a semantic version such as 1.3.0 or 2.0.0-rc.1", field="version"
        )
    notes = fields.get("notes", "")
    if len(notes) > MAX_NOTES:
        raise Invalid(f"'notes' must be at most {MAX_NOTES} characters", field="notes")
    taken = await session.scalar(
        select(Firmware.id).where(Firmware.owner_id == owner.id, Firmware.version == version)
    )
    if taken is not None:
        raise Conflict(
            f"version {version} is already uploaded", field="version", code="duplicate_version"
        )
    digest = bytes.fromhex(upload.sha256)
    given = fields.get("signature", "").strip()
    if given:
        raw = decode_signature(given)
        if raw is None:
            raise Invalid(
                "'signature' must be a base64 Ed25519 signature (64 bytes)", field="signature"
            )
        if not keys.verify(digest, raw):
            raise Invalid(
                "the signature does not match this image and the configured public key",
                field="signature",
                code="bad_signature",
            )
        signature, signed_by = base64.b64encode(raw).decode(), "uploaded"
    elif keys.can_sign:
        signature, signed_by = keys.sign(digest), "server"
    else:
        raise Invalid(
            "this server has no signing key: upload a detached signature",
            field="signature",
            code="signature_required",
        )
    blob = f"{upload.sha256[:16]}-{secrets.token_hex(8)}.bin"
    firmware = Firmware(
        owner_id=owner.id,
        title=title,
        version=version,
        notes=notes,
        size=upload.size,
        sha256=upload.sha256,
        signature=signature,
        signed_by=signed_by,
        blob=blob,
        created_ms=now_ms if now_ms is not None else epoch_ms(),
    )
    session.add(firmware)
    try:
        await session.flush()
    except IntegrityError:
        raise Conflict(
            f"version {version} is already uploaded", field="version", code="duplicate_version"
        ) from None
    upload.path.replace(directory / blob)
    return firmware


def _firmware_not_found(firmware_id: int) -> NotFound:
    return NotFound(f"firmware {firmware_id} not found", code="firmware_not_found")


async def get_firmware(session: AsyncSession, *, owner: User, firmware_id: int) -> Firmware:
    firmware = await session.get(Firmware, firmware_id)
    if firmware is None or firmware.owner_id != owner.id:
        raise _firmware_not_found(firmware_id)
    return firmware


async def list_firmware(session: AsyncSession, *, owner: User) -> list[Firmware]:
    query = select(Firmware).where(Firmware.owner_id == owner.id).order_by(Firmware.id.desc())
    return list(await session.scalars(query))


async def delete_firmware(session: AsyncSession, *, owner: User, firmware_id: int) -> str:
    """Delete an image no active rollout uses; returns its file name (removed by the
    caller after the commit). Finished rollouts keep their history without it."""
    firmware = await get_firmware(session, owner=owner, firmware_id=firmware_id)
    active = await session.scalar(
        select(Rollout.id)
        .where(Rollout.firmware_id == firmware.id, Rollout.state.in_(ACTIVE_ROLLOUT_STATES))
        .limit(1)
    )
    if active is not None:
        raise Conflict(
            f"rollout {active} is using this image: cancel it first",
            field="firmware_id",
            code="firmware_in_use",
        )
    blob = firmware.blob
    await session.delete(firmware)
    await session.flush()
    return blob


# --- rollouts ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceFilter:
    """All of the owner's devices matching every given field."""

    name_contains: str | None = None
    location: str | None = None
    firmware_version: str | None = None


@dataclass(slots=True)
class Changed:
    """What a change did beyond the database: assignments to publish (or clear) and
    jobs to announce on the live bus."""

    devices: set[str]
    jobs: list[OtaJob]

    @classmethod
    def none(cls) -> Changed:
        return cls(set(), [])

    def add(self, job: OtaJob) -> None:
        self.devices.add(job.device_id)
        self.jobs.append(job)


def _rollout_not_found(rollout_id: int) -> NotFound:
    return NotFound(f"rollout {rollout_id} not found", code="rollout_not_found")


async def _targets(
    session: AsyncSession,
    *,
    owner: User,
    devices: Sequence[str] | None,
    device_filter: DeviceFilter | None,
) -> list[Device]:
    if devices is not None:
        found: list[Device] = []
        seen: set[str] = set()
        for index, given in enumerate(devices):
            field = f"devices.{index}"
            try:
                device_id = normalize_mac(given)
            except InvalidMac as exc:
                raise Invalid(exc.message, field=field) from None
            if device_id in seen:
                raise Invalid(f"device {device_id} is listed twice", field=field)
            seen.add(device_id)
            device = await session.get(Device, device_id)
            if device is None or device.owner_id != owner.id:
                raise NotFound(
                    f"device {device_id} not found", field=field, code="device_not_found"
                )
            found.append(device)
        return found
    assert device_filter is not None
    query = select(Device).where(Device.owner_id == owner.id)
    if device_filter.name_contains:
        pattern = device_filter.name_contains.replace("\\", "\\\\").replace("%", "\\%")
        pattern = pattern.replace("_", "\\_")
        query = query.where(Device.name.ilike(f"%{pattern}%", escape="\\"))
    if device_filter.location is not None:
        query = query.where(Device.location == device_filter.location)
    if device_filter.firmware_version is not None:
        query = query.where(Device.firmware_version == device_filter.firmware_version)
    return list(await session.scalars(query.order_by(Device.id)))


async def _busy(session: AsyncSession, device_ids: Sequence[str]) -> str | None:
    """A device among these with an unfinished job in an active rollout."""
    if not device_ids:
        return None
    return await session.scalar(
        select(OtaJob.device_id)
        .join(Rollout, Rollout.id == OtaJob.rollout_id)
        .where(
            OtaJob.device_id.in_(device_ids),
            OtaJob.state.in_((PENDING, *IN_FLIGHT)),
            Rollout.state.in_(ACTIVE_ROLLOUT_STATES),
        )
        .limit(1)
    )


async def create_rollout(
    session: AsyncSession,
    *,
    owner: User,
    firmware_id: int,
    devices: Sequence[str] | None,
    device_filter: DeviceFilter | None,
    strategy: str,
    batch_size: int | None,
    batch_percent: float | None,
    batch_wait_s: int,
    abort_failure_percent: float,
    device_timeout_s: int,
    now_ms: int | None = None,
) -> tuple[Rollout, Changed]:
    """A rollout of the owner's image to the owner's devices; its first batch is assigned
    at once. Devices already running the version are left out."""
    now_ms = now_ms if now_ms is not None else epoch_ms()
    if (devices is None) == (device_filter is None):
        raise Invalid("give either 'devices' or 'filter'", field="devices")
    firmware = await get_firmware(session, owner=owner, firmware_id=firmware_id)
    targets = await _targets(session, owner=owner, devices=devices, device_filter=device_filter)
    targets = [d for d in targets if d.firmware_version != firmware.version]
    field = "devices" if devices is not None else "filter"
    if not targets:
        raise Invalid(
            f"no device to update: none matches, or all run {firmware.version} already",
            field=field,
            code="no_devices",
        )
    busy = await _busy(session, [d.id for d in targets])
    if busy is not None:
        raise Conflict(
            f"device {busy} is already being updated by another rollout",
            field=field,
            code="device_busy",
        )
    total = len(targets)
    if strategy == "all":
        size = total
    elif batch_size is not None and batch_percent is None:
        size = batch_size
    elif batch_percent is not None and batch_size is None:
        size = max(1, math.ceil(total * batch_percent / 100))
    else:
        raise Invalid(
            "a gradual rollout needs either 'batch_size' or 'batch_percent'", field="batch_size"
        )
    target: dict[str, Any] = (
        {"devices": [d.id for d in targets]}
        if devices is not None
        else {"filter": {k: v for k, v in vars_of(device_filter).items() if v is not None}}
    )
    rollout = Rollout(
        owner_id=owner.id,
        firmware_id=firmware.id,
        version=firmware.version,
        target=target,
        strategy=strategy,
        batch_size=size,
        batch_wait_s=batch_wait_s,
        abort_failure_percent=abort_failure_percent,
        device_timeout_s=device_timeout_s,
        state=RUNNING,
        current_batch=0,
        baseline_finished=0,
        baseline_failed=0,
        created_ms=now_ms,
        updated_ms=now_ms,
    )
    session.add(rollout)
    await session.flush()
    for index, device in enumerate(targets):
        session.add(
            OtaJob(
                rollout_id=rollout.id,
                device_id=device.id,
                batch=index // size + 1,
                state=PENDING,
                attempts=0,
                updated_ms=now_ms,
                history=[],
            )
        )
    await session.flush()
    changed = Changed.none()
    await _start_batch(session, rollout, 1, now_ms=now_ms, changed=changed)
    return rollout, changed


def vars_of(device_filter: DeviceFilter | None) -> dict[str, Any]:
    if device_filter is None:
        return {}
    return {
        "name_contains": device_filter.name_contains,
        "location": device_filter.location,
        "firmware_version": device_filter.firmware_version,
    }


def _note(job: OtaJob, now_ms: int, **entry: Any) -> None:
    history = [*(job.history or []), {"state": job.state, "at_ms": now_ms, **entry}]
    job.history = history[-MAX_HISTORY:]
    job.updated_ms = now_ms


def _assign(job: OtaJob, rollout: Rollout, device: Device | None, *, now_ms: int) -> None:
    job.token = "j_" + secrets.token_urlsafe(18)
    job.state = ASSIGNED
    job.progress = None
    job.error = None
    job.attempts = (job.attempts or 0) + 1
    job.assigned_ms = now_ms
    job.finished_ms = None
    job.deadline_ms = now_ms + rollout.device_timeout_s * 1000
    job.from_version = device.firmware_version if device is not None else None
    _note(job, now_ms, attempt=job.attempts)


async def _start_batch(
    session: AsyncSession, rollout: Rollout, batch: int, *, now_ms: int, changed: Changed
) -> None:
    rows = await session.execute(
        select(OtaJob, Device)
        .join(Device, Device.id == OtaJob.device_id)
        .where(OtaJob.rollout_id == rollout.id, OtaJob.batch == batch, OtaJob.state == PENDING)
        .order_by(OtaJob.id)
    )
    for job, device in rows:
        _assign(job, rollout, device, now_ms=now_ms)
        changed.add(job)
    rollout.current_batch = batch
    rollout.next_batch_ms = None
    rollout.updated_ms = now_ms
    await session.flush()


async def get_rollout(session: AsyncSession, *, owner: User, rollout_id: int) -> Rollout:
    rollout = await session.get(Rollout, rollout_id, populate_existing=True)
    if rollout is None or rollout.owner_id != owner.id:
        raise _rollout_not_found(rollout_id)
    return rollout


async def _locked_rollout(session: AsyncSession, *, owner: User, rollout_id: int) -> Rollout:
    rollout = await session.get(Rollout, rollout_id, with_for_update=True, populate_existing=True)
    if rollout is None or rollout.owner_id != owner.id:
        raise _rollout_not_found(rollout_id)
    return rollout


async def list_rollouts(
    session: AsyncSession, *, owner: User, state: str | None = None
) -> list[Rollout]:
    query = select(Rollout).where(Rollout.owner_id == owner.id)
    if state is not None:
        query = query.where(Rollout.state == state)
    return list(await session.scalars(query.order_by(Rollout.id.desc())))


async def rollout_jobs(session: AsyncSession, rollout_id: int) -> list[OtaJob]:
    query = select(OtaJob).where(OtaJob.rollout_id == rollout_id).order_by(OtaJob.id)
    return list(await session.scalars(query.execution_options(populate_existing=True)))


async def counts(session: AsyncSession, rollout_id: int) -> dict[str, int]:
    rows = await session.execute(
        select(OtaJob.state, func.count())
        .where(OtaJob.rollout_id == rollout_id)
        .group_by(OtaJob.state)
    )
    return {state: int(n) for state, n in rows}


def failure_percent(rollout: Rollout, by_state: dict[str, int]) -> float | None:
    """Failed / finished (UPDATED or FAILED) since the rollout was last resumed, in %."""
    failed = by_state.get(FAILED, 0) - rollout.baseline_failed
    finished = by_state.get(UPDATED, 0) + by_state.get(FAILED, 0) - rollout.baseline_finished
    if finished <= 0:
        return None
    return 100.0 * max(failed, 0) / finished


async def _reconcile(
    session: AsyncSession, rollout: Rollout, *, now_ms: int, changed: Changed, start: bool
) -> None:
    """Finish a rollout with nothing left (paused or not), apply the abort threshold, and
    (`start`: the scheduler's pass) start the next batch once the current one finished
    and its wait passed."""
    if rollout.state not in ACTIVE_ROLLOUT_STATES:
        return
    by_state = await counts(session, rollout.id)
    unfinished = sum(n for state, n in by_state.items() if state not in FINISHED)
    if unfinished == 0:  # nothing left that a pause could hold back
        rollout.state = COMPLETED
        rollout.pause_reason = None
        rollout.finished_ms = rollout.updated_ms = now_ms
        await session.flush()
        return
    if rollout.state != RUNNING:
        return
    rate = failure_percent(rollout, by_state)
    if rate is not None and rate > rollout.abort_failure_percent:
        rollout.state = PAUSED
        rollout.pause_reason = (
            f"failure rate {rate:.0f} % is above the abort threshold "
            f"{rollout.abort_failure_percent:g} %"
        )
        rollout.updated_ms = now_ms
        await session.flush()
        return
    if any(by_state.get(state, 0) for state in IN_FLIGHT):
        return  # the current batch is still at work
    if rollout.next_batch_ms is None:
        rollout.next_batch_ms = now_ms + rollout.batch_wait_s * 1000
        rollout.updated_ms = now_ms
        await session.flush()
    if start and now_ms >= rollout.next_batch_ms:
        following = await session.scalar(
            select(func.min(OtaJob.batch)).where(
                OtaJob.rollout_id == rollout.id, OtaJob.state == PENDING
            )
        )
        if following is not None:
            await _start_batch(session, rollout, int(following), now_ms=now_ms, changed=changed)


def _finish(
    job: OtaJob, state: str, *, now_ms: int, error: str | None = None, **entry: Any
) -> None:
    job.state = state
    job.error = error
    job.finished_ms = now_ms
    job.deadline_ms = None
    if state == UPDATED:
        job.progress = 1.0
    _note(job, now_ms, **({"error": error} if error else {}), **entry)


async def pause(session: AsyncSession, *, owner: User, rollout_id: int) -> Rollout:
    rollout = await _locked_rollout(session, owner=owner, rollout_id=rollout_id)
    if rollout.state != RUNNING:
        raise Conflict(f"the rollout is {rollout.state}, not running", code="rollout_not_running")
    rollout.state = PAUSED
    rollout.pause_reason = "paused by the user"
    rollout.updated_ms = epoch_ms()
    await session.flush()
    return rollout


async def resume(
    session: AsyncSession, *, owner: User, rollout_id: int, now_ms: int | None = None
) -> Rollout:
    """Run again; the abort threshold then counts only what finishes from now on."""
    now_ms = now_ms if now_ms is not None else epoch_ms()
    rollout = await _locked_rollout(session, owner=owner, rollout_id=rollout_id)
    if rollout.state != PAUSED:
        raise Conflict(f"the rollout is {rollout.state}, not paused", code="rollout_not_paused")
    by_state = await counts(session, rollout.id)
    rollout.state = RUNNING
    rollout.pause_reason = None
    rollout.baseline_failed = by_state.get(FAILED, 0)
    rollout.baseline_finished = by_state.get(FAILED, 0) + by_state.get(UPDATED, 0)
    rollout.updated_ms = now_ms
    await session.flush()
    await _reconcile(session, rollout, now_ms=now_ms, changed=Changed.none(), start=False)
    return rollout


async def cancel(
    session: AsyncSession, *, owner: User, rollout_id: int, now_ms: int | None = None
) -> tuple[Rollout, Changed]:
    """Stop: jobs not finished become CANCELLED and their assignments are withdrawn."""
    now_ms = now_ms if now_ms is not None else epoch_ms()
    rollout = await _locked_rollout(session, owner=owner, rollout_id=rollout_id)
    if rollout.state not in ACTIVE_ROLLOUT_STATES:
        raise Conflict(f"the rollout is already {rollout.state}", code="rollout_finished")
    changed = Changed.none()
    for job in await rollout_jobs(session, rollout.id):
        if job.state in (PENDING, *IN_FLIGHT):
            was_out = job.state != PENDING
            _finish(job, JOB_CANCELLED, now_ms=now_ms)
            if was_out:
                changed.add(job)
    rollout.state = CANCELLED
    rollout.pause_reason = None
    rollout.finished_ms = rollout.updated_ms = now_ms
    await session.flush()
    return rollout, changed


async def retry(
    session: AsyncSession,
    *,
    owner: User,
    rollout_id: int,
    device_id: str,
    now_ms: int | None = None,
) -> tuple[Rollout, OtaJob, Changed]:
    """Assign a FAILED device's update again (a new job id); a completed rollout runs
    again for it."""
    now_ms = now_ms if now_ms is not None else epoch_ms()
    rollout = await _locked_rollout(session, owner=owner, rollout_id=rollout_id)
    try:
        device_id = normalize_mac(device_id)
    except InvalidMac:
        raise NotFound(f"device {device_id[:40]} not found", code="device_not_found") from None
    job = await session.scalar(
        select(OtaJob).where(OtaJob.rollout_id == rollout.id, OtaJob.device_id == device_id)
    )
    if job is None:
        raise NotFound(f"device {device_id} is not in this rollout", code="device_not_found")
    if rollout.state == CANCELLED:
        raise Conflict("the rollout was cancelled", code="rollout_finished")
    if job.state != FAILED:
        raise Conflict(f"the device's update is {job.state}, not FAILED", code="job_not_failed")
    if await _busy(session, [device_id]) is not None:
        raise Conflict("the device is being updated by another rollout", code="device_busy")
    device = await session.get(Device, device_id)
    _assign(job, rollout, device, now_ms=now_ms)
    by_state = await counts(session, rollout.id)
    # The retried failure no longer counts; keep the baselines within the new counts.
    rollout.baseline_failed = min(rollout.baseline_failed, by_state.get(FAILED, 0))
    finished = by_state.get(FAILED, 0) + by_state.get(UPDATED, 0)
    rollout.baseline_finished = min(rollout.baseline_finished, finished)
    if rollout.state == COMPLETED:
        rollout.state = RUNNING
        rollout.finished_ms = None
    rollout.updated_ms = now_ms
    await session.flush()
    changed = Changed.none()
    changed.add(job)
    return rollout, job, changed


# --- the device's side ---------------------------------------------------------------------


async def active_job(session: AsyncSession, device_id: str) -> tuple[OtaJob, Rollout] | None:
    """The device's assignment in force: its in-flight job of an active rollout."""
    row = (
        await session.execute(
            select(OtaJob, Rollout)
            .join(Rollout, Rollout.id == OtaJob.rollout_id)
            .where(
                OtaJob.device_id == device_id,
                OtaJob.state.in_(IN_FLIGHT),
                Rollout.state.in_(ACTIVE_ROLLOUT_STATES),
            )
            .order_by(OtaJob.id.desc())
            .limit(1)
            .execution_options(populate_existing=True)
        )
    ).first()
    return (row[0], row[1]) if row is not None else None


async def devices_updating(session: AsyncSession, device_ids: Sequence[str]) -> set[str]:
    """Which of these devices have an assignment in force (one query for a batch of
    heartbeats, most of which have none)."""
    if not device_ids:
        return set()
    rows = await session.scalars(
        select(OtaJob.device_id)
        .join(Rollout, Rollout.id == OtaJob.rollout_id)
        .where(
            OtaJob.device_id.in_(sorted(set(device_ids))),
            OtaJob.state.in_(IN_FLIGHT),
            Rollout.state.in_(ACTIVE_ROLLOUT_STATES),
        )
        .distinct()
    )
    return set(rows)


def download_url(token: str) -> str:
    return f"/api/v1/firmware/jobs/{token}/image"


async def assignment(session: AsyncSession, device_id: str) -> OtaAssignment | None:
    """What the device is to install now (PROTOCOL.md "OTA"), or None."""
    found = await active_job(session, device_id)
    if found is None:
        return None
    job, rollout = found
    firmware = await session.get(Firmware, rollout.firmware_id) if rollout.firmware_id else None
    if firmware is None or job.token is None:
        return None
    return OtaAssignment(
        job=job.token,
        version=firmware.version,
        size=firmware.size,
        sha256=firmware.sha256,
        signature=firmware.signature,
        url=download_url(job.token),
    )


async def image_for_job(session: AsyncSession, *, device_id: str, token: str) -> Firmware:
    """The image a device downloads for its assignment (its own, in force)."""
    job = await session.scalar(select(OtaJob).where(OtaJob.token == token))
    if job is None or job.device_id != device_id or job.state not in IN_FLIGHT:
        raise NotFound("no such update assignment for this device", code="ota_job_not_found")
    rollout = await session.get(Rollout, job.rollout_id)
    if rollout is None or rollout.state not in ACTIVE_ROLLOUT_STATES or not rollout.firmware_id:
        raise NotFound("no such update assignment for this device", code="ota_job_not_found")
    firmware = await session.get(Firmware, rollout.firmware_id)
    if firmware is None:
        raise NotFound("no such update assignment for this device", code="ota_job_not_found")
    return firmware


async def job_owner_device(session: AsyncSession, token: str) -> str | None:
    return await session.scalar(select(OtaJob.device_id).where(OtaJob.token == token))


async def record_progress(
    session: AsyncSession, *, device_id: str, report: OtaProgress, now_ms: int | None = None
) -> tuple[OtaJob, Changed]:
    """What the device says about its update. A device's UPDATED is noted, but the job
    becomes UPDATED only with the version in its status (`record_version`)."""
    now_ms = now_ms if now_ms is not None else epoch_ms()
    job = await session.scalar(
        select(OtaJob)
        .where(OtaJob.token == report.job, OtaJob.device_id == device_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if job is None:
        raise NotFound(
            f"no update job {report.job} for this device", field="job", code="ota_job_not_found"
        )
    if job.state not in IN_FLIGHT:
        raise Conflict(
            f"the update job is already {job.state}", field="job", code="ota_job_finished"
        )
    changed = Changed.none()
    if report.state == FAILED:
        _finish(job, FAILED, now_ms=now_ms, error=report.error, reported=FAILED)
        changed.add(job)
    else:
        state = UPDATING if report.state == UPDATED else report.state
        progress = 1.0 if report.state in (UPDATED, DOWNLOADED, VERIFIED) else report.progress
        # Forward only; DOWNLOADING again is a device restarting its download.
        if _RANK[state] < _RANK[job.state] and state != DOWNLOADING:
            raise Conflict(
                f"the update job is {job.state}; {report.state} cannot follow",
                field="state",
                code="invalid_transition",
            )
        moved = state != job.state or report.state == UPDATED
        job.state = state
        if progress is not None:
            job.progress = progress
        job.updated_ms = now_ms
        if moved:
            _note(
                job,
                now_ms,
                reported=report.state,
                **({"progress": progress} if progress is not None else {}),
            )
        changed.jobs.append(job)
    await session.flush()
    rollout = await session.get(
        Rollout, job.rollout_id, with_for_update=True, populate_existing=True
    )
    assert rollout is not None
    await _reconcile(session, rollout, now_ms=now_ms, changed=changed, start=False)
    return job, changed


async def record_version(
    session: AsyncSession,
    *,
    device_id: str,
    fw: str | None,
    fresh: bool,
    now_ms: int | None = None,
) -> Changed:
    """A status carried the device's firmware version: the target version proves the
    update (UPDATED); another one after UPDATING means it came back without it (FAILED).
    `fresh` is False for a retained status replayed by the broker, which cannot tell."""
    changed = Changed.none()
    if fw is None:
        return changed
    now_ms = now_ms if now_ms is not None else epoch_ms()
    found = await active_job(session, device_id)
    if found is None:
        return changed
    job, rollout = found
    if fw == rollout.version:
        _finish(job, UPDATED, now_ms=now_ms, fw=fw)
    elif fresh and job.state == UPDATING:
        if fw == job.from_version:
            error = f"rolled back: the device came back with {fw}, not {rollout.version}"
        else:
            error = f"the device came back with {fw}, not {rollout.version}"
        _finish(job, FAILED, now_ms=now_ms, error=error, fw=fw)
    else:
        return changed
    changed.add(job)
    await session.flush()
    locked = await session.get(Rollout, rollout.id, with_for_update=True, populate_existing=True)
    assert locked is not None
    await _reconcile(session, locked, now_ms=now_ms, changed=changed, start=False)
    return changed


async def advance(session: AsyncSession, *, now_ms: int | None = None) -> Changed:
    """The scheduler's pass: overdue jobs fail (timed out), then every running rollout
    is reconciled and may start its next batch."""
    now_ms = now_ms if now_ms is not None else epoch_ms()
    changed = Changed.none()
    overdue = await session.scalars(
        select(OtaJob)
        .where(OtaJob.state.in_(IN_FLIGHT), OtaJob.deadline_ms <= now_ms)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    for job in overdue:
        _finish(job, FAILED, now_ms=now_ms, error=f"timed out in state {job.state}")
        changed.add(job)
    await session.flush()
    running = await session.scalars(
        select(Rollout)
        .where(Rollout.state == RUNNING)
        .order_by(Rollout.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    for rollout in list(running):
        await _reconcile(session, rollout, now_ms=now_ms, changed=changed, start=True)
    return changed


# --- what the dashboard shows ---------------------------------------------------------------


async def device_jobs(
    session: AsyncSession, *, device_id: str, limit: int = 50
) -> list[tuple[OtaJob, Rollout]]:
    """A device's update jobs with their rollouts, newest first: its firmware history."""
    rows = await session.execute(
        select(OtaJob, Rollout)
        .join(Rollout, Rollout.id == OtaJob.rollout_id)
        .where(OtaJob.device_id == device_id)
        .order_by(OtaJob.id.desc())
        .limit(limit)
        .execution_options(populate_existing=True)
    )
    return [(job, rollout) for job, rollout in rows]


async def firmware_usage(session: AsyncSession, *, owner: User) -> dict[int, list[Rollout]]:
    """The owner's rollouts by the image they roll out, newest first."""
    rollouts = await session.scalars(
        select(Rollout)
        .where(Rollout.owner_id == owner.id, Rollout.firmware_id.is_not(None))
        .order_by(Rollout.id.desc())
    )
    usage: dict[int, list[Rollout]] = {}
    for rollout in rollouts:
        assert rollout.firmware_id is not None
        usage.setdefault(rollout.firmware_id, []).append(rollout)
    return usage


# --- public documents ----------------------------------------------------------------------


def firmware_public(firmware: Firmware) -> dict[str, Any]:
    return {
        "id": firmware.id,
        "title": firmware.title,
        "version": firmware.version,
        "notes": firmware.notes,
        "size": firmware.size,
        "sha256": firmware.sha256,
        "signature": firmware.signature,
        "signed_by": firmware.signed_by,
        "created_at": _iso(firmware.created_ms),
    }


def job_public(job: OtaJob) -> dict[str, Any]:
    return {
        "device_id": job.device_id,
        "rollout_id": job.rollout_id,
        "batch": job.batch,
        "job": job.token,
        "state": job.state,
        "progress": job.progress,
        "error": job.error,
        "from_version": job.from_version,
        "attempts": job.attempts,
        "assigned_at": _iso(job.assigned_ms),
        "updated_at": _iso(job.updated_ms),
        "finished_at": _iso(job.finished_ms),
        "deadline_at": _iso(job.deadline_ms),
        "history": [
            {**{k: v for k, v in e.items() if k != "at_ms"}, "at": _iso(e.get("at_ms"))}
            for e in job.history or []
        ],
    }


def rollout_public(rollout: Rollout, by_state: dict[str, int]) -> dict[str, Any]:
    return {
        "id": rollout.id,
        "firmware_id": rollout.firmware_id,
        "version": rollout.version,
        "target": rollout.target,
        "strategy": rollout.strategy,
        "batch_size": rollout.batch_size,
        "batch_wait_s": rollout.batch_wait_s,
        "abort_failure_percent": rollout.abort_failure_percent,
        "device_timeout_s": rollout.device_timeout_s,
        "state": rollout.state,
        "pause_reason": rollout.pause_reason,
        "current_batch": rollout.current_batch,
        "next_batch_at": _iso(rollout.next_batch_ms),
        "failure_percent": failure_percent(rollout, by_state),
        "counts": by_state,
        "created_at": _iso(rollout.created_ms),
        "updated_at": _iso(rollout.updated_ms),
        "finished_at": _iso(rollout.finished_ms),
    }


def device_job_public(job: OtaJob, rollout: Rollout) -> dict[str, Any]:
    """A job in a device's firmware history: with the version and the rollout's state."""
    return {**job_public(job), "version": rollout.version, "rollout_state": rollout.state}


def job_event(job: OtaJob, *, now_ms: int) -> Event:
    return Event("ota", job.device_id, {"job": job_public(job)}, now_ms)
