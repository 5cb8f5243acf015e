"""Alert rules, alerts and notification channels of a user: plain async functions (the API,
the CLI and the tests call them). Someone else's rule, alert or channel is NotFound."""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from cryptography.fernet import Fernet
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from sensorium.alerts import engine
from sensorium.alerts.conditions import ABOVE, BELOW, OPERATORS, RANGE_OPERATORS
from sensorium.alerts.models import (
    ACKNOWLEDGED,
    ACTIVE,
    OFFLINE,
    OPEN_STATES,
    SCOPE_ALL,
    SCOPE_DEVICE,
    SCOPE_LIST,
    THRESHOLD,
    Alert,
    AlertRule,
    AlertRuleChannel,
    AlertRuleDevice,
    Delivery,
    NotificationChannel,
)
from sensorium.db import epoch_ms
from sensorium.devices.models import Device
from sensorium.devices.service import get_device
from sensorium.errors import Conflict, Invalid, NotFound
from sensorium.users.models import User
from sensorium.users.security import derived_fernet

WEBHOOK = "webhook"
EMAIL = "email"
SECRET_PREFIX = "whsec_"
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

RULE_FIELDS = (
    "name",
    "kind",
    "scope",
    "devices",
    "key",
    "operator",
    "threshold",
    "low",
    "high",
    "clear_threshold",
    "duration_s",
    "severity",
    "enabled",
    "channels",
)


def _rule_not_found(rule_id: int) -> NotFound:
    return NotFound(f"alert rule {rule_id} not found", field="rule_id", code="rule_not_found")


def _alert_not_found(alert_id: int) -> NotFound:
    return NotFound(f"alert {alert_id} not found", field="alert_id", code="alert_not_found")


def _channel_not_found(channel_id: int, field: str = "channel_id") -> NotFound:
    return NotFound(
        f"notification channel {channel_id} not found", field=field, code="channel_not_found"
    )


# --- secrets -------------------------------------------------------------------------------


def _fernet(secret_key: str) -> Fernet:
    return derived_fernet(secret_key, b"sensorium webhook secrets")


def encrypt_secret(secret: str, *, secret_key: str) -> str:
    return _fernet(secret_key).encrypt(secret.encode()).decode()


def decrypt_secret(token: str, *, secret_key: str) -> str:
    return _fernet(secret_key).decrypt(token.encode()).decode()


# --- rules ---------------------------------------------------------------------------------


def _check_rule(spec: Mapping[str, Any]) -> None:
    """The cross-field rules pydantic cannot say; raises Invalid naming the field."""
    kind = spec["kind"]
    if kind == THRESHOLD:
        if not spec.get("key"):
            raise Invalid("a threshold rule needs a key", field="key", code="missing_key")
        op = spec.get("operator")
        if op not in OPERATORS:
            raise Invalid(
                f"operator must be one of {', '.join(OPERATORS)}",
                field="operator",
                code="invalid_operator",
            )
        if op in RANGE_OPERATORS:
            low, high = spec.get("low"), spec.get("high")
            if low is None or high is None:
                raise Invalid(
                    f"'{op}' needs low and high",
                    field="low" if low is None else "high",
                    code="missing_range",
                )
            if low > high:
                raise Invalid("low must not be above high", field="low", code="invalid_range")
            if spec.get("threshold") is not None:
                raise Invalid(
                    f"'{op}' takes low and high, not threshold",
                    field="threshold",
                    code="unexpected_field",
                )
        else:
            threshold = spec.get("threshold")
            if threshold is None:
                raise Invalid(
                    f"'{op}' needs a threshold", field="threshold", code="missing_threshold"
                )
            for name in ("low", "high"):
                if spec.get(name) is not None:
                    raise Invalid(
                        f"'{op}' takes a threshold, not {name}",
                        field=name,
                        code="unexpected_field",
                    )
        clear = spec.get("clear_threshold")
        if clear is not None:
            if op not in ABOVE + BELOW:
                raise Invalid(
                    "a clear threshold needs >, >=, < or <=",
                    field="clear_threshold",
                    code="invalid_clear_threshold",
                )
            threshold = spec["threshold"]
            if (op in ABOVE and clear > threshold) or (op in BELOW and clear < threshold):
                side = "above" if op in ABOVE else "below"
                raise Invalid(
                    f"the clear threshold must not be {side} the threshold "
                    f"(an alert would clear while its condition still holds)",
                    field="clear_threshold",
                    code="invalid_clear_threshold",
                )
    else:
        for name in ("key", "operator", "threshold", "low", "high", "clear_threshold"):
            if spec.get(name) is not None:
                raise Invalid(f"an offline rule has no {name}", field=name, code="unexpected_field")
    scope, devices = spec["scope"], spec.get("devices") or []
    if scope == SCOPE_DEVICE and len(devices) != 1:
        raise Invalid(
            "scope 'device' needs exactly one device", field="devices", code="invalid_scope"
        )
    if scope == SCOPE_LIST and not devices:
        raise Invalid("scope 'list' needs devices", field="devices", code="invalid_scope")
    if scope == SCOPE_ALL and devices:
        raise Invalid(
            "scope 'all' covers every device; do not list any",
            field="devices",
            code="invalid_scope",
        )


