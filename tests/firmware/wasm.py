"""The firmware's code under a real MicroPython interpreter: the WebAssembly build from
npm (firmware/tests-wasm, installed with `npm ci` when missing), driven by node.

That interpreter has more than an ESP32 (logging, functools, datetime, typing… and
64-bit floats): every module a stock ESP32 build lacks is replaced by a shim raising
ImportError, so firmware code that needs one fails here as it would on the board. It
has no native code emitter, so `@micropython.native` lines are blanked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.firmware.host import FIRMWARE

WASM_DIR = FIRMWARE / "tests-wasm"
PACKAGE = WASM_DIR / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"
# In the WebAssembly build but not in MicroPython 1.27's ESP32_GENERIC firmware.
NOT_ON_ESP32 = (
    "abc",
    "base64",
    "copy",
    "dataclasses",
    "datetime",
    "enum",
    "fnmatch",
    "functools",
    "gzip",
    "hmac",
    "html",
    "inspect",
    "itertools",
    "js",
    "jsffi",
    "locale",
    "logging",
    "operator",
    "pathlib",
    "stat",
    "string",
    "tarfile",
    "types",
    "typing",
    "unittest",
    "uu",
    "zlib",
)
_NATIVE = re.compile(r"^[ \t]*@micropython\.(native|viper)[ \t]*$", re.MULTILINE)


def _missing(reason: str) -> None:
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        _missing("node is not installed (apt-get install -y nodejs npm)")
    assert node is not None
    return node


def ensure_installed() -> None:
    """`npm ci` in firmware/tests-wasm when the interpreter package is not there yet."""
    if (PACKAGE / "micropython.mjs").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        _missing("npm is not installed (apt-get install -y nodejs npm)")
    assert npm is not None
    done = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=WASM_DIR,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"


@dataclass
class Result:
    ok: bool
    stdout: str
    error: str | None


def source_for_micropython(path: Path) -> str:
    return _NATIVE.sub("", path.read_text())


def firmware_files() -> dict[str, str]:
    """The firmware's library and test cases as they are laid out in the interpreter."""
    files: dict[str, str] = {}
    for path in sorted((FIRMWARE / "lib").rglob("*.py")):
        files[f"/lib/{path.relative_to(FIRMWARE / 'lib')}"] = source_for_micropython(path)
    for path in sorted((FIRMWARE / "tests").glob("*.py")):
        files[f"/cases/{path.name}"] = path.read_text()
    for name in NOT_ON_ESP32:
        files[f"/esp32/{name}.py"] = (
            f"raise ImportError(\"no module named '{name}' (not on a stock ESP32)\")\n"
        )
    return files


def run(code: str, files: dict[str, str] | None = None) -> Result:
    """Run `code` in a fresh interpreter with the firmware on its path (cwd: /tmp/run)."""
    node = node_binary()
    ensure_installed()
    job = {
        "files": {**firmware_files(), "/tmp/run/.keep": "", **(files or {})},
        "path": ["/esp32", "/lib", "/cases"],
        "code": "import os\nos.chdir('/tmp/run')\n" + code,
    }
    done = subprocess.run(
        [node, str(WASM_DIR / "run.mjs")],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=WASM_DIR,
        env={**os.environ, "NODE_NO_WARNINGS": "1"},
    )
    assert done.returncode == 0, f"node failed:\n{done.stdout}\n{done.stderr}"
    body = json.loads(done.stdout)
    return Result(bool(body["ok"]), str(body["stdout"]), body["error"])
