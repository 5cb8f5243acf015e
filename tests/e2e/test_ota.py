"""Firmware updates in a real browser (issue 9, acceptance 5): an image uploaded through the
page with its progress bar (refused uploads explained from the API's errors), a rollout
made through the form (its filter counted as it is typed, a bad batch explained inline),
and the rollout's page following the devices' reports without a reload: per-device bars
and the counts by state move as a device reports DOWNLOADING 20 % → 70 % → VERIFIED →
UPDATING and is proven UPDATED by its status; a FAILED device shows its error and a retry
button. The device page shows its firmware history; another user gets the not-found page;
nothing is wider than a phone."""

from __future__ import annotations

import base64
import hashlib
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, expect

from tests.e2e.conftest import SCREENSHOTS, ConsoleErrors
from tests.helpers import Account, Api, RegisteredDevice


class NewPage(Protocol):
    async def __call__(self, **options: Any) -> Page: ...


@pytest.fixture
async def new_page(
    browser: Browser, console_errors: ConsoleErrors, server: str
) -> AsyncIterator[NewPage]:
    """Pages closed before the server stops (their event streams end with them)."""
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


async def status(api: Api, device: RegisteredDevice, fw: str) -> None:
    r = await api.client.post(
        f"/api/v1/devices/{device.id}/status",
        json={"online": True, "fw": fw},
        headers=device.headers,
    )
    assert r.status_code == 200, r.text


async def report(api: Api, device: RegisteredDevice, job: str, state: str, **extra: Any) -> None:
    r = await api.client.post(
        f"/api/v1/devices/{device.id}/ota/progress",
        json={"job": job, "state": state, **extra},
        headers=device.headers,
    )
    assert r.status_code == 200, r.text


