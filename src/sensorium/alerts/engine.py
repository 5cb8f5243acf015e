"""Alert evaluation on the database: streaming, as points are stored, and from the
scheduler (duration timers, silence); device status changes drive offline rules.

Who may change a (rule, device)'s state at the same time, and why it stays exactly-once:

* the batch writer, inside its transaction, after it has updated the device rows (on
  PostgreSQL a row lock per device held until commit; SQLite has one writer at a time),
  reading the states `FOR UPDATE`;
* the scheduler, one state per transaction, each change one conditional
  `UPDATE … WHERE phase = … RETURNING` (as control/service.py does command transitions);
* device status changes, under the device row lock `record_status` takes.

An alert is inserted with `ON CONFLICT DO NOTHING` against the partial unique index "one
open alert per (rule, device)", so even a state that went wrong cannot open a second.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, and_, delete, select, text, tuple_, union_all, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sensorium.alerts.conditions import Condition, Phase, step
from sensorium.alerts.models import (
    ACTIVE,
    CLEARED,
    D_PENDING,
    FIRING,
    IDLE,
    OFFLINE,
    OPEN_STATES,
    PENDING,
    SCOPE_ALL,
    THRESHOLD,
    Alert,
    AlertRule,
    AlertRuleChannel,
    AlertRuleDevice,
    AlertState,
    Delivery,
    NotificationChannel,
)
from sensorium.db import dialect_insert, epoch_ms
from sensorium.devices.models import Device
from sensorium.protocol import Reading

_STATES = AlertState.__table__
# The predicate of the partial unique index, spelt as in the index (ON CONFLICT must
# name it literally for SQLite and PostgreSQL to infer the index).
_OPEN = text("state != 'cleared'")


def iso_ms(ms: int | None) -> str | None:
    if ms is None:
        return None
    stamp = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def condition_of(rule: AlertRule) -> Condition:
    assert rule.operator is not None
    return Condition(rule.operator, rule.threshold, rule.low, rule.high, rule.clear_threshold)


def rule_summary(rule: AlertRule) -> str:
    """`co2 > 1200 for 300 s`, `offline`: how notifications name the condition."""
    if rule.kind == OFFLINE:
        return "offline" + (f" or silent for {rule.duration_s} s" if rule.duration_s else "")
    if rule.operator in ("inside", "outside"):
        text_ = f"{rule.key} {rule.operator} {rule.low:g}..{rule.high:g}"
    else:
        text_ = f"{rule.key} {rule.operator} {rule.threshold:g}"
    return text_ + (f" for {rule.duration_s} s" if rule.duration_s else "")


def alert_document(alert: Alert, *, rule_name: str, device_name: str) -> dict[str, Any]:
    """An alert as the API, the live bus and notifications show it."""
    return {
        "id": alert.id,
        "rule_id": alert.rule_id,
        "rule_name": rule_name,
        "device_id": alert.device_id,
        "device_name": device_name,
        "severity": alert.severity,
        "state": alert.state,
        "fired_at": iso_ms(alert.fired_ms),
        "value": alert.value,
        "acked_by": alert.acked_by,
        "acked_at": iso_ms(alert.acked_ms),
        "ack_note": alert.ack_note,
        "cleared_at": iso_ms(alert.cleared_ms),
        "clear_value": alert.clear_value,
    }


def in_scope(rule_filter: Sequence[Any], device_filter: Sequence[Any]) -> Select[int, str]:
    """(rule id, device id) of every rule matching `rule_filter` and each device in its
    scope matching `device_filter`: listed devices, or all of the owner's."""
    listed = (
        select(AlertRule.id.label("rule_id"), Device.id.label("device_id"))
        .join(AlertRuleDevice, AlertRuleDevice.rule_id == AlertRule.id)
        .join(Device, Device.id == AlertRuleDevice.device_id)
        .where(AlertRule.scope != SCOPE_ALL, *rule_filter, *device_filter)
    )
    everyone = (
        select(AlertRule.id.label("rule_id"), Device.id.label("device_id"))
        .join(Device, Device.owner_id == AlertRule.owner_id)
        .where(AlertRule.scope == SCOPE_ALL, *rule_filter, *device_filter)
    )
    union = union_all(listed, everyone).subquery()
    return select(union.c.rule_id, union.c.device_id)


