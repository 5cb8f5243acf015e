"""Dashboard pages. Forms post here (cookie session + CSRF token); the pages' scripts read
data from the JSON API and the live WebSocket with the same cookie."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import orjson
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from sensorium.alerts import engine as alert_engine
from sensorium.alerts import service as alerts
from sensorium.api.context import AppContext
from sensorium.api.deps import CSRF_COOKIE, SESSION_COOKIE, SessionDep, check_csrf
from sensorium.db import epoch_ms
from sensorium.devices import service as devices
from sensorium.devices.models import Device
from sensorium.errors import SensoriumError
from sensorium.ota import service as ota
from sensorium.ota.models import Rollout
from sensorium.telemetry import service as telemetry
from sensorium.users import service as users
from sensorium.users.models import User
from sensorium.web.units import UNITS

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(include_in_schema=False)

FormStr = Annotated[str, Form()]


class LoginRequired(Exception):
    """Raised by pages when there is no valid session: answered with a redirect."""


def _ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


def _secure(request: Request) -> bool:
    return _ctx(request).settings.mode == "production" or request.url.scheme == "https"


async def _user(request: Request, session: Any) -> User:
    token = request.cookies.get(SESSION_COOKIE)
    user = await users.user_for_session(session, token=token) if token else None
    if user is None:
        raise LoginRequired
    return user


def _render(
    request: Request, template: str, status_code: int = 200, **context: Any
) -> HTMLResponse:
    csrf = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
    response = templates.TemplateResponse(
        request, template, {"csrf": csrf, "units": UNITS, **context}, status_code=status_code
    )
    if request.cookies.get(CSRF_COOKIE) != csrf:
        # Readable by our scripts (they echo it in X-CSRF-Token), SameSite=Strict.
        response.set_cookie(
            CSRF_COOKIE, csrf, httponly=False, samesite="strict", secure=_secure(request)
        )
    return response


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


async def _start_session(request: Request, session: Any, user: User) -> RedirectResponse:
    ctx = _ctx(request)
    tokens = await users.issue_tokens(session, auth=ctx.auth, user=user)
    await session.commit()
    response = _redirect("/")
    response.set_cookie(
        SESSION_COOKIE,
        tokens.refresh_token,
        max_age=tokens.refresh_expires_in,
        httponly=True,
        samesite="lax",
        secure=_secure(request),
    )
    return response


def _client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.get("/login")
async def login_page(request: Request) -> HTMLResponse:
    return _render(request, "login.html", mode="login")


@router.post("/login")
async def login(
    request: Request, session: SessionDep, username: FormStr, password: FormStr, csrf: FormStr
) -> Response:
    check_csrf(request, csrf)
    ctx = _ctx(request)
    try:
        user = await users.authenticate(
            session,
            auth=ctx.auth,
            username=username,
            password=password,
            client_ip=_client_ip(request),
            user_limiter=ctx.login_user_limiter,
            ip_limiter=ctx.login_ip_limiter,
        )
    except SensoriumError as exc:
        return _render(
            request, "login.html", 401, mode="login", error=exc.message, username=username
        )
    return await _start_session(request, session, user)


@router.get("/register")
async def register_page(request: Request) -> HTMLResponse:
    return _render(request, "login.html", mode="register")


@router.post("/register")
async def register(
    request: Request, session: SessionDep, username: FormStr, password: FormStr, csrf: FormStr
) -> Response:
    check_csrf(request, csrf)
    try:
        user = await users.register_user(
            session, auth=_ctx(request).auth, username=username, password=password
        )
    except SensoriumError as exc:
        await session.rollback()
        return _render(
            request, "login.html", 422, mode="register", error=exc.message, username=username
        )
    return await _start_session(request, session, user)


@router.post("/logout")
async def logout(request: Request, session: SessionDep, csrf: FormStr) -> Response:
    check_csrf(request, csrf)
    await users.logout(session, refresh_token=request.cookies.get(SESSION_COOKIE))
    response = _redirect("/login")
    response.delete_cookie(SESSION_COOKIE)
    return response


def _device_view(device: Device, now_ms: int) -> dict[str, Any]:
    public = devices.to_public(device, now_ms=now_ms)
    return orjson.loads(public.model_dump_json())  # type: ignore[no-any-return]


@router.get("/")
async def fleet(request: Request, session: SessionDep) -> Response:
    user = await _user(request, session)
    rows, _total = await devices.list_devices(session, owner=user, limit=500)
    now = epoch_ms()
    latest = await telemetry.latest_many(session, device_ids=[d.id for d in rows])
    items = [{**_device_view(device, now), "latest": latest[device.id]} for device in rows]
    return _render(request, "fleet.html", user=user, devices=items, now_ms=now)


@router.get("/energy")
async def energy_page(request: Request, session: SessionDep) -> Response:
    """Sites and their figures come from the energy API; the page lists which of the
    user's devices report power or an energy counter (the meters a site can hold)."""
    user = await _user(request, session)
    rows, _total = await devices.list_devices(session, owner=user, limit=500)
    latest = await telemetry.latest_many(session, device_ids=[d.id for d in rows])
    meters = [
        {"id": d.id, "name": d.name, "keys": sorted({"power", "energy"} & set(latest[d.id]))}
        for d in rows
    ]
    return _render(request, "energy.html", user=user, meters=meters)


