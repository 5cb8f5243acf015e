"""Alerts in a real browser (issue 8, acceptance 5): a new alert appears as a toast and the
nav badge counts it without a reload; acknowledging it with a note updates the list and the
badge. The rule editor shows the backtest as the rule is edited (the API's own numbers),
saves, enables/disables and deletes rules; channels show their webhook secret once and the
delivery log; the device page lists its open alerts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, expect

from sensorium.db import epoch_ms
from tests.alerts.receivers import eventually, webhook_receiver
from tests.e2e.conftest import SCREENSHOTS, ConsoleErrors
from tests.helpers import Account, Api, RegisteredDevice

MINUTE = 60_000


class NewPage(Protocol):
    async def __call__(self, **options: Any) -> Page: ...


@pytest.fixture
async def new_page(
    browser: Browser, console_errors: ConsoleErrors, server: str
) -> AsyncIterator[NewPage]:
    """Pages closed before the server stops (their alert streams end with them)."""
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


async def rule(http: httpx.AsyncClient, owner: Account, **spec: Any) -> dict[str, Any]:
    r = await http.post("/api/v1/alert-rules", json=spec, headers=owner.headers)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def send(api: Api, device: RegisteredDevice, payload: Any) -> None:
    r = await api.send(device, payload)
    assert r.status_code == 202, r.text


async def test_new_alert_toasts_and_counts_live_and_ack_updates_the_list(
    new_page: NewPage, server: str, http: httpx.AsyncClient, console_errors: ConsoleErrors
) -> None:
    api = Api(http)
    owner = await api.account()
    office = await api.device(owner, name="Office")
    await rule(
        http, owner, name="CO2 too high", scope="device", devices=[office.id], key="co2",
        operator=">", threshold=1200, clear_threshold=1000, severity="critical",
    )  # fmt: skip
    page = await logged_in(await new_page(viewport={"width": 1280, "height": 900}), server, owner)
    badge = page.locator("#alert-badge")
    await page.get_by_role("link", name="Alerts").click()
    await expect(page.get_by_role("heading", name="Alerts")).to_be_visible()
    await expect(page.locator("#alerts-empty")).to_be_visible()
    await expect(badge).to_be_hidden()
    await page.evaluate("window.notReloaded = true")

    await send(api, office, {"co2": 1350})
    toast = page.locator("#toasts .toast")
    await expect(toast).to_have_count(1)
    await expect(toast).to_contain_text("CO2 too high on Office (1350)")
    await expect(badge).to_be_visible()
    await expect(badge.locator('[data-role="n"]')).to_have_text("1")
    item = page.locator("#alert-list .alert-item")
    await expect(item).to_have_count(1)
    await expect(item.locator('[data-role="state"]')).to_have_text("Active")
    await expect(item).to_contain_text("at 1350")
    assert await page.evaluate("window.notReloaded") is True

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=SCREENSHOTS / "alerts.png", full_page=True)

    await item.get_by_label("Note (optional)").fill("window opened")
    await item.get_by_role("button", name="Acknowledge CO2 too high on Office").click()
    await expect(item.locator('[data-role="state"]')).to_have_text("Acknowledged")
    await expect(item.locator('[data-role="note"]')).to_have_text("Note: window opened")
    await expect(item.get_by_role("button", name="Acknowledge")).to_have_count(0)
    await expect(badge).to_be_hidden()
    r = await http.get("/api/v1/alerts", headers=owner.headers)
    [stored] = r.json()["items"]
    assert (stored["state"], stored["ack_note"], stored["value"]) == (
        "acknowledged", "window opened", 1350,
    )  # fmt: skip
    assert await page.evaluate("window.notReloaded") is True

    # The clear arrives live too; the device page lists only open alerts.
    await send(api, office, {"co2": 900})
    await expect(item.locator('[data-role="state"]')).to_have_text("Cleared")
    await expect(item).to_contain_text("cleared")
    await send(api, office, {"co2": 1400})
    await expect(page.locator("#alert-list .alert-item")).to_have_count(2)
    await expect(badge.locator('[data-role="n"]')).to_have_text("1")
    await page.goto(f"{server}/devices/{office.id}")
    open_alerts = page.locator("#device-alerts .alert-item")
    await expect(open_alerts).to_have_count(1)
    await expect(open_alerts).to_contain_text("at 1400")
    await expect(badge.locator('[data-role="n"]')).to_have_text("1")
    await send(api, office, {"co2": 800})
    await expect(open_alerts).to_have_count(0)
    await expect(page.locator("#device-alerts")).to_contain_text("No open alerts.")
    await expect(badge).to_be_hidden()

    # Filters: cleared alerts only, then critical ones of another state.
    await page.goto(f"{server}/alerts?state=cleared")
    await expect(page.locator("#alert-list .alert-item")).to_have_count(2)
    await page.get_by_label("State").select_option("active")
    await expect(page).to_have_url(f"{server}/alerts?state=active&severity=&device=")
    await expect(page.locator("#alerts-empty")).to_be_visible()
    assert console_errors == []


async def test_rule_editor_backtests_as_it_is_edited_and_saves(
    new_page: NewPage, server: str, http: httpx.AsyncClient, console_errors: ConsoleErrors
) -> None:
    api = Api(http)
    owner = await api.account()
    lab = await api.device(owner, name="Lab")
    # Two stretches above 1200 in the last hours: 10 minutes, then 3 minutes.
    t0 = epoch_ms() - 3 * 60 * MINUTE
    values = [900] * 10 + [1300] * 10 + [900] * 10 + [1250] * 3 + [900] * 5
    await send(
        api, lab, [{"ts": t0 + i * MINUTE, "values": {"co2": v}} for i, v in enumerate(values)]
    )
    page = await logged_in(await new_page(viewport={"width": 1280, "height": 1000}), server, owner)
    await page.goto(f"{server}/alerts/rules")
    await page.get_by_role("link", name="+ New rule").click()
    await expect(page.get_by_role("heading", name="New alert rule")).to_be_visible()

    result = page.locator("#backtest-result")
    await page.get_by_label("Name").fill("CO2 too high")
    await expect(result.locator('[data-role="message"]')).to_contain_text("Fill in the key")
    await page.get_by_label("Key").fill("co2")
    await page.get_by_label("Condition").select_option(">")
    await page.get_by_label("Threshold", exact=True).fill("1200")
    await page.get_by_label("For at least").fill("0")
    day = result.locator('[data-period="24h"]')
    await expect(day).to_have_text("2 times")
    await expect(result.locator('[data-period="7d"]')).to_have_text("2 times")
    await expect(result.locator('[data-role="fires"] li')).to_have_count(2)

    # 5 minutes: only the 10-minute stretch; the answer is the API's.
    await page.get_by_label("For at least").fill("5")
    await expect(day).to_have_text("1 time")
    spec = {"scope": "device", "devices": [lab.id], "key": "co2", "operator": ">",
            "threshold": 1200, "duration_s": 300}  # fmt: skip
    r = await http.post("/api/v1/alert-rules/backtest", json=spec, headers=owner.headers)
    assert r.json()["count"] == 1
    [fire] = r.json()["fires"]
    assert fire["at"] is not None
    assert fire["cleared_at"] is not None
    await expect(result.locator('[data-role="fires"] li')).to_contain_text("cleared after 5 min")
    await expect(result.locator('[data-role="source"]')).to_contain_text("Replayed from")

    # A bad edit is explained where the number was, the field marked; fixing it brings it back.
    await page.get_by_label("Clear at (optional)").fill("1300")
    await expect(result.locator('[data-role="message"]')).to_contain_text(
        "clear threshold must not be above the threshold"
    )
    await expect(page.get_by_label("Clear at (optional)")).to_have_attribute("aria-invalid", "true")
    await expect(day).to_have_text("—")
    await page.get_by_label("Clear at (optional)").fill("1000")
    await expect(day).to_have_text("1 time")
    await expect(result.locator('[data-role="message"]')).to_be_hidden()
    await expect(page.get_by_label("Clear at (optional)")).not_to_have_attribute(
        "aria-invalid", "true"
    )
    await page.get_by_label("Severity").select_option("critical")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=SCREENSHOTS / "rule-editor.png", full_page=True)

    await page.get_by_role("button", name="Create rule").click()
    await expect(page.get_by_role("heading", name="Alert rules")).to_be_visible()
    [saved] = (await http.get("/api/v1/alert-rules", headers=owner.headers)).json()["items"]
    assert {k: saved[k] for k in (*spec, "clear_threshold", "severity", "enabled")} == {
        **spec, "clear_threshold": 1000, "severity": "critical", "enabled": True,
    }  # fmt: skip
    card = page.locator(f'[data-rule="{saved["id"]}"]')
    await expect(card).to_contain_text("co2 > 1200 for 300 s")
    # Someone else cannot open it.
    intruder = await logged_in(await new_page(), server, await api.account())
    answer = await intruder.goto(f"{server}/alerts/rules/{saved['id']}")
    assert answer is not None
    assert answer.status == 404
    await expect(intruder.get_by_text("There is no such alert rule.")).to_be_visible()
    await intruder.close()

    # Disable from the list; the editor opens it as saved and keeps the edit.
    await card.get_by_label("Enabled: CO2 too high").uncheck()
    await expect(card.locator('[data-role="enabled"]')).to_have_text("Disabled")
    r = await http.get(f"/api/v1/alert-rules/{saved['id']}", headers=owner.headers)
    assert r.json()["enabled"] is False
    await card.get_by_role("link", name="Edit").click()
    await expect(page.get_by_label("Threshold", exact=True)).to_have_value("1200")
    await expect(page.get_by_label("For at least")).to_have_value("5")
    await expect(page.get_by_label("Unit")).to_have_value("60")
    await expect(day).to_have_text("1 time")
    # A range over all devices: low and high replace the threshold (and its clear value).
    # Outside 950..1280: the 900s and the 1300s both count; 1250 ends the first, and the
    # last 900s held 5 minutes by the end of the data.
    await page.get_by_label("All my devices").check()
    await page.get_by_label("Condition").select_option("outside")
    await expect(page.get_by_label("Threshold", exact=True)).to_be_hidden()
    await expect(page.get_by_label("Clear at (optional)")).to_be_hidden()
    await page.get_by_label("Low", exact=True).fill("950")
    await page.get_by_label("High", exact=True).fill("1280")
    await expect(day).to_have_text("2 times")
    ranged = {"scope": "all", "key": "co2", "operator": "outside", "low": 950, "high": 1280,
              "duration_s": 300}  # fmt: skip
    r = await http.post("/api/v1/alert-rules/backtest", json=ranged, headers=owner.headers)
    assert r.json()["count"] == 2
    await page.get_by_label("One device").check()
    await page.get_by_label("Condition").select_option(">")
    await expect(day).to_have_text("1 time")
    await page.get_by_label("Threshold", exact=True).fill("1280")
    await page.get_by_role("button", name="Save rule").click()
    await expect(page.get_by_role("heading", name="Alert rules")).to_be_visible()
    r = await http.get(f"/api/v1/alert-rules/{saved['id']}", headers=owner.headers)
    assert (r.json()["threshold"], r.json()["enabled"]) == (1280, False)

    page.once("dialog", lambda d: d.accept())
    await card.get_by_role("button", name="Delete").click()
    await expect(card).to_have_count(0)
    r = await http.get("/api/v1/alert-rules", headers=owner.headers)
    assert r.json()["items"] == []
    # The refused backtests (24 h and 7 d) and the intruder's 404 page are logged by the
    # browser as failed loads.
    refused = [e for e in console_errors if "status of 422" in e]
    assert len(refused) == 2
    missing = [e for e in console_errors if "status of 404" in e]
    assert len(missing) == 1
    assert [e for e in console_errors if e not in refused + missing] == []


async def test_channels_show_the_secret_once_and_the_delivery_log(
    new_page: NewPage, server: str, http: httpx.AsyncClient, console_errors: ConsoleErrors
) -> None:
    api = Api(http)
    owner = await api.account()
    page = await logged_in(await new_page(viewport={"width": 390, "height": 844}), server, owner)
    await page.goto(f"{server}/alerts/channels")
    form = page.locator("#channel-form")
    await form.get_by_label("Name").fill("Ops hook")
    await form.get_by_label("URL").fill("ftp://example.com/x")
    await form.get_by_role("button", name="Add channel").click()
    await expect(page.locator("#channel-form-error")).to_contain_text("http:// or https://")
    await expect(form.get_by_label("URL")).to_have_attribute("aria-invalid", "true")
    r = await http.get("/api/v1/notification-channels", headers=owner.headers)
    assert r.json()["items"] == []

    async with webhook_receiver() as receiver:
        await form.get_by_label("URL").fill(receiver.url)
        await form.get_by_role("button", name="Add channel").click()
        await expect(page.locator("#new-secret")).to_be_visible()
        shown = await page.locator("#secret-value").text_content() or ""
        assert shown.startswith("whsec_")
        # The receiver checks every request's signature with the secret the page showed.
        receiver.secret = shown
        await page.get_by_role("link", name="Done").click()
        channel = page.locator("#channel-list .channel")
        await expect(channel).to_have_count(1)
        await expect(channel).to_contain_text(receiver.url)
        assert shown not in await page.content()
        log = channel.locator('[data-role="log"]')
        await channel.get_by_role("button", name="Delivery log").click()
        await expect(log).to_contain_text("Nothing sent yet.")
        await channel.get_by_role("button", name="Delivery log").click()
        await expect(log).to_be_hidden()

        # An alert of a rule notifying it is delivered, signed, and logged as such.
        [made] = (await http.get("/api/v1/notification-channels", headers=owner.headers)).json()[
            "items"
        ]
        device = await api.device(owner, name="Freezer")
        await rule(
            http, owner, name="Too warm", scope="all", key="temp", operator=">", threshold=-10,
            channels=[made["id"]],
        )  # fmt: skip
        await send(api, device, {"temp": -4})

        async def delivered() -> list[Any]:
            return receiver.accepted()

        [request] = await eventually(delivered)
        assert request.verified
        assert request.headers["x-sensorium-event"] == "fired"
        await channel.get_by_role("button", name="Delivery log").click()
        row = log.locator("tbody tr")
        await expect(row).to_have_count(1)
        await expect(row).to_contain_text("fired")
        await expect(row.locator(".badge")).to_have_text("succeeded")

    await form.get_by_label("Name").fill("Ops mail")
    await form.get_by_role("radio", name="E-mail").check()
    await form.get_by_label("E-mail address").fill("ops@example.com")
    await form.get_by_role("button", name="Add channel").click()
    await expect(channel).to_have_count(2)
    # Phone width: nothing wider than the screen, here and on the other alert pages.
    for path in ("/alerts/channels", "/alerts", "/alerts/rules", "/alerts/rules/new"):
        if path != "/alerts/channels":
            await page.goto(server + path)
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390, path
    # The refused ftp:// address is logged by the browser as a failed load: expected, once.
    refused = [e for e in console_errors if "status of 422" in e]
    assert len(refused) == 1
    assert [e for e in console_errors if e not in refused] == []
