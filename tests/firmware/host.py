"""CPython stand-ins for what the firmware gets from MicroPython on an ESP32: `machine`,
`network`, `dht`, `micropython` and the tick functions of `time` (its MQTT 5 client and
HTTP link use CPython's real sockets). Each test describes its board in a `World`; the
shim modules, installed once per session, act on the current one.

The tick counters wrap at 2**30 like MicroPython's and start two seconds before the
wrap, so firmware that compares ticks without `ticks_diff` fails here as on a device.
"""

from __future__ import annotations

import errno
import gc
import importlib
import sys
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"
LIB = FIRMWARE / "lib"
TICKS_PERIOD = 1 << 30
_HALF = TICKS_PERIOD // 2


def ticks_diff(a: int, b: int) -> int:
    return ((a - b + _HALF) % TICKS_PERIOD) - _HALF


def ticks_add(a: int, delta: int) -> int:
    return (a + delta) % TICKS_PERIOD


class Ticks:
    """Real time, as MicroPython's wrapping millisecond and microsecond counters."""

    def __init__(self, ms_before_wrap: int = 2000) -> None:
        now = time.monotonic_ns()
        self._offset_ms = TICKS_PERIOD - ms_before_wrap - now // 1_000_000
        self._offset_us = TICKS_PERIOD - ms_before_wrap * 1000 - now // 1000

    def ticks_ms(self) -> int:
        return (time.monotonic_ns() // 1_000_000 + self._offset_ms) % TICKS_PERIOD

    def ticks_us(self) -> int:
        return (time.monotonic_ns() // 1000 + self._offset_us) % TICKS_PERIOD

    def sleep_ms(self, ms: int) -> None:
        time.sleep(max(0, ms) / 1000)

    def sleep_us(self, us: int) -> None:
        time.sleep(max(0, us) / 1e6)


class SteppedTicks(Ticks):
    """Simulated time: every ticks_us() read takes `step_us`; sleeps take no real time."""

    def __init__(self, step_us: int = 7, start_us: int = TICKS_PERIOD - 50_000) -> None:
        super().__init__()
        self.now_us = start_us
        self.step_us = step_us

    def ticks_us(self) -> int:
        self.now_us += self.step_us
        return self.now_us % TICKS_PERIOD

    def ticks_ms(self) -> int:
        return (self.now_us // 1000) % TICKS_PERIOD

    def sleep_ms(self, ms: int) -> None:
        self.now_us += max(0, ms) * 1000

    def sleep_us(self, us: int) -> None:
        self.now_us += max(0, us)


class Reset(BaseException):
    """machine.reset(): nothing after it runs (BaseException: no `except Exception` in
    the firmware can swallow it); the test's runner reboots the board."""


class Pin:
    IN = 1
    OUT = 3
    PULL_UP = 2

    def __init__(self, number: int, mode: int = -1, pull: int = -1) -> None:
        self.number = number
        world = current()
        # A pin keeps its level across re-creation (the same GPIO).
        self._state = world.pins.setdefault(number, PinState())
        if mode >= 0:
            self._state.mode = mode
        if pull == Pin.PULL_UP and self._state.level is None:
            self._state.level = 1

    def value(self, level: int | None = None) -> int:
        if level is None:
            return int(self._state.level or 0)
        self._state.level = 1 if level else 0
        self._state.history.append(self._state.level)
        return self._state.level

    def __call__(self, level: int | None = None) -> int:
        return self.value(level)


@dataclass
class PinState:
    mode: int = -1
    level: int | None = None
    history: list[int] = field(default_factory=list)


class PWM:
    def __init__(self, pin: Pin, freq: int = 1000) -> None:
        self.pin = pin
        current().pwm[pin.number] = 0

    def duty_u16(self, duty: int) -> None:
        current().pwm[self.pin.number] = duty

    def deinit(self) -> None:
        current().pwm.pop(self.pin.number, None)


class ADC:
    ATTN_11DB = 3

    def __init__(self, pin: Pin, atten: int | None = None) -> None:
        self.pin = pin

    def atten(self, value: int) -> None:
        pass

    def read_uv(self) -> int:
        signal = current().adc_uv
        if signal is None:
            raise OSError(errno.EIO, "nothing on the ADC")
        return signal(current().ticks.ticks_us())


class I2C:
    def __init__(self, bus: int, *, sda: Pin, scl: Pin, freq: int = 400_000) -> None:
        self.bus = bus

    def _device(self, address: int) -> Any:
        device = current().i2c.get(address)
        if device is None:
            raise OSError(errno.ENODEV, f"no I2C device at 0x{address:02x}")
        return device

    def writeto(self, address: int, data: bytes) -> int:
        self._device(address).write(bytes(data))
        return 1

    def readfrom(self, address: int, count: int) -> bytes:
        return bytes(self._device(address).read(count))


class WDT:
    def __init__(self, timeout: int = 5000) -> None:
        current().wdt_timeout_ms = timeout

    def feed(self) -> None:
        current().wdt_feeds += 1


def reset() -> None:
    current().resets += 1
    raise Reset


def unique_id() -> bytes:
    return current().mac


# --- network -------------------------------------------------------------------------------


class WLAN:
    def __init__(self, interface: int) -> None:
        self.interface = interface

    def active(self, on: bool | None = None) -> bool:
        world = current()
        if on is not None:
            world.radio_on[self.interface] = on
        return world.radio_on.get(self.interface, False)

    def isconnected(self) -> bool:
        world = current()
        return self.interface == 0 and world.wifi_up and world.joined is not None

    def connect(self, ssid: str, password: str) -> None:
        world = current()
        if world.wifi_up and ssid in world.networks:
            world.joined = ssid

    def disconnect(self) -> None:
        current().joined = None

    def config(self, *args: str, **kwargs: Any) -> Any:
        world = current()
        if args == ("mac",):
            return world.mac
        world.ap_config.update(kwargs)
        return None

    def status(self, what: str | None = None) -> int:
        if what == "rssi":
            return current().rssi
        return 1010 if self.isconnected() else 1001

    def ifconfig(self) -> tuple[str, str, str, str]:
        ip = "192.168.4.1" if self.interface == 1 else "192.168.1.23"
        return ip, "255.255.255.0", ip, ip

    def scan(self) -> list[tuple[bytes, bytes, int, int, int, int]]:
        return [
            (ssid.encode(), b"\x00" * 6, channel, rssi, 3, 0)
            for ssid, (rssi, channel) in current().networks.items()
        ]


# --- dht ---------------------------------------------------------------------------------


class DHT22:
    def __init__(self, pin: Pin) -> None:
        self.pin = pin
        self._reading: tuple[float, float] | None = None

    def measure(self) -> None:
        sensor = current().dht
        if sensor is None:
            raise OSError(errno.ETIMEDOUT, "ETIMEDOUT")
        self._reading = sensor()

    def temperature(self) -> float:
        assert self._reading is not None
        return self._reading[0]

    def humidity(self) -> float:
        assert self._reading is not None
        return self._reading[1]


# --- the world of one test -----------------------------------------------------------------


@dataclass
class World:
    """One simulated board and its surroundings."""

    ticks: Ticks = field(default_factory=Ticks)
    mac: bytes = bytes.fromhex("a4cf12b3c4d5")
    networks: dict[str, tuple[int, int]] = field(
        default_factory=lambda: {"lab": (-48, 6), "Neighbours": (-81, 11), "lab-guest": (-60, 1)}
    )
    wifi_up: bool = True
    joined: str | None = None
    rssi: int = -52
    radio_on: dict[int, bool] = field(default_factory=dict)
    ap_config: dict[str, Any] = field(default_factory=dict)
    pins: dict[int, PinState] = field(default_factory=dict)
    pwm: dict[int, int] = field(default_factory=dict)
    dht: Callable[[], tuple[float, float]] | None = None
    i2c: dict[int, Any] = field(default_factory=dict)
    adc_uv: Callable[[int], int] | None = None
    resets: int = 0
    wdt_timeout_ms: int | None = None
    wdt_feeds: int = 0

    def level(self, pin: int) -> int | None:
        state = self.pins.get(pin)
        return None if state is None else state.level


_shared: list[World] = []


def current() -> World:
    return _shared[-1]


@contextmanager
def world(board: World) -> Iterator[World]:
    """Make `board` the world every thread's shims act on."""
    _shared.append(board)
    try:
        yield board
    finally:
        _shared.remove(board)


def _module(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(module, key, value)
    return module


def _time_functions() -> dict[str, Callable[..., int | None]]:
    return {
        "ticks_ms": lambda: current().ticks.ticks_ms(),
        "ticks_us": lambda: current().ticks.ticks_us(),
        "ticks_diff": ticks_diff,
        "ticks_add": ticks_add,
        "sleep_ms": lambda ms: current().ticks.sleep_ms(ms),
        "sleep_us": lambda us: current().ticks.sleep_us(us),
    }


@contextmanager
def installed() -> Iterator[None]:
    """The shim modules in sys.modules, tick functions on `time`, the firmware's lib/ on
    sys.path; all removed again afterwards."""
    modules = {
        "machine": _module(
            "machine",
            Pin=Pin,
            PWM=PWM,
            ADC=ADC,
            I2C=I2C,
            WDT=WDT,
            reset=reset,
            unique_id=unique_id,
        ),
        "network": _module("network", WLAN=WLAN, STA_IF=0, AP_IF=1),
        "dht": _module("dht", DHT22=DHT22),
        "micropython": _module(
            "micropython", const=lambda value: value, native=lambda function: function
        ),
    }
    clashes = [name for name in modules if name in sys.modules]
    assert not clashes, f"modules already imported: {clashes}"
    added = {name: fn for name, fn in _time_functions().items() if not hasattr(time, name)}
    sys.modules.update(modules)
    for name, fn in added.items():
        setattr(time, name, fn)
    had_mem_free = hasattr(gc, "mem_free")
    if not had_mem_free:
        gc.mem_free = lambda: 112_000  # type: ignore[attr-defined]
    sys.path.insert(0, str(LIB))
    try:
        yield
    finally:
        sys.path.remove(str(LIB))
        for name in [
            n
            for n in sys.modules
            if n in ("sensorium_fw", "sensorium_boot") or n.startswith("sensorium_fw.")
        ]:
            del sys.modules[name]
        for name in modules:
            del sys.modules[name]
        for name in added:
            delattr(time, name)
        if not had_mem_free:
            del gc.mem_free  # type: ignore[attr-defined]


def firmware(name: str) -> Any:
    """A firmware module (`proto`, `app`, …) imported from firmware/lib/sensorium_fw."""
    return importlib.import_module(f"sensorium_fw.{name}")


def loader() -> Any:
    """The loader main.py runs (firmware/lib/sensorium_boot.py, outside the bundles)."""
    return importlib.import_module("sensorium_boot")
