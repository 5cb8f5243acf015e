"""The drivers on simulated hardware: the SCD4x over I2C (CRC checked), the SCT-013 on
an ADC fed a synthetic mains sine, the DHT22 missing; and what reaches the server then."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from tests.firmware import host
from tests.firmware.fakes import Scd4xSim, sensirion_crc, sine_uv


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def debug(self, msg: str) -> None:
        self.lines.append(("debug", msg))

    def info(self, msg: str) -> None:
        self.lines.append(("info", msg))

    def warn(self, msg: str) -> None:
        self.lines.append(("warn", msg))

    def error(self, msg: str) -> None:
        self.lines.append(("error", msg))


def test_the_firmware_crc_agrees_with_an_independent_one() -> None:
    crc8 = host.firmware("scd4x").crc8
    assert crc8(b"\xbe\xef") == sensirion_crc(b"\xbe\xef") == 0x92
    for word in range(0, 0x10000, 97):
        pair = word.to_bytes(2, "big")
        assert crc8(pair) == sensirion_crc(pair)


def test_scd4x_starts_measuring_then_reads_and_drops_a_corrupted_reading(
    board: host.World,
) -> None:
    scd4x = host.firmware("scd4x")
    machine = __import__("machine")
    sim = Scd4xSim()
    board.ticks = host.SteppedTicks()
    board.i2c[0x62] = sim
    log = Log()
    driver = scd4x.SCD4x(machine.I2C(0, sda=machine.Pin(21), scl=machine.Pin(22)), log)
    assert driver.read() == {}  # started: stop first, then periodic measurement
    assert sim.commands == [0x3F86, 0x21B1]
    assert driver.read() == {"co2": 401, "temperature": 22.5, "humidity": 41.0}
    sim.corrupt_next = True
    assert driver.read() == {}
    assert [level for level, _msg in log.lines] == ["warn"]
    assert "CRC" in log.lines[0][1]
    assert driver.read() == {}  # restarts the measurement after a failure
    assert driver.read() == {"co2": 403, "temperature": 22.5, "humidity": 41.0}
    assert log.lines[-1] == ("info", "scd4x: readings are back")


def test_scd4x_missing_is_logged_once(board: host.World) -> None:
    scd4x = host.firmware("scd4x")
    machine = __import__("machine")
    board.ticks = host.SteppedTicks()
    log = Log()
    driver = scd4x.SCD4x(machine.I2C(0, sda=machine.Pin(21), scl=machine.Pin(22)), log)
    assert [driver.read() for _ in range(3)] == [{}, {}, {}]
    assert len(log.lines) == 1
    assert "no reading" in log.lines[0][1]


def sct013_driver(board: host.World, tmp_path: Path, amps: float, **options: Any) -> Any:
    sct013 = host.firmware("sct013")
    machine = __import__("machine")
    board.adc_uv = sine_uv(amps, calibration=options.get("calibration", 30.0))
    energy = sct013.EnergyMeter(str(tmp_path / "energy.json"))
    return sct013.SCT013(machine.ADC(machine.Pin(34)), energy, Log(), **options)


@pytest.mark.parametrize("amps", [0.5, 2.0, 10.0, 27.0])
@pytest.mark.parametrize("step_us", [7, 23])
def test_sct013_rms_current_and_power_on_a_sampled_sine_within_one_percent(
    board: host.World, tmp_path: Path, amps: float, step_us: int
) -> None:
    board.ticks = host.SteppedTicks(step_us=step_us)
    driver = sct013_driver(board, tmp_path, amps, voltage=230.0)
    values = driver.read()
    assert values["current"] == pytest.approx(amps, rel=0.01)
    assert values["power"] == pytest.approx(230.0 * amps, rel=0.01)
    assert values["voltage"] == 230.0


def test_sct013_at_60_hz_with_another_clamp(board: host.World, tmp_path: Path) -> None:
    board.ticks = host.SteppedTicks(step_us=11)
    sct013 = host.firmware("sct013")
    machine = __import__("machine")
    board.adc_uv = sine_uv(12.0, calibration=100.0, mains_hz=60.0)
    driver = sct013.SCT013(
        machine.ADC(machine.Pin(34)),
        sct013.EnergyMeter(str(tmp_path / "energy.json")),
        Log(),
        calibration=100.0,
        voltage=120.0,
        mains_hz=60,
        cycles=6,
    )
    values = driver.read()
    assert values["current"] == pytest.approx(12.0, rel=0.01)
    assert values["power"] == pytest.approx(1440.0, rel=0.01)


def test_sct013_without_load_reads_zero(board: host.World, tmp_path: Path) -> None:
    board.ticks = host.SteppedTicks()
    driver = sct013_driver(board, tmp_path, 0.0)
    assert driver.read()["current"] == 0.0


def test_sct013_energy_is_integrated_and_survives_a_reboot(
    board: host.World, tmp_path: Path
) -> None:
    ticks = host.SteppedTicks()
    board.ticks = ticks
    driver = sct013_driver(board, tmp_path, 10.0)
    driver.read()
    for _ in range(60):
        ticks.sleep_ms(60_000)  # one reading a minute for an hour
        values = driver.read()
    # 10 A at 230 V for an hour is 2.3 kWh.
    assert values["energy"] == pytest.approx(2.3, rel=0.01)
    driver.energy.save()
    saved = json.loads((tmp_path / "energy.json").read_text())
    assert saved["joules"] == driver.energy.joules
    rebooted = sct013_driver(board, tmp_path, 10.0)
    assert rebooted.energy.joules == driver.energy.joules
    assert rebooted.read()["energy"] == pytest.approx(2.3, rel=0.01)


def test_dht22_missing_is_logged_once_and_yields_nothing(board: host.World) -> None:
    dht22 = host.firmware("dht22")
    sensors = host.firmware("sensors")
    machine, dht = __import__("machine"), __import__("dht")
    board.ticks = host.SteppedTicks()
    board.dht = None
    log = Log()
    reader = sensors.Sensors([dht22.DHT22(dht.DHT22(machine.Pin(4)), log)], log)
    for _ in range(3):
        assert reader.read() == {}
        board.ticks.sleep_ms(5000)
    assert len(log.lines) == 1
    level, msg = log.lines[0]
    assert level == "warn"
    assert "dht22" in msg
    assert "ETIMEDOUT" in msg
    board.dht = lambda: (21.26, 40.04)
    assert reader.read() == {"temperature": 21.3, "humidity": 40.0}
    assert log.lines[-1] == ("info", "dht22: readings are back")
    board.dht = lambda: (float("nan"), 40.0)
    board.ticks.sleep_ms(5000)
    assert reader.read() == {}  # a garbled read is not a measurement


def test_a_device_whose_only_sensor_is_missing_publishes_nothing(
    board: host.World, tmp_path: Path
) -> None:
    """Its loop keeps running (watchdog fed, status sent), the warning goes to the
    server's log, and no telemetry document is sent at all."""
    app = host.firmware("app")
    config = host.firmware("config")
    sensors = host.firmware("sensors")
    clock = host.firmware("clock")
    board.dht = None
    board.joined = "lab"
    cfg = config.with_defaults(
        {
            "wifi": {"ssid": "lab", "password": "pw"},
            "server": {"host": "127.0.0.1"},
            "token": "t",
            "interval_s": 1,
            "ntp_host": "",
            "sensors": {"dht22": {"pin": 4}},
        }
    )
    link = RecordingLink()
    log = host.firmware("log").Log()
    board_obj = host.firmware("board").Board(cfg["pins"])
    device = app.Device(
        cfg,
        board_obj,
        sensors.from_config(cfg, log, f"{tmp_path}/"),
        log,
        clock.Clock(),
        f"{tmp_path}/",
        links=(link, RecordingLink("http")),
    )
    board.ticks = host.SteppedTicks()
    board_obj.start_watchdog(30)
    for _ in range(5):
        device.step()
        board.ticks.sleep_ms(1000)
    assert link.sent["telemetry"] == []
    assert [json.loads(doc)["online"] for doc in link.sent["status"]] == [True]
    logged = [json.loads(doc) for doc in link.sent["log_line"]]
    assert [(line["level"], "dht22" in line["msg"]) for line in logged] == [("warn", True)]
    assert (board.wdt_timeout_ms, board.wdt_feeds) == (30_000, 5)