async def _rules(session: AsyncSession, ids: Iterable[int]) -> dict[int, AlertRule]:
    wanted = set(ids)
    if not wanted:
        return {}
    rows = await session.scalars(select(AlertRule).where(AlertRule.id.in_(wanted)))
    return {r.id: r for r in rows}


# --- opening and clearing alerts ---------------------------------------------------------


@dataclass(slots=True)
class Changes:
    """What a transaction did, for the caller to act on after commit."""

    fired: int = 0
    cleared: int = 0

    def __bool__(self) -> bool:
        return bool(self.fired or self.cleared)

    def add(self, other: Changes) -> None:
        self.fired += other.fired
        self.cleared += other.cleared


async def _deliveries(
    session: AsyncSession, *, rule: AlertRule, alert: Alert, event: str, now_ms: int
) -> None:
    """Queue a notification of this alert event to each of the rule's enabled channels."""
    channels = list(
        await session.scalars(
            select(AlertRuleChannel.channel_id)
            .join(NotificationChannel, NotificationChannel.id == AlertRuleChannel.channel_id)
            .where(AlertRuleChannel.rule_id == rule.id, NotificationChannel.enabled.is_(True))
        )
    )
    if not channels:
        return
    device_name = await session.scalar(select(Device.name).where(Device.id == alert.device_id))
    payload = {
        "event": event,
        "alert": alert_document(alert, rule_name=rule.name, device_name=device_name or ""),
        "condition": rule_summary(rule),
        "link": f"/devices/{alert.device_id}",
    }
    await session.execute(
        dialect_insert(session, Delivery).on_conflict_do_nothing(
            index_elements=["alert_id", "channel_id", "event"]
        ),
        [
            {
                "channel_id": c,
                "alert_id": alert.id,
                "event": event,
                "status": D_PENDING,
                "payload": payload,
                "attempts": 0,
                "created_ms": now_ms,
                "next_ms": now_ms,
            }
            for c in channels
        ],
    )


async def open_alert(
    session: AsyncSession, *, rule: AlertRule, device_id: str, at_ms: int, value: float | None
) -> bool:
    """Open an alert unless one is open already; queues its notifications."""
    now_ms = epoch_ms()
    stmt = (
        dialect_insert(session, Alert)
        .values(
            rule_id=rule.id,
            device_id=device_id,
            owner_id=rule.owner_id,
            severity=rule.severity,
            state=ACTIVE,
            fired_ms=at_ms,
            value=value,
            live_pending=True,
        )
        .on_conflict_do_nothing(index_elements=["rule_id", "device_id"], index_where=_OPEN)
        .returning(Alert.id)
    )
    alert_id = (await session.execute(stmt)).scalar()
    if alert_id is None:
        return False
    alert = await session.get(Alert, alert_id)
    assert alert is not None
    await _deliveries(session, rule=rule, alert=alert, event="fired", now_ms=now_ms)
    return True


async def clear_alert(
    session: AsyncSession, *, rule: AlertRule, device_id: str, at_ms: int, value: float | None
) -> bool:
    """Clear the open alert of (rule, device), if there is one."""
    result = await session.execute(
        update(Alert)
        .where(
            Alert.rule_id == rule.id,
            Alert.device_id == device_id,
            Alert.state.in_(OPEN_STATES),
        )
        .values(state=CLEARED, cleared_ms=at_ms, clear_value=value, live_pending=True)
        .returning(Alert.id)
    )
    alert_id = result.scalar()
    if alert_id is None:
        return False
    alert = await session.get(Alert, alert_id, populate_existing=True)
    assert alert is not None
    await _deliveries(session, rule=rule, alert=alert, event="cleared", now_ms=epoch_ms())
    return True