@router.get("/devices/new")
async def new_device_page(request: Request, session: SessionDep) -> Response:
    user = await _user(request, session)
    return _render(request, "device_new.html", user=user)


def _connection_lines(request: Request, device_id: str, token: str) -> dict[str, Any]:
    ctx = _ctx(request)
    host = urlsplit(str(request.base_url)).hostname or "127.0.0.1"
    mqtt_port = ctx.mqtt_port
    base = str(request.base_url).rstrip("/")
    config = {
        "wifi": {"ssid": "", "password": ""},
        "server": {"host": host, "http_port": request.url.port or 80, "mqtt_port": mqtt_port},
        "device_id": device_id,
        "token": token,
        "interval_s": 30,
        # What the device checks update signatures with (PROTOCOL.md "OTA").
        "ota_public_key": ctx.ota_keys.public_key_b64,
    }
    lines: dict[str, Any] = {
        "config": orjson.dumps(config, option=orjson.OPT_INDENT_2).decode(),
        "curl": (
            f"curl -X POST {base}/api/v1/devices/{device_id}/telemetry "
            f"-H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' "
            """-d '{"temperature": 21.5, "humidity": 40}'"""
        ),
        "mqtt": None,
    }
    if mqtt_port:
        lines["mqtt"] = (
            f"mosquitto_pub -h {host} -p {mqtt_port} -i {device_id} -u {device_id} "
            f"-P '{token}' -q 1 -t devices/{device_id}/telemetry "
            """-m '{"temperature": 21.5, "humidity": 40}'"""
        )
    return lines


@router.post("/devices/new")
async def create_device(
    request: Request,
    session: SessionDep,
    mac: FormStr,
    name: FormStr,
    csrf: FormStr,
    location: Annotated[str, Form()] = "",
) -> Response:
    check_csrf(request, csrf)
    user = await _user(request, session)
    ctx = _ctx(request)
    try:
        device, token = await devices.register_device(
            session, owner=user, mac=mac, name=name, location=location, broker=ctx.broker
        )
    except SensoriumError as exc:
        await session.rollback()
        return _render(
            request, "device_new.html", 422, user=user, error=exc.message, field=exc.field,
            mac=mac, name=name, location=location,
        )  # fmt: skip
    await session.commit()
    ctx.broker_changed()
    return _render(
        request,
        "device_created.html",
        user=user,
        device=_device_view(device, epoch_ms()),
        token=token,
        lines=_connection_lines(request, device.id, token),
    )


@router.get("/devices/{device_id}")
async def device_page(request: Request, device_id: str, session: SessionDep) -> Response:
    user = await _user(request, session)
    try:
        device = await devices.get_device(session, owner=user, device_id=device_id)
    except SensoriumError:
        return _render(request, "not_found.html", 404, user=user)
    now = epoch_ms()
    latest = await telemetry.latest_many(session, device_ids=[device.id])
    view = {**_device_view(device, now), "latest": latest[device.id]}
    open_alerts = await alerts.list_alerts(
        session, owner=user, device_id=device.id, state="open", limit=50
    )
    firmware_history = [
        ota.device_job_public(job, rollout)
        for job, rollout in await ota.device_jobs(session, device_id=device.id)
    ]
    return _render(
        request, "device.html", user=user, device=view, now_ms=now, open_alerts=open_alerts,
        firmware_history=firmware_history,
    )  # fmt: skip


@router.post("/devices/{device_id}/settings")
async def device_settings(
    request: Request,
    device_id: str,
    session: SessionDep,
    name: FormStr,
    csrf: FormStr,
    location: Annotated[str, Form()] = "",
) -> Response:
    check_csrf(request, csrf)
    user = await _user(request, session)
    await devices.update_device(
        session, owner=user, device_id=device_id, name=name, location=location
    )
    return _redirect(f"/devices/{device_id}#settings")


