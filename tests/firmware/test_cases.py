"""The firmware's pure modules (protocol, offline buffer, driver math, control,
clock/backoff) tested by the cases in firmware/tests/, which run unchanged on CPython
(here, one test per case), the WebAssembly MicroPython (one interpreter per module)
and a real board."""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.firmware import host, wasm
from tests.firmware.host import FIRMWARE

CASES_DIR = FIRMWARE / "tests"
MODULES = sorted(p.stem for p in CASES_DIR.glob("cases_*.py"))


@pytest.fixture
def cases_on_path() -> Iterator[None]:
    sys.path.insert(0, str(CASES_DIR))
    try:
        yield
    finally:
        sys.path.remove(str(CASES_DIR))
        for name in [*MODULES, "casekit", "run"]:
            sys.modules.pop(name, None)


def case_names(module: str) -> list[str]:
    source = (CASES_DIR / f"{module}.py").read_text()
    return re.findall(r"^def (case_\w+)\(", source, re.MULTILINE)


ALL_CASES = [(module, case) for module in MODULES for case in case_names(module)]


def test_the_runner_knows_every_case_module() -> None:
    runner = (CASES_DIR / "run.py").read_text()
    assert MODULES
    assert all(f'"{module}"' in runner for module in MODULES)


@pytest.mark.parametrize(("module", "case"), ALL_CASES, ids=[f"{m}.{c}" for m, c in ALL_CASES])
def test_case_on_cpython(
    module: str,
    case: str,
    cases_on_path: None,
    board: host.World,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    loaded: ModuleType = importlib.import_module(module)
    function: Callable[[], None] = getattr(loaded, case)
    function()


@pytest.mark.parametrize("module", MODULES)
def test_cases_on_micropython(module: str) -> None:
    result = wasm.run(f"import run\nrun.run([{module!r}])\n")
    assert result.ok, f"{result.error}\n{result.stdout}"
    lines = result.stdout.splitlines()
    passed = sorted(line.split(".", 1)[1] for line in lines if line.startswith("PASS "))
    failed = [line for line in lines if line.startswith("FAIL ")]
    assert not failed, result.stdout
    assert passed == sorted(case_names(module)), result.stdout
    assert f"DONE passed={len(passed)} failed=0" in lines


def test_a_failing_case_fails_under_micropython() -> None:
    broken = "def case_breaks():\n    assert 1 + 1 == 3\n"
    result = wasm.run("import run\nrun.run(['cases_broken'])\n", {"/cases/cases_broken.py": broken})
    assert "FAIL cases_broken.case_breaks: AssertionError" in result.stdout
    assert "DONE passed=0 failed=1" in result.stdout


def test_modules_an_esp32_lacks_are_missing_under_micropython() -> None:
    result = wasm.run(
        "for name in ('logging', 'typing', 'dataclasses', 'functools', 'datetime'):\n"
        "    try:\n"
        "        __import__(name)\n"
        "    except ImportError:\n"
        "        print('missing', name)\n"
    )
    assert result.ok, result.error
    assert result.stdout.split("\n")[:5] == [
        f"missing {n}" for n in ("logging", "typing", "dataclasses", "functools", "datetime")
    ]