async def _fired_earlier(
    session: AsyncSession, *, rule: AlertRule, device_id: str, at_ms: int
) -> None:
    """A late point moved a firing condition's start back (two workers committed the
    device's points out of order): the open alert's time becomes the earlier mark, as if
    the points had come in order. Notifications not yet sent say so too."""
    result = await session.execute(
        update(Alert)
        .where(
            Alert.rule_id == rule.id,
            Alert.device_id == device_id,
            Alert.state.in_(OPEN_STATES),
            Alert.fired_ms > at_ms,
        )
        .values(fired_ms=at_ms, live_pending=True)
        .returning(Alert.id)
    )
    alert_id = result.scalar()
    if alert_id is None:
        return
    unsent = await session.scalars(
        select(Delivery).where(
            Delivery.alert_id == alert_id,
            Delivery.event == "fired",
            Delivery.status == D_PENDING,
            Delivery.attempts == 0,
        )
    )
    for delivery in unsent:
        payload = dict(delivery.payload)
        payload["alert"] = {**payload["alert"], "fired_at": iso_ms(at_ms)}
        delivery.payload = payload


# --- streaming evaluation (the batch writer) ---------------------------------------------


async def evaluate(
    session: AsyncSession, readings: Mapping[str, Sequence[Reading]], *, now_ms: int
) -> Changes:
    """Evaluate the rules of these devices on their new readings, in the writer's
    transaction (after the device rows are updated: that orders concurrent writers).
    Points no newer than the last one evaluated for a (rule, device) change nothing."""
    changes = Changes()
    if not readings:
        return changes
    device_ids = sorted(readings)
    # Data arrived: offline alerts of these devices clear.
    changes.add(await devices_back(session, device_ids=device_ids, at_ms=now_ms))
    # Per (device, key): ts → value, the later document winning a tie.
    series: dict[tuple[str, str], dict[int, float]] = {}
    for device_id, rows in readings.items():
        for r in rows:
            series.setdefault((device_id, r.key), {})[r.ts] = r.value
    keys = sorted({key for _, key in series})
    query = in_scope(
        [AlertRule.enabled.is_(True), AlertRule.kind == THRESHOLD, AlertRule.key.in_(keys)],
        [Device.id.in_(device_ids)],
    )
    pairs = list(await session.execute(query))
    if not pairs:
        return changes
    rules = await _rules(session, (r for r, _ in pairs))
    wanted = sorted({(d, r) for r, d in pairs if r in rules})
    stored: dict[tuple[str, int], tuple[Phase, int]] = {}
    for i in range(0, len(wanted), 500):
        found = await session.execute(
            select(_STATES)
            .where(tuple_(_STATES.c.device_id, _STATES.c.rule_id).in_(wanted[i : i + 500]))
            .order_by(_STATES.c.device_id, _STATES.c.rule_id)
            .with_for_update()
        )
        for m in found.mappings():
            phase = Phase(
                m["phase"], m["since_ms"], m["due_ms"], m["last_ts"], m["last_value"], m["false_ts"]
            )
            stored[(m["device_id"], m["rule_id"])] = (phase, m["version"])
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for device_id, rule_id in wanted:
        rule = rules[rule_id]
        assert rule.key is not None
        points = series.get((device_id, rule.key))
        if not points:
            continue
        known = stored.get((device_id, rule_id))
        state, version = known if known is not None else (Phase(), 0)
        newest = state.last_ts
        # Older points first (they can only extend a pending window), then newer ones.
        late = sorted((ts, v) for ts, v in points.items() if newest is not None and ts <= newest)
        fresh = sorted((ts, v) for ts, v in points.items() if newest is None or ts > newest)
        before = (state.phase, state.since_ms, state.false_ts)
        condition = condition_of(rule)
        for ts, value in late + fresh:
            transition = step(condition, rule.duration_s * 1000, state, ts, value)
            if transition is None:
                continue
            if transition.earlier:
                await _fired_earlier(
                    session, rule=rule, device_id=device_id, at_ms=transition.at_ms
                )
            elif transition.kind == "fire":
                if await open_alert(
                    session,
                    rule=rule,
                    device_id=device_id,
                    at_ms=transition.at_ms,
                    value=transition.value,
                ):
                    changes.fired += 1
            elif await clear_alert(
                session,
                rule=rule,
                device_id=device_id,
                at_ms=transition.at_ms,
                value=transition.value,
            ):
                changes.cleared += 1
        if not fresh and (state.phase, state.since_ms, state.false_ts) == before:
            continue
        row = {
            "device_id": device_id,
            "rule_id": rule_id,
            "phase": state.phase,
            "since_ms": state.since_ms,
            "due_ms": state.due_ms,
            "last_ts": state.last_ts,
            "last_value": state.last_value,
            "false_ts": state.false_ts,
            "wake_ms": _wake(state, now_ms),
            "version": version + 1,
        }
        (updates if known is not None else inserts).append(row)
    if inserts:
        await session.execute(
            dialect_insert(session, AlertState).on_conflict_do_nothing(
                index_elements=["device_id", "rule_id"]
            ),
            inserts,
        )
    if updates:
        # ORM bulk UPDATE by primary key: one executemany.
        await session.execute(update(AlertState), updates)
    return changes


