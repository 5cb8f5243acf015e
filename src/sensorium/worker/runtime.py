"""The MQTT side of a process, started and stopped as one: broker provisioning, ingest
(with its own batch writer) and the scheduler. `sensorium worker` runs it alone;
`sensorium serve` runs it next to the API, with an embedded Mosquitto."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sensorium.broker.dynsec import DynsecFile
from sensorium.broker.endpoint import MqttEndpoint, parse_mqtt_url
from sensorium.broker.mosquitto import (
    BrokerFiles,
    MosquittoSupervisor,
    find_dynsec_plugin,
    find_mosquitto,
    free_port,
    write_broker_files,
)
from sensorium.broker.provisioner import BrokerProvisioner
from sensorium.broker.service import Outbox
from sensorium.config import Settings
from sensorium.control.delivery import ControlPlane, MqttDownlink
from sensorium.live.bus import LiveBus
from sensorium.telemetry.writer import BatchWriter
from sensorium.worker.ingest import MqttIngest
from sensorium.worker.scheduler import Scheduler

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int


def broker_files(settings: Settings, directory: Path, *, host: str, port: int) -> BrokerFiles:
    """Mosquitto config and Dynamic Security file with this installation's accounts."""
    (admin_user, admin_pw), (service_user, service_pw) = settings.mqtt_credentials()
    return write_broker_files(
        directory,
        host=host,
        port=port,
        plugin=find_dynsec_plugin(settings.mosquitto_dynsec_plugin),
        admin_username=admin_user,
        admin_password=admin_pw,
        service_username=service_user,
        service_password=service_pw,
    )


class EmbeddedBroker:
    """A Mosquitto child with a generated config in the data directory (serve mode)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.supervisor: MosquittoSupervisor | None = None
        self.address: BrokerAddress | None = None
        self.files: BrokerFiles | None = None

    async def start(self) -> BrokerAddress:
        settings = self._settings
        host = settings.mqtt_embedded_host
        port = free_port(host, settings.mqtt_embedded_port)
        files = self.files = broker_files(
            settings, settings.data_dir / "mosquitto", host=host, port=port
        )
        self.supervisor = MosquittoSupervisor(
            find_mosquitto(settings.mosquitto_binary), files.config, host=host, port=port
        )
        await self.supervisor.start()
        self.address = BrokerAddress(host, port)
        return self.address

    async def stop(self) -> None:
        if self.supervisor is not None:
            await self.supervisor.stop()

    async def rewrite_dynsec(self, edit: Callable[[DynsecFile], None]) -> None:
        """Stop Mosquitto, edit its dynsec file, start it again (bulk provisioning)."""
        assert self.supervisor is not None
        assert self.files is not None
        path = self.files.dynsec

        def rewrite() -> None:
            file = DynsecFile.load(path)
            edit(file)
            file.save()

        async with self.supervisor.stopped():
            # Thousands of password hashes and a large JSON file: not on the event loop.
            await asyncio.to_thread(rewrite)


def broker_address(settings: Settings) -> BrokerAddress:
    host, port = parse_mqtt_url(settings.mqtt_url)
    return BrokerAddress(host, port)


def service_endpoint(settings: Settings, address: BrokerAddress) -> MqttEndpoint:
    """The worker's and API's own account on the broker."""
    _admin, (username, password) = settings.mqtt_credentials()
    return MqttEndpoint(address.host, address.port, username, password)


class MqttServices:
    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        address: BrokerAddress,
        *,
        ingest: bool = True,
        client_id: str | None = None,
        shared: bool = False,
        bus: LiveBus,
        control: ControlPlane | None = None,
        embedded: EmbeddedBroker | None = None,
    ) -> None:
        (admin_user, admin_pw), _service = settings.mqtt_credentials()
        # `sensorium worker` publishes to devices through its own connection; in `serve`
        # the API's is shared.
        self._own_downlink: MqttDownlink | None = None
        if control is None:
            self._own_downlink = MqttDownlink(service_endpoint(settings, address))
            control = ControlPlane(sessions, bus, self._own_downlink)
        self.control = control
        self.outbox = Outbox(settings.resolved_secret_key())
        self.provisioner = BrokerProvisioner(
            sessions,
            MqttEndpoint(address.host, address.port, admin_user, admin_pw),
            self.outbox,
            # Our own Mosquitto: a large backlog goes straight into its file.
            rewrite=embedded.rewrite_dynsec if embedded is not None else None,
        )
        self.writer: BatchWriter | None = None
        self.ingest: MqttIngest | None = None
        self.scheduler: Scheduler | None = None
        if ingest:
            self.writer = BatchWriter.from_settings(
                sessions,
                settings,
                linger_ms=settings.worker_max_linger_ms,
                lanes=settings.worker_writer_lanes,
                bus=bus,
                transport="mqtt",
                on_online=self._came_online,
            )
            self.ingest = MqttIngest(
                service_endpoint(settings, address),
                client_id=client_id or f"sensorium-worker-{socket.gethostname()}",
                writer=self.writer,
                sessions=sessions,
                retention_days=settings.raw_retention_days,
                offline_after_s=settings.offline_after_s,
                session_expiry_s=settings.mqtt_session_expiry_s,
                shared=shared,
                bus=bus,
                control=control,
            )
            self.scheduler = Scheduler.from_settings(sessions, settings, bus=bus, control=control)
        self._tasks: set[asyncio.Task[None]] = set()

    def _came_online(self, device_ids: list[str]) -> None:
        """Telemetry brought MQTT devices online: their desired state and commands go out."""
        for device_id in device_ids:
            task = asyncio.create_task(self.control.device_online(device_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        if self._own_downlink is not None:
            await self._own_downlink.start()
        await self.provisioner.start()
        if self.writer is not None and self.ingest is not None and self.scheduler is not None:
            await self.writer.start()
            await self.ingest.start()
            await self.scheduler.start()

    async def stop(self, *, leave_group: bool = False) -> None:
        if self.scheduler is not None:
            await self.scheduler.stop()
        if self.ingest is not None:
            await self.ingest.stop(leave_group=leave_group)
        if self.writer is not None:
            await self.writer.stop()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.provisioner.stop()
        if self._own_downlink is not None:
            await self._own_downlink.stop()
