"""How known keys are displayed; unknown keys are shown raw."""

from __future__ import annotations

from typing import TypedDict


class Unit(TypedDict):
    unit: str
    digits: int
    label: str


UNITS: dict[str, Unit] = {
    "temperature": {"unit": "°C", "digits": 1, "label": "Temperature"},
    "humidity": {"unit": "%", "digits": 0, "label": "Humidity"},
    "co2": {"unit": "ppm", "digits": 0, "label": "CO₂"},
    "power": {"unit": "W", "digits": 0, "label": "Power"},
    "energy": {"unit": "kWh", "digits": 2, "label": "Energy"},
    "voltage": {"unit": "V", "digits": 1, "label": "Voltage"},
    "current": {"unit": "A", "digits": 2, "label": "Current"},
    "rssi": {"unit": "dBm", "digits": 0, "label": "Signal"},
    "pressure": {"unit": "hPa", "digits": 0, "label": "Pressure"},
}
