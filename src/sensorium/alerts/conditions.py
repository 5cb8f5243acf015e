"""The threshold state machine, free of the database: what a rule's condition says about
a value, and how a (rule, device) moves between idle, pending and firing as points come.

A condition "holds for duration" when every point from the first one that satisfied it
up to a point at least `duration` later satisfied it too; the alert fires at that mark
(`since + duration`), whichever point or timer notices it. An open alert clears at the
first point that meets the clear condition (the hysteresis threshold when there is one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sensorium.alerts.models import FIRING, IDLE, PENDING

OPERATORS = (">", ">=", "<", "<=", "==", "!=", "outside", "inside")
RANGE_OPERATORS = ("outside", "inside")
# Operators a hysteresis threshold makes sense for: the alert clears on the other side.
ABOVE = (">", ">=")
BELOW = ("<", "<=")


@dataclass(frozen=True, slots=True)
class Condition:
    operator: str
    threshold: float | None = None
    low: float | None = None
    high: float | None = None
    clear_threshold: float | None = None

    def holds(self, value: float) -> bool:
        op = self.operator
        if op in RANGE_OPERATORS:
            assert self.low is not None
            assert self.high is not None
            inside = self.low <= value <= self.high
            return inside if op == "inside" else not inside
        t = self.threshold
        assert t is not None
        if op == ">":
            return value > t
        if op == ">=":
            return value >= t
        if op == "<":
            return value < t
        if op == "<=":
            return value <= t
        if op == "==":
            return value == t
        return value != t

    def clears(self, value: float) -> bool:
        """Whether an open alert clears at this value."""
        c = self.clear_threshold
        if c is None:
            return not self.holds(value)
        return value < c if self.operator in ABOVE else value > c


@dataclass(slots=True)
class Phase:
    """The persisted evaluation state of one (rule, device)."""

    phase: str = IDLE
    since_ms: int | None = None
    due_ms: int | None = None
    last_ts: int | None = None
    last_value: float | None = None
    # The newest point at which the condition was false (or the alert cleared): a late
    # point after it may still extend a pending window back.
    false_ts: int | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    kind: Literal["fire", "clear"]
    at_ms: int
    value: float
    # A fire of a condition already firing: a late point showed it began before it was
    # thought to, and `at_ms` is the earlier mark the open alert moves back to. (Taken
    # for a new fire, it is harmless: the open alert stays as it is.)
    earlier: bool = False


def step(
    condition: Condition, duration_ms: int, state: Phase, ts: int, value: float
) -> Transition | None:
    """Apply one point to `state`; returns what happened. Points come in time order
    per device and key, except when workers commit out of order or a device backfills."""
    if state.last_ts is not None and ts <= state.last_ts:
        return _late(condition, duration_ms, state, ts, value)
    state.last_ts = ts
    state.last_value = value
    if state.phase == FIRING:
        if condition.clears(value):
            state.phase, state.since_ms, state.due_ms = IDLE, None, None
            state.false_ts = ts
            return Transition("clear", ts, value)
        return None
    if not condition.holds(value):
        state.phase, state.since_ms, state.due_ms = IDLE, None, None
        state.false_ts = ts
        return None
    if state.phase == IDLE:
        state.phase, state.since_ms, state.due_ms = PENDING, ts, ts + duration_ms
    assert state.due_ms is not None
    if ts >= state.due_ms:
        # due_ms stays: it is when the alert fired.
        state.phase = FIRING
        return Transition("fire", state.due_ms, value)
    return None


def _late(
    condition: Condition, duration_ms: int, state: Phase, ts: int, value: float
) -> Transition | None:
    """A point older than the newest one seen (two workers committed a device's points out
    of order, or a device backfills). A contrary one is remembered (no later point may
    extend a window back across it); inside a pending window it starts the window again.
    One that holds, after the last contrary point and before the window began, moves the
    window's start back: a pending window may now be complete, and a firing one fired
    earlier than it was opened (an `earlier` fire: the open alert's time moves back; the
    alert fired on the points it had, and it stays). A point seen before changes nothing, so a
    redelivered message is harmless."""
    if state.phase == IDLE or state.since_ms is None:
        if not condition.holds(value):
            state.false_ts = max(state.false_ts or ts, ts)
        return None
    assert state.last_ts is not None
    if not condition.holds(value):
        state.false_ts = max(state.false_ts or ts, ts)
        if state.phase == PENDING and ts >= state.since_ms:
            # A contrary point inside the window: it starts again after it, at the
            # newest point (the ones in between are not known here).
            if ts == state.last_ts:
                state.phase, state.since_ms, state.due_ms = IDLE, None, None
            else:
                state.since_ms, state.due_ms = state.last_ts, state.last_ts + duration_ms
        return None
    if ts >= state.since_ms or (state.false_ts is not None and ts <= state.false_ts):
        return None
    state.since_ms, state.due_ms = ts, ts + duration_ms
    if state.phase == FIRING:
        return Transition("fire", state.due_ms, value, earlier=True)
    if state.last_ts >= state.due_ms:
        # The newer points that held already cover the whole duration.
        state.phase = FIRING
        assert state.last_value is not None
        return Transition("fire", state.due_ms, state.last_value)
    return None
