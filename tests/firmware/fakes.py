"""What surrounds a simulated board in the host tests: an SCD4x on the I2C bus (written
from the datasheet, independently of the firmware's driver), an NTP server, and a
runner that boots the firmware's `main()` in a thread and reboots it on machine.reset()."""

from __future__ import annotations

import json
import math
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.firmware import host

NTP_DELTA = 2_208_988_800


def sensirion_crc(data: bytes) -> int:
    """CRC-8/NRSC-5 as Sensirion specifies it (poly 0x31, init 0xFF), table-driven."""
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
        table.append(crc)
    crc = 0xFF
    for byte in data:
        crc = table[crc ^ byte]
    return crc


class Scd4xSim:
    """An SCD4x answering the firmware's commands; each measurement is new (CO2 400 + n
    ppm) so every stored point can be traced back to one reading."""

    def __init__(self) -> None:
        self.running = False
        self.measurements = 0
        self.corrupt_next = False
        self._pending: int | None = None
        self.commands: list[int] = []

    @staticmethod
    def words(*values: int) -> bytes:
        out = bytearray()
        for value in values:
            pair = value.to_bytes(2, "big")
            out += pair + bytes([sensirion_crc(pair)])
        return bytes(out)

    def write(self, data: bytes) -> None:
        command = int.from_bytes(data[:2], "big")
        self.commands.append(command)
        if command == 0x21B1:
            self.running = True
        elif command == 0x3F86:
            self.running = False
        self._pending = command

    def read(self, count: int) -> bytes:
        command, self._pending = self._pending, None
        if command == 0xE4B8:  # get_data_ready_status
            return self.words(0x8006 if self.running else 0x8000)[:count]
        if command == 0xEC05 and self.running:  # read_measurement
            self.measurements += 1
            co2 = 400 + self.measurements
            raw_t = round((22.5 + 45) * 65535 / 175)
            raw_rh = round(41.0 * 65535 / 100)
            data = bytearray(self.words(co2, raw_t, raw_rh))
            if self.corrupt_next:
                data[1] ^= 0x01
                self.corrupt_next = False
            return bytes(data[:count])
        raise OSError(5, "NACK")


class NtpServer:
    """Answers SNTP requests on 127.0.0.1 with this machine's time."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port: int = self.sock.getsockname()[1]
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="ntp")
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                request, peer = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            if len(request) < 48:
                continue
            now = time.time()
            seconds = int(now) + NTP_DELTA
            fraction = int((now % 1) * 2**32)
            answer = bytearray(48)
            answer[0] = 0x24  # version 4, mode 4 (server)
            answer[1] = 2  # stratum
            answer[24:32] = request[40:48]  # originate = the client's transmit time
            answer[32:40] = struct.pack("!II", seconds, fraction)
            answer[40:48] = struct.pack("!II", seconds, fraction)
            self.sock.sendto(bytes(answer), peer)
            self.answered += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def sine_uv(
    amps_rms: float, *, calibration: float, mains_hz: float = 50.0, bias_uv: int = 1_650_000
) -> Callable[[int], int]:
    """The ADC voltage (µV) of an SCT-013 carrying `amps_rms`, biased at mid-supply, as
    a function of the microsecond tick counter."""
    peak_uv = amps_rms / calibration * math.sqrt(2) * 1e6
    phase = 0.3

    def at(ticks_us: int) -> int:
        return round(bias_uv + peak_uv * math.sin(2 * math.pi * mains_hz * ticks_us / 1e6 + phase))

    return at


def device_config(
    *,
    device_id: str,
    token: str,
    mqtt_port: int,
    http_port: int,
    ntp_port: int | None,
    interval_s: int = 1,
    **extra: Any,
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "wifi": {"ssid": "lab", "password": "correct horse"},
        "server": {"host": "127.0.0.1", "mqtt_port": mqtt_port, "http_port": http_port},
        "device_id": device_id,
        "token": token,
        "interval_s": interval_s,
        "status_every_s": 5,
        "ntp_host": "127.0.0.1" if ntp_port else "",
        "ntp_port": ntp_port or 123,
        "pins": {"relay": 26, "led": 2, "button": 0},
        "sensors": {"scd4x": {"sda": 21, "scl": 22}, "dht22": {"pin": 4}},
        "buffer": {"max_entries": 5000, "segment_entries": 3},
        "watchdog_s": 30,
        "http_poll_s": 2,
    }
    config.update(extra)
    return config


class Node:
    """One ESP32 running the firmware in a thread as main.py does (the loader,
    sensorium_boot, which runs the app), files under `root` as on its flash.
    machine.reset() reboots it (main() runs again); `stop()` ends it. `on_boot(n)` runs
    before the n-th boot (a test changes the world there)."""

    def __init__(self, root: Path, board: host.World) -> None:
        self.root = root
        self.board = board
        self.boots = 0
        self.on_boot: Callable[[int], None] | None = None
        self.device: Any = None
        self.portal: Any = None
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="esp32")

    def write_config(self, config: dict[str, Any]) -> None:
        (self.root / "config.json").write_text(json.dumps(config))

    def start(self) -> Node:
        self._thread.start()
        return self

    def _run(self) -> None:
        app = host.firmware("app")
        loader = host.loader()
        with host.world(self.board):
            while not self._stop.is_set():
                self.boots += 1
                if self.on_boot is not None:
                    self.on_boot(self.boots)
                try:
                    # The app module is CPython's import of firmware/lib (shared by every
                    # node of the process); what a bundle changes on the host is the
                    # files in root/app/, VERSION among them.
                    loader.main(
                        f"{self.root}/", self._stop.is_set, started=self._started, load=lambda: app
                    )
                except host.Reset:
                    continue
                except BaseException as exc:
                    self.error = exc
                return

    def _started(self, what: Any) -> None:
        if hasattr(what, "networks"):
            self.portal = what
        else:
            self.device = what

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)
        device = self.device
        if device is not None and device.link is not None:
            device.link.close()
        if self.error is not None:
            raise AssertionError(f"the firmware crashed: {self.error!r}") from self.error
