"""The device page's control UI in a real browser: a switch carried to the device and
confirmed by its report, commands answered by the device and shown without a reload, and
controls declared from the page. The test device speaks HTTP (the e2e server runs without
MQTT): it long-polls its state and commands with its device token, as PROTOCOL.md says."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, expect

from tests.e2e.conftest import SCREENSHOTS, ConsoleErrors
from tests.helpers import Account, Api, RegisteredDevice

POLL_S = 10


class HttpTestDevice:
    """What firmware on the HTTP profile does, one call each."""

    def __init__(self, http: httpx.AsyncClient, device: RegisteredDevice) -> None:
        self.http = http
        self.device = device
        self.path = f"/api/v1/devices/{device.id}"
        self.etag: str | None = None

    async def desired_change(self, wanted: dict[str, Any]) -> dict[str, Any]:
        """Long-polls the state until its desired document holds `wanted`; the state doc."""
        async with asyncio.timeout(POLL_S):
            while True:
                headers = dict(self.device.headers)
                if self.etag:
                    headers["If-None-Match"] = self.etag
                r = await self.http.get(
                    f"{self.path}/state", params={"wait": 5}, headers=headers, timeout=15
                )
                assert r.status_code in (200, 304), r.text
                self.etag = r.headers["etag"]
                if r.status_code == 200:
                    doc: dict[str, Any] = r.json()
                    if all(doc["desired"].get(k) == v for k, v in wanted.items()):
                        return doc

    async def report(self, version: int, state: dict[str, Any]) -> None:
        r = await self.http.post(
            f"{self.path}/state/reported",
            json={"version": version, "state": state},
            headers=self.device.headers,
        )
        assert r.status_code == 200, r.text

    async def next_commands(self, wait: int = POLL_S) -> list[dict[str, Any]]:
        r = await self.http.get(
            f"{self.path}/commands", params={"wait": wait}, headers=self.device.headers,
            timeout=wait + 5,
        )  # fmt: skip
        assert r.status_code in (200, 204), r.text
        return [] if r.status_code == 204 else list(r.json())

    async def answer(self, command_id: str, body: dict[str, Any]) -> None:
        r = await self.http.post(
            f"{self.path}/commands/{command_id}/result", json=body, headers=self.device.headers
        )
        assert r.status_code == 200, r.text


async def owner_with_device(http: httpx.AsyncClient) -> tuple[Account, HttpTestDevice]:
    api = Api(http)
    owner = await api.account()
    device = await api.device(owner, name="Garden pump")
    return owner, HttpTestDevice(http, device)


async def declare(http: httpx.AsyncClient, owner: Account, device_id: str, controls: Any) -> None:
    r = await http.put(
        f"/api/v1/devices/{device_id}/controls", json=controls, headers=owner.headers
    )
    assert r.status_code == 200, r.text


class NewPage(Protocol):
    async def __call__(self, **options: Any) -> Page: ...


@pytest.fixture
async def new_page(
    browser: Browser, server: str, console_errors: ConsoleErrors
) -> AsyncIterator[NewPage]:
    """Pages in their own browser contexts, closed even when a test fails: the server
    (torn down after this fixture) waits for the pages' open event streams to end."""
    contexts: list[BrowserContext] = []

    async def make(**options: Any) -> Page:
        context = await browser.new_context(**options)
        contexts.append(context)
        return console_errors.watch(await context.new_page())

    yield make
    for context in contexts:
        await context.close()


async def logged_in(page: Page, server: str, owner: Account) -> Page:
    await page.goto(f"{server}/login")
    await page.get_by_label("User name").fill(owner.username)
    await page.get_by_label("Password").fill(owner.password)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_role("heading", name="Devices")).to_be_visible()
    return page


