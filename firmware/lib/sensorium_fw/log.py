"""The device log: printed on the serial console and kept (a few lines) for the server's
per-device log (PROTOCOL.md `devices/{id}/logs`) once a link is up."""

LEVELS = ("debug", "info", "warn", "error")


class Log:
    def __init__(self, clock=None, keep=20, forward=("warn", "error")):
        self.clock = clock
        self.keep = keep
        self.forward = forward
        self.pending = []  # (level, msg, ts) waiting to be sent
        self.lines = []  # the last `keep` lines, for tests and the console

    def _add(self, level, msg):
        print("[%s] %s" % (level, msg))
        ts = self.clock.now_ms() if self.clock is not None else None
        self.lines.append((level, msg))
        if len(self.lines) > self.keep:
            self.lines.pop(0)
        if level in self.forward:
            self.pending.append((level, msg, ts))
            if len(self.pending) > self.keep:
                self.pending.pop(0)

    def debug(self, msg):
        self._add("debug", msg)

    def info(self, msg):
        self._add("info", msg)

    def warn(self, msg):
        self._add("warn", msg)

    def error(self, msg):
        self._add("error", msg)