async def _owned_devices(
    session: AsyncSession, owner: User, device_ids: Sequence[str]
) -> list[str]:
    out: list[str] = []
    for index, device_id in enumerate(device_ids):
        try:
            device = await get_device(session, owner=owner, device_id=device_id)
        except NotFound as exc:
            exc.field = f"devices.{index}"
            raise
        if device.id in out:
            raise Invalid(
                f"device {device.id} is listed twice",
                field=f"devices.{index}",
                code="duplicate_device",
            )
        out.append(device.id)
    return out


async def _owned_channels(
    session: AsyncSession, owner: User, channel_ids: Sequence[int]
) -> list[int]:
    out: list[int] = []
    for index, channel_id in enumerate(channel_ids):
        channel = await session.get(NotificationChannel, channel_id)
        if channel is None or channel.owner_id != owner.id:
            raise _channel_not_found(channel_id, field=f"channels.{index}")
        if channel_id in out:
            raise Invalid(
                f"channel {channel_id} is listed twice",
                field=f"channels.{index}",
                code="duplicate_channel",
            )
        out.append(channel_id)
    return out


async def rule_links(session: AsyncSession, rule_id: int) -> tuple[list[str], list[int]]:
    """The rule's listed devices and its channels."""
    devices = await session.scalars(
        select(AlertRuleDevice.device_id)
        .where(AlertRuleDevice.rule_id == rule_id)
        .order_by(AlertRuleDevice.device_id)
    )
    channels = await session.scalars(
        select(AlertRuleChannel.channel_id)
        .where(AlertRuleChannel.rule_id == rule_id)
        .order_by(AlertRuleChannel.channel_id)
    )
    return list(devices), list(channels)


async def _link(
    session: AsyncSession, rule: AlertRule, devices: Sequence[str], channels: Sequence[int]
) -> None:
    await session.execute(delete(AlertRuleDevice).where(AlertRuleDevice.rule_id == rule.id))
    await session.execute(delete(AlertRuleChannel).where(AlertRuleChannel.rule_id == rule.id))
    session.add_all(AlertRuleDevice(rule_id=rule.id, device_id=d) for d in devices)
    session.add_all(AlertRuleChannel(rule_id=rule.id, channel_id=c) for c in channels)
    await session.flush()


async def create_rule(session: AsyncSession, *, owner: User, spec: Mapping[str, Any]) -> AlertRule:
    """`spec` has every field of schemas.RuleCreate."""
    _check_rule(spec)
    devices = await _owned_devices(session, owner, spec.get("devices") or [])
    channels = await _owned_channels(session, owner, spec.get("channels") or [])
    now = epoch_ms()
    rule = AlertRule(
        owner_id=owner.id,
        name=spec["name"].strip(),
        kind=spec["kind"],
        scope=spec["scope"],
        key=spec.get("key"),
        operator=spec.get("operator"),
        threshold=spec.get("threshold"),
        low=spec.get("low"),
        high=spec.get("high"),
        clear_threshold=spec.get("clear_threshold"),
        duration_s=spec.get("duration_s", 0),
        severity=spec.get("severity", "warning"),
        enabled=spec.get("enabled", True),
        created_ms=now,
        updated_ms=now,
    )
    session.add(rule)
    await session.flush()
    await _link(session, rule, devices, channels)
    return rule


async def get_rule(session: AsyncSession, *, owner: User, rule_id: int) -> AlertRule:
    rule = await session.get(AlertRule, rule_id)
    if rule is None or rule.owner_id != owner.id:
        raise _rule_not_found(rule_id)
    return rule


async def list_rules(session: AsyncSession, *, owner: User) -> list[AlertRule]:
    rows = await session.scalars(
        select(AlertRule).where(AlertRule.owner_id == owner.id).order_by(AlertRule.id)
    )
    return list(rows)


