"""Over-the-air updates over HTTP: the firmware registry, rollouts, and the device's side
(its image download with Range/ETag, and its progress reports)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

import anyio
from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from sensorium.api.body import read_json_body
from sensorium.api.deps import BearerDep, ContextDep, CurrentDevice, CurrentUser, SessionDep
from sensorium.api.errors import error_response
from sensorium.devices import service as devices
from sensorium.errors import Forbidden, NotAuthenticated, NotFound
from sensorium.ota import live, service
from sensorium.ota.delivery import deliver
from sensorium.ota.models import Firmware, Rollout
from sensorium.ota.schemas import (
    DeviceJob,
    DeviceJobList,
    FirmwareList,
    FirmwarePublic,
    JobPublic,
    ProgressAccepted,
    PublicKey,
    RolloutCreate,
    RolloutDetail,
    RolloutList,
    RolloutPublic,
    RolloutState,
)
from sensorium.ota.service import DeviceFilter
from sensorium.ota.upload import receive_upload
from sensorium.protocol.ota import parse_progress
from sensorium.users.security import hash_token

router = APIRouter(tags=["firmware updates"])
CHUNK_BYTES = 64 * 1024


# --- serving an image ----------------------------------------------------------------------


class _Unsatisfiable(Exception):
    pass


def _single_range(header: str, size: int) -> tuple[int, int] | None:
    """(start, end exclusive) of a one-range `bytes=` header; None to ignore it (anything
    else, as RFC 9110 allows). Raises _Unsatisfiable for a range beyond the image."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    first, last = first.strip(), last.strip()
    if not first:  # a suffix: the last N bytes
        if not last.isdigit():
            return None
        if int(last) == 0:
            raise _Unsatisfiable
        return max(0, size - int(last)), size
    if not first.isdigit() or (last and not last.isdigit()):
        return None
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    if last and int(last) < start:
        return None
    if start >= size:
        raise _Unsatisfiable
    return start, end


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = {t.strip().removeprefix("W/") for t in header.split(",")}
    return etag in tags or "*" in tags


async def _read(path: Path, start: int, end: int) -> AsyncIterator[bytes]:
    async with await anyio.open_file(path, "rb") as file:
        await file.seek(start)
        remaining = end - start
        while remaining > 0:
            chunk = await file.read(min(CHUNK_BYTES, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk


def image_response(request: Request, firmware: Firmware, directory: Path) -> Response:
    """The image, streamed from disk in 64 KiB pieces. The ETag is its SHA-256; `Range`
    (one range; `If-Range` with the ETag) resumes a broken download."""
    path = directory / firmware.blob
    etag = f'"{firmware.sha256}"'
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, no-cache",
        "Content-Disposition": f'attachment; filename="firmware-{firmware.version}.bin"',
    }
    if _etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    if not path.is_file():
        raise NotFound("the image file is missing on the server", code="image_missing")
    size = firmware.size
    start, end, code = 0, size, status.HTTP_200_OK
    range_header = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if range_header and (if_range is None or if_range.strip() == etag):
        try:
            wanted = _single_range(range_header, size)
        except _Unsatisfiable:
            return error_response(
                416,
                "range_not_satisfiable",
                f"the image has {size} bytes",
                "range",
                {"Content-Range": f"bytes */{size}", **headers},
            )
        if wanted is not None:
            start, end = wanted
            code = status.HTTP_206_PARTIAL_CONTENT
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    headers["Content-Length"] = str(end - start)
    return StreamingResponse(
        _read(path, start, end),
        status_code=code,
        media_type="application/octet-stream",
        headers=headers,
    )


# --- firmware registry ---------------------------------------------------------------------


def _firmware(firmware: Firmware) -> FirmwarePublic:
    return FirmwarePublic.model_validate(service.firmware_public(firmware))


@router.get("/firmware/public-key")
async def public_key(_user: CurrentUser, ctx: ContextDep) -> PublicKey:
    """The key devices check image signatures with (flash `public_key` into them)."""
    keys = ctx.ota_keys
    return PublicKey(
        public_key=keys.public_key_b64, pem=keys.public_key_pem, can_sign=keys.can_sign
    )


@router.post(
    "/firmware",
    status_code=status.HTTP_201_CREATED,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file", "title", "version"],
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "title": {"type": "string", "maxLength": service.MAX_TITLE},
                            "version": {"type": "string", "examples": ["1.3.0"]},
                            "notes": {"type": "string"},
                            "signature": {
                                "type": "string",
                                "description": "Base64 Ed25519 signature over the SHA-256 "
                                "digest; without it the server signs",
                            },
                        },
                    }
                }
            },
        }
    },
)
async def upload_firmware(
    request: Request, user: CurrentUser, session: SessionDep, ctx: ContextDep
) -> FirmwarePublic:
    """Upload an image (multipart: `file`, `title`, `version` (semver), `notes`, and
    optionally a detached `signature`). Streamed to disk and hashed; at most
    SENSORIUM_OTA_MAX_IMAGE_BYTES."""
    directory = service.firmware_dir(ctx.settings)
    upload = await receive_upload(
        request.stream(),
        content_type=request.headers.get("content-type", ""),
        content_length=request.headers.get("content-length"),
        directory=directory,
        max_bytes=ctx.settings.ota_max_image_bytes,
    )
    stored: Path | None = None
    try:
        firmware = await service.add_firmware(
            session, owner=user, upload=upload, keys=ctx.ota_keys, directory=directory
        )
        stored = directory / firmware.blob
        await session.commit()
    except BaseException:
        upload.discard()
        if stored is not None:
            stored.unlink(missing_ok=True)
        raise
    return _firmware(firmware)