async def test_switch_goes_pending_then_confirmed_and_retries_when_unconfirmed(
    new_page: NewPage, server: str, http: httpx.AsyncClient, console_errors: ConsoleErrors
) -> None:
    owner, device = await owner_with_device(http)
    await declare(
        http, owner, device.device.id, [{"key": "relay", "kind": "switch", "label": "Relay"}]
    )
    r = await http.put(
        f"/api/v1/devices/{device.device.id}/state/desired",
        json={"interval_s": 30},
        headers=owner.headers,
    )
    assert r.status_code == 200, r.text
    page = await logged_in(await new_page(), server, owner)
    await page.clock.install()  # to let 15 s pass without waiting for them
    await page.goto(f"{server}/devices/{device.device.id}")
    relay = page.get_by_role("switch", name="Relay")
    row = page.locator('.control[data-key="relay"]')
    sync = row.locator('[data-role="sync"]')
    await expect(relay).not_to_be_checked()
    await expect(row.locator('[data-role="reported"]')).to_have_text("device: —")
    # Undeclared keys are listed read-only, desired against reported.
    other = page.locator('#state-table tr[data-key="interval_s"]')
    await expect(other).to_contain_text("30")
    await expect(other).to_contain_text("pending")

    # Turned on from the keyboard: the device gets it, and until it reports it is pending.
    change = asyncio.create_task(device.desired_change({"relay": True}))
    await relay.focus()
    await page.keyboard.press("Space")
    doc = await change
    assert doc["desired"] == {"interval_s": 30, "relay": True}
    assert "relay" in doc["pending"]
    await expect(sync).to_have_text("pending")
    await expect(relay).to_be_checked()

    await device.report(doc["desired_version"], {"relay": True, "interval_s": 30, "led": "green"})
    await expect(sync).to_have_text("confirmed")
    await expect(row.locator('[data-role="reported"]')).to_have_text("device: on")
    await expect(other).not_to_contain_text("pending")
    await expect(page.locator('#state-table tr[data-key="led"]')).to_contain_text('"green"')
    await expect(page.locator('#state-table tr[data-key="relay"]')).to_have_count(0)

    # Off, and the device stays silent: after 15 s it says so and offers to send it again.
    change = asyncio.create_task(device.desired_change({"relay": False}))
    await relay.click()
    doc = await change
    await expect(sync).to_have_text("pending")
    await page.clock.fast_forward(14_000)
    await expect(sync).to_have_text("pending")
    await page.clock.fast_forward(2_000)
    await expect(sync).to_contain_text("not confirmed")
    async with page.expect_request(
        lambda q: q.method == "PUT" and q.url.endswith("/state/desired")
    ) as sent:
        await sync.get_by_role("button", name="Retry setting Relay").click()
    assert json.loads((await sent.value).post_data or "") == {"relay": False}
    await expect(sync).to_have_text("pending")
    await expect(relay).not_to_be_checked()
    await device.report(doc["desired_version"], {"relay": False})
    await expect(sync).to_have_text("confirmed")
    await expect(row.locator('[data-role="reported"]')).to_have_text("device: off")
    assert console_errors == []


async def test_commands_are_answered_by_the_device_and_listed_live(
    new_page: NewPage, server: str, http: httpx.AsyncClient, console_errors: ConsoleErrors
) -> None:
    owner, device = await owner_with_device(http)
    page = await logged_in(await new_page(), server, owner)
    await page.goto(f"{server}/devices/{device.device.id}")
    history = page.locator("#command-list")
    await expect(history).to_contain_text("No commands sent yet.")
    await page.evaluate("window.notReloaded = true")

    poll = asyncio.create_task(device.next_commands())
    await page.get_by_role("button", name="Ping").click()
    messages = await poll
    assert [(m["name"], m["params"]) for m in messages] == [("ping", {})]
    ping = history.locator(f'.command[data-id="{messages[0]["id"]}"]')
    await expect(ping.locator('[data-role="status"]')).to_have_text("sent")
    await device.answer(messages[0]["id"], {"status": "ok", "result": {"rtt_ms": 3}})
    await expect(ping.locator('[data-role="status"]')).to_have_text("succeeded")
    await expect(ping.locator('[data-role="result"]')).to_have_text('{"rtt_ms":3}')

    # A Wi-Fi scan's networks are a readable table, strongest first.
    poll = asyncio.create_task(device.next_commands())
    await page.get_by_role("button", name="Wi-Fi scan").click()
    (scan,) = await poll
    networks = [
        {"ssid": "Neighbour", "rssi": -81, "channel": 11},
        {"ssid": "HomeNet", "rssi": -48, "channel": 6},
    ]
    await device.answer(scan["id"], {"status": "ok", "result": {"networks": networks}})
    rows = history.locator(f'.command[data-id="{scan["id"]}"] table.networks tbody tr')
    await expect(rows).to_have_count(2)
    await expect(rows.first).to_contain_text("HomeNet")
    await expect(rows.first).to_contain_text("-48 dBm")

    # set_interval carries its number; the device's error is shown on a failed command.
    poll = asyncio.create_task(device.next_commands())
    await page.get_by_label("Reporting interval (seconds)").fill("45")
    await page.get_by_role("button", name="Set interval").click()
    (interval,) = await poll
    assert (interval["name"], interval["params"]) == ("set_interval", {"interval_s": 45})
    await device.answer(interval["id"], {"status": "error", "error": "interval out of range"})
    failed = history.locator(f'.command[data-id="{interval["id"]}"]')
    await expect(failed.locator('[data-role="status"]')).to_have_text("failed")
    await expect(failed).to_contain_text("interval out of range")

    # Reboot asks first: dismissed, nothing is sent; accepted, it is queued.
    page.once("dialog", lambda dialog: dialog.dismiss())
    await page.get_by_role("button", name="Reboot").click()
    assert await device.next_commands(wait=1) == []
    page.once("dialog", lambda dialog: dialog.accept())
    await page.get_by_role("button", name="Reboot").click()
    await expect(history.locator(".command").first).to_contain_text("reboot")
    assert [m["name"] for m in await device.next_commands()] == ["reboot"]
    await expect(history.locator(".command").first.locator('[data-role="status"]')).to_have_text(
        "sent"
    )
    assert await page.evaluate("window.notReloaded") is True
    await expect(history.locator(".command")).to_have_count(4)
    assert console_errors == []