@router.post("/devices/{device_id}/delete")
async def delete_device(
    request: Request, device_id: str, session: SessionDep, confirm: FormStr, csrf: FormStr
) -> Response:
    check_csrf(request, csrf)
    user = await _user(request, session)
    device = await devices.get_device(session, owner=user, device_id=device_id)
    if confirm.strip() not in {device.name, device.id}:
        view = _device_view(device, epoch_ms())
        view["latest"] = {}
        return _render(
            request, "device.html", 422, user=user, device=view, now_ms=epoch_ms(),
            delete_error="Type the device's name to confirm.",
        )  # fmt: skip
    ctx = _ctx(request)
    await devices.delete_device(session, owner=user, device_id=device_id, broker=ctx.broker)
    await session.commit()
    ctx.device_tokens.forget_device(device_id)
    ctx.broker_changed()
    return _redirect("/")


# --- alerts ----------------------------------------------------------------------------------

ALERT_STATES = ("open", "active", "acknowledged", "cleared")
SEVERITIES = ("info", "warning", "critical")
ALERTS_SHOWN = 200


async def _device_choices(session: Any, user: User) -> list[dict[str, str]]:
    rows, _total = await devices.list_devices(session, owner=user, limit=500)
    return [{"id": d.id, "name": d.name} for d in rows]


@router.get("/alerts")
async def alerts_page(
    request: Request,
    session: SessionDep,
    state: str = "open",
    severity: str = "",
    device: str = "",
) -> Response:
    """Alerts, newest first, filtered by state, severity and device (a GET form: the filters
    are in the address, so a filtered list can be bookmarked)."""
    user = await _user(request, session)
    choices = await _device_choices(session, user)
    filters = {
        "state": state if state in ALERT_STATES else "",
        "severity": severity if severity in SEVERITIES else "",
        "device": device if device in {d["id"] for d in choices} else "",
    }
    items = await alerts.list_alerts(
        session,
        owner=user,
        state=filters["state"] or None,
        severity=filters["severity"] or None,
        device_id=filters["device"] or None,
        limit=ALERTS_SHOWN,
    )
    return _render(
        request, "alerts.html", user=user, alerts=items, filters=filters, devices=choices,
        states=ALERT_STATES, severities=SEVERITIES, limit=ALERTS_SHOWN,
    )  # fmt: skip


def _rule_view(rule: Any, links: tuple[list[str], list[int]]) -> dict[str, Any]:
    return {
        "id": rule.id, "name": rule.name, "kind": rule.kind, "scope": rule.scope,
        "devices": links[0], "channels": links[1], "key": rule.key, "operator": rule.operator,
        "threshold": rule.threshold, "low": rule.low, "high": rule.high,
        "clear_threshold": rule.clear_threshold, "duration_s": rule.duration_s,
        "severity": rule.severity, "enabled": rule.enabled,
        "summary": alert_engine.rule_summary(rule),
    }  # fmt: skip


@router.get("/alerts/rules")
async def rules_page(request: Request, session: SessionDep) -> Response:
    user = await _user(request, session)
    rules = [
        _rule_view(r, await alerts.rule_links(session, r.id))
        for r in await alerts.list_rules(session, owner=user)
    ]
    names = {d["id"]: d["name"] for d in await _device_choices(session, user)}
    return _render(request, "alert_rules.html", user=user, rules=rules, device_names=names)


async def _editor(
    request: Request, session: Any, user: User, rule: dict[str, Any] | None
) -> Response:
    channels = [
        {"id": c.id, "name": c.name, "kind": c.kind}
        for c in await alerts.list_channels(session, owner=user)
    ]
    choices = await _device_choices(session, user)
    latest = await telemetry.latest_many(session, device_ids=[d["id"] for d in choices])
    keys = sorted({key for values in latest.values() for key in values})
    return _render(
        request, "alert_rule.html", user=user, rule=rule, devices=choices, channels=channels,
        keys=keys,
    )  # fmt: skip


@router.get("/alerts/rules/new")
async def new_rule_page(request: Request, session: SessionDep) -> Response:
    user = await _user(request, session)
    return await _editor(request, session, user, None)


@router.get("/alerts/rules/{rule_id}")
async def rule_page(request: Request, rule_id: int, session: SessionDep) -> Response:
    user = await _user(request, session)
    try:
        rule = await alerts.get_rule(session, owner=user, rule_id=rule_id)
    except SensoriumError:
        return _render(request, "not_found.html", 404, user=user, missing="rule")
    return await _editor(
        request, session, user, _rule_view(rule, await alerts.rule_links(session, rule.id))
    )


