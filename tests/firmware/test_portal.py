"""The provisioning portal: a device without config.json opens an access point whose
form lists the networks in range and saves a configuration the next boot starts from."""

from __future__ import annotations

import json
import socket
import time
import urllib.parse
from pathlib import Path

import httpx

from tests.firmware import host
from tests.firmware.fakes import Node


def portal_url(node: Node, timeout_s: float = 10) -> str:
    """The form's address once the portal listens (it binds a free port in tests)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if node.board.radio_on.get(1) and node.portal is not None:
            return f"http://127.0.0.1:{node.portal.port}"
        time.sleep(0.02)
    raise AssertionError("the portal did not open")


def form(**fields: str) -> str:
    base = {
        "ssid": "lab",
        "ssid_other": "",
        "password": "correct horse",
        "host": "192.168.1.10",
        "mqtt_port": "1883",
        "http_port": "8000",
        "device_id": "a4cf12b3c4d5",
        "token": "tok-123",
        "interval_s": "30",
    }
    base.update(fields)
    return urllib.parse.urlencode(base)


def test_without_config_the_portal_collects_and_saves_one(node: Node) -> None:
    node.start()
    url = portal_url(node)
    assert node.board.ap_config == {"essid": "Sensorium-b3c4d5", "authmode": 0}
    page = httpx.get(f"{url}/", timeout=5)
    assert page.status_code == 200
    # The networks in range, strongest first, as the choices of the form.
    options = page.text.split('<select name="ssid">')[1].split("</select>")[0]
    assert [o.split('"')[1] for o in options.split("<option value=")[1:]] == [
        "lab",
        "lab-guest",
        "Neighbours",
    ]
    assert "a4cf12b3c4d5" in page.text  # the device id, prefilled from the MAC
    # A phone's connectivity check lands on the form.
    check = httpx.get(f"{url}/generate_204", timeout=5)
    assert (check.status_code, check.headers["location"]) == (302, "http://192.168.4.1/")

    bad = httpx.post(
        f"{url}/save",
        content=form(mqtt_port="99999", token=""),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=5,
    )
    assert "mqtt_port must be a whole number from 1 to 65535" in bad.text
    assert "no device token" in bad.text
    assert not (node.root / "config.json").exists()

    saved = httpx.post(
        f"{url}/save",
        content=form(ssid_other="Hidden <net>", password="p&ss w=rd"),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=5,
    )
    assert "Hidden &lt;net&gt;" in saved.text

    def rebooted() -> bool:
        return node.board.resets == 1 and node.boots == 2

    deadline = time.monotonic() + 10
    while not rebooted() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rebooted()
    config = json.loads((node.root / "config.json").read_text())
    assert config["wifi"] == {"ssid": "Hidden <net>", "password": "p&ss w=rd"}
    assert config["server"] == {"host": "192.168.1.10", "mqtt_port": 1883, "http_port": 8000}
    assert (config["token"], config["interval_s"]) == ("tok-123", 30)
    assert config["device_id"] == ""  # the MAC, which is what the device uses anyway


def test_the_portal_answers_every_dns_name_with_itself(board: host.World) -> None:
    portal = host.firmware("portal")
    query = bytes.fromhex("abcd01000001000000000000") + b"\x07example\x03com\x00\x00\x01\x00\x01"
    answer = portal.dns_answer(query, "192.168.4.1")
    assert answer[:2] == b"\xab\xcd"  # same id
    assert answer[2:4] == b"\x81\x80"  # a response, no error
    assert answer[6:8] == b"\x00\x01"  # one answer
    assert answer.endswith(socket.inet_aton("192.168.4.1"))


def test_form_values_are_decoded(board: host.World, tmp_path: Path) -> None:
    portal = host.firmware("portal")
    parsed = portal.parse_form(b"ssid=Caf%C3%A9+Wi-Fi&password=a%26b%3Dc&empty=&x")
    assert parsed == {"ssid": "Café Wi-Fi", "password": "a&b=c", "empty": "", "x": ""}
