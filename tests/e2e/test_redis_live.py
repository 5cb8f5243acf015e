"""Acceptance 3 in a real browser: two `sensorium api` processes share live events through
Redis, so a browser connected to process 1 sees, without a reload, what a device sends to
process 2, on the device page and on the fleet page."""

from __future__ import annotations

import re
import time

import httpx
from playwright.async_api import Browser, Page, expect

from tests.e2e.conftest import ConsoleErrors
from tests.e2e.test_dashboard import PASSWORD

# redis_url and two_apis: Redis and two API processes sharing it (CI fails without Redis).
pytest_plugins = ["tests.redis_fixtures"]

DEVICE = "020000000042"


async def login(page: Page, base: str, username: str) -> None:
    await page.goto(f"{base}/login")
    await page.get_by_label("User name").fill(username)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_role("heading", name="Devices")).to_be_visible()


async def mark_loaded(page: Page) -> None:
    """Marks the document, so a reload (a new document) would show as a missing mark."""
    await page.evaluate("() => { window.__notReloaded = true; }")


async def not_reloaded(page: Page) -> bool:
    return bool(await page.evaluate("() => window.__notReloaded === true"))


async def test_browser_on_process_1_sees_values_ingested_by_process_2(
    browser: Browser, two_apis: list[str], console_errors: ConsoleErrors
) -> None:
    one, two = two_apis
    async with httpx.AsyncClient(base_url=one) as api1:
        creds = {"username": "ada", "password": PASSWORD}
        assert (await api1.post("/api/v1/auth/register", json=creds)).status_code == 201
        access = (await api1.post("/api/v1/auth/login", json=creds)).json()["access_token"]
        r = await api1.post(
            "/api/v1/devices",
            json={"mac": "02:00:00:00:00:42", "name": "Cellar sensor", "location": "Cellar"},
            headers={"Authorization": f"Bearer {access}"},
        )
        assert r.status_code == 201, r.text
        assert r.json()["id"] == DEVICE
        device_headers = {"Authorization": f"Bearer {r.json()['token']}"}

    context = await browser.new_context()
    fleet = console_errors.watch(await context.new_page())
    await login(fleet, one, "ada")
    device = console_errors.watch(await context.new_page())
    await device.goto(f"{one}/devices/{DEVICE}")
    await expect(device.get_by_role("heading", name="Cellar sensor")).to_be_visible()
    for page in (fleet, device):
        await mark_loaded(page)
    await device.wait_for_timeout(300)  # both pages' WebSockets subscribe

    async with httpx.AsyncClient(base_url=two) as api2:
        for value in (12.5, 13.0):
            sent = time.monotonic()
            r = await api2.post(
                f"/api/v1/devices/{DEVICE}/telemetry",
                json={"temperature": value, "humidity": 81},
                headers=device_headers,
            )
            assert r.status_code == 202, r.text
            tile = device.locator('.tile[data-key="temperature"] [data-role="value"]')
            card = fleet.locator(f'li[data-device="{DEVICE}"] [data-key="temperature"] span')
            await expect(tile).to_have_text(f"{value:.1f}", timeout=1000)
            await expect(card).to_have_text(f"{value:.1f}", timeout=1000)
            assert time.monotonic() - sent < 1.0
    await expect(device.locator('.tile[data-key="humidity"] [data-role="value"]')).to_have_text(
        "81"
    )
    await expect(device.locator("#status-dot")).to_have_class("dot online")
    await expect(fleet.locator(f'li[data-device="{DEVICE}"] [data-role="dot"]')).to_have_class(
        "dot online"
    )
    seen = fleet.locator(f'li[data-device="{DEVICE}"] [data-role="seen"]')
    await expect(seen).to_have_text(re.compile(r"^\d s ago$"))
    for page in (fleet, device):
        assert await not_reloaded(page)
    assert console_errors == []
    await context.close()
