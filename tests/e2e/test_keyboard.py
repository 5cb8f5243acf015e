"""A keyboard walk through the fleet and device pages: Tab reaches the main controls in
reading order, every focused control shows a focus indicator of its own (in the light and
the dark theme), and Enter or Space work them."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Dialog, Page, expect

from tests.e2e.conftest import ConsoleErrors
from tests.e2e.test_dashboard import register
from tests.e2e.test_settings import create_device

# What the focused element is and how it looks; pushes it on window.__walked so its
# unfocused look can be compared afterwards.
FOCUSED_JS = """() => {
  const e = document.activeElement;
  if (!e || e === document.body) return null;
  (window.__walked ||= []).push(e);
  const label = e.getAttribute('aria-label') || (e.labels && e.labels[0]
    ? e.labels[0].textContent.trim().split(/\\s+/)[0] : '') || e.textContent.trim() || e.name;
  const cs = getComputedStyle(e);
  // The outline (offset 2px) is drawn over the nearest opaque background around it.
  let bg = 'rgb(255, 255, 255)';
  for (let p = e.parentElement; p; p = p.parentElement) {
    const c = getComputedStyle(p).backgroundColor;
    if (c !== 'transparent' && !/, 0\\)$/.test(c)) { bg = c; break; }
  }
  const r = e.getBoundingClientRect();
  return {
    index: window.__walked.length - 1,
    name: e.tagName.toLowerCase() + ':' + label.replace(/\\s+/g, ' ').slice(0, 40),
    outlineStyle: cs.outlineStyle, outlineWidth: parseFloat(cs.outlineWidth),
    outlineColor: cs.outlineColor, boxShadow: cs.boxShadow, background: bg,
    onScreen: r.width > 0 && r.height > 0 && r.bottom > 0 && r.top < innerHeight,
  };
}"""

UNFOCUSED_JS = """(i) => {
  const e = window.__walked[i];
  e.blur();
  const cs = getComputedStyle(e);
  return { outlineStyle: cs.outlineStyle, boxShadow: cs.boxShadow };
}"""


@dataclass
class Stop:
    index: int
    name: str
    outlineStyle: str  # the browser's names
    outlineWidth: float
    outlineColor: str
    boxShadow: str
    background: str
    onScreen: bool


def _luminance(css: str) -> float:
    channels = [int(v) / 255 for v in re.findall(r"\d+", css)[:3]]
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(a: str, b: str) -> float:
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def is_(name: str, wanted: str) -> bool:
    """A stop's name is `wanted`, or starts with it (a link's text goes on with more)."""
    return name == wanted or name.startswith(wanted + " ")


def position(names: list[str], wanted: str) -> int:
    return next((i for i, name in enumerate(names) if is_(name, wanted)), -1)


async def walk(page: Page, max_steps: int = 120) -> list[Stop]:
    """Tab from the top of the page until focus leaves it; one stop per focused element
    (a date input's sub-fields are one stop)."""
    await page.evaluate("() => { document.activeElement?.blur(); window.__walked = []; }")
    await page.evaluate("() => window.scrollTo(0, 0)")
    stops: list[Stop] = []
    for _ in range(max_steps):
        await page.keyboard.press("Tab")
        found: dict[str, Any] | None = await page.evaluate(FOCUSED_JS)
        if found is None:
            return stops
        stop = Stop(**found)
        assert stop.onScreen, f"{stop.name} is focused but not visible"
        assert has_indicator(stop), f"{stop.name} shows no focus indicator: {stop}"
        if not stops or stop.name != stops[-1].name:
            stops.append(stop)
    raise AssertionError(f"Tab did not leave the page in {max_steps} steps: {stops[-5:]}")


def has_indicator(stop: Stop) -> bool:
    outline = (
        stop.outlineStyle not in ("none", "hidden")
        and stop.outlineWidth >= 2
        and contrast(stop.outlineColor, stop.background) >= 3  # WCAG non-text contrast
    )
    return outline or stop.boxShadow != "none"


async def check_walk(page: Page, expected: list[str]) -> list[str]:
    """Walks the page in both themes; `expected` must come in this order (others may be
    between them). Each stop's focus indicator is its own: unfocused, it goes away."""
    names: list[str] = []
    for scheme in ("light", "dark"):
        await page.emulate_media(color_scheme=scheme)
        stops = await walk(page)
        names = [s.name for s in stops]
        positions = [position(names, name) for name in expected]
        missing = [name for name, at in zip(expected, positions, strict=True) if at < 0]
        assert not missing, f"Tab never reaches {missing} ({scheme}): {names}"
        assert positions == sorted(positions), f"Tab order is off ({scheme}): {names}"
        for stop in stops:
            plain = await page.evaluate(UNFOCUSED_JS, stop.index)
            assert (plain["outlineStyle"], plain["boxShadow"]) != (
                stop.outlineStyle,
                stop.boxShadow,
            ), f"{stop.name} looks the same focused and unfocused"
    await page.emulate_media(color_scheme="light")
    return names


async def focus(page: Page, name: str, max_steps: int = 120) -> None:
    """Tabs from the top of the page to the control `name`."""
    await page.evaluate("() => { document.activeElement?.blur(); window.__walked = []; }")
    for _ in range(max_steps):
        await page.keyboard.press("Tab")
        found = await page.evaluate(FOCUSED_JS)
        if found is not None and is_(found["name"], name):
            return
    raise AssertionError(f"Tab never reaches {name}")


@dataclass
class Fleet:
    page: Page
    tokens: list[str]


@pytest.fixture
async def fleet(
    browser: Browser, server: str, http: httpx.AsyncClient, console_errors: ConsoleErrors
) -> AsyncIterator[Fleet]:
    """A user with two devices that have sent readings; the fleet page open."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = console_errors.watch(await context.new_page())
    await register(page, server, "keyboard")
    tokens = [
        await create_device(page, server, "A4:CF:12:00:00:0A", "Attic sensor"),
        await create_device(page, server, "A4:CF:12:00:00:0B", "Boiler sensor"),
    ]
    for device, token in zip(("a4cf1200000a", "a4cf1200000b"), tokens, strict=True):
        r = await http.post(
            f"/api/v1/devices/{device}/telemetry",
            json={"temperature": 20.5, "humidity": 40},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 202
    await page.goto(server + "/")
    yield Fleet(page, tokens)
    await context.close()


async def test_fleet_page_by_keyboard(fleet: Fleet, console_errors: ConsoleErrors) -> None:
    page = fleet.page
    await check_walk(
        page,
        [
            "a:Skip to content",
            "button:Log out",
            "input:Search devices",
            "select:Filter by status",
            "a:Attic sensor",
            "a:Boiler sensor",
        ],
    )
    # The skip link jumps over the header: the next Tab is the search field.
    await focus(page, "a:Skip to content")
    await page.keyboard.press("Enter")
    await page.keyboard.press("Tab")
    await expect(page.locator("#filter")).to_be_focused()
    # Typing filters the list; the status filter changes with the arrow keys.
    attic = page.locator('li[data-device="a4cf1200000a"]')
    boiler = page.locator('li[data-device="a4cf1200000b"]')
    await page.keyboard.type("boil")
    await expect(attic).to_be_hidden()
    await expect(boiler).to_be_visible()
    await page.keyboard.press("Control+A")
    await page.keyboard.press("Backspace")
    await expect(attic).to_be_visible()
    await page.keyboard.press("Tab")
    await expect(page.locator("#status-filter")).to_be_focused()
    await page.keyboard.press("ArrowDown")  # All → Online
    await expect(page.locator("#status-filter")).to_have_value("online")
    await expect(attic).to_be_visible()
    await page.keyboard.press("ArrowDown")  # → Offline: both are online
    await expect(attic).to_be_hidden()
    await expect(boiler).to_be_hidden()
    await page.keyboard.press("ArrowUp")
    await expect(boiler).to_be_visible()
    # Enter on a device link opens its page.
    await focus(page, "a:Boiler sensor")
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="Boiler sensor")).to_be_visible()
    assert console_errors == []


async def test_device_page_by_keyboard(
    fleet: Fleet, server: str, http: httpx.AsyncClient, console_errors: ConsoleErrors
) -> None:
    page = fleet.page
    await page.goto(server + "/devices/a4cf1200000a")
    await expect(page.locator('.tile[data-key="temperature"]')).to_be_visible()
    await expect(page.locator("#keys input")).to_have_count(2)
    names = await check_walk(
        page,
        [
            "a:Skip to content",
            "button:1h",
            "button:24h",
            "button:7d",
            "button:30d",
            "button:1y",
            "input:from",
            "input:to",
            "button:Show",
            "button:Download CSV",
            "input:Humidity",
            "input:Temperature",
            "button:Ping",
            "button:Set interval",
            "input:Name",
            "input:Location",
            "button:Save",
            "button:Rotate token",
            "button:Revoke tokens",
            "button:Add control",
            "input:Type",
        ],
    )
    # Delete waits for the typed name: not reachable until then.
    assert position(names, "button:Delete device") < 0

    # Range buttons: Space and Enter.
    await focus(page, "button:1h")
    await page.keyboard.press("Space")
    await expect(page.get_by_role("button", name="1h", exact=True)).to_have_class(
        re.compile(r"\bactive\b")
    )
    await page.keyboard.press("Tab")
    await page.keyboard.press("Tab")
    await page.keyboard.press("Enter")  # 7d
    await expect(page.get_by_role("button", name="7d", exact=True)).to_have_class(
        re.compile(r"\bactive\b")
    )
    await expect(page.get_by_role("button", name="1h", exact=True)).not_to_have_class(
        re.compile(r"\bactive\b")
    )
    # The CSV download.
    await focus(page, "button:Download CSV")
    async with page.expect_download(timeout=5000) as download:
        await page.keyboard.press("Enter")
    assert (await download.value).suggested_filename.endswith(".csv")
    # A key's checkbox toggles with Space.
    box = page.locator("#keys input").first
    await focus(page, "input:Humidity")
    await page.keyboard.press("Space")
    await expect(box).not_to_be_checked()
    await page.keyboard.press("Space")
    await expect(box).to_be_checked()

    # Rotate with Space: the new token appears, with its Copy button next in Tab order.
    await focus(page, "button:Rotate token")
    await page.keyboard.press("Space")
    await expect(page.locator("#new-token")).to_have_text(re.compile(r"^sdt_"))
    await page.keyboard.press("Tab")
    await page.keyboard.press("Tab")
    copy = page.locator('#settings [data-copy="#new-token"]')
    await expect(copy).to_be_focused()
    await expect(copy).to_have_text("Copy")
    await page.keyboard.press("Enter")
    await expect(copy).not_to_have_text("Copy")  # "Copied", or "Select and copy"
    # Revoke with Enter asks first (dismissed here).
    asked: list[str] = []

    async def dismiss(dialog: Dialog) -> None:
        asked.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", dismiss)
    await focus(page, "button:Revoke tokens")
    await page.keyboard.press("Enter")
    for _ in range(50):
        if asked:
            break
        await page.wait_for_timeout(20)
    assert asked
    assert asked[0].startswith("Revoke every token")
    page.remove_listener("dialog", dismiss)

    # Rename by typing and Enter.
    await focus(page, "input:Name")
    await page.keyboard.press("Control+A")
    await page.keyboard.type("Loft sensor")
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="Loft sensor")).to_be_visible()

    # Delete: type the name, then Tab reaches the button and Enter deletes.
    await focus(page, "input:Type")
    await page.keyboard.type("Loft sensor")
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("button", name="Delete device")).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="Devices")).to_be_visible()
    await expect(page.locator('li[data-device="a4cf1200000a"]')).to_have_count(0)
    assert console_errors == []
