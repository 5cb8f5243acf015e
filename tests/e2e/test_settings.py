"""The device page's settings panel in a real browser: rename and move, rotate and revoke
the token, delete with a typed confirmation."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Dialog, Page, expect

from tests.e2e.conftest import ConsoleErrors
from tests.e2e.test_dashboard import register

DEVICE = "a4cf120a0b0c"
NAME = "Kitchen sensor"


async def create_device(page: Page, server: str, mac: str, name: str) -> str:
    """Registers a device through the JSON API with the page's session (the wizard has its
    own test); its token."""
    csrf = next(c["value"] for c in await page.context.cookies() if c["name"] == "sensorium_csrf")
    r = await page.request.post(
        f"{server}/api/v1/devices",
        data={"mac": mac, "name": name, "location": "Kitchen"},
        headers={"X-CSRF-Token": csrf},
    )
    assert r.status == 201, await r.text()
    return str((await r.json())["token"])


@dataclass
class Owned:
    context: BrowserContext
    page: Page
    token: str


@pytest.fixture
async def owned(
    browser: Browser, server: str, console_errors: ConsoleErrors
) -> AsyncIterator[Owned]:
    """A new user, logged in, with one device; its page open."""
    context = await browser.new_context()
    page = console_errors.watch(await context.new_page())
    await register(page, server, "u" + secrets.token_hex(4))
    token = await create_device(page, server, "A4:CF:12:0A:0B:0C", NAME)
    await page.goto(f"{server}/devices/{DEVICE}")
    await expect(page.get_by_role("heading", name=NAME)).to_be_visible()
    yield Owned(context, page, token)
    await context.close()


async def send(http: httpx.AsyncClient, token: str) -> int:
    """The status of a telemetry POST made with `token`."""
    r = await http.post(
        f"/api/v1/devices/{DEVICE}/telemetry",
        json={"temperature": 20.0},
        headers={"Authorization": f"Bearer {token}"},
    )
    return r.status_code


async def test_rename_and_move_then_delete_with_the_new_name(
    owned: Owned, server: str, http: httpx.AsyncClient, console_errors: ConsoleErrors
) -> None:
    page = owned.page
    settings = page.locator("#settings")
    await settings.get_by_label("Name", exact=True).fill("Cellar sensor")
    await settings.get_by_label("Location", exact=True).fill("Basement shelf")
    await settings.get_by_role("button", name="Save").click()
    await expect(page.get_by_role("heading", name="Cellar sensor")).to_be_visible()
    await page.reload()
    await expect(page.get_by_role("heading", name="Cellar sensor")).to_be_visible()
    await expect(page.locator(".toolbar .muted").first).to_contain_text("Basement shelf")
    await expect(settings.get_by_label("Name", exact=True)).to_have_value("Cellar sensor")
    await expect(settings.get_by_label("Location", exact=True)).to_have_value("Basement shelf")
    body = await (await page.request.get(f"{server}/api/v1/devices/{DEVICE}")).json()
    assert (body["name"], body["location"]) == ("Cellar sensor", "Basement shelf")
    await page.goto(server + "/")
    card = page.locator(f'li[data-device="{DEVICE}"]')
    await expect(card).to_contain_text("Cellar sensor")
    await expect(card).to_contain_text("Basement shelf")

    # Delete: the button waits for the (new) name, typed exactly.
    await page.goto(f"{server}/devices/{DEVICE}")
    confirm = page.locator('#delete-form input[name="confirm"]')
    delete = page.get_by_role("button", name="Delete device")
    await expect(delete).to_be_disabled()
    for wrong in (NAME, "Cellar", "cellar sensor", "Cellar sensors", DEVICE[:6]):
        await confirm.fill(wrong)
        await expect(delete).to_be_disabled()
    # The server checks too: a forced submit with a wrong name deletes nothing.
    await confirm.fill(NAME)
    await delete.evaluate("(b) => { b.disabled = false; }")
    await delete.click()
    await expect(page.get_by_role("alert")).to_have_text("Type the device's name to confirm.")
    assert (await page.request.get(f"{server}/api/v1/devices/{DEVICE}")).status == 200

    await confirm.fill("Cellar sensor")
    await expect(delete).to_be_enabled()
    await delete.click()
    await expect(page.get_by_role("heading", name="Devices")).to_be_visible()
    assert page.url == server + "/"
    await expect(page.locator(f'li[data-device="{DEVICE}"]')).to_have_count(0)
    assert "Cellar sensor" not in await page.content()
    assert (await page.request.get(f"{server}/api/v1/devices/{DEVICE}")).status == 404
    assert await send(http, owned.token) == 401
    # The refused form answers 422, which Chromium logs as a failed load: expected.
    assert [e for e in console_errors if "422" not in e] == []


async def test_rotate_shows_the_new_token_once_and_revoke_asks_first(
    owned: Owned, server: str, http: httpx.AsyncClient, console_errors: ConsoleErrors
) -> None:
    page = owned.page
    assert await send(http, owned.token) == 202
    rotate = page.get_by_role("button", name="Rotate token")
    await rotate.click()
    shown = page.locator("#new-token")
    await expect(shown).to_have_text(re.compile(r"^sdt_\S+$"))
    new = (await shown.text_content() or "").strip()
    assert new != owned.token
    assert await send(http, owned.token) == 401
    assert await send(http, new) == 202
    # Shown once: a reload of the page does not show it again.
    await page.reload()
    await expect(page.get_by_role("heading", name=NAME)).to_be_visible()
    await expect(page.locator("#new-token")).to_have_count(0)
    assert new not in await page.content()

    # Revoke asks first: dismissed, nothing happens; accepted, the token is refused.
    answers = iter([False, True])
    asked: list[str] = []

    async def answer(dialog: Dialog) -> None:
        asked.append(dialog.message)
        await (dialog.accept() if next(answers) else dialog.dismiss())

    page.on("dialog", answer)
    revoke = page.get_by_role("button", name="Revoke tokens")
    await revoke.click()
    for _ in range(50):
        if asked:
            break
        await page.wait_for_timeout(20)
    assert len(asked) == 1
    assert "Revoke every token" in asked[0]
    assert await send(http, new) == 202
    async with page.expect_navigation():  # accepted: revoked, and the page reloads
        await revoke.click()
    assert len(asked) == 2
    assert await send(http, new) == 401
    # A rotation brings it back with a new token.
    await rotate.click()
    await expect(shown).to_have_text(re.compile(r"^sdt_\S+$"))
    newer = (await shown.text_content() or "").strip()
    assert newer.startswith("sdt_")
    assert await send(http, newer) == 202
    assert await send(http, new) == 401
    await expect(page.locator("#token-error")).to_be_hidden()
    assert console_errors == []

    # A failure is told, not swallowed: here the device was deleted meanwhile.
    csrf = next(c["value"] for c in await page.context.cookies() if c["name"] == "sensorium_csrf")
    r = await page.request.delete(
        f"{server}/api/v1/devices/{DEVICE}", headers={"X-CSRF-Token": csrf}
    )
    assert r.status == 204
    await rotate.click()
    await expect(page.locator("#token-error")).to_contain_text("not found")
    await expect(shown).to_have_text(newer)
    assert [e for e in console_errors if "404" not in e] == []