@router.get("/firmware")
async def list_firmware(user: CurrentUser, session: SessionDep) -> FirmwareList:
    """Your images, newest first."""
    return FirmwareList(
        items=[_firmware(f) for f in await service.list_firmware(session, owner=user)]
    )


@router.get("/firmware/{firmware_id}")
async def get_firmware(firmware_id: int, user: CurrentUser, session: SessionDep) -> FirmwarePublic:
    return _firmware(await service.get_firmware(session, owner=user, firmware_id=firmware_id))


@router.get(
    "/firmware/{firmware_id}/image",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}, 206: {}, 304: {}, 416: {}},
)
async def download_firmware(
    firmware_id: int, request: Request, user: CurrentUser, session: SessionDep, ctx: ContextDep
) -> Response:
    """Download your image (Range and ETag supported)."""
    firmware = await service.get_firmware(session, owner=user, firmware_id=firmware_id)
    return image_response(request, firmware, service.firmware_dir(ctx.settings))


@router.delete("/firmware/{firmware_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_firmware(
    firmware_id: int, user: CurrentUser, session: SessionDep, ctx: ContextDep
) -> Response:
    """Delete an image; `409` while a running or paused rollout uses it."""
    blob = await service.delete_firmware(session, owner=user, firmware_id=firmware_id)
    await session.commit()
    path = service.firmware_dir(ctx.settings) / blob
    await asyncio.to_thread(path.unlink, missing_ok=True)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- rollouts ------------------------------------------------------------------------------


async def _rollout_public(session: SessionDep, rollout: Rollout) -> RolloutPublic:
    by_state = await service.counts(session, rollout.id)
    return RolloutPublic.model_validate(service.rollout_public(rollout, by_state))


async def _rollout_detail(session: SessionDep, rollout: Rollout) -> RolloutDetail:
    by_state = await service.counts(session, rollout.id)
    jobs = await service.rollout_jobs(session, rollout.id)
    return RolloutDetail.model_validate(
        {
            **service.rollout_public(rollout, by_state),
            "jobs": [service.job_public(j) for j in jobs],
        }
    )


