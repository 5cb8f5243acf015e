"""Alerts over HTTP: rules, alerts (list, ack), notification channels and their delivery log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from fastapi.responses import StreamingResponse

from sensorium.alerts import backtest, engine, live, service
from sensorium.alerts.models import AlertRule, Delivery, NotificationChannel
from sensorium.alerts.schemas import (
    AckIn,
    AlertList,
    AlertPublic,
    BacktestIn,
    BacktestPublic,
    ChannelCreate,
    ChannelList,
    ChannelPublic,
    ChannelUpdate,
    ChannelWithSecret,
    DeliveryList,
    DeliveryPublic,
    RuleCreate,
    RuleList,
    RulePublic,
    RuleUpdate,
    Severity,
    StateFilter,
)
from sensorium.api.deps import ContextDep, CurrentUser, SessionDep
from sensorium.db import epoch_ms

router = APIRouter(tags=["alerts"])


async def _rule_public(session: SessionDep, rule: AlertRule) -> RulePublic:
    devices, channels = await service.rule_links(session, rule.id)
    return RulePublic(
        id=rule.id,
        name=rule.name,
        kind=rule.kind,
        scope=rule.scope,
        devices=devices,
        key=rule.key,
        operator=rule.operator,
        threshold=rule.threshold,
        low=rule.low,
        high=rule.high,
        clear_threshold=rule.clear_threshold,
        duration_s=rule.duration_s,
        severity=rule.severity,
        enabled=rule.enabled,
        channels=channels,
        created_at=engine.iso_ms(rule.created_ms) or "",
        updated_at=engine.iso_ms(rule.updated_ms) or "",
    )


def _channel_public(channel: NotificationChannel) -> ChannelPublic:
    return ChannelPublic(
        id=channel.id,
        name=channel.name,
        kind=channel.kind,
        url=channel.url,
        email=channel.email,
        enabled=channel.enabled,
        created_at=engine.iso_ms(channel.created_ms) or "",
    )


def _delivery_public(d: Delivery) -> DeliveryPublic:
    return DeliveryPublic(
        id=d.id,
        channel_id=d.channel_id,
        alert_id=d.alert_id,
        event=d.event,
        status=d.status,
        attempts=d.attempts,
        created_at=engine.iso_ms(d.created_ms) or "",
        next_attempt_at=engine.iso_ms(d.next_ms) if d.status in ("pending", "held") else None,
        first_try_at=engine.iso_ms(d.first_try_ms),
        done_at=engine.iso_ms(d.done_ms),
        last_error=d.last_error,
        digest_id=d.digest_id,
    )


# --- rules ---------------------------------------------------------------------------------


@router.post("/alert-rules", status_code=status.HTTP_201_CREATED)
async def create_rule(body: RuleCreate, user: CurrentUser, session: SessionDep) -> RulePublic:
    """A rule on one device, a list, or all your devices (including ones added later)."""
    rule = await service.create_rule(session, owner=user, spec=body.model_dump())
    return await _rule_public(session, rule)


@router.get("/alert-rules")
async def list_rules(user: CurrentUser, session: SessionDep) -> RuleList:
    rules = await service.list_rules(session, owner=user)
    return RuleList(items=[await _rule_public(session, r) for r in rules])


@router.post("/alert-rules/backtest")
async def backtest_rule(body: BacktestIn, user: CurrentUser, session: SessionDep) -> BacktestPublic:
    """How many times this threshold rule (saved or not) would have fired over the last 24 h
    or 7 d of stored history, and when: the same state machine as live evaluation, fed from
    rollups where a bucket decides its whole span and raw points elsewhere. Checked like
    creating the rule; nothing is stored."""
    spec = body.model_dump(exclude={"period"})
    result = await backtest.backtest(
        session, owner=user, spec=spec, period=body.period, now_ms=epoch_ms()
    )
    return BacktestPublic.model_validate(backtest.document(result))


@router.get("/alert-rules/{rule_id}")
async def get_rule(rule_id: int, user: CurrentUser, session: SessionDep) -> RulePublic:
    rule = await service.get_rule(session, owner=user, rule_id=rule_id)
    return await _rule_public(session, rule)


@router.patch("/alert-rules/{rule_id}")
async def update_rule(
    rule_id: int, body: RuleUpdate, user: CurrentUser, session: SessionDep
) -> RulePublic:
    changes = body.model_dump(include=body.model_fields_set)
    rule = await service.update_rule(session, owner=user, rule_id=rule_id, changes=changes)
    return await _rule_public(session, rule)


@router.delete("/alert-rules/{rule_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_rule(rule_id: int, user: CurrentUser, session: SessionDep) -> Response:
    """Delete the rule, its alerts and their delivery log."""
    await service.delete_rule(session, owner=user, rule_id=rule_id)
    return Response(status_code=204)


# --- alerts --------------------------------------------------------------------------------


@router.get("/alerts")
async def list_alerts(
    user: CurrentUser,
    session: SessionDep,
    state: Annotated[
        StateFilter | None, Query(description="`open`: active or acknowledged")
    ] = None,
    severity: Severity | None = None,
    device: str | None = None,
    rule: int | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[int | None, Query(description="an alert id: older ones")] = None,
) -> AlertList:
    """Your alerts, newest first."""
    items = await service.list_alerts(
        session,
        owner=user,
        state=state,
        severity=severity,
        device_id=device,
        rule_id=rule,
        limit=limit,
        before=before,
    )
    public = [AlertPublic.model_validate(a) for a in items]
    return AlertList(items=public, next_before=public[-1].id if len(public) == limit else None)


@router.get("/alerts/events", response_class=StreamingResponse)
async def alert_events(
    user: CurrentUser, session: SessionDep, ctx: ContextDep
) -> StreamingResponse:
    """Server-Sent Events: `count` (`{"active": n}`, unacknowledged alerts) first, then an
    `alert` event (`{"alert": {...}, "active": n}`) for each transition of an alert of your
    devices: fired, acknowledged, cleared."""
    devices = await live.owned_devices(session, owner_id=user.id)
    await session.close()  # do not hold a connection for the life of the stream
    return StreamingResponse(
        live.stream(ctx.sessions, ctx.bus, owner_id=user.id, devices=devices),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/alerts/{alert_id}")
async def get_alert(alert_id: int, user: CurrentUser, session: SessionDep) -> AlertPublic:
    alert = await service.get_alert(session, owner=user, alert_id=alert_id)
    return AlertPublic.model_validate(await service.alert_view(session, alert))


@router.post("/alerts/{alert_id}/ack")
async def acknowledge(
    alert_id: int, body: AckIn, user: CurrentUser, session: SessionDep
) -> AlertPublic:
    """active → acknowledged, with a note; 409 when it is not active any more."""
    alert = await service.acknowledge(
        session, owner=user, alert_id=alert_id, note=body.note, now_ms=epoch_ms()
    )
    return AlertPublic.model_validate(await service.alert_view(session, alert))


# --- channels ------------------------------------------------------------------------------


@router.post("/notification-channels", status_code=status.HTTP_201_CREATED)
async def create_channel(
    body: ChannelCreate, user: CurrentUser, session: SessionDep, ctx: ContextDep
) -> ChannelWithSecret:
    """A webhook (its signing secret is in this answer only) or an e-mail address."""
    channel, secret = await service.create_channel(
        session,
        owner=user,
        name=body.name,
        kind=body.kind,
        url=body.url,
        email=body.email,
        enabled=body.enabled,
        secret_key=ctx.settings.resolved_secret_key(),
    )
    return ChannelWithSecret(**_channel_public(channel).model_dump(), secret=secret)


@router.get("/notification-channels")
async def list_channels(user: CurrentUser, session: SessionDep) -> ChannelList:
    channels = await service.list_channels(session, owner=user)
    return ChannelList(items=[_channel_public(c) for c in channels])


@router.get("/notification-channels/{channel_id}")
async def get_channel(channel_id: int, user: CurrentUser, session: SessionDep) -> ChannelPublic:
    return _channel_public(await service.get_channel(session, owner=user, channel_id=channel_id))


@router.patch("/notification-channels/{channel_id}")
async def update_channel(
    channel_id: int, body: ChannelUpdate, user: CurrentUser, session: SessionDep
) -> ChannelPublic:
    changes = body.model_dump(include=body.model_fields_set)
    channel = await service.update_channel(
        session, owner=user, channel_id=channel_id, changes=changes
    )
    return _channel_public(channel)


@router.post("/notification-channels/{channel_id}/secret")
async def rotate_secret(
    channel_id: int, user: CurrentUser, session: SessionDep, ctx: ContextDep
) -> ChannelWithSecret:
    """A new signing secret for the webhook; the old one stops at once."""
    channel, secret = await service.rotate_secret(
        session, owner=user, channel_id=channel_id, secret_key=ctx.settings.resolved_secret_key()
    )
    return ChannelWithSecret(**_channel_public(channel).model_dump(), secret=secret)


@router.delete("/notification-channels/{channel_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_channel(channel_id: int, user: CurrentUser, session: SessionDep) -> Response:
    await service.delete_channel(session, owner=user, channel_id=channel_id)
    return Response(status_code=204)


@router.get("/notification-channels/{channel_id}/deliveries")
async def list_deliveries(
    channel_id: int,
    user: CurrentUser,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: int | None = None,
) -> DeliveryList:
    """The channel's delivery log (attempts, errors, digests), newest first."""
    rows = await service.list_deliveries(
        session, owner=user, channel_id=channel_id, limit=limit, before=before
    )
    return DeliveryList(
        items=[_delivery_public(d) for d in rows],
        next_before=rows[-1].id if len(rows) == limit else None,
    )
