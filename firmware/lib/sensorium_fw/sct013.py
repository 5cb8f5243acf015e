"""SCT-013 current clamp on an ESP32 ADC: RMS current over whole mains cycles, apparent
power with a configured mains voltage, and an energy counter that survives reboots.

Wiring: the clamp's output rides on a mid-supply bias (two resistors and a capacitor,
see firmware/README.md), so the ADC sees bias ± signal; the mean over whole cycles is the
bias, the RMS of what remains is the clamp's output voltage. `calibration` is amperes
per volt of that output (30 for an SCT-013-030: 1 V at 30 A; 2000 / R_burden for the
current-output SCT-013-000).
"""

import time

import micropython

from sensorium_fw import store

DEFAULT_SAMPLES_PER_CYCLE = 40


def mean_and_rms(samples):
    """(mean, RMS about the mean) of a sequence of samples. Two passes, because the
    single-precision floats of an ESP32 lose everything in sum(x²) - n·mean²."""
    n = len(samples)
    if n == 0:
        raise ValueError("no samples")
    total = 0
    for x in samples:
        total += x
    mean = total / n
    squares = 0.0
    for x in samples:
        d = x - mean
        squares += d * d
    return mean, (squares / n) ** 0.5


def current_a(rms_volts, calibration, noise_floor_a=0.0):
    """The clamp's RMS current; readings below the noise floor are no load (0 A)."""
    amps = rms_volts * calibration
    return 0.0 if amps < noise_floor_a else amps


def power_w(voltage_rms, current_rms):
    """Apparent power V_rms x I_rms: without sampling the voltage the power factor is
    unknown, which is what a clamp-only meter reports."""
    return voltage_rms * current_rms


def window(mains_hz, cycles, samples_per_cycle=DEFAULT_SAMPLES_PER_CYCLE):
    """(sample count, sample period µs) spanning exactly `cycles` mains cycles."""
    period_us = 1000000 // (mains_hz * samples_per_cycle)
    return cycles * samples_per_cycle, period_us


class EnergyMeter:
    """Energy in integer joules (a float32 counter stops counting small increments once
    it is large), persisted to `path` every `save_every_s` seconds and on `save()`."""

    def __init__(self, path, save_every_s=300):
        self.path = path
        self.save_every_ms = save_every_s * 1000
        self.joules = 0
        self._fraction = 0.0
        self._saved_at = time.ticks_ms()
        self._saved_joules = 0
        saved = store.read_json(path, {})
        # A new device, or a file torn by a power cut: start from zero.
        joules = saved.get("joules") if type(saved) is dict else None
        if type(joules) is int and joules >= 0:
            self.joules = joules
        self._saved_joules = self.joules

    @property
    def kwh(self):
        return self.joules / 3600000

    def add(self, watts, elapsed_ms):
        if watts <= 0 or elapsed_ms <= 0:
            return
        exact = watts * elapsed_ms / 1000 + self._fraction
        whole = int(exact)
        self._fraction = exact - whole
        self.joules += whole
        if time.ticks_diff(time.ticks_ms(), self._saved_at) >= self.save_every_ms:
            self.save()

    def save(self):
        self._saved_at = time.ticks_ms()
        if self.joules == self._saved_joules:
            return
        store.write_json(self.path, {"joules": self.joules})
        self._saved_joules = self.joules


class SCT013:
    def __init__(
        self,
        adc,
        energy,
        log,
        calibration=30.0,
        voltage=230.0,
        mains_hz=50,
        cycles=10,
        samples_per_cycle=DEFAULT_SAMPLES_PER_CYCLE,
        noise_floor_a=0.05,
        vref=3.3,
    ):
        """`adc`: a `machine.ADC(Pin(n), atten=ADC.ATTN_11DB)`; `read_uv()` (calibrated
        microvolts) is used when the port has it, else `read_u16()` scaled by `vref`."""
        self.adc = adc
        self.energy = energy
        self.log = log
        self.calibration = calibration
        self.voltage = voltage
        self.noise_floor_a = noise_floor_a
        self.count, self.period_us = window(mains_hz, cycles, samples_per_cycle)
        if hasattr(adc, "read_uv"):
            self._read = adc.read_uv
            self._volts_per_count = 1e-6
        else:
            self._read = adc.read_u16
            self._volts_per_count = vref / 65535
        self._buf = [0] * self.count
        self._last_ms = None

    @micropython.native
    def _sample(self):
        read = self._read
        buf = self._buf
        period = self.period_us
        ticks_us = time.ticks_us
        ticks_diff = time.ticks_diff
        due = ticks_us()
        start = due
        for i in range(self.count):
            while ticks_diff(ticks_us(), due) < 0:
                pass
            buf[i] = read()
            due = time.ticks_add(due, period)
        return ticks_diff(ticks_us(), start)

    def read(self):
        """{"current", "power", "energy", "voltage"} from one window of whole cycles."""
        elapsed_us = self._sample()
        expected_us = self.count * self.period_us
        if elapsed_us > expected_us + 2 * self.period_us:
            # The loop could not keep up: the window is not whole cycles any more.
            self.log.warn(
                "sct013: sampling took %d us for a %d us window" % (elapsed_us, expected_us)
            )
        _mean, rms = mean_and_rms(self._buf)
        amps = current_a(rms * self._volts_per_count, self.calibration, self.noise_floor_a)
        watts = power_w(self.voltage, amps)
        now = time.ticks_ms()
        if self._last_ms is not None:
            self.energy.add(watts, time.ticks_diff(now, self._last_ms))
        self._last_ms = now
        return {
            "current": round(amps, 3),
            "power": round(watts, 1),
            "energy": round(self.energy.kwh, 4),
            "voltage": self.voltage,
        }
