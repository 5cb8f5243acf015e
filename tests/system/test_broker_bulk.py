"""Provisioning many devices: a supervised Mosquitto gets a large backlog written into its
dynsec file during a restart (Mosquitto 2.0 rewrites the whole file after every control
command), and a create whose client already exists still ends with the device's token."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from sensorium.broker import admin as dynsec_admin
from sensorium.broker import dynsec
from sensorium.broker import provisioner as provisioner_module
from sensorium.broker.endpoint import MqttEndpoint
from sensorium.broker.models import BrokerChange
from sensorium.broker.provisioner import OFFLINE_MIN_CHANGES, BrokerProvisioner
from sensorium.broker.service import DELIVERY_LOCK, Outbox, apply_offline, deliver
from sensorium.config import Settings
from sensorium.db import create_engine, session_factory
from sensorium.worker.runtime import EmbeddedBroker
from tests.system.conftest import Device, wait_for


async def connack(broker: EmbeddedBroker, devices: list[Device], device_id: str, token: str) -> str:
    assert broker.address is not None
    device = await asyncio.to_thread(Device(broker.address, device_id, token).start)
    devices.append(device)
    return str(device.connack)


async def test_a_large_backlog_is_written_into_the_file_of_our_own_broker(
    settings: Settings,
    broker: EmbeddedBroker,
    devices: list[Device],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert broker.address is not None
    assert broker.supervisor is not None
    (admin_user, admin_pw), _ = settings.mqtt_credentials()
    engine = create_engine(settings.database_url)
    sessions = session_factory(engine)
    outbox = Outbox(settings.resolved_secret_key())
    count = OFFLINE_MIN_CHANGES + 50
    provisioner = BrokerProvisioner(
        sessions,
        MqttEndpoint(broker.address.host, broker.address.port, admin_user, admin_pw),
        outbox,
        rewrite=broker.rewrite_dynsec,
    )
    # As measured on a broker that already holds thousands of accounts; and no waiting for
    # more changes to come.
    provisioner.pacing.seconds_per_command = 0.2
    monkeypatch.setattr(provisioner_module, "OFFLINE_QUIET_S", 0.0)
    try:
        async with dynsec_admin.connect(
            broker.address.host, broker.address.port, username=admin_user, password=admin_pw
        ) as admin:
            # Left over with another token and a grant no device may have: the rewrite
            # leaves it exactly its own role.
            grant = {"command": "addClientRole", "username": "0200000a0004"}
            await admin.execute(
                [
                    *dynsec.create_device_commands("0200000a0004", "old-token"),
                    {**grant, "rolename": dynsec.SERVICE_ROLE},
                ]
            )
        async with sessions() as session, session.begin():
            for i in range(count):
                await outbox.device_created(session, f"0200000a{i:04x}", f"token-{i}")
            await outbox.device_disabled(session, "0200000a0001")
            await outbox.device_deleted(session, "0200000a0002")
            await outbox.password_changed(session, "0200000a0003", "token-3-rotated")

        async def drained() -> bool:
            async with sessions() as session:
                return not await session.scalar(select(func.count()).select_from(BrokerChange))

        pid = broker.supervisor.pid
        await provisioner.start()
        assert await wait_for(drained, timeout_s=30)
        await provisioner.stop()

        assert broker.supervisor.pid not in (None, pid)  # restarted with the new file…
        assert broker.supervisor.restarts == 0  # … on purpose, not counted as a crash
        assert await connack(broker, devices, "0200000a0000", "token-0") == "Success"
        last = count - 1
        assert await connack(broker, devices, f"0200000a{last:04x}", f"token-{last}") == "Success"
        assert await connack(broker, devices, "0200000a0001", "token-1") == "Not authorized"
        assert await connack(broker, devices, "0200000a0002", "token-2") == "Not authorized"
        assert await connack(broker, devices, "0200000a0003", "token-3") == "Not authorized"
        assert await connack(broker, devices, "0200000a0003", "token-3-rotated") == "Success"
        assert await connack(broker, devices, "0200000a0004", "old-token") == "Not authorized"
        assert await connack(broker, devices, "0200000a0004", "token-4") == "Success"
        async with dynsec_admin.connect(
            broker.address.host, broker.address.port, username=admin_user, password=admin_pw
        ) as admin:
            role = dynsec.device_role("0200000a0000")
            assert await admin.sync_role(role, dynsec.device_acls("0200000a0000")) is False
            assert await admin.get_client("0200000a0002") is None
            left_over = await admin.get_client("0200000a0004") or {}
            assert [r["rolename"] for r in left_over["roles"]] == [
                dynsec.device_role("0200000a0004")
            ]
            # The service accounts survived the rewrite.
            assert await admin.get_client(admin_user) is not None
    finally:
        await provisioner.stop()
        await engine.dispose()


async def test_a_create_for_a_client_that_exists_sets_its_token(
    settings: Settings, broker: EmbeddedBroker, devices: list[Device]
) -> None:
    assert broker.address is not None
    (admin_user, admin_pw), _ = settings.mqtt_credentials()
    engine = create_engine(settings.database_url)
    sessions = session_factory(engine)
    outbox = Outbox(settings.resolved_secret_key())
    try:
        async with dynsec_admin.connect(
            broker.address.host, broker.address.port, username=admin_user, password=admin_pw
        ) as admin:
            # Left over, disabled, with another password (say, from a deleted registration).
            await admin.execute(
                dynsec.create_device_commands("0200000b0001", "old-token")
                + dynsec.disable_device_commands("0200000b0001")
            )
            async with sessions() as session, session.begin():
                await outbox.device_created(session, "0200000b0001", "new-token")
                await outbox.device_created(session, "0200000b0002", "other-token")
                await outbox.device_disabled(session, "0200000b0002")
            assert await deliver(sessions, admin, outbox) == 3
        assert await connack(broker, devices, "0200000b0001", "old-token") == "Not authorized"
        assert await connack(broker, devices, "0200000b0001", "new-token") == "Success"
        # The changes after the repaired one were applied again, in order.
        assert await connack(broker, devices, "0200000b0002", "other-token") == "Not authorized"
    finally:
        await engine.dispose()


async def test_no_rewrite_while_another_process_delivers(
    settings: Settings, broker: EmbeddedBroker
) -> None:
    """PostgreSQL: another process holding the delivery lock may apply later changes
    through the control topic; a rewrite from an older snapshot would undo them."""
    assert broker.supervisor is not None
    engine = create_engine(settings.database_url)
    sessions = session_factory(engine)
    outbox = Outbox(settings.resolved_secret_key())
    try:
        async with sessions() as other, other.begin():
            if other.get_bind().dialect.name != "postgresql":
                pytest.skip("one process per SQLite database: no other deliverer")
            await other.scalar(select(func.pg_advisory_xact_lock(DELIVERY_LOCK)))
            async with sessions() as session, session.begin():
                await outbox.device_created(session, "0200000c0001", "token")
            pid = broker.supervisor.pid
            assert await apply_offline(sessions, outbox, broker.rewrite_dynsec) == 0
            assert broker.supervisor.pid == pid
        assert await apply_offline(sessions, outbox, broker.rewrite_dynsec) == 1
        assert broker.supervisor.pid != pid
    finally:
        await engine.dispose()
