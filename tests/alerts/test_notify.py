"""Notification delivery (issue 8, acceptance 3): signed webhooks with retries and backoff,
e-mail through a real SMTP server, and the per-channel flood guard with its digest. The
app's own scheduler sends (every 50 ms here); the receivers are real servers."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from sensorium.alerts import notify
from sensorium.alerts.models import Delivery
from sensorium.config import Settings
from tests.alerts.conftest import count, make_rule, sessions_of
from tests.alerts.receivers import (
    SmtpServer,
    WebhookReceiver,
    eventually,
    expected_signature,
    webhook_receiver,
)
from tests.helpers import Account, Api

MAX_PER_WINDOW = 3
WINDOW_S = 1.0
MAX_ATTEMPTS = 4
RETRY_BASE_S = 0.2
PUBLIC_URL = "https://sensorium.example"


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings(settings: Settings, smtp: SmtpServer) -> Settings:
    return settings.model_copy(
        update={
            "alert_channel_max_per_window": MAX_PER_WINDOW,
            "alert_flood_window_s": WINDOW_S,
            "alert_retry_max_attempts": MAX_ATTEMPTS,
            "alert_retry_base_s": RETRY_BASE_S,
            "public_url": PUBLIC_URL,
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp.port,
            "smtp_tls": "none",
            "smtp_from": "alerts@sensorium.example",
        }
    )


async def webhook_channel(api: Api, owner: Account, receiver: WebhookReceiver) -> int:
    """Create the channel; the receiver learns the secret from the one answer that has it."""
    r = await api.client.post(
        "/api/v1/notification-channels",
        json={"name": "ops", "kind": "webhook", "url": receiver.url},
        headers=owner.headers,
    )
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["secret"].startswith("whsec_")
    assert len(created["secret"]) > 40
    receiver.secret = created["secret"]
    # Shown once: never again in the channel or the list.
    path = f"/api/v1/notification-channels/{created['id']}"
    shown = (await api.client.get(path, headers=owner.headers)).json()
    listed = (await api.client.get("/api/v1/notification-channels", headers=owner.headers)).json()
    assert "secret" not in shown
    assert all("secret" not in c for c in listed["items"])
    assert created["secret"] not in str(shown) + str(listed)
    channel_id: int = created["id"]
    return channel_id


async def deliveries(api: Api, owner: Account, channel_id: int) -> list[dict[str, Any]]:
    r = await api.client.get(
        f"/api/v1/notification-channels/{channel_id}/deliveries", headers=owner.headers
    )
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def settled(api: Api, owner: Account, channel_id: int, n: int) -> list[dict[str, Any]]:
    """The delivery log once `n` deliveries are in a final state (newest first)."""

    async def done() -> list[dict[str, Any]] | None:
        items = await deliveries(api, owner, channel_id)
        final = [d for d in items if d["status"] in ("succeeded", "failed", "digested")]
        return items if len(final) >= n else None

    items: list[dict[str, Any]] | None = await eventually(done)
    assert items is not None, await deliveries(api, owner, channel_id)
    return items


async def test_webhook_is_signed_and_retried_with_backoff_until_delivered_once(
    api: Api,
) -> None:
    owner = await api.account()
    device = await api.device(owner, name="Boiler room")
    async with webhook_receiver(fail_first=2) as receiver:
        channel = await webhook_channel(api, owner, receiver)
        await make_rule(
            api,
            owner,
            name="Too hot",
            scope="device",
            devices=[device.id],
            key="temp",
            operator=">",
            threshold=80,
            severity="critical",
            channels=[channel],
        )
        assert (await api.send(device, {"temp": 91.5})).status_code == 202
        [fired] = await settled(api, owner, channel, 1)
        assert (fired["event"], fired["status"], fired["attempts"]) == ("fired", "succeeded", 3)
        assert fired["last_error"] is None
        assert fired["done_at"] is not None
        assert fired["next_attempt_at"] is None

        # Three requests, all signed and fresh; the first two answered 500.
        requests = receiver.requests
        assert [r.status for r in requests] == [500, 500, 200]
        assert all(r.verified for r in requests)
        # The same delivery each time, so a receiver can recognise a repeat.
        assert {r.delivery for r in requests} == {str(fired["id"])}
        assert {r.headers["x-sensorium-event"] for r in requests} == {"fired"}
        assert {r.body for r in requests} == {requests[0].body}
        # Backoff: base, then twice the base, counted from the failed answer.
        gaps = [b.at - a.at for a, b in itertools.pairwise(requests)]
        assert gaps[0] >= RETRY_BASE_S
        assert gaps[1] >= 2 * RETRY_BASE_S

        document = requests[0].document
        [alert] = (await api.client.get("/api/v1/alerts", headers=owner.headers)).json()["items"]
        assert document["event"] == "fired"
        assert document["alert"] == alert
        assert (document["alert"]["device_name"], document["alert"]["value"]) == (
            "Boiler room",
            91.5,
        )
        assert document["condition"] == "temp > 80"
        assert document["url"] == f"{PUBLIC_URL}/devices/{device.id}"
        assert document["delivery_id"] == fired["id"]

        # The receiver's own check is a real one: another secret, a changed body or an old
        # timestamp would not pass.
        ok = requests[-1]
        timestamp = ok.headers["x-sensorium-timestamp"]
        signature = ok.headers["x-sensorium-signature"]
        assert signature == expected_signature(receiver.secret, timestamp, ok.body)
        assert signature != expected_signature(receiver.secret + "x", timestamp, ok.body)
        assert signature != expected_signature(receiver.secret, timestamp, ok.body + b" ")
        assert notify.verify(
            receiver.secret,
            timestamp=timestamp,
            body=ok.body,
            signature=signature,
            now_s=int(timestamp) + 10,
            tolerance_s=300,
        )
        assert not notify.verify(
            receiver.secret,
            timestamp=timestamp,
            body=ok.body,
            signature=signature,
            now_s=int(timestamp) + 301,
            tolerance_s=300,
        )

        # Delivered: nothing more is sent (a few scheduler ticks later).
        await asyncio.sleep(0.5)
        assert len(receiver.requests) == 3

        # The alert clears: one "cleared" notification, delivered at once.
        assert (await api.send(device, {"temp": 20})).status_code == 202
        cleared, _ = await settled(api, owner, channel, 2)
        assert (cleared["event"], cleared["status"], cleared["attempts"]) == (
            "cleared",
            "succeeded",
            1,
        )
        assert [r.headers["x-sensorium-event"] for r in receiver.accepted()] == [
            "fired",
            "cleared",
        ]
        assert receiver.accepted()[-1].document["alert"]["clear_value"] == 20


async def test_a_webhook_that_keeps_failing_is_given_up_after_the_last_attempt(
    api: Api,
) -> None:
    owner = await api.account()
    device = await api.device(owner)
    async with webhook_receiver(fail_first=1000) as receiver:
        channel = await webhook_channel(api, owner, receiver)
        await make_rule(api, owner, key="t", operator=">", threshold=0, channels=[channel])
        assert (await api.send(device, {"t": 1})).status_code == 202
        [failed] = await settled(api, owner, channel, 1)
        assert (failed["status"], failed["attempts"]) == ("failed", MAX_ATTEMPTS)
        assert failed["last_error"] == "RuntimeError: HTTP 500 from the webhook"
        await asyncio.sleep(0.5)
        assert [r.status for r in receiver.requests] == [500] * MAX_ATTEMPTS


async def test_a_wrong_secret_is_refused_by_the_receiver(api: Api) -> None:
    """The receiver's check can fail: after the secret is rotated, the receiver still
    holding the old one refuses every attempt."""
    owner = await api.account()
    device = await api.device(owner)
    async with webhook_receiver() as receiver:
        channel = await webhook_channel(api, owner, receiver)
        r = await api.client.post(
            f"/api/v1/notification-channels/{channel}/secret", headers=owner.headers
        )
        assert r.status_code == 200, r.text
        rotated = r.json()["secret"]
        assert rotated.startswith("whsec_")
        assert rotated != receiver.secret
        await make_rule(api, owner, key="t", operator=">", threshold=0, channels=[channel])
        assert (await api.send(device, {"t": 1})).status_code == 202
        [failed] = await settled(api, owner, channel, 1)
        assert (failed["status"], failed["last_error"]) == (
            "failed",
            "RuntimeError: HTTP 401 from the webhook",
        )
        assert [r.verified for r in receiver.requests] == [False] * MAX_ATTEMPTS
        # With the new secret the same requests check out.
        receiver.secret = rotated
        assert all(receiver.check(r.headers, r.body) for r in receiver.requests)


async def test_email_reaches_the_smtp_server_with_device_value_and_link(
    api: Api, smtp: SmtpServer
) -> None:
    owner = await api.account()
    device = await api.device(owner, name="Office CO2")
    r = await api.client.post(
        "/api/v1/notification-channels",
        json={"name": "ops mail", "kind": "email", "email": "ops@example.com"},
        headers=owner.headers,
    )
    assert r.status_code == 201, r.text
    assert r.json()["secret"] is None
    channel = r.json()["id"]
    await make_rule(
        api,
        owner,
        name="CO2 too high",
        scope="device",
        devices=[device.id],
        key="co2",
        operator=">",
        threshold=1200,
        channels=[channel],
    )
    assert (await api.send(device, {"co2": 1234.5})).status_code == 202
    [sent] = await settled(api, owner, channel, 1)
    assert (sent["status"], sent["attempts"], sent["last_error"]) == ("succeeded", 1, None)
    [mail] = smtp.mails
    assert (mail.sender, mail.recipients) == ("alerts@sensorium.example", ["ops@example.com"])
    assert mail.message["To"] == "ops@example.com"
    assert mail.message["Subject"] == "[Sensorium] WARNING: CO2 too high on Office CO2"
    text = mail.text
    assert f"Device: Office CO2 ({device.id})" in text
    assert "Value: 1234.5" in text
    assert "Condition: co2 > 1200" in text
    assert f"Open: {PUBLIC_URL}/devices/{device.id}" in text

    # Cleared: a second mail says so.
    assert (await api.send(device, {"co2": 800})).status_code == 202
    await settled(api, owner, channel, 2)
    assert len(smtp.mails) == 2
    assert smtp.mails[1].message["Subject"] == "[Sensorium] CLEARED: CO2 too high on Office CO2"
    assert "Cleared at: " in smtp.mails[1].text


async def test_email_to_an_smtp_server_that_is_gone_is_retried_and_logged(
    api: Api, smtp: SmtpServer
) -> None:
    owner = await api.account()
    device = await api.device(owner)
    smtp.stop()
    r = await api.client.post(
        "/api/v1/notification-channels",
        json={"name": "m", "kind": "email", "email": "ops@example.com"},
        headers=owner.headers,
    )
    channel = r.json()["id"]
    await make_rule(api, owner, key="t", operator=">", threshold=0, channels=[channel])
    assert (await api.send(device, {"t": 1})).status_code == 202
    [failed] = await settled(api, owner, channel, 1)
    assert (failed["status"], failed["attempts"]) == ("failed", MAX_ATTEMPTS)
    assert failed["last_error"].startswith("SMTPConnectError: ")
    assert smtp.mails == []


async def test_flood_guard_sends_the_allowance_and_the_rest_in_one_digest(api: Api) -> None:
    """Seven alerts at once on one channel allowing three a window: three messages, then
    one digest of the other four once the window has passed; the same again when all
    seven clear in the next window."""
    owner = await api.account()
    device = await api.device(owner, name="Rack")
    async with webhook_receiver() as receiver:
        channel = await webhook_channel(api, owner, receiver)
        for threshold in range(7):
            await make_rule(
                api,
                owner,
                name=f"t > {threshold}",
                key="t",
                operator=">",
                threshold=threshold,
                channels=[channel],
            )
        assert (await api.send(device, {"t": 10})).status_code == 202
        items = await settled(api, owner, channel, 8)  # 3 sent, 4 digested, the digest
        assert len(items) == 8
        [digest] = [d for d in items if d["event"] == "digest"]
        assert (digest["status"], digest["attempts"], digest["alert_id"]) == ("succeeded", 1, None)
        fired = [d for d in items if d["event"] == "fired"]
        assert sorted(d["status"] for d in fired) == ["digested"] * 4 + ["succeeded"] * 3
        # Sent first come, first served; the rest held for the digest.
        by_id = sorted(fired, key=lambda d: d["id"])
        assert [d["status"] for d in by_id] == ["succeeded"] * 3 + ["digested"] * 4
        assert {d["digest_id"] for d in by_id[3:]} == {digest["id"]}
        assert {d["digest_id"] for d in by_id[:3]} == {None}
        assert {d["attempts"] for d in by_id[3:]} == {0}

        events = [r.headers["x-sensorium-event"] for r in receiver.accepted()]
        assert events == ["fired"] * 3 + ["digest"]
        summary = receiver.accepted()[-1].document
        assert summary["count"] == 4
        alerts = (await api.client.get("/api/v1/alerts", headers=owner.headers)).json()["items"]
        held_alerts = {d["alert_id"] for d in by_id[3:]}
        assert sorted(i["alert"]["id"] for i in summary["items"]) == sorted(held_alerts)
        assert {i["event"] for i in summary["items"]} == {"fired"}
        assert all(i["alert"]["device_name"] == "Rack" for i in summary["items"])
        assert summary["url"] == f"{PUBLIC_URL}/alerts"
        assert len(alerts) == 7
        # The digest waited a whole window after the first held one was made.
        async with sessions_of(api)() as session:
            made = {d.id: d.created_ms for d in await session.scalars(select(Delivery))}
        assert made[digest["id"]] >= made[by_id[3]["id"]] + WINDOW_S * 1000
        sent_at = [r.at for r in receiver.accepted()]

        # All seven clear in a later window (the three sent are out of it; they were
        # claimed before they arrived here): again three and a digest of four.
        await asyncio.sleep(max(0.0, sent_at[2] + WINDOW_S + 0.1 - time.monotonic()))
        assert (await api.send(device, {"t": -100})).status_code == 202
        items = await settled(api, owner, channel, 16)
        events = [r.headers["x-sensorium-event"] for r in receiver.accepted()]
        assert events == ["fired"] * 3 + ["digest"] + ["cleared"] * 3 + ["digest"]
        assert receiver.accepted()[-1].document["count"] == 4
        assert all(r.verified for r in receiver.requests)
        assert await count(api, Delivery) == 16


async def test_flood_guard_digest_by_email(api: Api, smtp: SmtpServer) -> None:
    owner = await api.account()
    device = await api.device(owner, name="Rack")
    r = await api.client.post(
        "/api/v1/notification-channels",
        json={"name": "ops mail", "kind": "email", "email": "ops@example.com"},
        headers=owner.headers,
    )
    channel = r.json()["id"]
    for threshold in range(5):
        await make_rule(
            api,
            owner,
            name=f"t > {threshold}",
            key="t",
            operator=">",
            threshold=threshold,
            channels=[channel],
        )
    assert (await api.send(device, {"t": 7.25})).status_code == 202
    await settled(api, owner, channel, 6)  # 3 sent, 2 digested, the digest
    subjects = [m.message["Subject"] for m in smtp.mails]
    assert len(subjects) == 4
    assert all(s.startswith("[Sensorium] WARNING: t > ") for s in subjects[:3])
    assert subjects[3] == "[Sensorium] 2 more alert notifications"
    digest = smtp.mails[3].text
    assert digest.startswith("2 notifications were held back by the flood guard:")
    assert digest.count("- fired: t > ") == 2
    assert "on Rack (value 7.25, " in digest
    assert f"Open: {PUBLIC_URL}/alerts" in digest