async def update_rule(
    session: AsyncSession, *, owner: User, rule_id: int, changes: Mapping[str, Any]
) -> AlertRule:
    """Apply the given fields; the rule as a whole is checked again. A change to anything
    but the name, severity or channels clears its open alerts and restarts evaluation."""
    rule = await get_rule(session, owner=owner, rule_id=rule_id)
    devices, channels = await rule_links(session, rule.id)
    current: dict[str, Any] = {
        f: getattr(rule, f) for f in RULE_FIELDS if f not in ("devices", "channels")
    }
    current["devices"], current["channels"] = devices, channels
    spec = {**current, **changes}
    if spec["kind"] == OFFLINE and "kind" in changes:
        # Switching to an offline rule drops the threshold fields unless given again.
        for name in ("key", "operator", "threshold", "low", "high", "clear_threshold"):
            spec.setdefault(name, None)
            if name not in changes:
                spec[name] = None
    _check_rule(spec)
    new_devices = await _owned_devices(session, owner, spec["devices"])
    new_channels = await _owned_channels(session, owner, spec["channels"])
    cosmetic = {"name", "severity", "channels"}
    if any(spec[f] != current[f] for f in RULE_FIELDS if f not in cosmetic):
        await engine.reset_rule(session, rule=rule, now_ms=epoch_ms())
    for f in RULE_FIELDS:
        if f not in ("devices", "channels"):
            setattr(rule, f, spec[f].strip() if f == "name" else spec[f])
    # Strictly later than before, even within one millisecond: the writers' rule cache
    # (engine.Watch) sees a change by the sum of these.
    rule.updated_ms = max(epoch_ms(), rule.updated_ms + 1)
    await _link(session, rule, new_devices, new_channels)
    return rule


async def delete_rule(session: AsyncSession, *, owner: User, rule_id: int) -> None:
    """Delete the rule with its alerts and their delivery log."""
    rule = await get_rule(session, owner=owner, rule_id=rule_id)
    await session.execute(delete(AlertRule).where(AlertRule.id == rule.id))


# --- alerts ----------------------------------------------------------------------------------


async def alert_view(session: AsyncSession, alert: Alert) -> dict[str, Any]:
    names = (
        await session.execute(
            select(AlertRule.name, Device.name)
            .select_from(Alert)
            .join(AlertRule, AlertRule.id == Alert.rule_id)
            .join(Device, Device.id == Alert.device_id)
            .where(Alert.id == alert.id)
        )
    ).first()
    rule_name, device_name = names if names is not None else ("", "")
    return engine.alert_document(alert, rule_name=rule_name, device_name=device_name)


async def get_alert(session: AsyncSession, *, owner: User, alert_id: int) -> Alert:
    alert = await session.get(Alert, alert_id, populate_existing=True)
    if alert is None or alert.owner_id != owner.id:
        raise _alert_not_found(alert_id)
    return alert


async def list_alerts(
    session: AsyncSession,
    *,
    owner: User,
    state: str | None = None,
    severity: str | None = None,
    device_id: str | None = None,
    rule_id: int | None = None,
    limit: int = 50,
    before: int | None = None,
) -> list[dict[str, Any]]:
    """Newest first. `state` "open" means active or acknowledged."""
    query = (
        select(Alert, AlertRule.name, Device.name)
        .join(AlertRule, AlertRule.id == Alert.rule_id)
        .join(Device, Device.id == Alert.device_id)
        .where(Alert.owner_id == owner.id)
    )
    if state == "open":
        query = query.where(Alert.state.in_(OPEN_STATES))
    elif state is not None:
        query = query.where(Alert.state == state)
    if severity is not None:
        query = query.where(Alert.severity == severity)
    if device_id is not None:
        device = await get_device(session, owner=owner, device_id=device_id)
        query = query.where(Alert.device_id == device.id)
    if rule_id is not None:
        rule = await get_rule(session, owner=owner, rule_id=rule_id)
        query = query.where(Alert.rule_id == rule.id)
    if before is not None:
        query = query.where(Alert.id < before)
    rows = await session.execute(query.order_by(Alert.id.desc()).limit(limit))
    return [
        engine.alert_document(alert, rule_name=rule_name, device_name=device_name)
        for alert, rule_name, device_name in rows
    ]


async def acknowledge(
    session: AsyncSession, *, owner: User, alert_id: int, note: str, now_ms: int | None = None
) -> Alert:
    """active → acknowledged, once; the alert still clears when its condition does."""
    alert = await get_alert(session, owner=owner, alert_id=alert_id)
    result = await session.execute(
        update(Alert)
        .where(Alert.id == alert.id, Alert.state == ACTIVE)
        .values(
            state=ACKNOWLEDGED,
            acked_by=owner.id,
            acked_ms=now_ms if now_ms is not None else epoch_ms(),
            ack_note=note.strip() or None,
            live_pending=True,
        )
        .returning(Alert.id)
    )
    if result.first() is None:
        await session.refresh(alert)
        word = "already acknowledged" if alert.state == ACKNOWLEDGED else "cleared"
        raise Conflict(f"alert {alert_id} is {word}", field="alert_id", code=f"alert_{alert.state}")
    return await get_alert(session, owner=owner, alert_id=alert_id)