def _wake(state: Phase, now_ms: int) -> int | None:
    if state.phase != PENDING:
        return None
    assert state.due_ms is not None
    assert state.last_ts is not None
    return now_ms + max(0, state.due_ms - state.last_ts)


# --- device status (offline rules) --------------------------------------------------------


async def device_offline(session: AsyncSession, *, device_id: str, at_ms: int) -> Changes:
    """The device said it is offline (its last will, an offline status) or the scheduler
    found it silent: its offline rules fire. Runs in the status change's transaction."""
    changes = Changes()
    query = in_scope(
        [AlertRule.enabled.is_(True), AlertRule.kind == OFFLINE], [Device.id == device_id]
    )
    pairs = list(await session.execute(query))
    rules = await _rules(session, (r for r, _ in pairs))
    for rule_id in sorted(rules):
        if await _fire_offline(session, rule=rules[rule_id], device_id=device_id, at_ms=at_ms):
            changes.fired += 1
    return changes


async def _fire_offline(
    session: AsyncSession,
    *,
    rule: AlertRule,
    device_id: str,
    at_ms: int,
    silent_before: datetime | None = None,
) -> bool:
    await session.execute(
        dialect_insert(session, AlertState)
        .values(device_id=device_id, rule_id=rule.id, phase=IDLE, version=0)
        .on_conflict_do_nothing(index_elements=["device_id", "rule_id"])
    )
    conditions = [
        AlertState.device_id == device_id,
        AlertState.rule_id == rule.id,
        AlertState.phase != FIRING,
    ]
    if silent_before is not None:
        # Still silent now, not only when the scheduler looked.
        conditions.append(
            select(Device.id)
            .where(Device.id == device_id, Device.last_seen < silent_before)
            .exists()
        )
    result = await session.execute(
        update(AlertState)
        .where(*conditions)
        .values(phase=FIRING, since_ms=at_ms, due_ms=at_ms, version=AlertState.version + 1)
        .returning(AlertState.rule_id)
    )
    if result.first() is None:
        return False
    return await open_alert(session, rule=rule, device_id=device_id, at_ms=at_ms, value=None)


async def devices_back(session: AsyncSession, *, device_ids: Sequence[str], at_ms: int) -> Changes:
    """These devices sent data or said they are online: their offline alerts clear."""
    changes = Changes()
    result = await session.execute(
        update(AlertState)
        .where(
            AlertState.device_id.in_(device_ids),
            AlertState.phase == FIRING,
            AlertState.rule_id.in_(select(AlertRule.id).where(AlertRule.kind == OFFLINE)),
        )
        .values(phase=IDLE, since_ms=None, due_ms=None, version=AlertState.version + 1)
        .returning(AlertState.device_id, AlertState.rule_id)
    )
    back = sorted(result.all())
    rules = await _rules(session, (r for _, r in back))
    for device_id, rule_id in back:
        if await clear_alert(
            session, rule=rules[rule_id], device_id=device_id, at_ms=at_ms, value=None
        ):
            changes.cleared += 1
    return changes


# --- the scheduler --------------------------------------------------------------------------


