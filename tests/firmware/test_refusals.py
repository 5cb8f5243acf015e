"""A server that refuses what the device sends for good (HTTP 4xx) must not keep its loop
busy: a refused log line is not logged as a new line to send, and one pass sends at most
the log lines that were waiting when it began, so the loop step returns and the other
documents still go out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.firmware import host

# More requests than a pass can make; past them the device is stuck in a sending loop
# (on a board, until the watchdog resets it): the fakes raise so the test ends.
RUNAWAY = 200


class RefusingServer:
    """The HTTP device API as HttpLink.request sees it: POSTs to the paths in `refuse`
    get their status, every other one 202; the state is unchanged (v0) and the first
    commands poll brings a ping."""

    def __init__(self, refuse: dict[str, int]) -> None:
        self.refuse = refuse
        self.posts: list[tuple[str, int, Any]] = []
        self._commands = [{"id": "c_1", "name": "ping", "expires_at": 1763900060000}]

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout_s: int | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        path = path.removeprefix("/api/v1/devices/a4cf12b3c4d5")
        if method == "GET" and path == "/state":
            state = {"desired_version": 0, "desired": {}, "ota": None}
            return 200, {"etag": '"v0"'}, json.dumps(state).encode()
        if method == "GET":
            commands, self._commands = self._commands, []
            return (200, {}, json.dumps(commands).encode()) if commands else (204, {}, b"")
        assert body is not None
        status = self.refuse.get(path.split("/")[1], 202)
        self.posts.append((path, status, json.loads(body)))
        if len(self.posts) > RUNAWAY:
            raise OSError("runaway: the device keeps sending")
        return status, {}, b'{"detail": "refused"}'


class Unreachable:
    """The MQTT link when the broker cannot be reached."""

    name = "mqtt"

    def connect(self) -> None:
        raise OSError("connection refused")

    def close(self) -> None:
        pass


class EchoingLink:
    """A link that is always up and logs a warning for every log line it sends."""

    name = "mqtt"

    def __init__(self, log: Any) -> None:
        self.log = log
        self.log_lines: list[str] = []
        self.status_docs = 0

    def connect(self) -> None:
        pass

    def telemetry(self, payload: bytes) -> bool:
        return True

    def status(self, payload: bytes) -> None:
        self.status_docs += 1

    def reported(self, payload: bytes) -> None:
        pass

    def log_line(self, payload: bytes) -> None:
        msg = json.loads(payload)["msg"]
        self.log_lines.append(msg)
        if len(self.log_lines) > RUNAWAY:
            raise OSError("runaway: the device keeps sending")
        self.log.warn("sent: " + msg)

    def poll(self, elapsed_ms: int, wait_ms: int = 0) -> list[Any]:
        return []

    def close(self) -> None:
        pass


class Readings:
    def __init__(self) -> None:
        self.drivers: list[Any] = []

    def read(self) -> dict[str, int]:
        return {"co2": 401}


def device(board: host.World, root: Path, links: tuple[Any, Any], log: Any) -> Any:
    config = host.firmware("config")
    cfg = config.with_defaults(
        {
            "wifi": {"ssid": "lab", "password": "pw"},
            "server": {"host": "127.0.0.1"},
            "token": "t",
            "interval_s": 60,
            "ntp_host": "",
        }
    )
    board.joined = "lab"
    board.ticks = host.SteppedTicks()
    clock = host.firmware("clock").Clock()
    clock.set_epoch_ms(1763900000000)
    board_obj = host.firmware("board").Board(cfg["pins"])
    return host.firmware("app").Device(
        cfg, board_obj, Readings(), log, clock, f"{root}/", links=links
    )


def test_refused_log_lines_over_http_end_the_pass(board: host.World, tmp_path: Path) -> None:
    """Every log line (413) and the reading (400) refused: the reading's refusal is a
    warning sent as a log line once, the log lines' refusals are only printed, and the
    status and the command's result go out in the same pass."""
    log = host.firmware("log").Log()
    server = RefusingServer({"logs": 413, "telemetry": 400})
    http = host.firmware("links").HttpLink("127.0.0.1", 1, "a4cf12b3c4d5", "t", log)
    http.request = server.request
    dev = device(board, tmp_path, (Unreachable(), http), log)

    dev.step()

    assert dev.link is http  # not dropped by the runaway guard
    assert [(path, status) for path, status, _doc in server.posts] == [
        ("/telemetry", 400),
        ("/status", 202),
        ("/logs", 413),
        ("/logs", 413),
        ("/state/reported", 202),  # the desired state (v0) the poll brought
        ("/commands/c_1/result", 202),
    ]
    sent_lines = [doc["msg"] for path, _status, doc in server.posts if path == "/logs"]
    assert sent_lines[0].startswith("MQTT: connection refused")
    assert sent_lines[1].startswith("POST /telemetry refused (400)")
    assert server.posts[-1][2]["result"]["pong"] is True
    assert log.pending == []
    refusals = [level for level, msg in log.lines if msg.startswith("POST /logs refused (413)")]
    assert refusals == ["info", "info"]  # printed on the console only


def test_a_pass_sends_only_the_log_lines_waiting_when_it_began(
    board: host.World, tmp_path: Path
) -> None:
    """Even from a link that logs a warning for every line it sends, and with the queue
    full (20 lines): each pass sends the lines it found, each once and in order, and what
    sending them logged waits for the next pass."""
    log = host.firmware("log").Log()
    link = EchoingLink(log)
    dev = device(board, tmp_path, (link, Unreachable()), log)
    dev.step()  # connected, the status sent, no log line waiting yet
    assert log.pending == []
    for n in range(log.keep):
        log.warn(f"line {n}")
    waiting = [msg for _level, msg, _ts in log.pending]
    assert len(waiting) == log.keep

    dev._send_pending()

    assert link.log_lines == waiting
    assert [msg for _level, msg, _ts in log.pending] == ["sent: " + msg for msg in waiting]
    dev._send_pending()
    assert link.log_lines[log.keep :] == ["sent: " + msg for msg in waiting]
    assert link.status_docs == 1
