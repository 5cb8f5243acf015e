"""DHT22 (AM2302) temperature/humidity sensor through MicroPython's `dht` module.

A missing or failing sensor times out (OSError); that is logged once, not published.
Values outside the sensor's range are a bad read, not a measurement.
"""

import time

# The DHT22 needs two seconds between reads; a faster read returns the previous one.
MIN_READ_INTERVAL_MS = 2000
TEMPERATURE_RANGE = (-40.0, 80.0)
HUMIDITY_RANGE = (0.0, 100.0)


def _in_range(value, bounds):
    kind = type(value)
    return (kind is int or kind is float) and bounds[0] <= value <= bounds[1]


def check(temperature, humidity):
    """The reading as telemetry values, or None when it cannot be real."""
    if not _in_range(temperature, TEMPERATURE_RANGE) or not _in_range(humidity, HUMIDITY_RANGE):
        return None
    return {"temperature": round(temperature, 1), "humidity": round(humidity, 1)}


class DHT22:
    def __init__(self, sensor, log):
        """`sensor`: a `dht.DHT22(machine.Pin(n))`."""
        self.sensor = sensor
        self.log = log
        self._failing = False
        self._last = None
        self._last_at = 0

    def read(self):
        now = time.ticks_ms()
        if self._last is not None and time.ticks_diff(now, self._last_at) < MIN_READ_INTERVAL_MS:
            return dict(self._last)
        try:
            self.sensor.measure()
            values = check(self.sensor.temperature(), self.sensor.humidity())
            if values is None:
                raise ValueError("implausible reading")
        except (OSError, ValueError) as exc:
            self._last = None
            if not self._failing:
                self.log.warn("dht22: no reading (%s); is it connected?" % (exc,))
            self._failing = True
            return {}
        if self._failing:
            self.log.info("dht22: readings are back")
            self._failing = False
        self._last = values
        self._last_at = now
        return dict(values)
