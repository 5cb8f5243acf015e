"""Alert evaluation on the database: streaming, as points are stored, and from the
scheduler (duration timers, silence); device status changes drive offline rules.

Who may change a (rule, device)'s state at the same time, and why it stays exactly-once:

* the batch writer, inside its transaction, after it has updated the device rows (on
  PostgreSQL a row lock per device held until commit; SQLite has one writer at a time),
  reading the states `FOR UPDATE`;
* the scheduler, one state per transaction, each change one conditional
  `UPDATE … WHERE phase = … RETURNING` (as control/service.py does command transitions);
* device status changes, under the device row lock `record_status` takes.

Idle is the absence of a state row: most conditions do not hold most of the time, and a
point that does not hold changes nothing, so the writer reads and writes states only for
conditions that are pending or firing, or that one of its points may start. Whether such a
point is late (older than one already evaluated, so it starts nothing) is decided against
the newest point stored before the batch: evaluation runs before the writer merges the
batch into latest_values.

An alert is inserted with `ON CONFLICT DO NOTHING` against the partial unique index "one
open alert per (rule, device)", so even a state that went wrong cannot open a second.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    ARRAY,
    Select,
    Table,
    and_,
    any_,
    bindparam,
    delete,
    func,
    literal,
    select,
    text,
    tuple_,
    union_all,
    update,
)
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
from sensorium.protocol import Reading, Readings
from sensorium.protocol.mac import mac_to_int
from sensorium.telemetry.models import LatestValue, TelemetryKey

_STATES = cast(Table, AlertState.__table__)
# The predicate of the partial unique index, spelt as in the index (ON CONFLICT must
# name it literally for SQLite and PostgreSQL to infer the index).
_OPEN = text("state != 'cleared'")


@dataclass(frozen=True, slots=True)
class RuleView:
    """The columns of a rule that evaluation and notifications read: what the writer
    selects for each batch instead of loading ORM objects."""

    id: int
    owner_id: int
    name: str
    kind: str
    severity: str
    key: str | None
    operator: str | None
    threshold: float | None
    low: float | None
    high: float | None
    clear_threshold: float | None
    duration_s: int

    @property
    def condition(self) -> Condition:
        return condition_of(self)


RULE_COLUMNS = (
    AlertRule.id,
    AlertRule.owner_id,
    AlertRule.name,
    AlertRule.kind,
    AlertRule.severity,
    AlertRule.key,
    AlertRule.operator,
    AlertRule.threshold,
    AlertRule.low,
    AlertRule.high,
    AlertRule.clear_threshold,
    AlertRule.duration_s,
)
# A rule as the ORM loads it or as evaluation selects it: the same attributes.
Rule = AlertRule | RuleView


def _among(session: AsyncSession, column: Any, values: Sequence[Any]) -> Any:
    """`column IN values`; on PostgreSQL `column = ANY(array)`, one parameter however many
    values (an IN list is a parameter each, rendered and bound one by one)."""
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(literal(list(values), ARRAY(column.type)))
    return column.in_(values)


def iso_ms(ms: int | None) -> str | None:
    if ms is None:
        return None
    stamp = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def condition_of(rule: Rule) -> Condition:
    assert rule.operator is not None
    return Condition(rule.operator, rule.threshold, rule.low, rule.high, rule.clear_threshold)


def rule_summary(rule: Rule) -> str:
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
    session: AsyncSession, *, rule: Rule, alert: Alert, event: str, now_ms: int
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
    session: AsyncSession, *, rule: Rule, device_id: str, at_ms: int, value: float | None
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
    session: AsyncSession, *, rule: Rule, device_id: str, at_ms: int, value: float | None
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


async def _fired_earlier(session: AsyncSession, *, rule: Rule, device_id: str, at_ms: int) -> None:
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
    session: AsyncSession,
    readings: Mapping[str, Sequence[Reading]],
    *,
    now_ms: int,
    watch: Watch | None = None,
    incarnations: Mapping[str, Hashable] | None = None,
) -> Changes:
    """Evaluate the rules of these devices on their new readings, in the writer's
    transaction: after the device rows are updated (that orders concurrent writers) and
    before the points are stored (latest_values still holds the newest earlier point).
    Points no newer than the last one evaluated for a (rule, device) change nothing.
    With a `watch` cache, `incarnations` tells each device's registration apart (see
    Watch)."""
    changes = Changes()
    if not readings:
        return changes
    device_ids = sorted(readings)
    keys: set[str] = set()
    for rows in readings.values():
        # Columns know their keys: no pass over every reading of a batch.
        keys.update(rows.names if type(rows) is Readings else {r.key for r in rows})
    if watch is None or incarnations is None:
        watch, incarnations = Watch(), dict.fromkeys(device_ids)
    rules, watching = await watch.lookup(session, device_ids, incarnations)
    if watch.offline_rules:
        # Data arrived: offline alerts of these devices clear.
        changes.add(await devices_back(session, device_ids=device_ids, at_ms=now_ms))
    wanted: set[tuple[str, int]] = {
        (d, r) for d in device_ids for r in watching[d] if rules[r].key in keys
    }
    if not wanted:
        return changes
    stored = await _states_for_update(session, wanted)
    # Per (device, key) that a rule watches: ts -> value, the later document winning a tie.
    watched = {(d, rules[r].key) for d, r in wanted}
    series: dict[tuple[str, str | None], dict[int, float]] = {}
    for device_id in {d for d, _ in wanted}:
        for r in readings[device_id]:
            if (device_id, r.key) in watched:
                series.setdefault((device_id, r.key), {})[r.ts] = r.value
    # Idle is the absence of a state, and the common case: a condition that does not hold
    # changes nothing, so only a point that holds can start something. Whether it is late
    # (and so starts nothing) is decided against the newest point stored before this batch.
    starting: list[tuple[str, int]] = []
    for pair in wanted:
        if pair not in stored:
            rule = rules[pair[1]]
            points = series.get((pair[0], rule.key))
            condition = rule.condition
            if points and any(condition.holds(v) for v in points.values()):
                starting.append(pair)
    newest_before = await _newest_stored(session, {(d, rules[r].key) for d, r in starting})
    inserts: list[tuple[Any, ...]] = []
    updates: list[tuple[Any, ...]] = []
    deletes: list[tuple[str, int]] = []
    for device_id, rule_id in sorted([*stored, *starting]):
        rule = rules[rule_id]
        points = series.get((device_id, rule.key))
        if not points:
            continue
        known = stored.get((device_id, rule_id))
        if known is not None:
            state, version = known
        else:
            newest = newest_before.get((device_id, rule.key))
            state, version = Phase(IDLE, last_ts=newest, false_ts=newest), 0
        newest = state.last_ts
        # Older points first (they can only extend a pending window), then newer ones.
        late = sorted((ts, v) for ts, v in points.items() if newest is not None and ts <= newest)
        fresh = sorted((ts, v) for ts, v in points.items() if newest is None or ts > newest)
        before = (state.phase, state.since_ms, state.false_ts)
        condition = rule.condition
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
        if state.phase == IDLE:
            if known is not None:
                deletes.append((device_id, rule_id))
            continue
        if not fresh and (state.phase, state.since_ms, state.false_ts) == before:
            continue
        row = (
            state.phase,
            state.since_ms,
            state.due_ms,
            state.last_ts,
            state.last_value,
            state.false_ts,
            _wake(state, now_ms),
            version + 1,
        )
        (updates if known is not None else inserts).append((device_id, rule_id, *row))
    if deletes:
        await session.execute(
            delete(AlertState).where(tuple_(AlertState.device_id, AlertState.rule_id).in_(deletes))
        )
    if inserts:
        await session.execute(
            dialect_insert(session, AlertState).on_conflict_do_nothing(
                index_elements=["device_id", "rule_id"]
            ),
            [dict(zip(_STATE_COLUMNS, row, strict=True)) for row in inserts],
        )
    if updates:
        if session.get_bind().dialect.name == "postgresql":
            columns = list(zip(*updates, strict=True))
            await session.execute(
                _PG_UPDATE_STATES, dict(zip(_STATE_COLUMNS, columns, strict=True))
            )
        else:
            names = ("b_device", "b_rule", *_STATE_COLUMNS[2:])
            await session.execute(
                _UPDATE_STATE, [dict(zip(names, row, strict=True)) for row in updates]
            )
    return changes


async def _newest_stored(
    session: AsyncSession, pairs: set[tuple[str, str | None]]
) -> dict[tuple[str, str | None], int]:
    """The newest stored point's ts of each (device, key): in the writer's transaction
    before it merges this batch into latest_values, the newest point evaluated so far."""
    if not pairs:
        return {}
    by_int = {mac_to_int(d): d for d, _ in pairs}
    found = await session.execute(
        select(LatestValue.device, TelemetryKey.name, LatestValue.ts)
        .join(TelemetryKey, TelemetryKey.id == LatestValue.key_id)
        .where(
            LatestValue.device.in_(sorted(by_int)),
            TelemetryKey.name.in_(sorted({k for _, k in pairs if k is not None})),
        )
    )
    newest = {(by_int[device], key): ts for device, key, ts in found}
    return {pair: ts for pair, ts in newest.items() if pair in pairs}


def _watching(device_ids: Sequence[str]) -> Any:
    """(device id, *RULE_COLUMNS) of each enabled threshold rule and each of `device_ids`
    in its scope: listed devices, or all of the owner's."""
    watching = (AlertRule.enabled.is_(True), AlertRule.kind == THRESHOLD)
    listed = (
        select(AlertRuleDevice.device_id, *RULE_COLUMNS)
        .join(AlertRule, AlertRule.id == AlertRuleDevice.rule_id)
        .where(AlertRuleDevice.device_id.in_(device_ids), AlertRule.scope != SCOPE_ALL, *watching)
    )
    everyone = (
        select(Device.id, *RULE_COLUMNS)
        .join(Device, Device.owner_id == AlertRule.owner_id)
        .where(Device.id.in_(device_ids), AlertRule.scope == SCOPE_ALL, *watching)
    )
    return union_all(listed, everyone)


