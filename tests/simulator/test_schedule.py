"""Outage schedules: when a simulated device drops off the network."""

from __future__ import annotations

import math
import random

import pytest

from sensorium.simulator.fleet import FleetConfig, OutageSchedule


def offline_share(schedule: OutageSchedule, horizon_s: float, step_s: float = 1.0) -> float:
    steps = int(horizon_s / step_s)
    return sum(schedule.offline_at(i * step_s) for i in range(steps)) / steps


@pytest.mark.parametrize("ratio", [0.1, 0.3])
def test_random_outages_take_the_requested_share_of_time(ratio: float) -> None:
    schedule = OutageSchedule.random(random.Random(1), ratio=ratio, mean_outage_s=30)
    assert offline_share(schedule, 200_000) == pytest.approx(ratio, abs=0.03)


def test_random_outages_are_reproducible() -> None:
    def windows(seed: int) -> list[float]:
        schedule = OutageSchedule.random(random.Random(seed), ratio=0.2, mean_outage_s=10)
        t, changes = 0.0, []
        for _ in range(20):
            t = schedule.next_change(t)
            changes.append(t)
        return changes

    assert windows(4) == windows(4)
    assert windows(4) != windows(5)


def test_explicit_windows_and_next_change() -> None:
    schedule = OutageSchedule([(2.0, 3.0), (5.0, 6.5)])
    assert [schedule.offline_at(t) for t in (0, 1.9, 2.0, 2.9, 3.0, 4, 5, 6.4, 6.5, 99)] == [
        False, False, True, True, False, False, True, True, False, False,
    ]  # fmt: skip
    fresh = OutageSchedule([(2.0, 3.0), (5.0, 6.5)])
    assert [fresh.next_change(t) for t in (0.0, 2.5, 3.0, 5.0, 7.0)] == [
        2.0, 3.0, 5.0, 6.5, math.inf,
    ]  # fmt: skip
    never = OutageSchedule.random(random.Random(1), ratio=0, mean_outage_s=30)
    assert not never.offline_at(1e9)


def test_config_refuses_a_device_that_is_never_online() -> None:
    with pytest.raises(ValueError, match="offline_ratio"):
        FleetConfig(offline_ratio=1.0)
