"""The system fixtures (a real Mosquitto per test, the app with in-process MQTT ingest)
for the simulator's tests."""

from tests.system.conftest import broker, mqtt_api

__all__ = ["broker", "mqtt_api"]
