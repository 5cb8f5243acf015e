"""Helpers for the firmware's test cases, which run unchanged under CPython (pytest),
the WebAssembly MicroPython (tests/firmware/test_wasm.py) and a real board
(`mpremote mount . run tests/run.py`)."""

import os


def close(a, b, rel=1e-6, abs_tol=1e-9):
    """Floats compared with a tolerance: the ESP32 has 32-bit floats, CPython 64."""
    return abs(a - b) <= max(rel * max(abs(a), abs(b)), abs_tol)


def raises(kind, fn, *args):
    """The exception `fn(*args)` raised, which must be a `kind`."""
    try:
        fn(*args)
    except kind as exc:
        return exc
    raise AssertionError("%s did not raise %s" % (fn, kind.__name__))


def fresh_dir(name):
    """An empty directory `name` under the current one."""
    try:
        entries = os.listdir(name)
    except OSError:
        os.mkdir(name)
        return name
    for entry in entries:
        os.remove(name + "/" + entry)
    return name


class Log:
    """Collects what a driver logs."""

    def __init__(self):
        self.lines = []

    def debug(self, msg):
        self.lines.append(("debug", msg))

    def info(self, msg):
        self.lines.append(("info", msg))

    def warn(self, msg):
        self.lines.append(("warn", msg))

    def error(self, msg):
        self.lines.append(("error", msg))
