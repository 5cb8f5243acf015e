"""The threshold state machine on its own: conditions, durations, hysteresis, late points."""

from __future__ import annotations

import pytest

from sensorium.alerts.conditions import Condition, Phase, Transition, step

CO2 = Condition(">", 1200, clear_threshold=1000)


def run(
    condition: Condition, duration_ms: int, points: list[tuple[int, float]], state: Phase
) -> list[Transition]:
    out = []
    for ts, value in points:
        transition = step(condition, duration_ms, state, ts, value)
        if transition is not None:
            out.append(transition)
    return out


@pytest.mark.parametrize(
    ("condition", "value", "holds"),
    [
        (Condition(">", 5), 5, False),
        (Condition(">", 5), 5.01, True),
        (Condition(">=", 5), 5, True),
        (Condition("<", 5), 5, False),
        (Condition("<=", 5), 5, True),
        (Condition("==", 1), 1, True),
        (Condition("==", 1), 0, False),
        (Condition("!=", 1), 0, True),
        (Condition("inside", low=2, high=8), 2, True),
        (Condition("inside", low=2, high=8), 8.5, False),
        (Condition("outside", low=2, high=8), 8, False),
        (Condition("outside", low=2, high=8), 1.9, True),
    ],
)
def test_operators(condition: Condition, value: float, holds: bool) -> None:
    assert condition.holds(value) is holds


def test_hysteresis_clears_only_past_the_clear_threshold() -> None:
    assert not CO2.clears(1100)
    assert not CO2.clears(1000)
    assert CO2.clears(999)
    below = Condition("<", -18, clear_threshold=-15)
    assert not below.clears(-16)
    assert below.clears(-14)
    # Without one, the alert clears as soon as the condition is false.
    assert Condition(">", 1200).clears(1200)


def test_duration_must_hold_continuously() -> None:
    state = Phase()
    assert run(CO2, 300, [(0, 1300), (100, 1300), (200, 1100), (300, 1300)], state) == []
    assert (state.phase, state.since_ms, state.due_ms) == ("pending", 300, 600)
    assert run(CO2, 300, [(599, 1300), (650, 1250)], state) == [Transition("fire", 600, 1250)]
    # Firing: the band between 1000 and 1200 keeps it open, below 1000 clears.
    assert run(CO2, 300, [(700, 1100), (800, 1300), (900, 1000)], state) == []
    assert run(CO2, 300, [(1000, 999)], state) == [Transition("clear", 1000, 999)]
    assert (state.phase, state.false_ts) == ("idle", 1000)


def test_zero_duration_fires_at_the_first_point() -> None:
    state = Phase()
    assert run(CO2, 0, [(5, 1201)], state) == [Transition("fire", 5, 1201)]


def test_a_late_point_extends_a_pending_window_back() -> None:
    """Two workers commit a device's points out of order: 2 before 1."""
    state = Phase()
    assert run(CO2, 10, [(2, 1300)], state) == []
    assert run(CO2, 10, [(1, 1300)], state) == []
    assert (state.since_ms, state.due_ms, state.last_ts) == (1, 11, 2)
    assert run(CO2, 10, [(11, 1300)], state) == [Transition("fire", 11, 1300)]


def test_a_late_point_that_covers_the_duration_fires() -> None:
    state = Phase()
    run(CO2, 10, [(5, 1300), (12, 1300)], state)
    assert run(CO2, 10, [(2, 1300)], state) == [Transition("fire", 12, 1300)]


def test_late_points_before_the_last_false_one_or_seen_before_change_nothing() -> None:
    state = Phase()
    run(CO2, 10, [(1, 1300), (3, 900), (5, 1300)], state)
    assert run(CO2, 10, [(2, 1300)], state) == []  # before the contrary point at 3
    assert run(CO2, 10, [(4, 1100)], state) == []  # a late contrary point
    assert run(CO2, 10, [(5, 1300)], state) == []  # redelivered
    assert (state.phase, state.since_ms, state.due_ms) == ("pending", 5, 15)


def test_a_late_contrary_point_inside_the_window_restarts_it() -> None:
    state = Phase()
    run(CO2, 10, [(1, 1300), (4, 1300), (8, 1300)], state)
    assert run(CO2, 10, [(6, 1100)], state) == []
    assert (state.phase, state.since_ms, state.due_ms, state.false_ts) == ("pending", 8, 18, 6)
    assert run(CO2, 10, [(12, 1300)], state) == []
    assert run(CO2, 10, [(18, 1300)], state) == [Transition("fire", 18, 1300)]