class RecordingLink:
    """A link that is always up and keeps what it was given."""

    def __init__(self, name: str = "mqtt") -> None:
        self.name = name
        self.host = "127.0.0.1"
        self.port = 1
        self.sent: dict[str, list[bytes]] = {
            "telemetry": [],
            "status": [],
            "reported": [],
            "result": [],
            "log_line": [],
        }

    def connect(self) -> None:
        pass

    def telemetry(self, payload: bytes) -> bool:
        self.sent["telemetry"].append(payload)
        return True

    def status(self, payload: bytes) -> None:
        self.sent["status"].append(payload)

    def reported(self, payload: bytes) -> None:
        self.sent["reported"].append(payload)

    def result(self, command_id: str, payload: bytes) -> None:
        self.sent["result"].append(payload)

    def log_line(self, payload: bytes) -> None:
        self.sent["log_line"].append(payload)

    def poll(self, elapsed_ms: int, wait_ms: int = 0) -> list[Any]:
        return []

    def close(self) -> None:
        pass


def test_sine_fixture_has_the_rms_it_claims() -> None:
    """The synthetic signal itself: 10 A through a 30 A/V clamp is 1/3 V rms."""
    at = sine_uv(10.0, calibration=30.0)
    samples = [at(t) - 1_650_000 for t in range(0, 20_000, 10)]
    rms = math.sqrt(sum(s * s for s in samples) / len(samples))
    assert rms == pytest.approx(1e6 / 3, rel=1e-3)
