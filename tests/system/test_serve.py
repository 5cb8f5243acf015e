"""`sensorium serve --demo` as a user starts it: a real process on a real port."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_demo_server_starts_prints_a_login_that_works(tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENSORIUM_")}
    env.update(SENSORIUM_DATA_DIR=str(tmp_path / "data"), SENSORIUM_PORT=str(port), COLUMNS="200")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sensorium", "serve", "--demo"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        output = ""
        deadline = time.monotonic() + 60
        while "Uvicorn running" not in output and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            output += line
        assert f"http://127.0.0.1:{port}" in output, output
        login = re.search(r"demo login:\s+(\S+) / (\S+)", output)
        assert login, output
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=10) as client:
            assert client.get("/healthz").status_code == 200
            r = client.post(
                "/api/v1/auth/login",
                json={"username": login.group(1), "password": login.group(2)},
            )
            assert r.status_code == 200, r.text
        assert (tmp_path / "data" / "sensorium.db").exists()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