# --- channels -------------------------------------------------------------------------------


def _check_url(url: str | None) -> str:
    if not url:
        raise Invalid("a webhook needs a url", field="url", code="missing_url")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(
            "the webhook url must be an http:// or https:// address",
            field="url",
            code="invalid_url",
        )
    return url.strip()


def _check_email(email: str | None) -> str:
    if not email or not _EMAIL.match(email.strip()):
        raise Invalid("a valid e-mail address is needed", field="email", code="invalid_email")
    return email.strip()


async def create_channel(
    session: AsyncSession,
    *,
    owner: User,
    name: str,
    kind: str,
    url: str | None = None,
    email: str | None = None,
    enabled: bool = True,
    secret_key: str,
) -> tuple[NotificationChannel, str | None]:
    """Returns the channel and, for a webhook, its signing secret (shown once)."""
    secret: str | None = None
    channel = NotificationChannel(
        owner_id=owner.id, name=name.strip(), kind=kind, enabled=enabled, created_ms=epoch_ms()
    )
    if kind == WEBHOOK:
        if email is not None:
            raise Invalid("a webhook has no email", field="email", code="unexpected_field")
        channel.url = _check_url(url)
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        channel.secret_enc = encrypt_secret(secret, secret_key=secret_key)
    else:
        if url is not None:
            raise Invalid("an e-mail channel has no url", field="url", code="unexpected_field")
        channel.email = _check_email(email)
    session.add(channel)
    await session.flush()
    return channel, secret


async def get_channel(
    session: AsyncSession, *, owner: User, channel_id: int
) -> NotificationChannel:
    channel = await session.get(NotificationChannel, channel_id)
    if channel is None or channel.owner_id != owner.id:
        raise _channel_not_found(channel_id)
    return channel


async def list_channels(session: AsyncSession, *, owner: User) -> list[NotificationChannel]:
    rows = await session.scalars(
        select(NotificationChannel)
        .where(NotificationChannel.owner_id == owner.id)
        .order_by(NotificationChannel.id)
    )
    return list(rows)


async def update_channel(
    session: AsyncSession, *, owner: User, channel_id: int, changes: Mapping[str, Any]
) -> NotificationChannel:
    channel = await get_channel(session, owner=owner, channel_id=channel_id)
    if "url" in changes:
        if channel.kind != WEBHOOK:
            raise Invalid("an e-mail channel has no url", field="url", code="unexpected_field")
        channel.url = _check_url(changes["url"])
    if "email" in changes:
        if channel.kind != EMAIL:
            raise Invalid("a webhook has no email", field="email", code="unexpected_field")
        channel.email = _check_email(changes["email"])
    if changes.get("name") is not None:
        channel.name = changes["name"].strip()
    if changes.get("enabled") is not None:
        channel.enabled = changes["enabled"]
    await session.flush()
    return channel


async def rotate_secret(
    session: AsyncSession, *, owner: User, channel_id: int, secret_key: str
) -> tuple[NotificationChannel, str]:
    channel = await get_channel(session, owner=owner, channel_id=channel_id)
    if channel.kind != WEBHOOK:
        raise Invalid("only webhooks have a secret", field="channel_id", code="not_a_webhook")
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    channel.secret_enc = encrypt_secret(secret, secret_key=secret_key)
    await session.flush()
    return channel, secret


async def delete_channel(session: AsyncSession, *, owner: User, channel_id: int) -> None:
    """Delete the channel with its delivery log; rules stop notifying it."""
    channel = await get_channel(session, owner=owner, channel_id=channel_id)
    await session.execute(delete(NotificationChannel).where(NotificationChannel.id == channel.id))


async def list_deliveries(
    session: AsyncSession,
    *,
    owner: User,
    channel_id: int,
    limit: int = 50,
    before: int | None = None,
) -> list[Delivery]:
    """The channel's delivery log, newest first."""
    channel = await get_channel(session, owner=owner, channel_id=channel_id)
    query = select(Delivery).where(Delivery.channel_id == channel.id)
    if before is not None:
        query = query.where(Delivery.id < before)
    rows = await session.scalars(query.order_by(Delivery.id.desc()).limit(limit))
    return list(rows)