@router.get("/alerts/channels")
async def channels_page(request: Request, session: SessionDep) -> Response:
    user = await _user(request, session)
    channels = [
        {"id": c.id, "name": c.name, "kind": c.kind, "url": c.url, "email": c.email,
         "enabled": c.enabled}
        for c in await alerts.list_channels(session, owner=user)
    ]  # fmt: skip
    return _render(request, "alert_channels.html", user=user, channels=channels)


# --- firmware updates ------------------------------------------------------------------------


def _used_by(rollouts: list[Rollout]) -> list[dict[str, Any]]:
    return [{"id": r.id, "state": r.state} for r in rollouts]


@router.get("/firmware")
async def firmware_page(request: Request, session: SessionDep) -> Response:
    """The user's images (with the rollouts using each), the upload form and the public
    key devices verify images with."""
    user = await _user(request, session)
    usage = await ota.firmware_usage(session, owner=user)
    images = [
        {**ota.firmware_public(f), "used_by": _used_by(usage.get(f.id, []))}
        for f in await ota.list_firmware(session, owner=user)
    ]
    ctx = _ctx(request)
    return _render(
        request, "firmware.html", user=user, images=images, public_key=ctx.ota_keys.public_key_b64,
        can_sign=ctx.ota_keys.can_sign, max_bytes=ctx.settings.ota_max_image_bytes,
    )  # fmt: skip


@router.get("/firmware/{firmware_id}")
async def firmware_image_page(request: Request, firmware_id: int, session: SessionDep) -> Response:
    user = await _user(request, session)
    try:
        firmware = await ota.get_firmware(session, owner=user, firmware_id=firmware_id)
    except SensoriumError:
        return _render(request, "not_found.html", 404, user=user, missing="firmware")
    usage = await ota.firmware_usage(session, owner=user)
    image = {**ota.firmware_public(firmware), "used_by": _used_by(usage.get(firmware.id, []))}
    return _render(request, "firmware_image.html", user=user, image=image)


async def _rollout_summaries(session: Any, user: User) -> list[dict[str, Any]]:
    return [
        ota.rollout_public(r, await ota.counts(session, r.id))
        for r in await ota.list_rollouts(session, owner=user)
    ]


async def _titles(session: Any, user: User) -> dict[int, str]:
    return {f.id: f.title for f in await ota.list_firmware(session, owner=user)}


@router.get("/rollouts")
async def rollouts_page(request: Request, session: SessionDep) -> Response:
    user = await _user(request, session)
    rollouts = await _rollout_summaries(session, user)
    titles = await _titles(session, user)
    return _render(request, "rollouts.html", user=user, rollouts=rollouts, titles=titles)


@router.get("/rollouts/new")
async def new_rollout_page(request: Request, session: SessionDep, firmware: int = 0) -> Response:
    """Pick an image and devices (or a filter, counted as it is typed), the strategy and
    the limits; the page posts the JSON API's own body."""
    user = await _user(request, session)
    images = [ota.firmware_public(f) for f in await ota.list_firmware(session, owner=user)]
    rows, _total = await devices.list_devices(session, owner=user, limit=500)
    targets = [
        {"id": d.id, "name": d.name, "location": d.location, "fw": d.firmware_version} for d in rows
    ]
    selected = firmware if any(i["id"] == firmware for i in images) else None
    return _render(
        request, "rollout_new.html", user=user, images=images, devices=targets,
        selected=selected, timeout_s=_ctx(request).settings.ota_device_timeout_s,
    )  # fmt: skip


@router.get("/rollouts/{rollout_id}")
async def rollout_page(request: Request, rollout_id: int, session: SessionDep) -> Response:
    user = await _user(request, session)
    try:
        rollout = await ota.get_rollout(session, owner=user, rollout_id=rollout_id)
    except SensoriumError:
        return _render(request, "not_found.html", 404, user=user, missing="rollout")
    detail = {
        **ota.rollout_public(rollout, await ota.counts(session, rollout.id)),
        "jobs": [ota.job_public(j) for j in await ota.rollout_jobs(session, rollout.id)],
    }
    names = {d["id"]: d["name"] for d in await _device_choices(session, user)}
    title = (await _titles(session, user)).get(rollout.firmware_id or 0)
    return _render(request, "rollout.html", user=user, rollout=detail, names=names, title=title)
