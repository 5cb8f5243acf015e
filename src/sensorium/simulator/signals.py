"""Seeded, pure signal models of what a simulated device measures.

A model is a function of its seed and the timestamps it is asked for: the same seed and
the same sequence of timestamps give the same readings, on any machine. Local time (for
the daily cycle and working hours) comes from `utc_offset_s`, never from the host clock.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Final, Literal, Protocol

Profile = Literal["climate", "energy"]
PROFILES: Final[tuple[Profile, ...]] = ("climate", "energy")

_DAY_S: Final = 86_400
# 1970-01-01 was a Thursday; with Monday = 0 that makes day 0 weekday 3.
_EPOCH_WEEKDAY: Final = 3
# Steps are bounded so a long pause (a suspended laptop) cannot produce absurd jumps.
_MAX_STEP_S: Final = 3600.0


class SignalModel(Protocol):
    """What one device measures; `sample` is called with strictly increasing timestamps."""

    @property
    def profile(self) -> Profile: ...

    def sample(self, ts_ms: int) -> dict[str, float]: ...


def model_rng(seed: int, device: int | str, profile: Profile) -> random.Random:
    """The random stream of one device (its index or id) in a fleet seeded with `seed`."""
    # String seeds are hashed with SHA-512: stable across processes and Python builds.
    return random.Random(f"sensorium-sim/{seed}/{device}/{profile}")


def make_model(
    profile: Profile, *, seed: int, device: int | str, utc_offset_s: int = 0
) -> SignalModel:
    rng = model_rng(seed, device, profile)
    if profile == "climate":
        return ClimateModel(rng, utc_offset_s=utc_offset_s)
    return EnergyModel(rng, utc_offset_s=utc_offset_s)


def local_hour(ts_ms: int, utc_offset_s: int) -> float:
    """Hour of the local day, 0 <= h < 24."""
    return ((ts_ms / 1000 + utc_offset_s) % _DAY_S) / 3600


def local_weekday(ts_ms: int, utc_offset_s: int) -> int:
    """Monday = 0 … Sunday = 6, local time."""
    return (int((ts_ms / 1000 + utc_offset_s) // _DAY_S) + _EPOCH_WEEKDAY) % 7


class _Noise:
    """Ornstein-Uhlenbeck noise: smooth drift with standard deviation `sigma` and
    correlation time `tau_s`, exact for any step length (so irregular sampling and
    backfill gaps do not change its statistics)."""

    def __init__(self, rng: random.Random, sigma: float, tau_s: float) -> None:
        self._rng = rng
        self._sigma = sigma
        self._tau_s = tau_s
        self.value = rng.gauss(0.0, sigma)

    def step(self, dt_s: float) -> float:
        decay = math.exp(-dt_s / self._tau_s)
        spread = self._sigma * math.sqrt(1.0 - decay * decay)
        self.value = self.value * decay + self._rng.gauss(0.0, spread)
        return self.value


class ClimateModel:
    """An indoor room: temperature with a daily cycle, relative humidity that falls as the
    room warms (the water content stays, the saturation pressure rises), and CO2 that
    climbs while people are in during working hours and decays with ventilation."""

    CO2_PER_PERSON_L_S: Final = 0.0052  # exhaled CO2 of a person at office work
    MIN_CO2: Final = 380.0
    MAX_CO2: Final = 5000.0

    def __init__(self, rng: random.Random, *, utc_offset_s: int = 0) -> None:
        self._rng = rng
        self._offset = utc_offset_s
        self.base_temp = rng.uniform(19.5, 22.5)
        self.temp_swing = rng.uniform(1.0, 3.0)
        self.warmest_hour = rng.uniform(14.0, 17.0)
        self.mean_humidity = rng.uniform(35.0, 55.0)
        # Roughly -4.5 %RH per °C at constant absolute humidity near 21 °C / 45 %RH.
        self.humidity_per_degree = rng.uniform(3.0, 5.0)
        self.room_m3 = rng.uniform(30.0, 120.0)
        self.air_changes_h = rng.uniform(0.5, 2.5)
        self.max_people = rng.randint(1, 8)
        self.outdoor_co2 = rng.uniform(400.0, 440.0)
        self._temp_noise = _Noise(rng, sigma=0.15, tau_s=900.0)
        self._humidity_noise = _Noise(rng, sigma=1.0, tau_s=1800.0)
        self.people = 0
        self.co2 = self.outdoor_co2
        self._last_ts: int | None = None

    @property
    def profile(self) -> Profile:
        return "climate"

    def working(self, ts_ms: int) -> bool:
        return (
            local_weekday(ts_ms, self._offset) < 5 and 8.0 <= local_hour(ts_ms, self._offset) < 18.0
        )

    def sample(self, ts_ms: int) -> dict[str, float]:
        first = self._last_ts is None
        dt = _step(self._last_ts, ts_ms)
        self._last_ts = ts_ms
        rng = self._rng
        # Occupancy changes on average every 10 minutes: people come and go in working
        # hours, the room empties outside them.
        if first or rng.random() < 1.0 - math.exp(-dt / 600.0):
            self.people = (
                rng.randint(max(1, self.max_people // 3), self.max_people)
                if self.working(ts_ms)
                else 0
            )
        hour = local_hour(ts_ms, self._offset)
        cycle = math.cos(2 * math.pi * (hour - self.warmest_hour) / 24)
        temperature = (
            self.base_temp
            + self.temp_swing * cycle
            + 0.12 * self.people
            + self._temp_noise.step(dt)
        )
        humidity = (
            self.mean_humidity
            - self.humidity_per_degree * (temperature - self.base_temp)
            + self._humidity_noise.step(dt)
        )
        # Well-mixed room: dC/dt = G·people/V - λ·(C - outdoor), integrated exactly.
        rate = self.air_changes_h / 3600
        source = self.CO2_PER_PERSON_L_S * self.people / (self.room_m3 * 1000) * 1e6
        steady = self.outdoor_co2 + source / rate
        if first:
            # Switched on in a room that has been like this for a while.
            self.co2 = self.outdoor_co2 + (steady - self.outdoor_co2) * rng.uniform(0.5, 1.0)
        self.co2 = steady + (self.co2 - steady) * math.exp(-rate * dt)
        measured_co2 = self.co2 + rng.gauss(0.0, 8.0)  # NDIR sensor noise
        return {
            "temperature": round(temperature, 2),
            "humidity": round(_clamp(humidity, 5.0, 98.0), 1),
            "co2": round(_clamp(measured_co2, self.MIN_CO2, self.MAX_CO2)),
        }


@dataclass(slots=True)
class Appliance:
    """A load that switches on and off at random (exponential on/off durations), only
    switching on between `from_hour` and `to_hour` local time."""

    name: str
    watts: float
    mean_on_s: float
    mean_off_s: float
    from_hour: float = 0.0
    to_hour: float = 24.0
    on: bool = False

    def step(self, rng: random.Random, dt_s: float, hour: float) -> None:
        if self.on:
            if rng.random() < 1.0 - math.exp(-dt_s / self.mean_on_s):
                self.on = False
        elif self.from_hour <= hour < self.to_hour and rng.random() < 1.0 - math.exp(
            -dt_s / self.mean_off_s
        ):
            self.on = True


class EnergyModel:
    """A household circuit behind an energy meter (SCT-013 style): a base load that is
    higher in the evening, appliances switching on and off, measurement noise; power (W),
    the meter's energy counter (kWh, never decreasing), mains voltage sagging with the
    load, and current."""

    def __init__(self, rng: random.Random, *, utc_offset_s: int = 0) -> None:
        self._rng = rng
        self._offset = utc_offset_s
        self.base_watts = rng.uniform(60.0, 250.0)
        self.nominal_volts = rng.uniform(228.0, 234.0)
        self.line_ohms = rng.uniform(0.1, 0.4)
        self.power_factor = rng.uniform(0.9, 0.99)
        self.energy_kwh = rng.uniform(100.0, 20_000.0)
        self.appliances = [
            Appliance("fridge", rng.uniform(90.0, 150.0), 900.0, 1800.0, on=rng.random() < 0.33)
        ]
        candidates = (
            Appliance("kettle", rng.uniform(1800.0, 2200.0), 150.0, 3 * 3600.0, 6.0, 23.0),
            Appliance("oven", rng.uniform(1800.0, 2500.0), 2400.0, 6 * 3600.0, 17.0, 20.0),
            Appliance("tv", rng.uniform(80.0, 200.0), 2 * 3600.0, 2 * 3600.0, 18.0, 23.5),
            Appliance("washer", rng.uniform(400.0, 2000.0), 3600.0, 12 * 3600.0, 8.0, 21.0),
            Appliance("heater", rng.uniform(1000.0, 2000.0), 1200.0, 2400.0, 6.0, 22.0),
        )
        self.appliances += [a for a in candidates if rng.random() < 0.6]
        self._volt_noise = _Noise(rng, sigma=1.5, tau_s=1800.0)
        self.power = 0.0
        # Behind the device's relay: switched off, nothing flows (the appliances keep
        # their own on/off cycles and come back as they are when it closes again).
        self.powered = True
        self._last_ts: int | None = None

    @property
    def profile(self) -> Profile:
        return "energy"

    def sample(self, ts_ms: int) -> dict[str, float]:
        first = self._last_ts is None
        dt = _step(self._last_ts, ts_ms)
        self._last_ts = ts_ms
        rng = self._rng
        hour = local_hour(ts_ms, self._offset)
        for appliance in self.appliances:
            appliance.step(rng, dt, hour)
        evening = 1.0 + 0.4 * math.exp(-(((hour - 20.0) / 2.5) ** 2))
        load = self.base_watts * evening + sum(a.watts for a in self.appliances if a.on)
        power = max(0.0, load * (1.0 + rng.gauss(0.0, 0.01)) + rng.gauss(0.0, 2.0))
        if not self.powered:
            power = 0.0
        # The meter integrates what flowed since the last sample (trapezoid rule).
        previous = power if first else self.power
        self.energy_kwh += (previous + power) / 2 * dt / 3_600_000
        self.power = power
        volts = self.nominal_volts + self._volt_noise.step(dt)
        volts -= self.line_ohms * power / (volts * self.power_factor)
        amps = power / (volts * self.power_factor)
        return {
            "power": round(power, 1),
            "energy": round(self.energy_kwh, 4),
            "voltage": round(volts, 1),
            "current": round(amps, 3),
        }


def _step(last_ts: int | None, ts_ms: int) -> float:
    """Seconds since the previous sample, bounded; the first sample gets a nominal step."""
    if last_ts is None:
        return 1.0
    return min(max((ts_ms - last_ts) / 1000, 0.0), _MAX_STEP_S)


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)