async def stored(http: httpx.AsyncClient, owner: Account, what: str) -> list[dict[str, Any]]:
    r = await http.get(f"/api/v1/{what}", headers=owner.headers)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def test_upload_roll_out_and_watch_the_devices_update_live(
    new_page: NewPage,
    server: str,
    http: httpx.AsyncClient,
    console_errors: ConsoleErrors,
    tmp_path: Path,
) -> None:
    api = Api(http)
    owner = await api.account()
    north = await api.device(owner, name="Greenhouse north", location="greenhouse")
    south = await api.device(owner, name="Greenhouse south", location="greenhouse")
    office = await api.device(owner, name="Office", location="office")
    for device in (north, south, office):
        await status(api, device, "1.2.0")
    data = random.Random(9).randbytes(3 * 1024 * 1024)
    build = tmp_path / "firmware.bin"
    build.write_bytes(data)

    page = await logged_in(await new_page(viewport={"width": 1280, "height": 900}), server, owner)
    await page.get_by_role("link", name="Firmware").click()
    await expect(page.get_by_role("heading", name="Firmware", exact=True)).to_be_visible()
    await expect(page.locator("#public-key")).to_have_text(
        (await http.get("/api/v1/firmware/public-key", headers=owner.headers)).json()["public_key"]
    )
    form = page.locator("#upload-form")
    error = page.locator("#upload-error")

    # Refused: not a semantic version; the API's message, the field marked, nothing stored.
    await form.get_by_label("Image file (.bin)").set_input_files(build)
    await form.get_by_label("Title").fill("Spring release")
    await form.get_by_label("Version").fill("1.3")
    await form.get_by_role("button", name="Upload").click()
    await expect(error).to_contain_text("'version' must be a semantic version")
    await expect(form.get_by_label("Version")).to_have_attribute("aria-invalid", "true")
    assert await stored(http, owner, "firmware") == []

    # Accepted: the bar records every step it showed and ends full.
    await page.evaluate("""() => {
        window.uploadSteps = [];
        const meter = document.querySelector('#upload-progress .bar');
        new MutationObserver(() => window.uploadSteps.push(Number(meter.getAttribute('aria-valuenow'))))
          .observe(meter, {attributes: true, attributeFilter: ['aria-valuenow']});
    }""")
    await form.get_by_label("Version").fill("1.3.0")
    await form.get_by_label("Notes (optional)").fill("Fixes the LED")
    await form.get_by_role("button", name="Upload").click()
    await expect(page.locator("#upload-done")).to_contain_text("Uploaded Spring release 1.3.0")
    progress = page.locator("#upload-progress")
    await expect(progress).to_have_attribute("data-state", "done")
    await expect(progress.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")
    steps: list[float] = await page.evaluate("window.uploadSteps")
    assert steps[0] == 0
    assert steps[-1] == 100
    assert steps == sorted(steps)
    await expect(error).to_be_hidden()
    [image] = await stored(http, owner, "firmware")
    assert (image["version"], image["size"], image["notes"]) == (
        "1.3.0",
        len(data),
        "Fixes the LED",
    )
    assert image["sha256"] == hashlib.sha256(data).hexdigest()
    card = page.locator('#image-list [data-version="1.3.0"]')
    await expect(card).to_contain_text("Spring release")
    await expect(card).to_contain_text(image["sha256"][:12])
    await expect(card).to_contain_text("3.00 MiB")
    await expect(card.locator('[data-role="used-by"]')).to_have_text("no rollout yet")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=SCREENSHOTS / "firmware.png", full_page=True)

    # The same version again, then an image over the 4 MiB limit: both refused, explained.
    await form.get_by_label("Image file (.bin)").set_input_files(build)
    await form.get_by_label("Title").fill("Again")
    await form.get_by_label("Version").fill("1.3.0")
    await form.get_by_role("button", name="Upload").click()
    await expect(error).to_contain_text("version 1.3.0 is already uploaded")
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (4 * 1024 * 1024 + 1))
    await form.get_by_label("Image file (.bin)").set_input_files(big)
    await form.get_by_label("Version").fill("1.4.0")
    await form.get_by_role("button", name="Upload").click()
    await expect(error).to_contain_text("the image is larger than 4194304 bytes")
    # A detached signature that is not this image's (64 zero bytes): refused, field marked.
    await form.get_by_label("Image file (.bin)").set_input_files(build)
    await form.get_by_text("Detached signature").click()
    await form.get_by_label("Signature").fill(base64.b64encode(bytes(64)).decode())
    await form.get_by_role("button", name="Upload").click()
    await expect(error).to_contain_text("the signature does not match this image")
    await expect(form.get_by_label("Signature")).to_have_attribute("aria-invalid", "true")
    assert len(await stored(http, owner, "firmware")) == 1
    await expect(page.locator("#image-list .image")).to_have_count(1)

    # The rollout form: the filter's count follows the typing.
    await card.get_by_role("link", name="Roll out").click()
    await expect(page.get_by_role("heading", name="New rollout")).to_be_visible()
    rollout_form = page.locator("#rollout-form")
    await expect(rollout_form.get_by_label("Image")).to_have_value(str(image["id"]))
    count = page.locator("#target-count")
    await rollout_form.get_by_label("All my devices matching a filter").check()
    await expect(count).to_have_text("3 devices match · 3 to update")
    await rollout_form.get_by_label("Name contains").fill("GREENHOUSE")
    await expect(count).to_have_text("2 devices match · 2 to update")
    await rollout_form.get_by_label("Location").select_option("office")
    await expect(count).to_have_text("0 devices match · 0 to update")
    # A bad batch is explained next to it; nothing is stored.
    await rollout_form.get_by_label("Location").select_option("greenhouse")
    await rollout_form.get_by_label("Gradually, in batches").check()
    await rollout_form.get_by_label("Batch", exact=True).fill("0")
    await rollout_form.get_by_role("button", name="Start rollout").click()
    strategy_error = rollout_form.locator('[data-error="strategy"]')
    await expect(strategy_error).to_contain_text("batch_size")
    await expect(rollout_form.get_by_label("Batch", exact=True)).to_have_attribute(
        "aria-invalid", "true"
    )
    assert await stored(http, owner, "rollouts") == []
    # Chosen devices, all at once.
    await rollout_form.get_by_label("All at once").check()
    await rollout_form.get_by_label("Choose devices").check()
    await rollout_form.get_by_label("Greenhouse north").check()
    await expect(count).to_have_text("1 selected · 1 to update")
    await rollout_form.get_by_role("button", name="Select all").click()
    await expect(count).to_have_text("3 selected · 3 to update")
    await rollout_form.get_by_role("button", name="Start rollout").click()
    await expect(page.get_by_role("heading", name="Rollout #")).to_contain_text("1.3.0")
    [made] = await stored(http, owner, "rollouts")
    assert sorted(made["target"]["devices"]) == sorted(d.id for d in (north, south, office))
    assert made["strategy"] == "all"
    assert page.url == f"{server}/rollouts/{made['id']}"

    # The rollout page follows the devices live.
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")
    await page.evaluate("window.notReloaded = true")
    r = await http.get(f"/api/v1/rollouts/{made['id']}", headers=owner.headers)
    jobs = {j["device_id"]: j["job"] for j in r.json()["jobs"]}
    rows = {d.id: page.locator(f'#job-list [data-device="{d.id}"]') for d in (north, south, office)}
    bar = rows[north.id].get_by_role("progressbar")
    state = rows[north.id].locator('[data-role="state"]')

    def counted(name: str) -> Any:
        return page.locator(f'#state-counts [data-count="{name}"] dd')

    await expect(counted("ASSIGNED")).to_have_text("3")
    await expect(bar).to_have_attribute("aria-valuenow", "0")

    await report(api, north, jobs[north.id], "DOWNLOADING", progress=0.2)
    await expect(bar).to_have_attribute("aria-valuenow", "20")
    await expect(state).to_have_text("Downloading")
    await expect(rows[north.id].locator('[data-role="percent"]')).to_have_text("20 %")
    await expect(counted("DOWNLOADING")).to_have_text("1")
    await expect(counted("ASSIGNED")).to_have_text("2")
    await report(api, north, jobs[north.id], "DOWNLOADING", progress=0.7)
    await expect(bar).to_have_attribute("aria-valuenow", "70")
    await report(api, north, jobs[north.id], "DOWNLOADED")
    await report(api, north, jobs[north.id], "VERIFIED")
    await expect(state).to_have_text("Verified")
    await expect(bar).to_have_attribute("aria-valuenow", "100")
    await expect(counted("VERIFIED")).to_have_text("1")
    await expect(counted("DOWNLOADING")).to_have_text("0")
    await report(api, north, jobs[north.id], "UPDATING")
    await expect(state).to_have_text("Updating")
    await expect(counted("UPDATING")).to_have_text("1")
    # The device's own UPDATED proves nothing; its status with the new version does.
    await report(api, north, jobs[north.id], "UPDATED")
    await status(api, north, "1.3.0")
    await expect(state).to_have_text("Updated")
    await expect(counted("UPDATED")).to_have_text("1")
    await expect(counted("UPDATING")).to_have_text("0")
    await expect(page.locator("#overall-text")).to_contain_text("1 of 3 updated")

    # A failure: its error and a retry button; 1 failed of 2 finished (50 % > 20 %) pauses
    # the rollout.
    await report(api, south, jobs[south.id], "DOWNLOADING", progress=0.4)
    await report(api, south, jobs[south.id], "FAILED", error="flash write error at 0x1000")
    failed = rows[south.id]
    await expect(failed.locator('[data-role="state"]')).to_have_text("Failed")
    await expect(failed.locator('[data-role="error"]')).to_have_text("flash write error at 0x1000")
    retry = failed.get_by_role("button", name="Retry Greenhouse south")
    await expect(retry).to_be_visible()
    await expect(counted("FAILED")).to_have_text("1")
    await expect(page.locator("#rollout-state")).to_have_text("Paused")
    await expect(page.locator("#pause-reason")).to_contain_text("above the abort threshold")
    await expect(page.get_by_role("button", name="Resume")).to_be_visible()
    assert await page.evaluate("window.notReloaded") is True
    await page.screenshot(path=SCREENSHOTS / "rollout.png", full_page=True)

    # Retry, resume, and the retried device updates too: the rollout completes.
    await retry.click()
    await expect(failed.locator('[data-role="state"]')).to_have_text("Assigned")
    await expect(retry).to_be_hidden()
    await expect(failed.locator('[data-role="error"]')).to_be_hidden()
    await page.get_by_role("button", name="Resume").click()
    await expect(page.locator("#rollout-state")).to_have_text("Running")
    r = await http.get(f"/api/v1/rollouts/{made['id']}", headers=owner.headers)
    assert r.json()["state"] == "running"
    retried = {j["device_id"]: j["job"] for j in r.json()["jobs"]}[south.id]
    assert retried != jobs[south.id]
    await report(api, south, retried, "DOWNLOADING", progress=0.5)
    await expect(failed.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "50")
    for step in ("DOWNLOADED", "VERIFIED", "UPDATING"):
        await report(api, south, retried, step)
    await status(api, south, "1.3.0")
    await expect(failed.locator('[data-role="state"]')).to_have_text("Updated")
    await expect(page.locator("#rollout-state")).to_have_text("Running")
    for step in ("DOWNLOADING", "DOWNLOADED", "VERIFIED", "UPDATING"):
        await report(api, office, jobs[office.id], step)
    await status(api, office, "1.3.0")
    await expect(page.locator("#rollout-state")).to_have_text("Completed")
    await expect(counted("UPDATED")).to_have_text("3")
    await expect(page.locator("#overall-text")).to_have_text("3 of 3 updated")
    await expect(page.get_by_role("button", name="Pause")).to_be_hidden()
    assert await page.evaluate("window.notReloaded") is True

    # The device page: the version it runs and its firmware history.
    await page.goto(f"{server}/devices/{south.id}")
    section = page.locator("#device-firmware")
    await expect(section.locator('[data-role="current"]')).to_have_text("1.3.0")
    entry = section.locator(".fw-item")
    await expect(entry).to_have_count(1)
    await expect(entry).to_contain_text("1.3.0")
    await expect(entry).to_contain_text(f"rollout #{made['id']}")
    await expect(entry.locator('[data-role="state"]')).to_have_text("Updated")
    # The rollouts list; the image is used by it (and may be deleted: the rollout finished).
    await page.goto(f"{server}/rollouts")
    listed = page.locator(f'#rollout-list [data-rollout="{made["id"]}"]')
    await expect(listed).to_contain_text("3 of 3 updated")
    await expect(listed.locator('[data-role="rollout-state"]')).to_have_text("Completed")
    await page.goto(f"{server}/firmware")
    await expect(card.locator('[data-role="used-by"]')).to_have_text(f"#{made['id']} (completed)")
    await expect(card.get_by_role("button", name="Delete Spring release 1.3.0")).to_be_enabled()

    # Someone else: the not-found page, saying what is missing.
    intruder = await logged_in(await new_page(), server, await api.account())
    for path, text in [
        (f"/rollouts/{made['id']}", "There is no such rollout."),
        (f"/firmware/{image['id']}", "There is no such firmware image."),
    ]:
        answer = await intruder.goto(server + path)
        assert answer is not None
        assert answer.status == 404
        await expect(intruder.get_by_text(text)).to_be_visible()

    # The refused uploads, the refused rollout and the intruder's pages are logged by the
    # browser as failed loads.
    expected = {"status of 422": 3, "status of 409": 1, "status of 413": 1, "status of 404": 2}
    for needle, n in expected.items():
        assert len([e for e in console_errors if needle in e]) == n, (needle, console_errors)
    assert [e for e in console_errors if not any(k in e for k in expected)] == []