async def test_controls_declared_in_the_editor_are_rendered_and_work(
    new_page: NewPage, server: str, http: httpx.AsyncClient, console_errors: ConsoleErrors
) -> None:
    owner, device = await owner_with_device(http)
    page = await logged_in(await new_page(), server, owner)
    await page.goto(f"{server}/devices/{device.device.id}")
    await expect(page.locator("#control-list")).to_contain_text("No controls declared yet.")
    form = page.locator("#control-form")

    # The API's refusal is shown next to the form, on the field it names.
    await form.get_by_label("Key", exact=True).fill("bad key!")
    await form.get_by_role("button", name="Add control").click()
    await expect(page.locator("#control-form-error")).to_contain_text("key", ignore_case=True)
    await expect(form.get_by_label("Key", exact=True)).to_have_attribute("aria-invalid", "true")
    # Only the fields of the chosen kind are shown.
    await expect(form.get_by_label("Min", exact=True)).to_be_hidden()
    await expect(form.get_by_label("Parameters (JSON)", exact=True)).to_be_hidden()
    await form.get_by_label("Kind").select_option("slider")
    await expect(form.get_by_label("Min", exact=True)).to_be_visible()
    await expect(form.get_by_label("Options (comma-separated)", exact=True)).to_be_hidden()
    await form.get_by_label("Key", exact=True).fill("brightness")
    await form.get_by_label("Min", exact=True).fill("10")
    await form.get_by_label("Max", exact=True).fill("5")
    await form.get_by_role("button", name="Add control").click()
    await expect(page.locator("#control-form-error")).to_contain_text("min < max")

    await form.get_by_label("Label", exact=True).fill("LED")
    await form.get_by_label("Min", exact=True).fill("0")
    await form.get_by_label("Max", exact=True).fill("255")
    await form.get_by_label("Step", exact=True).fill("5")
    await form.get_by_role("button", name="Add control").click()
    slider = page.get_by_role("slider", name="LED")
    await expect(slider).to_be_visible()
    await expect(page.locator("#control-form-error")).to_be_hidden()
    await expect(slider).to_have_attribute("max", "255")
    await expect(slider).to_have_attribute("step", "5")

    await form.get_by_label("Kind").select_option("select")
    await form.get_by_label("Key", exact=True).fill("mode")
    await form.get_by_label("Label", exact=True).fill("Mode")
    await form.get_by_label("Options (comma-separated)", exact=True).fill("auto, eco, boost")
    await form.get_by_role("button", name="Add control").click()
    mode = page.get_by_role("combobox", name="Mode", exact=True)
    await expect(mode.locator("option:not([disabled])")).to_have_text(["auto", "eco", "boost"])

    await form.get_by_label("Kind").select_option("button")
    await form.get_by_label("Key", exact=True).fill("identify")
    await form.get_by_label("Label", exact=True).fill("Identify")
    await form.get_by_label("Command (default: the key)", exact=True).fill("blink")
    await form.get_by_label("Parameters (JSON)", exact=True).fill('{"times": 3}')
    await form.get_by_role("button", name="Add control").click()
    await expect(
        page.locator("#control-list").get_by_role("button", name="Identify")
    ).to_be_visible()

    r = await http.get(f"/api/v1/devices/{device.device.id}/controls", headers=owner.headers)
    declared = [{k: v for k, v in c.items() if v is not None and k != "label"} for c in r.json()]
    assert declared == [
        {"key": "brightness", "kind": "slider", "min": 0, "max": 255, "step": 5},
        {"key": "mode", "kind": "select", "options": ["auto", "eco", "boost"]},
        {"key": "identify", "kind": "button", "command": "blink", "params": {"times": 3}},
    ]

    # The new controls do what they say.
    change = asyncio.create_task(device.desired_change({"brightness": 200}))
    await slider.fill("200")
    await change
    await expect(page.locator('.control[data-key="brightness"] output')).to_have_text("200")
    change = asyncio.create_task(device.desired_change({"mode": "eco"}))
    await mode.select_option("eco")
    doc = await change
    assert doc["desired"] == {"brightness": 200, "mode": "eco"}
    poll = asyncio.create_task(device.next_commands())
    await page.locator("#control-list").get_by_role("button", name="Identify").click()
    assert [(m["name"], m["params"]) for m in await poll] == [("blink", {"times": 3})]
    await expect(page.locator('.control[data-key="identify"] [data-role="sync"]')).to_have_text(
        "sent"
    )

    await page.get_by_role("button", name="Remove control LED").click()
    await expect(slider).to_have_count(0)
    r = await http.get(f"/api/v1/devices/{device.device.id}/controls", headers=owner.headers)
    assert [c["key"] for c in r.json()] == ["mode", "identify"]
    # The browser logs each refused request; those two were the point, nothing else was.
    refused = "the server responded with a status of 422"
    assert [e for e in console_errors if refused not in e] == []
    assert len(console_errors) == 2