# The rules' generation (see Watch), built once: it is read at every batch.
_GENERATION = select(
    func.count(),
    func.coalesce(func.sum(AlertRule.updated_ms), 0),
    func.coalesce(func.max(AlertRule.id), 0),
    func.count().filter(AlertRule.kind == OFFLINE),
)


class Watch:
    """Which threshold rules watch which devices, kept between batches by a writer: the
    scope query is the costliest part of evaluating a batch, and its answer changes only
    when rules do or a device is registered again.

    A rule change is seen by the rules' generation: their count, the sum of their
    `updated_ms` (which every change moves forward), the highest id and the number of
    offline rules (with none, no offline alert can be open to clear), read at the start
    of each batch; a different generation empties the cache. The generation is read
    before the rules, so a change committed in between is found again next batch. A
    device is cached with its incarnation (the writer passes its owner and registration
    time): one deleted and registered again, by anyone, is looked up afresh. A device
    seen for the first time (an "all devices" rule covers it at once) is looked up too."""

    def __init__(self) -> None:
        self.offline_rules = 0
        self._generation: tuple[Any, ...] | None = None
        self._rules: dict[int, RuleView] = {}
        self._devices: dict[str, tuple[Hashable, tuple[int, ...]]] = {}

    async def lookup(
        self,
        session: AsyncSession,
        device_ids: Sequence[str],
        incarnations: Mapping[str, Hashable],
    ) -> tuple[dict[int, RuleView], dict[str, tuple[int, ...]]]:
        """The rules by id, and the ids of those watching each device."""
        generation = tuple((await session.execute(_GENERATION)).one())
        # Offline rules, enabled or not (only they have offline states to clear).
        self.offline_rules = int(generation[3])
        if generation != self._generation:
            self._generation = generation
            self._rules.clear()
            self._devices.clear()
        missing = [
            d
            for d in device_ids
            if (known := self._devices.get(d)) is None or known[0] != incarnations[d]
        ]
        if missing:
            found: dict[str, list[int]] = {d: [] for d in missing}
            for i in range(0, len(missing), 2000):
                rows = await session.execute(_watching(missing[i : i + 2000]))
                for device_id, rule_id, *columns in rows:
                    if rule_id not in self._rules:
                        self._rules[rule_id] = RuleView(rule_id, *columns)
                    found[device_id].append(rule_id)
            for d in missing:
                self._devices[d] = (incarnations[d], tuple(sorted(found[d])))
        return self._rules, {d: self._devices[d][1] for d in device_ids}


