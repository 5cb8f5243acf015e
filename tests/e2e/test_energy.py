"""The energy page in a real browser (acceptance 5 of issue 10): a site with a mains meter
and two sub-meters that sent power readings today and yesterday over HTTP; its tariff set
through the page's form (a refused one first); the page shows today's kWh, cost and the
change against yesterday at the same time, equal to what GET /api/v1/energy/summary says
for the same moment, and the "now" value follows a new reading live. Desktop and phone."""

from __future__ import annotations

import math
import time
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from playwright.async_api import Browser, Page, expect

from tests.e2e.conftest import SCREENSHOTS, ConsoleErrors
from tests.helpers import Account, Api, RegisteredDevice

STEP_MS = 5 * 60_000
NO_VALUE = "\u2013"  # what the page shows for a figure it does not have
# Real zones around the world: the test runs in the one where it is closest to 13:00, so
# "today so far" and "yesterday by the same time" both span many hours whenever it runs.
ZONES = [
    "Pacific/Honolulu", "America/Los_Angeles", "America/Chicago", "America/New_York",
    "America/Sao_Paulo", "Atlantic/Azores", "UTC", "Europe/Berlin", "Europe/Athens",
    "Asia/Dubai", "Asia/Kolkata", "Asia/Bangkok", "Asia/Shanghai", "Asia/Tokyo",
    "Australia/Sydney", "Pacific/Auckland",
]  # fmt: skip


def midday_zone(now: datetime) -> str:
    def distance(name: str) -> float:
        local = now.astimezone(ZoneInfo(name))
        return abs(local.hour + local.minute / 60 - 13)

    return min(ZONES, key=distance)


def fixed(value: float, digits: int) -> str:
    """What Intl.NumberFormat('en-US') shows: half away from zero on the exact binary
    value, with thousands separators."""
    quantum = Decimal(1).scaleb(-digits)
    return f"{Decimal(value).quantize(quantum, rounding=ROUND_HALF_UP):,}"


def percent(value: float) -> str:
    text = fixed(abs(value), 1)
    if Decimal(text.replace(",", "")) == 0:
        return text + "%"
    return ("+" if value > 0 else "\u2212") + text + "%"


def heat_pump_w(ts: int, scale: float) -> float:
    return scale * (900 + 400 * math.sin(ts / 3_600_000))


async def send_power(
    api: Api, device: RegisteredDevice, start: int, end: int, watts: Any, scale: float
) -> None:
    """Power readings every 5 minutes in [start, end], 1000 to a request."""
    entries = [
        {"ts": ts, "values": {"power": round(watts(ts, scale), 1)}}
        for ts in range(start, end + 1, STEP_MS)
    ]
    for i in range(0, len(entries), 1000):
        r = await api.send(device, entries[i : i + 1000])
        assert r.status_code == 202, r.text


async def home_site(
    http: httpx.AsyncClient, zone: str
) -> tuple[Account, dict[str, Any], RegisteredDevice]:
    """Mains = heat pump + kitchen + 350 W of unmetered load; today's load is 20 % above
    yesterday's. Readings from yesterday's local midnight to a few seconds ago."""
    api = Api(http)
    owner = await api.account()
    mains = await api.device(owner, name="Mains meter")
    pump = await api.device(owner, name="Heat pump")
    kitchen = await api.device(owner, name="Kitchen")
    tz = ZoneInfo(zone)
    now = datetime.now(tz)
    today = datetime(now.year, now.month, now.day, tzinfo=tz)
    yesterday = datetime.combine(today.date() - timedelta(days=1), today.time(), tzinfo=tz)
    midnight = int(today.timestamp() * 1000)
    end = int(time.time() * 1000) - 5_000
    # 5 minutes apart across midnight too: the stretch is bridged and split there.
    spans = [(int(yesterday.timestamp() * 1000), midnight - STEP_MS, 1.0), (midnight, end, 1.2)]
    kitchen_w = 250.0
    for start, stop, scale in spans:
        await send_power(api, pump, start, stop, heat_pump_w, scale)
        await send_power(api, kitchen, start, stop, lambda _t, s: s * kitchen_w, scale)
        await send_power(
            api, mains, start, stop, lambda t, s: heat_pump_w(t, s) + s * (kitchen_w + 350), scale
        )
    r = await http.post(
        "/api/v1/energy/sites",
        json={"name": "Home", "mains": mains.id, "submeters": [pump.id, kitchen.id]},
        headers=owner.headers,
    )
    assert r.status_code == 201, r.text
    return owner, r.json(), mains


async def log_in(page: Page, server: str, owner: Account) -> None:
    await page.goto(f"{server}/login")
    await page.get_by_label("User name").fill(owner.username)
    await page.get_by_label("Password").fill(owner.password)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_role("heading", name="Devices")).to_be_visible()


async def set_tariff_in_form(page: Page) -> None:
    """A night rate plus an overlapping window is refused with the API's message next to
    the form; without the second window it is saved."""
    form = page.locator("#tariff-form")
    await form.get_by_label("Currency").fill("EUR")
    await form.get_by_label("Price per kWh").first.fill("0.32")
    await form.get_by_label("Standing charge per day").fill("0.45")
    for start, end, price in (("23:00", "07:00", "0.18"), ("06:00", "08:00", "0.25")):
        await page.get_by_role("button", name="+ Add window").click()
        window = page.locator("#windows li").last
        await window.get_by_label("From").fill(start)
        await window.get_by_label("To").fill(end)
        await window.get_by_label("Price per kWh").fill(price)
    await page.locator("#windows li").first.get_by_label("Name").fill("night")
    await page.get_by_role("button", name="Save tariff").click()
    error = page.locator("#tariff-form-error")
    await expect(error).to_be_visible()
    await expect(error).to_contain_text("overlap")
    await page.get_by_role("button", name="Remove window 2").click()
    await page.get_by_role("button", name="Save tariff").click()
    await expect(page.get_by_text("Tariff saved.")).to_be_visible()
    await expect(error).to_be_hidden()