async def test_phone_width_dark_theme_and_screenshot(
    new_page: NewPage, server: str, http: httpx.AsyncClient, console_errors: ConsoleErrors
) -> None:
    owner, device = await owner_with_device(http)
    await declare(http, owner, device.device.id, [
        {"key": "relay", "kind": "switch", "label": "Relay"},
        {"key": "brightness", "kind": "slider", "label": "LED", "min": 0, "max": 255, "step": 1},
        {"key": "mode", "kind": "select", "label": "Mode", "options": ["auto", "eco", "boost"]},
        {"key": "identify", "kind": "button", "label": "Blink", "command": "blink",
         "params": {"times": 3}},
    ])  # fmt: skip
    await http.put(
        f"/api/v1/devices/{device.device.id}/state/desired",
        json={"relay": True, "brightness": 180, "mode": "eco", "interval_s": 30},
        headers=owner.headers,
    )
    await device.report(1, {"relay": True, "brightness": 180, "mode": "auto", "fw_channel": "beta"})
    for name in ("ping", "wifi_scan"):
        r = await http.post(
            f"/api/v1/devices/{device.device.id}/commands", json={"name": name},
            headers=owner.headers,
        )  # fmt: skip
        assert r.status_code == 202, r.text
    first, second = sorted(await device.next_commands(), key=lambda m: str(m["name"]))
    await device.answer(first["id"], {"status": "ok", "result": {"rtt_ms": 4}})
    networks = [{"ssid": "HomeNet", "rssi": -48, "channel": 6, "security": "WPA2"}]
    await device.answer(second["id"], {"status": "ok", "result": {"networks": networks}})

    looks: list[tuple[Literal["dark", "light"], int]] = [("dark", 390), ("light", 1280)]
    for scheme, width in looks:
        page = await new_page(viewport={"width": width, "height": 900}, color_scheme=scheme)
        await logged_in(page, server, owner)
        await page.goto(f"{server}/devices/{device.device.id}")
        await expect(page.get_by_role("switch", name="Relay")).to_be_checked()
        # The device has not applied the mode yet (pending, or not confirmed after 15 s).
        await expect(page.locator('.control[data-key="mode"] [data-role="sync"]')).to_contain_text(
            re.compile("pending|not confirmed")
        )
        await expect(page.locator("#command-list .command")).to_have_count(2)
        for name in ("Relay", "LED", "Mode"):
            await expect(page.get_by_label(name, exact=True)).to_be_visible()
        # Nothing is wider than the screen.
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{scheme} at {width} px scrolls sideways by {overflow} px"
        background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert (background == "rgb(15, 17, 21)") == (scheme == "dark")
        if scheme == "light":
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            await page.locator(".control-columns").screenshot(
                path=SCREENSHOTS / "device-controls.png"
            )
        # Tab order reaches the switch.
        await page.locator("#range-apply").focus()
        for _ in range(40):
            await page.keyboard.press("Tab")
            if await page.evaluate("document.activeElement.getAttribute('role')") == "switch":
                break
        assert await page.evaluate("document.activeElement.id") == "control-relay"
    assert console_errors == []
