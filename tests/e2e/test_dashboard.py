"""The dashboard in a real browser: register → add a device → live value → chart → CSV →
logout, on a desktop and a phone-sized screen; another user sees none of it."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, expect

from tests.e2e.conftest import SCREENSHOTS, ConsoleErrors

PASSWORD = "correct horse battery"


async def register(page: Page, server: str, username: str) -> None:
    await page.goto(f"{server}/register")
    await page.get_by_label("User name").fill(username)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Create account").click()
    await expect(page.get_by_role("heading", name="Devices")).to_be_visible()


async def add_device(page: Page, mac: str, name: str) -> str:
    await page.get_by_role("link", name="+ Add device").click()
    await page.get_by_label("Wi-Fi MAC address").fill(mac)
    await page.get_by_label("Name").fill(name)
    await page.get_by_label("Location").fill("Kitchen")
    await page.get_by_role("button", name="Register device").click()
    await expect(page.get_by_role("heading", name=f"{name} is registered")).to_be_visible()
    return (await page.locator("#token").text_content() or "").strip()


async def canvas_has_drawing(page: Page) -> bool:
    """True when the chart canvas has pixels of the series colour (not just background)."""
    return bool(
        await page.evaluate(
            """() => {
              const c = document.querySelector('#chart canvas');
              if (!c) return false;
              const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
              let coloured = 0;
              for (let i = 0; i < d.length; i += 4) {
                // Grid and axes are grey; series lines are saturated colours.
                const hi = Math.max(d[i], d[i + 1], d[i + 2]), lo = Math.min(d[i], d[i + 1], d[i + 2]);
                if (d[i + 3] > 0 && hi - lo > 60) coloured++;
              }
              return coloured > 200;
            }"""
        )
    )


@pytest.mark.parametrize(("viewport", "label"), [((1280, 900), "desktop"), ((390, 844), "phone")])
async def test_register_add_device_live_value_chart_csv_logout(
    browser: Browser,
    server: str,
    http: httpx.AsyncClient,
    console_errors: ConsoleErrors,
    tmp_path: Path,
    viewport: tuple[int, int],
    label: str,
) -> None:
    context = await browser.new_context(
        viewport={"width": viewport[0], "height": viewport[1]}, accept_downloads=True
    )
    page = console_errors.watch(await context.new_page())
    await register(page, server, f"ada{label}")
    token = await add_device(page, "A4:CF:12:B3:C4:D5", "Kitchen sensor")
    assert token.startswith("sdt_")
    assert "mosquitto_pub" not in await page.content()  # no MQTT in this server: not offered
    # The ready-to-flash config carries the key the device checks firmware updates with.
    key = await page.evaluate(
        "fetch('/api/v1/firmware/public-key').then(r => r.json()).then(b => b.public_key)"
    )
    assert len(key) == 44  # 32 bytes, base64
    assert f'"ota_public_key": "{key}"' in await page.content()
    await page.get_by_role("link", name="Open Kitchen sensor").click()
    await expect(page.get_by_role("heading", name="Kitchen sensor")).to_be_visible()
    # The last hour shows raw readings (the default 24 h shows 1-minute buckets).
    await page.get_by_role("button", name="1h", exact=True).click()
    await page.wait_for_timeout(300)  # the live connection subscribes

    sent = time.monotonic()
    r = await http.post(
        "/api/v1/devices/a4cf12b3c4d5/telemetry",
        json={"temperature": 21.5, "humidity": 40},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 202
    tile = page.locator('.tile[data-key="temperature"] [data-role="value"]')
    await expect(tile).to_have_text("21.5", timeout=1000)
    assert time.monotonic() - sent < 1.5
    await expect(page.locator('.tile[data-key="humidity"] [data-role="value"]')).to_have_text("40")
    await expect(page.locator("#status-dot")).to_have_class("dot online")

    for _ in range(20):
        if await canvas_has_drawing(page):
            break
        await page.wait_for_timeout(100)
    # Readings spread over the hour (a backfill) give the chart a line across it.
    now_ms = int(time.time() * 1000)
    backfill = [
        {"ts": now_ms - minutes * 60_000, "values": {"temperature": value}}
        for minutes, value in ((45, 20.0), (30, 21.0), (15, 20.5), (0, 22.5))
    ]
    await http.post(
        "/api/v1/devices/a4cf12b3c4d5/telemetry",
        json=backfill,
        headers={"Authorization": f"Bearer {token}"},
    )
    await expect(tile).to_have_text("22.5", timeout=1000)
    await page.get_by_role("button", name="1h", exact=True).click()  # reload the range
    for _ in range(30):
        if await canvas_has_drawing(page):
            break
        await page.wait_for_timeout(100)
    assert await canvas_has_drawing(page)

    await expect(page.locator("#chart-note")).not_to_have_text("Loading…")
    async with page.expect_download() as download_info:
        await page.get_by_role("button", name="Download CSV").click()
    download = await download_info.value
    path = tmp_path / "export.csv"
    await download.save_as(path)
    text = path.read_text()
    assert text.startswith("ts,key,value\n")
    assert ",temperature,21.5" in text
    assert ",temperature,22.5" in text

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=SCREENSHOTS / f"device-{label}.png", full_page=True)
    await page.goto(server + "/")
    await expect(
        page.locator('li[data-device="a4cf12b3c4d5"] [data-role="value"]').first
    ).to_be_visible()
    await page.screenshot(path=SCREENSHOTS / f"fleet-{label}.png", full_page=True)

    await page.get_by_role("button", name="Log out").click()
    await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    await page.goto(server + "/devices/a4cf12b3c4d5")
    await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    assert console_errors == []
    await context.close()


async def test_another_user_sees_nothing_of_it(
    browser: Browser, server: str, http: httpx.AsyncClient, console_errors: ConsoleErrors
) -> None:
    owner_ctx = await browser.new_context()
    owner = console_errors.watch(await owner_ctx.new_page())
    await register(owner, server, "owner1")
    token = await add_device(owner, "A4:CF:12:00:00:01", "Private sensor")

    other_ctx = await browser.new_context()
    other = console_errors.watch(await other_ctx.new_page())
    await register(other, server, "intruder")
    assert "Private sensor" not in await other.content()
    response = await other.goto(server + "/devices/a4cf12000001")
    assert response is not None
    assert response.status == 404
    # Its own WebSocket refuses the device, and no value of it arrives.
    messages = await other.evaluate(
        """() => new Promise((resolve) => {
             const got = [];
             const ws = new WebSocket(`ws://${location.host}/api/v1/ws`);
             ws.onopen = () => ws.send(JSON.stringify({op: 'subscribe', devices: ['a4cf12000001']}));
             ws.onmessage = (m) => got.push(JSON.parse(m.data));
             setTimeout(() => { ws.close(); resolve(got); }, 1500);
           })"""
    )
    await http.post(
        "/api/v1/devices/a4cf12000001/telemetry",
        json={"t": 1},
        headers={"Authorization": f"Bearer {token}"},
    )
    kinds = [m["kind"] for m in messages]
    assert "error" in kinds
    assert "telemetry" not in kinds
    assert next(m for m in messages if m["kind"] == "error")["code"] == "device_not_found"
    # The 404 page itself logs a console error for the failed document load: expected.
    assert [e for e in console_errors if "404" not in e] == []
    await owner_ctx.close()
    await other_ctx.close()