@router.post("/rollouts", status_code=status.HTTP_201_CREATED)
async def create_rollout(
    body: RolloutCreate, user: CurrentUser, session: SessionDep, ctx: ContextDep
) -> RolloutDetail:
    """Roll an image out; the first batch is assigned at once."""
    device_filter = DeviceFilter(**body.filter.model_dump()) if body.filter is not None else None
    rollout, changed = await service.create_rollout(
        session,
        owner=user,
        firmware_id=body.firmware_id,
        devices=body.devices,
        device_filter=device_filter,
        strategy=body.strategy,
        batch_size=body.batch_size,
        batch_percent=body.batch_percent,
        batch_wait_s=body.batch_wait_s,
        abort_failure_percent=body.abort_failure_percent,
        device_timeout_s=body.device_timeout_s or ctx.settings.ota_device_timeout_s,
    )
    detail = await _rollout_detail(session, rollout)
    await session.commit()
    await deliver(ctx.control, ctx.bus, changed)
    return detail


@router.get("/rollouts")
async def list_rollouts(
    user: CurrentUser,
    session: SessionDep,
    state: Annotated[RolloutState | None, Query()] = None,
) -> RolloutList:
    rollouts = await service.list_rollouts(session, owner=user, state=state)
    return RolloutList(items=[await _rollout_public(session, r) for r in rollouts])


@router.get("/rollouts/events", response_class=StreamingResponse)
async def rollouts_events(
    user: CurrentUser, session: SessionDep, ctx: ContextDep
) -> StreamingResponse:
    """Server-Sent Events: `rollouts` (`{"items": [...]}`, as GET /rollouts) first, then a
    `rollout` event (one rollout with its counts) shortly after its devices' updates
    moved."""
    devices_ = await live.owned_devices(session, owner_id=user.id)
    await session.close()  # do not hold a connection for the life of the stream
    return _event_stream(
        live.rollouts_stream(ctx.sessions, ctx.bus, owner_id=user.id, devices=devices_)
    )


@router.get("/rollouts/{rollout_id}/events", response_class=StreamingResponse)
async def rollout_events(
    rollout_id: int, user: CurrentUser, session: SessionDep, ctx: ContextDep
) -> StreamingResponse:
    """Server-Sent Events of one rollout: `rollout` (as GET /rollouts/{id}, every job)
    first and whenever the rollout itself changes; a `job` event (`{"job": {...}}`) for
    each change of a device's job, then `summary` (the rollout's counts, without jobs)."""
    rollout = await service.get_rollout(session, owner=user, rollout_id=rollout_id)
    devices_ = await live.rollout_devices(session, rollout.id)
    await session.close()
    return _event_stream(
        live.rollout_stream(
            ctx.sessions, ctx.bus, owner_id=user.id, rollout_id=rollout.id, devices=devices_
        )
    )


