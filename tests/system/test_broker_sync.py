"""`sensorium broker sync`: the broker's accounts are repaired to match the database."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from sqlalchemy import select, update

from sensorium.broker import admin as dynsec_admin
from sensorium.broker import dynsec
from sensorium.broker import provisioner as provisioner_module
from sensorium.broker.admin import DynsecError
from sensorium.broker.endpoint import MqttEndpoint
from sensorium.broker.models import BrokerChange
from sensorium.broker.provisioner import BrokerProvisioner
from sensorium.broker.service import Outbox, deliver, reconcile
from sensorium.config import Settings
from sensorium.db import create_engine, session_factory, utcnow
from sensorium.devices.models import DeviceCredential
from sensorium.worker.runtime import EmbeddedBroker
from tests.helpers import Api
from tests.system.conftest import provisioned


async def test_sync_repairs_drift(
    settings: Settings, broker: EmbeddedBroker, mqtt_api: Api
) -> None:
    assert broker.address is not None
    owner = await mqtt_api.account()
    gone, tampered, revoked = [await mqtt_api.device(owner) for _ in range(3)]
    await provisioned(mqtt_api)
    (admin_user, admin_pw), _ = settings.mqtt_credentials()
    sessions = mqtt_api.client.app.state.ctx.sessions  # type: ignore[attr-defined]
    async with dynsec_admin.connect(
        broker.address.host, broker.address.port, username=admin_user, password=admin_pw
    ) as admin:
        # Drift: a client deleted behind our back, a stray client, a role stripped of an
        # ACL and given a dangerous one, a token revoked while the broker was unreachable.
        await admin.execute(dynsec.delete_device_commands(gone.id))
        await admin.execute(dynsec.create_device_commands("0200000000aa", "stray-password"))
        role = dynsec.device_role(tampered.id)
        await admin.execute(
            [
                {"command": "removeRoleACL", "rolename": role, "acltype": "publishClientSend",
                 "topic": f"devices/{tampered.id}/telemetry"},
                {"command": "addRoleACL", "rolename": role, "acltype": "subscribePattern",
                 "topic": "#", "allow": True},
            ]
        )  # fmt: skip
        async with sessions() as session, session.begin():
            await session.execute(
                update(DeviceCredential)
                .where(DeviceCredential.device_id == revoked.id)
                .values(revoked_at=utcnow())
            )

        report = await reconcile(sessions, admin, Outbox(settings.resolved_secret_key()))
        assert report.missing == [gone.id]
        assert report.deleted == ["0200000000aa"]
        assert report.disabled == [revoked.id]
        assert tampered.id in report.roles_repaired
        assert await admin.get_client("0200000000aa") is None
        revoked_client = await admin.get_client(revoked.id)
        assert revoked_client is not None
        assert revoked_client["disabled"] is True
        assert await admin.sync_role(role, dynsec.device_acls(tampered.id)) is False

        # Idempotent: a second run finds nothing more to do.
        again = await reconcile(sessions, admin, Outbox(settings.resolved_secret_key()))
        assert (again.deleted, again.disabled, again.roles_repaired) == ([], [], [])
        assert again.missing == [gone.id]

    # Rotating the missing device's token provisions it again.
    r = await mqtt_api.client.post(f"/api/v1/devices/{gone.id}/token/rotate", headers=owner.headers)
    assert r.status_code == 200
    await provisioned(mqtt_api)
    async with dynsec_admin.connect(
        broker.address.host, broker.address.port, username=admin_user, password=admin_pw
    ) as admin:
        client = await admin.get_client(gone.id)
        assert client is not None
        assert client.get("disabled") is not True


async def test_outbox_delivers_in_order_and_stops_at_a_failure(
    settings: Settings, broker: EmbeddedBroker
) -> None:
    assert broker.address is not None
    (admin_user, admin_pw), _ = settings.mqtt_credentials()
    engine = create_engine(settings.database_url)
    sessions = session_factory(engine)
    outbox = Outbox(settings.resolved_secret_key())
    try:
        async with sessions() as session, session.begin():
            for i in range(150):  # bulk registration: one control message, not 150
                await outbox.device_created(session, f"0200000001{i:02x}", f"token-{i}")
            await outbox.device_disabled(session, "02000000ffff")  # no such client: fails
            await outbox.device_created(session, "0200000002aa", "token-late")
        async with dynsec_admin.connect(
            broker.address.host, broker.address.port, username=admin_user, password=admin_pw
        ) as admin:
            with pytest.raises(DynsecError, match="Client not found"):
                await deliver(sessions, admin, outbox)
            async with sessions() as session:
                left = list(await session.scalars(select(BrokerChange).order_by(BrokerChange.id)))
            assert [c.device_id for c in left] == ["02000000ffff", "0200000002aa"]
            assert left[0].attempts == 1
            assert "Client not found" in (left[0].last_error or "")
            assert await admin.get_client("020000000195") is not None
            # The operator removes the impossible change: delivery resumes in order.
            async with sessions() as session, session.begin():
                await session.delete(await session.get(BrokerChange, left[0].id))
            assert await deliver(sessions, admin, outbox) == 1
            assert await admin.get_client("0200000002aa") is not None
    finally:
        await engine.dispose()


async def test_the_provisioner_stops_when_poked_just_as_it_is_stopped(
    settings: Settings, broker: EmbeddedBroker
) -> None:
    """A poke (a registration) that lands with the stop: Python 3.11's `asyncio.wait_for`
    returned the finished wait and swallowed the cancellation, so the provisioner went on
    polling and `stop()` (the server's shutdown) never returned."""
    assert broker.address is not None
    (admin_user, admin_pw), _ = settings.mqtt_credentials()
    endpoint = MqttEndpoint(broker.address.host, broker.address.port, admin_user, admin_pw)
    engine = create_engine(settings.database_url)
    try:
        for _ in range(3):
            provisioner = BrokerProvisioner(
                session_factory(engine), endpoint, Outbox(settings.resolved_secret_key())
            )
            await provisioner.start()
            await provisioner.wait_idle()
            async with asyncio.timeout(5):
                await provisioner.stop()
    finally:
        await engine.dispose()


async def test_the_provisioner_stops_even_when_a_cancellation_is_lost_below_it(
    settings: Settings, broker: EmbeddedBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python 3.11's `asyncio.wait_for` (in libraries too) drops a cancellation that lands
    as what it waits for completes: seen in a full test run, the provisioner's stop hung
    for good. Its loop now also ends on a flag."""
    assert broker.address is not None
    in_delivery = asyncio.Event()

    async def deliver_losing_a_cancellation(*args: Any, **kwargs: Any) -> int:
        in_delivery.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.5)
        return await deliver(*args, **kwargs)

    monkeypatch.setattr(provisioner_module, "deliver", deliver_losing_a_cancellation)
    (admin_user, admin_pw), _ = settings.mqtt_credentials()
    endpoint = MqttEndpoint(broker.address.host, broker.address.port, admin_user, admin_pw)
    engine = create_engine(settings.database_url)
    try:
        provisioner = BrokerProvisioner(
            session_factory(engine), endpoint, Outbox(settings.resolved_secret_key())
        )
        await provisioner.start()
        async with asyncio.timeout(10):
            await in_delivery.wait()
        async with asyncio.timeout(5):
            await provisioner.stop()
    finally:
        await engine.dispose()