async def test_firmware_in_use_cannot_be_deleted_and_pages_fit_a_phone(
    new_page: NewPage, server: str, http: httpx.AsyncClient, console_errors: ConsoleErrors
) -> None:
    api = Api(http)
    owner = await api.account()
    device = await api.device(owner, name="Porch light with a rather long name", location="porch")
    await status(api, device, "1.2.0")
    r = await http.post(
        "/api/v1/firmware",
        data={"title": "Summer build with a long descriptive title", "version": "2.0.0-rc.1"},
        files={"file": ("fw.bin", b"\x01" * 70_000, "application/octet-stream")},
        headers=owner.headers,
    )
    assert r.status_code == 201, r.text
    image = r.json()
    r = await http.post(
        "/api/v1/rollouts",
        json={"firmware_id": image["id"], "devices": [device.id]},
        headers=owner.headers,
    )
    assert r.status_code == 201, r.text
    rollout_id = r.json()["id"]
    [job] = r.json()["jobs"]

    page = await logged_in(await new_page(viewport={"width": 390, "height": 844}), server, owner)
    await page.goto(f"{server}/firmware")
    card = page.locator('#image-list [data-version="2.0.0-rc.1"]')
    delete = card.get_by_role("button", name="Delete Summer build")
    await expect(delete).to_be_disabled()
    await expect(card).to_contain_text(f"Rollout #{rollout_id} is running with this image")
    await page.goto(f"{server}/firmware/{image['id']}")
    await expect(page.get_by_role("button", name="Delete")).to_be_disabled()
    await expect(page.locator("#sha256")).to_have_text(image["sha256"])

    # The device's page shows the update in its firmware history, moving live.
    await page.goto(f"{server}/devices/{device.id}")
    entry = page.locator("#device-firmware .fw-item")
    await expect(entry.locator('[data-role="state"]')).to_have_text("Assigned")
    await expect(page.locator('#device-firmware [data-role="current"]')).to_have_text("1.2.0")
    r = await http.post(
        f"/api/v1/devices/{device.id}/ota/progress",
        json={"job": job["job"], "state": "DOWNLOADING", "progress": 0.3},
        headers=device.headers,
    )
    assert r.status_code == 200, r.text
    await expect(entry.locator('[data-role="state"]')).to_have_text("Downloading")
    await expect(entry.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "30")

    # Cancelled from its page: the device's job too; the image may go then.
    await page.goto(f"{server}/rollouts/{rollout_id}")
    row = page.locator(f'#job-list [data-device="{device.id}"]')
    await expect(row.locator('[data-role="state"]')).to_have_text("Downloading")
    page.once("dialog", lambda d: d.accept())
    await page.get_by_role("button", name="Cancel rollout").click()
    await expect(page.locator("#rollout-state")).to_have_text("Cancelled")
    await expect(row.locator('[data-role="state"]')).to_have_text("Cancelled")
    await expect(page.locator('#state-counts [data-count="CANCELLED"] dd')).to_have_text("1")
    # Phone width: nothing wider than the screen.
    for path in (
        "/firmware",
        f"/firmware/{image['id']}",
        "/rollouts",
        "/rollouts/new",
        f"/rollouts/{rollout_id}",
        f"/devices/{device.id}",
    ):
        await page.goto(server + path)
        await expect(page.locator("main")).to_be_visible()
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390, path
    await page.goto(f"{server}/firmware")
    page.once("dialog", lambda d: d.accept())
    await card.get_by_role("button", name="Delete Summer build").click()
    await expect(card).to_have_count(0)
    assert await stored(http, owner, "firmware") == []
    assert console_errors == []
