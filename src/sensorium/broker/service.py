"""Keeping Mosquitto's accounts in step with the device registry.

Device changes enqueue a BrokerChange in their own transaction (`Outbox`); `deliver`
applies queued changes in order and deletes them once confirmed; `reconcile` compares
the whole broker with the database and repairs drift (`sensorium broker sync`).
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sensorium.broker import dynsec
from sensorium.broker.admin import DynsecAdmin
from sensorium.broker.models import BrokerChange
from sensorium.db import utcnow
from sensorium.devices.models import Device, DeviceCredential
from sensorium.protocol import is_canonical_mac

log = logging.getLogger(__name__)

CREATE = "create"
PASSWORD = "password"
DISABLE = "disable"
DELETE = "delete"


def _fernet(secret_key: str) -> Fernet:
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"sensorium broker outbox"
    ).derive(secret_key.encode())
    return Fernet(base64.urlsafe_b64encode(key))


class Outbox:
    """Records broker changes inside the caller's transaction (devices.service calls it)."""

    def __init__(self, secret_key: str) -> None:
        self._fernet = _fernet(secret_key)

    def _add(self, session: AsyncSession, device_id: str, action: str, token: str | None) -> None:
        secret = self._fernet.encrypt(token.encode()).decode() if token is not None else None
        session.add(BrokerChange(device_id=device_id, action=action, secret=secret))

    async def device_created(self, session: AsyncSession, device_id: str, token: str) -> None:
        self._add(session, device_id, CREATE, token)

    async def password_changed(self, session: AsyncSession, device_id: str, token: str) -> None:
        self._add(session, device_id, PASSWORD, token)

    async def device_disabled(self, session: AsyncSession, device_id: str) -> None:
        self._add(session, device_id, DISABLE, None)

    async def device_deleted(self, session: AsyncSession, device_id: str) -> None:
        self._add(session, device_id, DELETE, None)

    def commands(self, change: BrokerChange) -> list[dynsec.Command]:
        token = self._token(change)
        if change.action == CREATE and token is not None:
            # Re-applied after a partial failure, createClient reports "already exists":
            # setting the password as well makes the pair idempotent.
            return dynsec.create_device_commands(change.device_id, token) + (
                dynsec.set_password_commands(change.device_id, token)
            )
        if change.action == PASSWORD and token is not None:
            # The client may be missing (broker reset): create it, then set the password.
            return dynsec.create_device_commands(change.device_id, token) + (
                dynsec.set_password_commands(change.device_id, token)
            )
        if change.action == DISABLE:
            return dynsec.disable_device_commands(change.device_id)
        if change.action == DELETE:
            return dynsec.delete_device_commands(change.device_id)
        raise ValueError(f"broker change {change.id} cannot be applied ({change.action})")

    def _token(self, change: BrokerChange) -> str | None:
        if change.secret is None:
            return None
        try:
            return self._fernet.decrypt(change.secret.encode()).decode()
        except InvalidToken:
            # The secret key changed since: the token cannot be recovered; the user has
            # to rotate it. Better to say so than to leave the change stuck.
            log.error(
                "broker change for device %s: token unreadable (secret key changed?)",
                change.device_id,
            )
            return None


# Only one process delivers at a time, so changes are applied in order (PostgreSQL).
DELIVERY_LOCK = 0x53454E53


async def deliver(
    sessions: async_sessionmaker[AsyncSession], admin: DynsecAdmin, outbox: Outbox
) -> int:
    """Apply queued changes in order and delete them; returns how many were applied.

    Stops at the first failure (a later change to the same device must not overtake it),
    records the error on the change and raises it once the progress so far is committed.
    """
    applied = 0
    failure: Exception | None = None
    while failure is None:
        async with sessions() as session, session.begin():
            if session.get_bind().dialect.name == "postgresql":
                locked = await session.scalar(select(func.pg_try_advisory_xact_lock(DELIVERY_LOCK)))
                if not locked:
                    return applied
            changes = list(
                await session.scalars(select(BrokerChange).order_by(BrokerChange.id).limit(200))
            )
            if not changes:
                return applied
            # All of them in one control message; then match responses back to changes.
            planned: list[tuple[BrokerChange, int, int]] = []
            commands: list[dynsec.Command] = []
            for change in changes:
                try:
                    mine = outbox.commands(change)
                except ValueError as exc:  # a change that can never apply: drop it, loudly
                    log.error("dropping broker change %s: %s", change.id, exc)
                    mine = []
                planned.append((change, len(commands), len(commands) + len(mine)))
                commands.extend(mine)
            try:
                responses = await admin.run(commands) if commands else []
            except Exception as exc:
                changes[0].attempts += 1
                changes[0].last_error = str(exc)[:500]
                failure = exc
                break
            for change, start, end in planned:
                problems = [admin.failure(r) for r in responses[start:end]]
                first = next((p for p in problems if p is not None), None)
                if first is not None:
                    # Later changes (maybe to the same device) must not overtake this one;
                    # those already applied in this message are harmless to apply again.
                    change.attempts += 1
                    change.last_error = str(first)[:500]
                    failure = first
                    break
                await session.delete(change)
                applied += 1
    raise failure


async def ensure_service_roles(admin: DynsecAdmin) -> None:
    """The service and admin roles as this version of Sensorium needs them (an existing
    dynsec file from an older version is brought up to date)."""
    await admin.sync_role(dynsec.SERVICE_ROLE, dynsec.service_acls())


@dataclass
class SyncReport:
    delivered: int = 0
    deleted: list[str] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)
    roles_repaired: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


async def reconcile(
    sessions: async_sessionmaker[AsyncSession], admin: DynsecAdmin, outbox: Outbox
) -> SyncReport:
    """Make the broker match the database. Idempotent.

    Clients of devices that no longer exist are deleted, clients of devices without a
    live token are disabled, every device role gets its ACLs back. A device whose client
    is missing entirely cannot be recreated (the database keeps only token hashes): it is
    reported so its owner can rotate the token, which provisions it again.
    """
    await ensure_service_roles(admin)
    report = SyncReport(delivered=await deliver(sessions, admin, outbox))
    now = utcnow()
    async with sessions() as session:
        devices = set(await session.scalars(select(Device.id)))
        live = set(
            await session.scalars(
                select(DeviceCredential.device_id).where(
                    DeviceCredential.revoked_at.is_(None),
                    (DeviceCredential.expires_at.is_(None)) | (DeviceCredential.expires_at > now),
                )
            )
        )
    on_broker = {c for c in await admin.list_clients() if is_canonical_mac(c)}
    for device_id in sorted(on_broker - devices):
        await admin.execute(dynsec.delete_device_commands(device_id))
        report.deleted.append(device_id)
    for device_id in sorted(devices):
        if device_id not in on_broker:
            report.missing.append(device_id)
            continue
        role = dynsec.device_role(device_id)
        if await admin.sync_role(role, dynsec.device_acls(device_id)):
            report.roles_repaired.append(device_id)
        client = await admin.get_client(device_id) or {}
        if role not in {r.get("rolename") for r in client.get("roles", [])}:
            await admin.execute(
                [{"command": "addClientRole", "username": device_id, "rolename": role}]
            )
            report.roles_repaired.append(device_id)
        if device_id not in live and not client.get("disabled"):
            await admin.execute(dynsec.disable_device_commands(device_id))
            report.disabled.append(device_id)
    return report
