"""Signal models: reproducible from the seed, physically plausible, and shaped like the
rooms and circuits they stand for."""

from __future__ import annotations

import itertools
import statistics
from datetime import UTC, datetime

import pytest

from sensorium.simulator.signals import (
    ClimateModel,
    EnergyModel,
    SignalModel,
    local_hour,
    local_weekday,
    make_model,
    model_rng,
)

# Monday 2025-11-24 00:00 UTC
MONDAY_MS = int(datetime(2025, 11, 24, tzinfo=UTC).timestamp() * 1000)
MINUTE_MS = 60_000


def run(model: SignalModel, *, hours: float, step_s: float = 60.0) -> list[dict[str, float]]:
    steps = int(hours * 3600 / step_s)
    return [model.sample(MONDAY_MS + int(i * step_s * 1000)) for i in range(steps)]


def series(samples: list[dict[str, float]], key: str) -> list[float]:
    return [s[key] for s in samples]


@pytest.mark.parametrize("profile", ["climate", "energy"])
def test_same_seed_same_readings_other_seed_other_readings(profile: str) -> None:
    def readings(seed: int, index: int) -> list[dict[str, float]]:
        return run(make_model(profile, seed=seed, device=index), hours=2)  # type: ignore[arg-type]

    assert readings(7, 3) == readings(7, 3)
    assert readings(7, 3) != readings(8, 3)
    assert readings(7, 3) != readings(7, 4)


def test_local_time_helpers() -> None:
    assert local_weekday(MONDAY_MS, 0) == 0
    assert local_weekday(MONDAY_MS - 1, 0) == 6  # Sunday 23:59:59.999
    assert local_hour(MONDAY_MS, 0) == 0
    assert local_hour(MONDAY_MS, 3600) == 1
    assert local_weekday(MONDAY_MS, -3600) == 6  # still Sunday an hour west


@pytest.mark.parametrize("seed", range(5))
def test_climate_values_are_plausible_and_humidity_falls_as_temperature_rises(
    seed: int,
) -> None:
    samples = run(ClimateModel(model_rng(seed, 0, "climate")), hours=48)
    temperature = series(samples, "temperature")
    humidity = series(samples, "humidity")
    co2 = series(samples, "co2")
    assert all(12 < t < 32 for t in temperature)
    assert all(5 <= h <= 98 for h in humidity)
    assert all(380 <= c <= 5000 for c in co2)
    assert max(temperature) - min(temperature) > 1.5  # there is a daily cycle
    assert statistics.correlation(temperature, humidity) < -0.6


@pytest.mark.parametrize("seed", range(5))
def test_co2_builds_up_in_working_hours_and_decays_at_night(seed: int) -> None:
    model = ClimateModel(model_rng(seed, 0, "climate"))
    samples = run(model, hours=24)  # a Monday, one sample a minute

    def mean_between(start_h: int, end_h: int) -> float:
        return statistics.fmean(series(samples, "co2")[start_h * 60 : end_h * 60])

    night, afternoon = mean_between(1, 6), mean_between(13, 18)
    assert night < 500  # empty room, ventilated down to outdoor air
    assert afternoon > night + 100
    assert mean_between(22, 24) < afternoon  # decays after everyone left


def test_co2_stays_low_at_the_weekend() -> None:
    model = ClimateModel(model_rng(1, 0, "climate"))
    saturday = MONDAY_MS + 5 * 86_400_000
    co2 = [model.sample(saturday + i * MINUTE_MS)["co2"] for i in range(24 * 60)]
    assert max(co2[120:]) < 500


@pytest.mark.parametrize("seed", range(5))
def test_energy_counter_never_decreases_and_integrates_power(seed: int) -> None:
    model = EnergyModel(model_rng(seed, 0, "energy"))
    samples = run(model, hours=24, step_s=10)
    power = series(samples, "power")
    energy = series(samples, "energy")
    assert all(b >= a for a, b in itertools.pairwise(energy))
    assert energy[-1] > energy[0]
    # The counter is the integral of power: kWh over the day vs the mean power.
    expected_kwh = statistics.fmean(power) * 24 / 1000
    assert energy[-1] - energy[0] == pytest.approx(expected_kwh, rel=0.02)
    assert all(p >= 0 for p in power)
    assert min(power) > 40  # never below the base load (minus noise)
    assert max(power) > min(power) + 80  # appliances switch on and off
    assert all(200 < v < 245 for v in series(samples, "voltage"))
    for s in samples:
        # current follows power at mains voltage (power factor 0.9-0.99)
        assert s["current"] == pytest.approx(s["power"] / s["voltage"], rel=0.12, abs=0.01)


def test_energy_voltage_sags_under_load() -> None:
    model = EnergyModel(model_rng(3, 0, "energy"))
    samples = run(model, hours=24, step_s=10)
    assert statistics.correlation(series(samples, "power"), series(samples, "voltage")) < 0
