"""Sensorium: a self-hosted IoT platform for ESP32 sensor fleets."""

__version__ = "0.1.0"