async def fire_due(sessions: async_sessionmaker[AsyncSession], *, now_ms: int) -> Changes:
    """Pending conditions whose duration has passed without a contrary point fire now,
    with the time they became due (the 5-minute mark of "for 5 min"). `now_ms` is server
    time, compared with each state's wake_ms."""
    changes = Changes()
    async with sessions() as session:
        due = list(
            await session.execute(
                select(AlertState.device_id, AlertState.rule_id)
                .where(AlertState.phase == PENDING, AlertState.wake_ms <= now_ms)
                .order_by(AlertState.wake_ms)
                .limit(1000)
            )
        )
    for device_id, rule_id in due:
        # One state per transaction, the conditional UPDATE first: never waiting for a
        # lock while holding another (and SQLite takes its write lock at once).
        async with sessions() as session, session.begin():
            result = await session.execute(
                update(AlertState)
                .where(
                    AlertState.device_id == device_id,
                    AlertState.rule_id == rule_id,
                    AlertState.phase == PENDING,
                    AlertState.wake_ms <= now_ms,
                )
                .values(phase=FIRING, version=AlertState.version + 1)
                .returning(AlertState.due_ms, AlertState.last_value)
            )
            row = result.first()
            if row is None:
                continue
            rule = await session.get(AlertRule, rule_id)
            if rule is None or not rule.enabled:
                continue
            if await open_alert(
                session, rule=rule, device_id=device_id, at_ms=row.due_ms, value=row.last_value
            ):
                changes.fired += 1
    return changes


async def fire_silent(sessions: async_sessionmaker[AsyncSession], *, now_ms: int) -> Changes:
    """Offline rules with a silence limit fire for devices whose data stopped that long
    ago, at the moment the silence reached the limit."""
    changes = Changes()
    async with sessions() as session:
        limits = list(
            await session.scalars(
                select(AlertRule.duration_s)
                .where(
                    AlertRule.kind == OFFLINE,
                    AlertRule.enabled.is_(True),
                    AlertRule.duration_s > 0,
                )
                .distinct()
            )
        )
        silent: list[tuple[int, str, datetime, int]] = []
        for limit_s in limits:
            cutoff = datetime.fromtimestamp((now_ms - limit_s * 1000) / 1000, UTC)
            pairs = in_scope(
                [
                    AlertRule.kind == OFFLINE,
                    AlertRule.enabled.is_(True),
                    AlertRule.duration_s == limit_s,
                ],
                [Device.last_seen.is_not(None), Device.last_seen < cutoff],
            ).subquery()
            rows = await session.execute(
                select(pairs.c.rule_id, pairs.c.device_id, Device.last_seen)
                .join(Device, Device.id == pairs.c.device_id)
                .outerjoin(
                    AlertState,
                    and_(
                        AlertState.device_id == pairs.c.device_id,
                        AlertState.rule_id == pairs.c.rule_id,
                    ),
                )
                .where((AlertState.phase.is_(None)) | (AlertState.phase != FIRING))
            )
            silent += [(r, d, seen, limit_s) for r, d, seen in rows if seen is not None]
    for rule_id, device_id, last_seen, limit_s in silent:
        at_ms = int(last_seen.timestamp() * 1000) + limit_s * 1000
        async with sessions() as session, session.begin():
            rule = await session.get(AlertRule, rule_id)
            if rule is None:
                continue
            cutoff = datetime.fromtimestamp((now_ms - limit_s * 1000) / 1000, UTC)
            if await _fire_offline(
                session, rule=rule, device_id=device_id, at_ms=at_ms, silent_before=cutoff
            ):
                changes.fired += 1
    return changes


async def reset_rule(session: AsyncSession, *, rule: AlertRule, now_ms: int) -> int:
    """The rule changed or was disabled: its open alerts clear (their condition is gone)
    and its evaluation starts afresh. Returns how many alerts were cleared."""
    result = await session.execute(
        update(Alert)
        .where(Alert.rule_id == rule.id, Alert.state.in_(OPEN_STATES))
        .values(state=CLEARED, cleared_ms=now_ms, live_pending=True)
        .returning(Alert.id)
    )
    cleared = len(result.all())
    await session.execute(delete(AlertState).where(AlertState.rule_id == rule.id))
    return cleared
