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


def test_a_late_point_moves_a_firing_window_back() -> None:
    """Two workers commit out of order: the point at 16 fires (window from 6) before the
    ones at 4 and 5 are seen; 5 moves the mark back to 15, 3 is before the contrary 4."""
    state = Phase()
    fired = run(CO2, 10, [(2, 900), (6, 1300), (16, 1300)], state)
    assert fired == [Transition("fire", 16, 1300)]
    assert run(CO2, 10, [(4, 900)], state) == []
    assert state.false_ts == 4
    assert run(CO2, 10, [(5, 1300)], state) == [Transition("fire", 15, 1300, earlier=True)]
    assert (state.phase, state.since_ms, state.due_ms) == ("firing", 5, 15)
    assert run(CO2, 10, [(3, 1300), (5, 1300), (7, 1300)], state) == []
    assert (state.phase, state.since_ms, state.due_ms) == ("firing", 5, 15)
    # Once cleared, late points change nothing.
    assert run(CO2, 10, [(20, 900)], state) == [Transition("clear", 20, 900)]
    assert run(CO2, 10, [(1, 1300), (19, 1300)], state) == []


def test_a_late_contrary_point_before_the_window_blocks_extending_it() -> None:
    state = Phase()
    run(CO2, 10, [(1, 900), (6, 1300)], state)
    assert run(CO2, 10, [(4, 900)], state) == []
    assert run(CO2, 10, [(3, 1300), (5, 1300)], state) == []
    assert (state.phase, state.since_ms, state.due_ms, state.false_ts) == ("pending", 5, 15, 4)


def _mark(points: list[tuple[int, float]], batches: list[list[int]]) -> list[int]:
    """The alert times after applying `batches` of point indexes (each batch late points
    first, then fresh ones, as the engine does), "earlier" moving the open alert back."""
    state = Phase()
    marks: list[int] = []
    for batch in batches:
        newest = state.last_ts
        chosen = sorted(points[i] for i in batch)
        late = [p for p in chosen if newest is not None and p[0] <= newest]
        fresh = [p for p in chosen if newest is None or p[0] > newest]
        for ts, value in late + fresh:
            t = step(Condition(">", 1200), 10_000, state, ts, value)
            if t is not None and t.earlier:
                marks[-1] = min(marks[-1], t.at_ms)
            elif t is not None and t.kind == "fire":
                marks.append(t.at_ms)
    return marks


def test_two_workers_in_any_order_fire_at_the_in_order_mark() -> None:
    """Below for 5 s, then above: whichever way two workers split the points, batch them
    and interleave their commits, the one alert ends at 15 s (as if in order)."""
    import random

    points = [(i * 1000, 1300.0 if i >= 5 else 900.0) for i in range(30)]
    assert _mark(points, [[i] for i in range(30)]) == [15_000]
    rng = random.Random(8)
    for _ in range(3000):
        workers: list[list[list[int]]] = [[], []]
        for i in range(30):
            mine = workers[rng.random() < 0.5]
            if not mine or rng.random() < 0.4:
                mine.append([])
            mine[-1].append(i)
        batches: list[list[int]] = []
        while workers[0] or workers[1]:
            pick = rng.random() < 0.5 if workers[0] and workers[1] else bool(workers[1])
            batches.append(workers[pick].pop(0))
        assert _mark(points, batches) == [15_000], batches