SHOWN = """() => {
  const v = (id) => ({text: document.getElementById(id).textContent.trim(),
                      value: document.getElementById(id).dataset.value});
  return {at: document.getElementById('as-of').dataset.atMs, now: v('now-w'),
          kwh: v('today-kwh'), cost: v('today-cost'), change: v('today-change'),
          yesterday: v('yesterday-kwh'), width: document.documentElement.scrollWidth};
}"""


@pytest.mark.parametrize(("viewport", "label"), [((1280, 900), "desktop"), ((390, 844), "phone")])
async def test_energy_page_shows_today_as_the_api_does(
    browser: Browser,
    server: str,
    http: httpx.AsyncClient,
    console_errors: ConsoleErrors,
    viewport: tuple[int, int],
    label: str,
) -> None:
    zone = midday_zone(datetime.now(ZoneInfo("UTC")))
    owner, site, mains = await home_site(http, zone)
    context = await browser.new_context(
        viewport={"width": viewport[0], "height": viewport[1]}, timezone_id=zone, locale="en-US"
    )
    page = console_errors.watch(await context.new_page())
    await log_in(page, server, owner)
    await page.get_by_role("link", name="Energy").click()
    await expect(page.get_by_role("heading", name="Energy", exact=True)).to_be_visible()
    await expect(page.get_by_label("Show")).to_have_value(f"site:{site['id']}")
    # The browser's zone, as the browser names it: Chromium gives ICU's canonical names,
    # some of them older spellings of the IANA ones (Asia/Calcutta for Asia/Kolkata).
    browser_zone = await page.evaluate("Intl.DateTimeFormat().resolvedOptions().timeZone")
    moment = datetime.now(ZoneInfo("UTC"))
    assert (
        moment.astimezone(ZoneInfo(browser_zone)).utcoffset()
        == moment.astimezone(ZoneInfo(zone)).utcoffset()
    )
    await expect(page.get_by_label("Time zone")).to_have_value(browser_zone)
    await expect(page.locator("#today-cost")).to_have_text(NO_VALUE)  # no tariff yet
    await set_tariff_in_form(page)
    await expect(page.locator("#today-cost")).to_contain_text("€")

    shown = await page.evaluate(SHOWN)
    r = await http.get(
        "/api/v1/energy/summary",
        params={"site": site["id"], "period": "day", "at": shown["at"], "tz": zone},
        headers=owner.headers,
    )
    assert r.status_code == 200, r.text
    api = r.json()
    today, yesterday = api["current"], api["previous"]
    assert today["kwh"] > 1
    assert yesterday["kwh"] > 1
    assert today["cost"] > today["kwh"] * 0.18 + 0.45
    assert api["change_pct"] is not None
    assert 15 < api["change_pct"] < 25  # the 20 % more
    # The numbers the page shows are the API's, to the last bit and as displayed.
    assert float(shown["kwh"]["value"]) == today["kwh"]
    assert shown["kwh"]["text"] == fixed(today["kwh"], 2)
    assert float(shown["cost"]["value"]) == today["cost"]
    assert shown["cost"]["text"] == "€" + fixed(today["cost"], 2)
    assert float(shown["change"]["value"]) == api["change_pct"]
    assert shown["change"]["text"] == percent(api["change_pct"])
    assert float(shown["yesterday"]["value"]) == yesterday["kwh"]
    assert float(shown["now"]["value"]) == api["now"]["w"]
    assert shown["width"] <= viewport[0]  # nothing sticks out sideways, also at 390 px

    # The breakdown: both sub-meters and the unmetered remainder, as the API has them.
    rows = page.locator("#breakdown-table tbody tr")
    await expect(rows).to_have_count(3)
    await expect(rows.last).to_contain_text("Unmetered")
    # To display precision: the page's summary and this one are two requests, and at a
    # value such as 5.845 (167 five-minute steps of 420 W) the last bit of the remainder can
    # differ between them (the scheduler may have filled a cache in between), which moves
    # the rounding. Failed once in a full run: 5.84 here, 5.85 on the page.
    shown_unmetered = Decimal((await rows.last.locator("td").nth(1).inner_text()).replace(",", ""))
    assert abs(shown_unmetered - Decimal(api["unmetered_kwh"])) <= Decimal("0.0050001")
    for chart in ("days-chart", "months-chart", "profile-chart"):
        await expect(page.locator(f"#{chart} canvas")).to_have_count(1)

    # CSV links carry the scope and the zone.
    href = await page.locator("#csv-summary-day").get_attribute("href")
    assert href is not None
    csv = await context.request.get(server + href)
    assert csv.ok
    assert (await csv.text()).startswith("row,device_id,name,start,end,kwh")

    # "Now" follows the mains meter live.
    await page.wait_for_timeout(300)  # the live connection subscribes
    r = await Api(http).send(mains, {"power": 4321})
    assert r.status_code == 202, r.text
    await expect(page.locator("#now-w")).to_have_text("4,321", timeout=2000)

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    name = "energy.png" if label == "desktop" else "energy-phone.png"
    await page.screenshot(path=SCREENSHOTS / name, full_page=True)
    # The refused tariff's 422 is logged by the browser as a failed load: expected, once.
    refused = [e for e in console_errors if "status of 422" in e]
    assert len(refused) == 1
    assert [e for e in console_errors if e not in refused] == []
    await context.close()
