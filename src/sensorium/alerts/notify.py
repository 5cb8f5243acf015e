"""Sending notifications: signed webhooks (httpx) and e-mail (aiosmtplib), with retries,
a per-channel flood guard and digests, from the deliveries table (an outbox: what an
alert transaction queued is sent after it committed, by whichever process gets to it).

A delivery is claimed by a conditional UPDATE before it is sent and finished by another
after, so two dispatchers never send the same delivery at once; one whose sender died
mid-send is sent again once its lease ran out. Every attempt carries the same
`X-Sensorium-Delivery` id, so a receiver can recognise a repeat.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import httpx
import orjson
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sensorium.alerts.models import (
    D_DIGESTED,
    D_FAILED,
    D_HELD,
    D_PENDING,
    D_SENDING,
    D_SUCCEEDED,
    Delivery,
    NotificationChannel,
)
from sensorium.alerts.service import EMAIL, WEBHOOK, decrypt_secret
from sensorium.config import Settings
from sensorium.db import epoch_ms

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Sensorium-Signature"
TIMESTAMP_HEADER = "X-Sensorium-Timestamp"
DELIVERY_HEADER = "X-Sensorium-Delivery"
EVENT_HEADER = "X-Sensorium-Event"
# Deliveries listed in one digest at most (the count is always complete).
DIGEST_LIMIT = 200


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=` + HMAC-SHA256 of `{timestamp}.{body}` with the channel's secret."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    secret: str, *, timestamp: str, body: bytes, signature: str, now_s: float, tolerance_s: int
) -> bool:
    """What a receiver checks (the tests use it): the signature, and a fresh timestamp
    so a captured request cannot be replayed later."""
    try:
        age = abs(now_s - int(timestamp))
    except ValueError:
        return False
    return age <= tolerance_s and hmac.compare_digest(sign(secret, timestamp, body), signature)


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    attempts: int
    event: str
    payload: dict[str, Any]
    channel_id: int
    kind: str
    url: str | None
    email: str | None
    secret_enc: str | None


class Dispatcher:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        *,
        http: httpx.AsyncClient,
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self._http = http
        self._max = settings.alert_channel_max_per_window
        self._window_ms = int(settings.alert_flood_window_s * 1000)
        self._lease_ms = int(settings.alert_send_timeout_s * 1000) * 3
        self._semaphore = asyncio.Semaphore(16)

    async def run_once(self, *, now_ms: int | None = None) -> int:
        """Send what is due on every channel; returns how many sends were attempted."""
        now_ms = now_ms if now_ms is not None else epoch_ms()
        async with self._sessions() as session:
            # Channels with something to send, or held deliveries due for their digest (a
            # channel holding some for the rest of its window is not locked every tick).
            channel_ids = list(
                await session.scalars(
                    select(Delivery.channel_id)
                    .where(
                        or_(
                            and_(
                                Delivery.status.in_((D_PENDING, D_SENDING)),
                                Delivery.next_ms <= now_ms,
                            ),
                            and_(
                                Delivery.status == D_HELD,
                                Delivery.created_ms <= now_ms - self._window_ms,
                            ),
                        )
                    )
                    .distinct()
                )
            )
        claimed: list[Claimed] = []
        for channel_id in sorted(channel_ids):
            claimed += await self._claim(channel_id, now_ms)
        await asyncio.gather(*(self._send(c) for c in claimed))
        return len(claimed)

    async def _claim(self, channel_id: int, now_ms: int) -> list[Claimed]:
        async with self._sessions() as session, session.begin():
            # Touching the channel row first locks it: the count below and the claims
            # are one dispatcher's at a time.
            locked = await session.execute(
                update(NotificationChannel)
                .where(NotificationChannel.id == channel_id)
                .values(dispatched_ms=now_ms)
                .returning(NotificationChannel.id)
            )
            if locked.first() is None:
                return []
            channel = await session.get(NotificationChannel, channel_id, populate_existing=True)
            assert channel is not None
            if not channel.enabled:
                # Nothing goes out, now or later (held ones too: else the channel would be
                # claimed again every tick for ever).
                unsent = await session.scalars(
                    select(Delivery).where(
                        Delivery.channel_id == channel_id,
                        Delivery.status.in_((D_PENDING, D_SENDING, D_HELD)),
                        Delivery.next_ms <= now_ms,
                    )
                )
                for d in unsent:
                    d.status, d.done_ms, d.last_error = D_FAILED, now_ms, "channel disabled"
                return []
            due = list(
                await session.scalars(
                    select(Delivery)
                    .where(
                        Delivery.channel_id == channel_id,
                        Delivery.status.in_((D_PENDING, D_SENDING)),
                        Delivery.next_ms <= now_ms,
                    )
                    .order_by(Delivery.id)
                )
            )
            sent = await session.scalar(
                select(func.count())
                .select_from(Delivery)
                .where(
                    Delivery.channel_id == channel_id,
                    Delivery.event != "digest",
                    Delivery.first_try_ms >= now_ms - self._window_ms,
                )
            )
            allowance = self._max - int(sent or 0)
            chosen: list[Delivery] = []
            for d in due:
                if d.first_try_ms is not None or d.event == "digest":
                    chosen.append(d)  # a retry: counted when first tried
                elif allowance > 0:
                    allowance -= 1
                    d.first_try_ms = now_ms
                    chosen.append(d)
                else:
                    d.status = D_HELD
            await session.flush()
            digest = await self._digest(session, channel_id, now_ms)
            if digest is not None:
                chosen.append(digest)
            for d in chosen:
                d.status = D_SENDING
                d.attempts += 1
                d.next_ms = now_ms + self._lease_ms
                if d.first_try_ms is None:
                    d.first_try_ms = now_ms
            await session.flush()
            return [
                Claimed(
                    d.id,
                    d.attempts,
                    d.event,
                    d.payload,
                    channel.id,
                    channel.kind,
                    channel.url,
                    channel.email,
                    channel.secret_enc,
                )
                for d in chosen
            ]

    async def _digest(self, session: AsyncSession, channel_id: int, now_ms: int) -> Delivery | None:
        """Once the oldest held delivery has waited a whole window, every held one is
        summarised in one digest message."""
        held = list(
            await session.scalars(
                select(Delivery)
                .where(Delivery.channel_id == channel_id, Delivery.status == D_HELD)
                .order_by(Delivery.id)
            )
        )
        if not held or held[0].created_ms > now_ms - self._window_ms:
            return None
        items = [
            {"event": d.payload.get("event"), "alert": d.payload.get("alert")}
            for d in held[:DIGEST_LIMIT]
        ]
        digest = Delivery(
            channel_id=channel_id,
            alert_id=None,
            event="digest",
            status=D_PENDING,
            payload={"event": "digest", "count": len(held), "items": items, "link": "/alerts"},
            attempts=0,
            created_ms=now_ms,
            next_ms=now_ms,
        )
        session.add(digest)
        await session.flush()
        for d in held:
            d.status, d.digest_id, d.done_ms = D_DIGESTED, digest.id, now_ms
        return digest

    async def _send(self, claimed: Claimed) -> None:
        async with self._semaphore:
            error: str | None = None
            try:
                if claimed.kind == WEBHOOK:
                    await self._webhook(claimed)
                elif claimed.kind == EMAIL:
                    await self._email(claimed)
                else:
                    error = f"unknown channel kind {claimed.kind!r}"
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"[:1000]
            await self._finish(claimed, error)

    async def _finish(self, claimed: Claimed, error: str | None) -> None:
        now_ms = epoch_ms()
        if error is None:
            values: dict[str, Any] = {"status": D_SUCCEEDED, "done_ms": now_ms, "last_error": None}
        elif claimed.attempts >= self._settings.alert_retry_max_attempts:
            values = {"status": D_FAILED, "done_ms": now_ms, "last_error": error}
            log.warning("delivery %d failed for good: %s", claimed.id, error)
        else:
            backoff_s = self._settings.alert_retry_base_s * 2 ** (claimed.attempts - 1)
            values = {
                "status": D_PENDING,
                "next_ms": now_ms + int(backoff_s * 1000),
                "last_error": error,
            }
        async with self._sessions() as session, session.begin():
            # Only while still ours: a lease that ran out may have passed it on.
            await session.execute(
                update(Delivery)
                .where(
                    Delivery.id == claimed.id,
                    Delivery.status == D_SENDING,
                    Delivery.attempts == claimed.attempts,
                )
                .values(**values)
            )

    def _document(self, claimed: Claimed) -> dict[str, Any]:
        link = str(claimed.payload.get("link", "/"))
        return {
            **claimed.payload,
            "delivery_id": claimed.id,
            "url": self._settings.public_url.rstrip("/") + link,
        }

    async def _webhook(self, claimed: Claimed) -> None:
        assert claimed.url is not None
        assert claimed.secret_enc is not None
        secret = decrypt_secret(claimed.secret_enc, secret_key=self._settings.resolved_secret_key())
        body = orjson.dumps(self._document(claimed))
        timestamp = str(int(time.time()))
        response = await self._http.post(
            claimed.url,
            content=body,
            headers={
                "Content-Type": "application/json",
                "User-Agent": "Sensorium-Webhook",
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: sign(secret, timestamp, body),
                DELIVERY_HEADER: str(claimed.id),
                EVENT_HEADER: claimed.event,
            },
            timeout=self._settings.alert_send_timeout_s,
        )
        if not 200 <= response.status_code < 300:
            raise RuntimeError(f"HTTP {response.status_code} from the webhook")

    async def _email(self, claimed: Claimed) -> None:
        settings = self._settings
        if not settings.smtp_host:
            raise RuntimeError("SMTP is not configured (SENSORIUM_SMTP_HOST)")
        assert claimed.email is not None
        message = email_message(self._document(claimed), sender=settings.smtp_from)
        message["To"] = claimed.email
        await aiosmtplib.send(
            message,
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username or None,
            password=settings.smtp_password or None,
            use_tls=settings.smtp_tls == "tls",
            start_tls=settings.smtp_tls == "starttls",
            timeout=settings.alert_send_timeout_s,
        )


def _value(value: Any) -> str:
    return "-" if value is None else f"{value:g}"


def _alert_lines(alert: dict[str, Any]) -> list[str]:
    return [
        f"Device: {alert.get('device_name')} ({alert.get('device_id')})",
        f"Rule: {alert.get('rule_name')}",
        f"Severity: {alert.get('severity')}",
        f"Value: {_value(alert.get('value'))}",
        f"Fired at: {alert.get('fired_at')}",
    ] + ([f"Cleared at: {alert['cleared_at']}"] if alert.get("cleared_at") else [])


def email_message(document: dict[str, Any], *, sender: str) -> EmailMessage:
    """The e-mail for a notification document (an alert event or a digest)."""
    message = EmailMessage()
    message["From"] = sender
    if document.get("event") == "digest":
        items: Sequence[dict[str, Any]] = document.get("items", [])
        message["Subject"] = f"[Sensorium] {document.get('count')} more alert notifications"
        lines = [f"{document.get('count')} notifications were held back by the flood guard:", ""]
        for item in items:
            alert = item.get("alert") or {}
            lines.append(
                f"- {item.get('event')}: {alert.get('rule_name')} on {alert.get('device_name')}"
                f" (value {_value(alert.get('value'))}, {alert.get('fired_at')})"
            )
    else:
        alert = document.get("alert") or {}
        word = "cleared" if document.get("event") == "cleared" else str(alert.get("severity"))
        message["Subject"] = (
            f"[Sensorium] {word.upper()}: {alert.get('rule_name')} on {alert.get('device_name')}"
        )
        lines = [f"Condition: {document.get('condition')}", *_alert_lines(alert)]
    lines += ["", f"Open: {document.get('url')}"]
    message.set_content("\n".join(lines) + "\n")
    return message