async def _states_for_update(
    session: AsyncSession, wanted: set[tuple[str, int]]
) -> dict[tuple[str, int], tuple[Phase, int]]:
    """The stored states of these (device, rule) pairs, locked until commit, in key order.
    Selected by device and by rule (two IN lists, the primary key's prefix) rather than by
    pairs: a pair list is planned as one OR arm per pair. Pairs outside `wanted` are
    locked too and ignored: those devices' rows are locked by this writer already."""
    devices = sorted({d for d, _ in wanted})
    rule_ids = sorted({r for _, r in wanted})
    stored: dict[tuple[str, int], tuple[Phase, int]] = {}
    for i in range(0, len(devices), 2000):
        found = await session.execute(
            select(
                _STATES.c.device_id,
                _STATES.c.rule_id,
                _STATES.c.phase,
                _STATES.c.since_ms,
                _STATES.c.due_ms,
                _STATES.c.last_ts,
                _STATES.c.last_value,
                _STATES.c.false_ts,
                _STATES.c.version,
            )
            .where(_STATES.c.device_id.in_(devices[i : i + 2000]), _STATES.c.rule_id.in_(rule_ids))
            .order_by(_STATES.c.device_id, _STATES.c.rule_id)
            .with_for_update()
        )
        for device_id, rule_id, *phase, version in found:
            if (device_id, rule_id) in wanted:
                stored[(device_id, rule_id)] = (Phase(*phase), version)
    return stored


