"""`sensorium serve` as a user starts it: a real process, its own Mosquitto child."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Serve:
    def __init__(self, proc: subprocess.Popen[str], output: str, port: int) -> None:
        self.proc = proc
        self.output = output
        self.base = f"http://127.0.0.1:{port}"

    def field(self, pattern: str) -> re.Match[str]:
        match = re.search(pattern, self.output)
        assert match, self.output
        return match


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    port = _free_port()
    # Hold 1883 (as another broker would on a user's machine) if nobody does already.
    blocker = socket.socket()
    try:
        blocker.bind(("127.0.0.1", 1883))
        blocker.listen()
    except OSError:
        pass  # taken already: exactly the situation under test
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENSORIUM_")}
    env.update(SENSORIUM_DATA_DIR=str(tmp_path / "data"), SENSORIUM_PORT=str(port), COLUMNS="200")
    # A file, not a pipe: nobody reads a pipe once the test runs, and a full pipe would
    # block the server's logging.
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sensorium", "serve", "--demo"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        output = ""
        deadline = time.monotonic() + 60
        while "Uvicorn running" not in output and time.monotonic() < deadline:
            time.sleep(0.1)
            output = log_path.read_text()
        yield Serve(proc, output, port)
    finally:
        blocker.close()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _pub(port: int, device_id: str, token: str, payload: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-i", device_id, "-u", device_id,
         "-P", token, "-q", "1", "-t", f"devices/{device_id}/telemetry", "-m", payload],
        capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip


def _latest(client: httpx.Client, device_id: str, headers: dict[str, str]) -> dict[str, object]:
    r = client.get(f"/api/v1/devices/{device_id}/telemetry/latest", headers=headers)
    values: dict[str, object] = r.json()["values"]
    return values


def test_serve_alone_takes_mqtt_from_a_registered_device(serve: Serve) -> None:
    assert serve.base in serve.output
    login = serve.field(r"demo login:\s+(\S+) / (\S+)")
    mqtt_port = int(serve.field(r"MQTT broker:\s+mqtt://127\.0\.0\.1:(\d+)").group(1))
    assert mqtt_port != 1883
    with httpx.Client(base_url=serve.base, timeout=10) as client:
        assert client.get("/healthz").status_code == 200
        r = client.post(
            "/api/v1/auth/login", json={"username": login.group(1), "password": login.group(2)}
        )
        assert r.status_code == 200, r.text
        headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
        r = client.post(
            "/api/v1/devices", json={"mac": "A4:CF:12:00:00:99", "name": "pub"}, headers=headers
        )
        device_id, token = r.json()["id"], r.json()["token"]
        for _ in range(50):  # provisioning takes a moment
            result = _pub(mqtt_port, device_id, token, '{"temperature": 21.5}')
            if result.returncode == 0:
                break
            time.sleep(0.1)
        assert result.returncode == 0, result.stderr
        for _ in range(50):
            if "temperature" in _latest(client, device_id, headers):
                break
            time.sleep(0.1)
        reading = _latest(client, device_id, headers)["temperature"]
        assert isinstance(reading, dict)
        assert reading["value"] == 21.5
        assert _pub(mqtt_port, device_id, "wrong", '{"t": 1}').returncode != 0

        # Kill the Mosquitto child: the server starts a new one on the same port.
        [child] = [
            p
            for p in _children(serve.proc.pid)
            if "mosquitto" in Path(f"/proc/{p}/cmdline").read_text()
        ]
        os.kill(child, signal.SIGKILL)
        # What is published before the server's own connection is back may be dropped
        # (a kill -9 loses what the broker had not saved): keep sending until one lands.
        for _ in range(100):
            time.sleep(0.1)
            _pub(mqtt_port, device_id, token, '{"humidity": 40}')
            if "humidity" in _latest(client, device_id, headers):
                break
        assert "humidity" in _latest(client, device_id, headers)
        assert child not in _children(serve.proc.pid)

    # SIGTERM (how service managers stop it) stops the broker child with the server.
    [restarted] = [
        p
        for p in _children(serve.proc.pid)
        if "mosquitto" in Path(f"/proc/{p}/cmdline").read_text()
    ]
    serve.proc.send_signal(signal.SIGTERM)
    serve.proc.wait(timeout=20)
    for _ in range(50):
        if not Path(f"/proc/{restarted}").exists():
            break
        time.sleep(0.1)
    assert not Path(f"/proc/{restarted}").exists()