def _event_stream(body: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/rollouts/{rollout_id}")
async def get_rollout(rollout_id: int, user: CurrentUser, session: SessionDep) -> RolloutDetail:
    """The rollout with every device's job: state, progress, error and history."""
    rollout = await service.get_rollout(session, owner=user, rollout_id=rollout_id)
    return await _rollout_detail(session, rollout)


@router.post("/rollouts/{rollout_id}/pause")
async def pause_rollout(rollout_id: int, user: CurrentUser, session: SessionDep) -> RolloutPublic:
    """No further batches start; devices already updating carry on."""
    rollout = await service.pause(session, owner=user, rollout_id=rollout_id)
    return await _rollout_public(session, rollout)


@router.post("/rollouts/{rollout_id}/resume")
async def resume_rollout(rollout_id: int, user: CurrentUser, session: SessionDep) -> RolloutPublic:
    """Run again; the abort threshold counts only what finishes from now on."""
    rollout = await service.resume(session, owner=user, rollout_id=rollout_id)
    return await _rollout_public(session, rollout)


@router.post("/rollouts/{rollout_id}/cancel")
async def cancel_rollout(
    rollout_id: int, user: CurrentUser, session: SessionDep, ctx: ContextDep
) -> RolloutPublic:
    """Stop: unfinished devices are CANCELLED and their assignments withdrawn."""
    rollout, changed = await service.cancel(session, owner=user, rollout_id=rollout_id)
    public = await _rollout_public(session, rollout)
    await session.commit()
    await deliver(ctx.control, ctx.bus, changed)
    return public


@router.post("/rollouts/{rollout_id}/devices/{device_id}/retry")
async def retry_device(
    rollout_id: int, device_id: str, user: CurrentUser, session: SessionDep, ctx: ContextDep
) -> JobPublic:
    """Assign a FAILED device's update again."""
    _rollout, job, changed = await service.retry(
        session, owner=user, rollout_id=rollout_id, device_id=device_id
    )
    public = JobPublic.model_validate(service.job_public(job))
    await session.commit()
    await deliver(ctx.control, ctx.bus, changed)
    return public


@router.get("/devices/{device_id}/ota/jobs")
async def device_firmware_history(
    device_id: str, user: CurrentUser, session: SessionDep
) -> DeviceJobList:
    """The device's firmware history: its update jobs (newest first, at most 50), each
    with the version its rollout installs."""
    device = await devices.get_device(session, owner=user, device_id=device_id)
    rows = await service.device_jobs(session, device_id=device.id)
    return DeviceJobList(
        items=[DeviceJob.model_validate(service.device_job_public(j, r)) for j, r in rows]
    )


# --- the device's side ---------------------------------------------------------------------


async def _token_device(request: Request, ctx: ContextDep, credentials: BearerDep) -> str:
    """The device a bearer device token belongs to."""
    if credentials is None or not credentials.credentials:
        raise NotAuthenticated("missing bearer token", code="missing_token")
    token_hash = hash_token(credentials.credentials)
    device_id = ctx.device_tokens.get(token_hash)
    if device_id is None:
        async with ctx.sessions() as session:
            identity = await devices.identify_device(session, token=credentials.credentials)
        if identity is None:
            raise NotAuthenticated("invalid or revoked device token", code="invalid_token")
        ctx.device_tokens.put(token_hash, identity)
        device_id = identity.device_id
    request.state.device_id = device_id
    await ctx.device_limiter.consume(device_id, "requests from this device")
    return device_id


@router.get(
    "/firmware/jobs/{job}/image",
    tags=["device API"],
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}, 206: {}, 304: {}, 416: {}},
)
async def download_assigned(
    job: str, request: Request, ctx: ContextDep, credentials: BearerDep
) -> Response:
    """A device downloads the image of its assignment (the `url` in it), with its device
    token. `Range` resumes a broken download; the ETag is the SHA-256."""
    device_id = await _token_device(request, ctx, credentials)
    async with ctx.sessions() as session:
        owner = await service.job_owner_device(session, job)
        if owner is not None and owner != device_id:
            raise Forbidden("this assignment belongs to another device", code="wrong_device")
        firmware = await service.image_for_job(session, device_id=device_id, token=job)
    return image_response(request, firmware, service.firmware_dir(ctx.settings))


@router.post("/devices/{device_id}/ota/progress", tags=["device API"])
async def post_progress(
    device: CurrentDevice, request: Request, session: SessionDep, ctx: ContextDep
) -> ProgressAccepted:
    """A device reports its update: `{"job": "j_…", "state": "DOWNLOADING", "progress":
    0.42}` (or FAILED with `error`), as on MQTT `devices/{id}/ota/progress`."""
    report = parse_progress(await read_json_body(request))
    job, changed = await service.record_progress(session, device_id=device, report=report)
    state = job.state
    await session.commit()
    await deliver(ctx.control, ctx.bus, changed)
    return ProgressAccepted.model_validate({"state": state})
