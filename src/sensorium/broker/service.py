"""Keeping Mosquitto's accounts in step with the device registry.

Device changes enqueue a BrokerChange in their own transaction (`Outbox`); `deliver`
applies queued changes in order and deletes them once confirmed; `reconcile` compares
the whole broker with the database and repairs drift (`sensorium broker sync`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sensorium.broker import dynsec
from sensorium.broker.admin import DynsecAdmin
from sensorium.broker.models import BrokerChange
from sensorium.db import utcnow
from sensorium.devices.models import Device, DeviceCredential
from sensorium.protocol import is_canonical_mac
from sensorium.users.security import derived_fernet

log = logging.getLogger(__name__)

CREATE = "create"
PASSWORD = "password"
DISABLE = "disable"
DELETE = "delete"


def _fernet(secret_key: str) -> Fernet:
    return derived_fernet(secret_key, b"sensorium broker outbox")


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
            # Two commands, not four: Mosquitto 2.0 saves its whole file after each one.
            # When the client exists already (re-applied after a partial failure, or left
            # over), `deliver` sets the password and enables it (`repair_commands`).
            return dynsec.create_device_commands(change.device_id, token)
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

    def repair_commands(self, change: BrokerChange) -> list[dynsec.Command]:
        """After a create whose client existed already: its password and enabled state."""
        token = self._token(change)
        return dynsec.set_password_commands(change.device_id, token) if token else []

    def apply_to_file(self, change: BrokerChange, file: dynsec.DynsecFile) -> None:
        """The change's end state written into a stopped broker's dynsec file."""
        if not is_canonical_mac(change.device_id):
            # Never the admin or service account (the file holds them too).
            log.error("dropping broker change %s: %r is no device id", change.id, change.device_id)
            return
        token = self._token(change)
        if change.action in (CREATE, PASSWORD):
            if token is None:
                return  # unreadable (logged by _token): the owner has to rotate the token
            file.upsert_device(change.device_id, token)
        elif change.action == DISABLE:
            if not file.disable_device(change.device_id):
                log.warning(
                    "broker change %s: no client %s to disable", change.id, change.device_id
                )
        elif change.action == DELETE:
            file.delete_device(change.device_id)
        else:
            log.error("dropping broker change %s: unknown action %r", change.id, change.action)

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
CLIENT_EXISTS = "Client already exists"


@dataclass
class Pacing:
    """How much goes into one control message, and how long its answer may take.

    Mosquitto 2.0's dynsec plugin rewrites its whole file after every change command and
    serves no other client meanwhile, so a command's cost grows with the number of accounts
    (measured on 2 cores: ~3 ms at 100 devices, ~23 ms at 1,000). A message is sized to keep
    the broker busy for about `target_s` (devices get their acks in between), from the cost
    per change observed last (refused commands, e.g. "already exists", save nothing and are
    not counted); its timeout allows several times that."""

    target_s: float = 1.0
    seconds_per_command: float = 0.01
    min_commands: int = 2
    max_commands: int = 300  # ~150 KB: well under the broker's max_packet_size
    base_timeout_s: float = 10.0

    def commands_per_message(self) -> int:
        wanted = int(self.target_s / max(self.seconds_per_command, 1e-6))
        return max(self.min_commands, min(self.max_commands, wanted))

    def timeout_s(self, commands: int) -> float:
        return self.base_timeout_s + 10 * commands * self.seconds_per_command

    def observe(self, changed: int, elapsed_s: float) -> None:
        """A message with `changed` successful change commands took `elapsed_s`."""
        if changed:
            self.seconds_per_command = elapsed_s / changed

    def timed_out(self, commands: int, timeout_s: float) -> None:
        """No answer within `timeout_s`: the broker is slower than thought (send less)."""
        self.seconds_per_command = max(self.seconds_per_command, timeout_s / max(1, commands))

    def estimate_s(self, commands: int) -> float:
        return commands * self.seconds_per_command


async def deliver(
    sessions: async_sessionmaker[AsyncSession],
    admin: DynsecAdmin,
    outbox: Outbox,
    *,
    pacing: Pacing | None = None,
    max_messages: int | None = None,
) -> int:
    """Apply queued changes in order and delete them; returns how many were applied.

    Stops at the first failure (a later change to the same device must not overtake it),
    records the error on the change and raises it once the progress so far is committed.
    With `max_messages`, returns after that many control messages (the rest waits).
    """
    pacing = pacing or Pacing()
    applied = messages = 0
    failure: Exception | None = None
    loop = asyncio.get_running_loop()
    while failure is None and (max_messages is None or messages < max_messages):
        async with sessions() as session, session.begin():
            if session.get_bind().dialect.name == "postgresql":
                locked = await session.scalar(select(func.pg_try_advisory_xact_lock(DELIVERY_LOCK)))
                if not locked:
                    return applied
            budget = pacing.commands_per_message()
            changes = list(
                await session.scalars(
                    select(BrokerChange).order_by(BrokerChange.id).limit(max(1, budget // 2))
                )
            )
            if not changes:
                return applied
            # As many as the budget allows in one control message; then match responses
            # back to changes.
            planned: list[tuple[BrokerChange, int, int]] = []
            commands: list[dynsec.Command] = []
            for change in changes:
                try:
                    mine = outbox.commands(change)
                except ValueError as exc:  # a change that can never apply: drop it, loudly
                    log.error("dropping broker change %s: %s", change.id, exc)
                    mine = []
                if planned and len(commands) + len(mine) > budget:
                    break
                planned.append((change, len(commands), len(commands) + len(mine)))
                commands.extend(mine)
            messages += 1
            started = loop.time()
            timeout_s = pacing.timeout_s(len(commands))
            try:
                responses = await admin.run(commands, timeout_s=timeout_s) if commands else []
            except Exception as exc:
                if isinstance(exc, TimeoutError):
                    pacing.timed_out(len(commands), timeout_s)
                changes[0].attempts += 1
                changes[0].last_error = (str(exc) or type(exc).__name__)[:500]
                failure = exc
                break
            pacing.observe(sum(not r.get("error") for r in responses), loop.time() - started)
            # Creates whose client existed already (left over, or applied by an attempt
            # that timed out) get their password set and are enabled after this message.
            repairs: list[dynsec.Command] = []
            later = Counter(change.device_id for change, _start, _end in planned)
            for change, start, end in planned:
                later[change.device_id] -= 1
                mine_responses = responses[start:end]
                problems = [admin.failure(r) for r in mine_responses]
                first = next((p for p in problems if p is not None), None)
                if first is not None:
                    # Later changes (maybe to the same device) must not overtake this one;
                    # those already applied in this message are harmless to apply again.
                    change.attempts += 1
                    change.last_error = str(first)[:500]
                    failure = first
                    break
                existed = change.action == CREATE and any(
                    r.get("error") == CLIENT_EXISTS for r in mine_responses
                )
                if existed and later[change.device_id]:
                    # A later change to this device ran already, before the repair could:
                    # repair now, then send the later changes again (in order).
                    repairs += outbox.repair_commands(change)
                    await session.delete(change)
                    applied += 1
                    break
                if existed:
                    repairs += outbox.repair_commands(change)
                await session.delete(change)
                applied += 1
            if repairs:
                # On failure the transaction rolls back: these changes are sent again.
                await admin.execute(repairs, timeout_s=pacing.timeout_s(len(repairs)))
    if failure is not None:
        raise failure
    return applied


async def pending_changes(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(BrokerChange)) or 0)


async def backlog_of(sessions: async_sessionmaker[AsyncSession]) -> tuple[int, datetime | None]:
    """How many changes wait, and when the newest of them was queued."""
    async with sessions() as session:
        row = (await session.execute(select(func.count(), func.max(BrokerChange.created_at)))).one()
    return int(row[0] or 0), row[1]


async def apply_offline(
    sessions: async_sessionmaker[AsyncSession],
    outbox: Outbox,
    rewrite: Callable[[Callable[[dynsec.DynsecFile], None]], Awaitable[None]],
) -> int:
    """Apply every queued change by editing the broker's dynsec file while it is stopped
    (`rewrite` stops the broker, runs the edit, saves and starts it again); returns how
    many were applied. For a broker this process supervises, with a large backlog: one
    pass, instead of a file rewrite by Mosquitto per command.

    Holds the delivery lock throughout (PostgreSQL): another process delivering through
    the control topic meanwhile could apply later changes (a revocation) that this edit,
    made from the snapshot read here, would then undo in the file.
    """
    async with sessions() as lock, lock.begin():
        postgresql = lock.get_bind().dialect.name == "postgresql"
        if postgresql and not await lock.scalar(
            select(func.pg_try_advisory_xact_lock(DELIVERY_LOCK))
        ):
            return 0
        async with sessions() as session:
            changes = list(await session.scalars(select(BrokerChange).order_by(BrokerChange.id)))
        if not changes:
            return 0

        def edit(file: dynsec.DynsecFile) -> None:
            for change in changes:
                outbox.apply_to_file(change, file)

        await rewrite(edit)
        # Changes queued meanwhile stay for the next round, in order after these. A crash
        # before this commit applies the same changes again: they are idempotent.
        async with sessions() as session, session.begin():
            for chunk in range(0, len(changes), 500):
                ids = [c.id for c in changes[chunk : chunk + 500]]
                await session.execute(delete(BrokerChange).where(BrokerChange.id.in_(ids)))
    return len(changes)


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