_STATE_COLUMNS = (
    "device_id",
    "rule_id",
    "phase",
    "since_ms",
    "due_ms",
    "last_ts",
    "last_value",
    "false_ts",
    "wake_ms",
    "version",
)
# The changed states, one executemany (SQLite) ...
_UPDATE_STATE = (
    update(_STATES)
    .where(_STATES.c.device_id == bindparam("b_device"), _STATES.c.rule_id == bindparam("b_rule"))
    .values({c: bindparam(c) for c in _STATE_COLUMNS[2:]})
)
# ... or one statement over arrays (PostgreSQL: a thousand states are one executor run
# instead of a thousand, and ten parameters to bind instead of ten thousand).
_PG_UPDATE_STATES = text(
    """
    UPDATE alert_states AS s
    SET phase = v.phase, since_ms = v.since_ms, due_ms = v.due_ms, last_ts = v.last_ts,
        last_value = v.last_value, false_ts = v.false_ts, wake_ms = v.wake_ms,
        version = v.version
    FROM unnest(
        CAST(:device_id AS varchar[]), CAST(:rule_id AS integer[]), CAST(:phase AS varchar[]),
        CAST(:since_ms AS bigint[]), CAST(:due_ms AS bigint[]), CAST(:last_ts AS bigint[]),
        CAST(:last_value AS double precision[]), CAST(:false_ts AS bigint[]),
        CAST(:wake_ms AS bigint[]), CAST(:version AS bigint[])
    ) AS v(device_id, rule_id, phase, since_ms, due_ms, last_ts, last_value, false_ts,
           wake_ms, version)
    WHERE s.device_id = v.device_id AND s.rule_id = v.rule_id
    """
)


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
            _among(session, AlertState.device_id, device_ids),
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
