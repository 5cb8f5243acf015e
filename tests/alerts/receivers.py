"""What notifications are sent to in the tests: a real HTTP webhook receiver (uvicorn on a
free port) that checks the signature itself, and a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import orjson
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.helpers import serving

# How old a webhook's timestamp may be before the receiver refuses it (a replay).
TOLERANCE_S = 300


def expected_signature(secret: str, timestamp: str, body: bytes) -> str:
    """The signature as the documentation defines it, computed here, not by sensorium."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() on arrival
    verified: bool
    status: int

    @property
    def document(self) -> dict[str, Any]:
        loaded: dict[str, Any] = orjson.loads(self.body)
        return loaded

    @property
    def delivery(self) -> str:
        return self.headers["x-sensorium-delivery"]


@dataclass
class WebhookReceiver:
    """An ASGI app recording every request. It answers 401 unless the signature (HMAC-SHA256
    of `{timestamp}.{body}` with `secret`) and a fresh timestamp check out, and 500 to the
    first `fail_first` requests it accepts (a receiver that is briefly down)."""

    secret: str = ""
    fail_first: int = 0
    # The first `hang_first` accepted requests get no answer until `release` is set (a
    # sender that dies meanwhile never gets one); recorded with status 0.
    hang_first: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    requests: list[Received] = field(default_factory=list)
    url: str = ""

    def accepted(self) -> list[Received]:
        return [r for r in self.requests if r.status == 200]

    def check(self, headers: dict[str, str], body: bytes) -> bool:
        timestamp = headers.get("x-sensorium-timestamp", "")
        signature = headers.get("x-sensorium-signature", "")
        if not self.secret or not timestamp.isdigit():
            return False
        if abs(time.time() - int(timestamp)) > TOLERANCE_S:
            return False
        return hmac.compare_digest(expected_signature(self.secret, timestamp, body), signature)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        verified = scope["method"] == "POST" and self.check(headers, body)
        if verified and self.hang_first > 0:
            self.hang_first -= 1
            self.requests.append(Received(headers, body, time.monotonic(), verified, 0))
            await self.release.wait()
            return
        if not verified:
            status = 401
        elif self.fail_first > 0:
            self.fail_first -= 1
            status = 500
        else:
            status = 200
        self.requests.append(Received(headers, body, time.monotonic(), verified, status))
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


@asynccontextmanager
async def webhook_receiver(**kw: Any) -> AsyncIterator[WebhookReceiver]:
    receiver = WebhookReceiver(**kw)
    async with serving(receiver) as base:
        receiver.url = f"{base}/hook"
        yield receiver


@dataclass
class Mail:
    sender: str
    recipients: list[str]
    message: EmailMessage

    @property
    def text(self) -> str:
        part = self.message.get_body(("plain",))
        assert part is not None
        content: str = part.get_content()
        return content


class _Handler:
    def __init__(self) -> None:
        self.mails: list[Mail] = []

    async def handle_DATA(self, _server: SMTP, _session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        message = message_from_bytes(content, _class=EmailMessage, policy=policy.default)
        assert isinstance(message, EmailMessage)
        recipients = [str(r) for r in envelope.rcpt_tos]
        self.mails.append(Mail(str(envelope.mail_from), recipients, message))
        return "250 OK"


class SmtpServer:
    """aiosmtpd in its own thread, on a free port of 127.0.0.1 (plain SMTP, no TLS)."""

    def __init__(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port: int = sock.getsockname()[1]
        self._handler = _Handler()
        self._controller = Controller(self._handler, hostname="127.0.0.1", port=self.port)
        self.running = False

    @property
    def mails(self) -> list[Mail]:
        return self._handler.mails

    def start(self) -> None:
        self._controller.start()
        self.running = True

    def stop(self) -> None:
        """Stop for good (idempotent: a test may stop it early)."""
        if self.running:
            self._controller.stop()
            self.running = False


async def eventually(check: Any, timeout_s: float = 10.0) -> Any:
    """Poll an async `check` until it returns something truthy (or time runs out)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.05)
