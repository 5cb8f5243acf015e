"""Simulated devices behaving like the firmware, many of them in one event loop.

Each device samples its signal model every interval into its outbox and sends what is
waiting once it is connected: a single timestamped reading normally, PROTOCOL batches
(backfill) after time offline. It announces itself with a retained status document and
a heartbeat, leaves a last will, drops off the network on its outage schedule, and
reconnects with jittered exponential backoff.

A reading counts as sent only when the server side acknowledged it (MQTT PUBACK, HTTP
202), so the fleet's count is what the server must have stored.

Downlink arrives through the link (MQTT subscriptions, HTTP long-polls) into the device's
inbox; the device's task applies it with its `DeviceControl` and sends the answers
(reported state, command results) between its other sends. A firmware update assignment
starts an update task (simulator/ota.py) beside it, which downloads, verifies and reports
while the device goes on sending, then has it reboot into the new version.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Literal, Self

import httpx
import orjson

from sensorium import __version__
from sensorium.protocol import CommandMessage, StateDocument
from sensorium.protocol.ota import OtaAssignment
from sensorium.simulator.buffer import Document, Entry, Outbox
from sensorium.simulator.control import DeviceControl, Reply
from sensorium.simulator.links import HttpLink, Link, LinkError, MqttLink
from sensorium.simulator.ota import OtaConfig, OtaStats, OtaUpdater
from sensorium.simulator.signals import EnergyModel, Profile, SignalModel, make_model

Transport = Literal["mqtt", "http"]
TRANSPORTS: tuple[Transport, ...] = ("mqtt", "http")

Window = tuple[float, float]


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """A registered device the fleet runs. `index` seeds its signals; `outages`, when
    given, replaces the random schedule (seconds since the fleet started, [start, end))."""

    device_id: str
    token: str
    profile: Profile
    index: int
    outages: tuple[Window, ...] | None = None


@dataclass(frozen=True, slots=True)
class FleetConfig:
    interval_s: float = 5.0
    status_every_s: float = 30.0
    # Share of time each device spends off the network, in outages of about `outage_s`.
    offline_ratio: float = 0.0
    outage_s: float = 30.0
    outbox_entries: int = 10_000
    # Devices boot (and first connect) at this rate, like a building powering up.
    ramp_per_s: float = 200.0
    keepalive_s: int = 30
    timeout_s: float = 10.0
    max_backoff_s: float = 60.0
    seed: int = 1
    utc_offset_s: int = 0
    firmware: str = f"{__version__}-sim"
    # Receive desired state and commands (MQTT subscriptions, HTTP long-polls of
    # `poll_wait_s`); off, the devices only send, as in a pure ingest benchmark.
    downlink: bool = True
    poll_wait_s: int = 30
    # How long a `reboot` command keeps the device off the network.
    reboot_s: float = 2.0
    # Firmware updates (with `downlink`).
    ota: OtaConfig = field(default_factory=OtaConfig)

    def __post_init__(self) -> None:
        if not 0.0 <= self.offline_ratio < 1.0:
            raise ValueError("offline_ratio must be at least 0 and below 1")
        if self.interval_s <= 0 or self.outage_s <= 0 or self.ramp_per_s <= 0:
            raise ValueError("interval, outage length and ramp must be positive")
        if not 1 <= self.poll_wait_s <= 60 or self.reboot_s < 0:
            raise ValueError("poll_wait_s must be 1..60 and reboot_s not negative")


class OutageSchedule:
    """When a device is off the network: consecutive windows [start, end), in seconds."""

    def __init__(self, windows: Iterable[Window]) -> None:
        self._windows: Iterator[Window] = iter(windows)
        self._current: Window | None = next(self._windows, None)

    @classmethod
    def random(cls, rng: random.Random, *, ratio: float, mean_outage_s: float) -> OutageSchedule:
        """Outages of 0.5 to 1.5 times `mean_outage_s` separated by exponential online spells, so
        the long-run offline share is `ratio`."""
        if ratio <= 0:
            return cls(())
        mean_online_s = mean_outage_s * (1 - ratio) / ratio

        def windows() -> Iterator[Window]:
            t = 0.0
            while True:
                start = t + rng.expovariate(1 / mean_online_s)
                t = start + mean_outage_s * rng.uniform(0.5, 1.5)
                yield start, t

        return cls(windows())

    def _advance(self, t: float) -> Window | None:
        while self._current is not None and self._current[1] <= t:
            self._current = next(self._windows, None)
        return self._current

    def offline_at(self, t: float) -> bool:
        """Whether the device is offline at `t`; `t` must not go backwards between calls."""
        window = self._advance(t)
        return window is not None and window[0] <= t

    def next_change(self, t: float) -> float:
        """The next moment after `t` at which `offline_at` changes (inf when never)."""
        window = self._advance(t)
        if window is None:
            return math.inf
        return window[0] if t < window[0] else window[1]


@dataclass(slots=True)
class FleetStats:
    """Counters of the whole fleet (gauges are read from the devices: `Fleet.snapshot`)."""

    telemetry_messages: int = 0
    backfill_messages: int = 0
    entries_sent: int = 0
    points_sent: int = 0
    status_messages: int = 0
    connects: int = 0
    rejected_points: int = 0
    commands_answered: int = 0
    # Expired before they arrived, or delivered twice: not answered.
    commands_ignored: int = 0
    state_reports: int = 0
    reboots: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    ota: OtaStats = field(default_factory=OtaStats)


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    devices: int
    booted: int
    connected: int
    offline: int
    buffered_points: int
    dropped_points: int
    telemetry_messages: int
    backfill_messages: int
    points_sent: int
    status_messages: int
    connects: int
    rejected_points: int
    commands_answered: int
    commands_ignored: int
    state_reports: int
    reboots: int
    errors: dict[str, int]
    ota: OtaStats = field(default_factory=OtaStats)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


class SimDevice:
    """One simulated device: a single task, so its outbox and its control state are only
    touched between sends. Downlink arrives (from paho callbacks or HTTP poll tasks) into
    an inbox that this task works through."""

    def __init__(
        self,
        spec: DeviceSpec,
        link: Link,
        *,
        config: FleetConfig,
        stats: FleetStats,
        schedule: OutageSchedule,
        model: SignalModel | None = None,
        updater: OtaUpdater | None = None,
    ) -> None:
        self.spec = spec
        self.link = link
        self.config = config
        self.stats = stats
        self.schedule = schedule
        # Randomness is keyed by the device id, not its position: a devices file may hold
        # several fleets, and each device must still behave like itself on every run.
        self.model = model or make_model(
            spec.profile, seed=config.seed, device=spec.device_id, utc_offset_s=config.utc_offset_s
        )
        self.control = DeviceControl(
            profile=spec.profile,
            interval_s=config.interval_s,
            rng=random.Random(f"sensorium-sim/{config.seed}/{spec.device_id}/control"),
        )
        self.outbox = Outbox(config.outbox_entries)
        self.points_sent = 0
        self.backfills = 0
        self.commands_answered = 0
        self.state_reports = 0
        self.reboots = 0
        self.booted = False
        self.offline = False
        # The version it runs (in its status); a firmware update changes it.
        self.firmware = config.firmware
        self._updater = updater
        self._update: asyncio.Task[None] | None = None
        self._update_job: str | None = None
        # Jobs finished here (installed, failed, withdrawn): a redelivered assignment of
        # one (retained, or the state poll after a reconnect) is not started again.
        self._jobs_done: deque[str] = deque(maxlen=16)
        # Set by the update task: writing the new image (no status until the reboot: one
        # with the old version after UPDATING would tell the server it rolled back),
        # then the version to reboot into.
        self.installing = False
        self._boot_into: str | None = None
        # Loop time of the first accepted connection (None until then).
        self.first_connected_at: float | None = None
        self._rng = random.Random(f"sensorium-sim/{config.seed}/{spec.device_id}/device")
        self._rssi = self._rng.randint(-85, -45)
        self._heap = self._rng.randint(90_000, 160_000)
        subnet, host = divmod(spec.index, 250)
        self._ip = f"10.{77 + (subnet >> 8)}.{subnet & 255}.{host + 2}"
        self._last_ts = 0
        self._booted_at = 0.0
        self._stopping = False
        self._wake: asyncio.Future[None] | None = None
        self._inbox: deque[StateDocument | CommandMessage] = deque()
        self._replies: deque[Reply] = deque()
        if config.downlink:
            link.attach(self)

    @property
    def device_id(self) -> str:
        return self.spec.device_id

    @property
    def token(self) -> str:
        return self.spec.token

    def stop(self) -> None:
        self._stopping = True
        if self._update is not None:
            self._update.cancel()  # awaited when the device's task ends
        self._poke()

    # --- DownlinkSink (called on the loop, maybe inside a paho callback) --------------------

    def on_desired(self, doc: StateDocument) -> None:
        self._inbox.append(doc)
        self._poke()

    def on_command(self, message: CommandMessage) -> None:
        self._inbox.append(message)
        self._poke()

    def on_link_error(self, kind: str) -> None:
        self.stats.errors[kind] += 1

    def on_ota(self, assignment: OtaAssignment | None) -> None:
        if self._updater is None:
            return
        if assignment is None:
            # Withdrawn (cancelled, or finished on the server): a download stops; an
            # install already under way goes on to its reboot.
            if self._update_job is not None and not self.installing:
                self._jobs_done.append(self._update_job)
                self._cancel_update()
            return
        if assignment.job == self._update_job or assignment.job in self._jobs_done:
            return
        if assignment.version == self.firmware:
            return  # already runs it; its status says so
        self._cancel_update()  # a newer assignment (a retry) replaces an older one
        self._update_job = assignment.job
        self._update = asyncio.get_running_loop().create_task(
            self._run_update(self._updater, assignment), name=f"sim-ota-{self.device_id}"
        )

    async def _run_update(self, updater: OtaUpdater, assignment: OtaAssignment) -> None:
        await updater.update(self, assignment, self.firmware)
        self._jobs_done.append(assignment.job)
        self._update_job = None

    def _cancel_update(self) -> None:
        task, self._update, self._update_job = self._update, None, None
        self.installing = False
        if task is not None and not task.done():
            task.cancel()

    # --- OtaDevice (the update task) --------------------------------------------------------

    @property
    def network_up(self) -> bool:
        return not self.offline and not self._stopping

    @property
    def link_up(self) -> bool:
        return self.link.connected and not self.offline

    async def send_ota_progress(self, payload: bytes) -> None:
        await self.link.send_ota_progress(payload)

    def boot_into(self, version: str) -> None:
        self._boot_into = version
        self._poke()

    # -------------------------------------------------------------------------------------

    async def run(self, *, started_at: float, boot_at: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            await self._sleep_until(boot_at)
            if self._stopping:
                return
            await self._run(loop, started_at)
        finally:
            update, self._update = self._update, None
            if update is not None:
                update.cancel()
                await asyncio.gather(update, return_exceptions=True)
            if self.link.connected:
                # Powered off: the will tells the server at once instead of after 3 intervals.
                await self.link.drop()
            await self.link.close()

    async def _run(self, loop: asyncio.AbstractEventLoop, started_at: float) -> None:
        config = self.config
        self.booted = True
        self._booted_at = now = loop.time()
        interval = self.control.interval_s
        next_sample = now
        next_status = math.inf
        retry_at = now
        backoff = 1.0
        while not self._stopping:
            now = loop.time()
            if self._boot_into is not None:
                retry_at = await self._reboot(loop)
                continue
            self.offline = self.schedule.offline_at(now - started_at)
            if self.offline and self.link.connected:
                await self.link.drop()
            if self.control.interval_s != interval:
                # A new interval applies from now, not after the current (maybe long) wait.
                interval = self.control.interval_s
                next_sample = min(next_sample, now + interval)
            if now >= next_sample:
                self._sample()
                # Skip ticks missed while busy rather than sampling in a burst.
                missed = math.floor((now - next_sample) / interval)
                next_sample += (missed + 1) * interval
            if self.offline or now < retry_at:
                pass
            elif not self.link.connected:
                try:
                    # Whatever it holds is reported once the server answers the connect.
                    self.control.reconnected()
                    await self.link.connect()
                    self.stats.connects += 1
                    if self.first_connected_at is None:
                        self.first_connected_at = loop.time()
                    await self._send_status(now)
                except LinkError as exc:
                    self.stats.errors[exc.kind] += 1
                    retry_at = loop.time() + (exc.retry_after or self._jitter(backoff))
                    backoff = min(backoff * 2, config.max_backoff_s)
                    continue
                backoff = 1.0
                next_status = now + config.status_every_s
                continue  # send what waited for the connection
            else:
                try:
                    if await self._serve_downlink():
                        retry_at = await self._reboot(loop)
                        continue
                    if now >= next_status and not self.installing:
                        next_status = now + config.status_every_s
                        await self._send_status(now)
                    if len(self.outbox):
                        await self._send_next()
                except LinkError as exc:
                    self.stats.errors[exc.kind] += 1
                    retry_at = loop.time() + (exc.retry_after or self._jitter(backoff))
                    backoff = min(backoff * 2, config.max_backoff_s)
                    continue
                backoff = 1.0
                if len(self.outbox) or self._downlink_waiting:
                    continue  # still backfilling or answering: go on without waiting
            wake_at = min(next_sample, started_at + self.schedule.next_change(now - started_at))
            if not self.offline:
                if self.link.connected:
                    wake_at = min(wake_at, next_status)
                if not self.link.connected or len(self.outbox) or self._downlink_waiting:
                    wake_at = min(wake_at, retry_at)
            await self._sleep_until(wake_at)

    @property
    def _downlink_waiting(self) -> bool:
        return bool(self._inbox or self._replies or self.control.report_due)

    @property
    def uptime_s(self) -> float:
        return max(0.0, asyncio.get_running_loop().time() - self._booted_at)

    async def _serve_downlink(self) -> bool:
        """Apply what arrived, then send the command results and the reported state; True
        when a delivered result asked for a reboot."""
        control = self.control
        while self._inbox:
            item = self._inbox.popleft()
            if isinstance(item, StateDocument):
                control.apply_desired(item)
                continue
            reply = control.handle_command(
                item, now_ms=time.time_ns() // 1_000_000, uptime_s=self.uptime_s
            )
            if reply is None:
                self.stats.commands_ignored += 1
            else:
                self._replies.append(reply)
        while self._replies:
            reply = self._replies[0]
            try:
                await self.link.send_result(reply.command_id, reply.result.to_json())
            except LinkError as exc:
                if exc.fatal:
                    self._replies.popleft()  # the server will not take it: finished already
                raise
            self._replies.popleft()
            self.stats.commands_answered += 1
            self.commands_answered += 1
            if reply.reboot:
                return True
        if control.report_due:
            await self.link.send_reported(control.report().to_json())
            control.reported()
            self.stats.state_reports += 1
            self.state_reports += 1
        return False

    async def _reboot(self, loop: asyncio.AbstractEventLoop) -> float:
        """Restart like the firmware: off the network for `reboot_s`, what was in RAM (the
        downlink not handled yet, a download) lost, uptime from zero; after an update,
        running the version it installed (or the old one, when the new one did not boot).
        Returns when to reconnect."""
        await self.link.drop()
        if self._boot_into is not None:
            self.firmware, self._boot_into = self._boot_into, None
            self.installing = False
        else:
            # The assignment comes again after the reconnect and starts over.
            self._cancel_update()
        self._inbox.clear()
        self._replies.clear()
        self.reboots += 1
        self.stats.reboots += 1
        self._booted_at = loop.time() + self.config.reboot_s
        return self._booted_at

    def _sample(self) -> None:
        ts = max(time.time_ns() // 1_000_000, self._last_ts + 1)
        self._last_ts = ts
        if isinstance(self.model, EnergyModel):
            # The meter sits behind the relay: switched off, the circuit draws nothing.
            self.model.powered = self.control.state.get("relay") is not False
        self.outbox.append(Entry(ts, self.model.sample(ts)))

    async def _send_next(self) -> None:
        document = self.outbox.next_document()
        if document is None:
            return
        try:
            await self.link.send_telemetry(document.payload)
        except LinkError as exc:
            if exc.fatal:
                # The server will never take this document: drop it rather than loop.
                self.outbox.remove_sent(document)
                self.stats.rejected_points += document.points
            raise
        self.outbox.remove_sent(document)
        self._count(document)

    def _count(self, document: Document) -> None:
        stats = self.stats
        stats.telemetry_messages += 1
        stats.entries_sent += document.entries
        stats.points_sent += document.points
        self.points_sent += document.points
        if document.entries > 1:
            stats.backfill_messages += 1
            self.backfills += 1

    async def _send_status(self, now: float) -> None:
        rng = self._rng
        doc = {
            "online": True,
            "fw": self.firmware,
            "uptime_s": int(max(0.0, now - self._booted_at)),
            "rssi": max(-100, min(-30, self._rssi + round(rng.gauss(0, 3)))),
            "ip": self._ip,
            "free_heap": self._heap + rng.randint(-4096, 4096),
            "interval_s": self.control.state["interval_s"],
        }
        await self.link.send_status(orjson.dumps(doc))
        self.stats.status_messages += 1

    def _jitter(self, seconds: float) -> float:
        return seconds * self._rng.uniform(0.8, 1.2)

    def _poke(self) -> None:
        """Wake the task if it sleeps (a stop, or downlink to handle)."""
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _sleep_until(self, deadline: float) -> None:
        """Sleep until `deadline` (loop time) or until poked; one timer, no extra task."""
        loop = asyncio.get_running_loop()
        delay = deadline - loop.time()
        if delay <= 0 or self._stopping:
            return
        wake: asyncio.Future[None] = loop.create_future()
        self._wake = wake
        handle = loop.call_later(delay, _resolve, wake)
        try:
            await wake
        finally:
            handle.cancel()
            self._wake = None


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Fleet:
    """Runs simulated devices concurrently in the current event loop.

    ``async with Fleet(...) as fleet`` starts them; leaving the block (or `stop`) lets each
    finish what it is sending, disconnects it with its will, and stops.
    """

    def __init__(
        self,
        devices: Sequence[DeviceSpec],
        config: FleetConfig,
        *,
        transport: Transport,
        mqtt_host: str = "127.0.0.1",
        mqtt_port: int = 1883,
        api_url: str | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        if transport == "http" and http_client is None and api_url is None:
            raise ValueError("the HTTP transport needs an API URL")
        self.config = config
        self.transport = transport
        self.stats = FleetStats()
        self._specs = list(devices)
        self._mqtt_host = mqtt_host
        self._mqtt_port = mqtt_port
        self._api_url = api_url
        self._http = http_client
        self._own_http = False
        # HTTP long-polls: their own pool without a limit (each device holds its polls
        # open, as a real one holds its connection), so they never starve the sends.
        self._poll_http: httpx.AsyncClient | None = None
        # Image downloads: a pool of their own, as wide as the downloads allowed at once.
        self._download_http: httpx.AsyncClient | None = None
        self._updater: OtaUpdater | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.devices: list[SimDevice] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._ticker: asyncio.Task[None] | None = None
        self.started_at = 0.0

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def _follows_updates(self) -> bool:
        return self.config.downlink and self.config.ota.enabled

    def _make_updater(self) -> OtaUpdater | None:
        if not self._follows_updates:
            return None
        ota = self.config.ota
        client = None
        if self._api_url is not None:
            self._download_http = client = httpx.AsyncClient(
                base_url=self._api_url,
                timeout=httpx.Timeout(self.config.timeout_s, read=30.0),
                limits=httpx.Limits(
                    max_connections=ota.concurrency, max_keepalive_connections=ota.concurrency
                ),
            )
        elif self._http is not None:
            client = self._http
        return OtaUpdater(
            ota,
            client=client,
            seed=self.config.seed,
            stats=self.stats.ota,
            on_error=self._count_error,
            timeout_s=max(30.0, self.config.timeout_s),
        )

    def _count_error(self, kind: str) -> None:
        self.stats.errors[kind] += 1

    def _link(self, spec: DeviceSpec) -> Link:
        if self.transport == "mqtt":
            if self._executor is None:
                # Only the blocking TCP connect runs here; a few threads keep up with any
                # ramp, and they end with the fleet.
                self._executor = ThreadPoolExecutor(4, thread_name_prefix="sim-connect")
            return MqttLink(
                spec.device_id,
                spec.token,
                host=self._mqtt_host,
                port=self._mqtt_port,
                executor=self._executor,
                keepalive_s=self.config.keepalive_s,
                timeout_s=self.config.timeout_s,
                ota=self._follows_updates,
            )
        if self._http is None:
            assert self._api_url is not None
            connections = max(10, min(len(self._specs), 200))
            self._http = httpx.AsyncClient(
                base_url=self._api_url,
                timeout=self.config.timeout_s,
                limits=httpx.Limits(
                    max_connections=connections, max_keepalive_connections=connections
                ),
            )
            self._own_http = True
        if self._own_http and self.config.downlink and self._poll_http is None:
            self._poll_http = httpx.AsyncClient(
                base_url=self._api_url or "",
                timeout=self.config.timeout_s,
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
            )
        return HttpLink(
            spec.device_id,
            spec.token,
            client=self._http,
            poll_client=self._poll_http,
            poll_wait_s=self.config.poll_wait_s,
            timeout_s=self.config.timeout_s,
            max_backoff_s=self.config.max_backoff_s,
            ota=self._follows_updates,
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        config = self.config
        self.started_at = loop.time()
        self._updater = self._make_updater()
        for spec in self._specs:
            if spec.outages is not None:
                schedule = OutageSchedule(spec.outages)
            else:
                rng = random.Random(f"sensorium-sim/{config.seed}/{spec.device_id}/outages")
                schedule = OutageSchedule.random(
                    rng, ratio=config.offline_ratio, mean_outage_s=config.outage_s
                )
            self.devices.append(
                SimDevice(
                    spec,
                    self._link(spec),
                    config=config,
                    stats=self.stats,
                    schedule=schedule,
                    updater=self._updater,
                )
            )
        for position, device in enumerate(self.devices):
            boot_at = self.started_at + position / config.ramp_per_s
            self._tasks.append(
                asyncio.create_task(
                    device.run(started_at=self.started_at, boot_at=boot_at),
                    name=f"sim-{device.device_id}",
                )
            )
        self._ticker = asyncio.create_task(self._tick(), name="sim-keepalive")

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for device in self.devices:
                device.link.tick()

    def stop(self) -> None:
        """Ask every device to stop after what it is sending now (returns at once)."""
        for device in self.devices:
            device.stop()

    def abort(self) -> None:
        """Stop now, without waiting for acknowledgements (a second Ctrl-C)."""
        self.stop()
        for task in self._tasks:
            task.cancel()

    async def close(self) -> None:
        """Stop, wait for the devices to disconnect, and release threads and clients."""
        self.stop()
        if self._tasks:
            # A device mid-send waits at most for its ack timeout, then its disconnect.
            _done, pending = await asyncio.wait(self._tasks, timeout=2 * self.config.timeout_s + 5)
            for task in pending:
                task.cancel()
            results = await asyncio.gather(*self._tasks, return_exceptions=True)
            for result in results:
                if isinstance(result, Exception):
                    self.stats.errors[f"crash:{type(result).__name__}"] += 1
            self._tasks.clear()
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None
        if self._own_http and self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._poll_http is not None:
            await self._poll_http.aclose()
            self._poll_http = None
        if self._download_http is not None:
            await self._download_http.aclose()
            self._download_http = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    @property
    def done(self) -> bool:
        return bool(self._tasks) and all(task.done() for task in self._tasks)

    def snapshot(self) -> FleetSnapshot:
        stats = self.stats
        devices = self.devices
        return FleetSnapshot(
            devices=len(devices),
            booted=sum(d.booted for d in devices),
            connected=sum(d.link.connected for d in devices),
            offline=sum(d.offline for d in devices),
            buffered_points=sum(d.outbox.points for d in devices),
            dropped_points=sum(d.outbox.dropped_points for d in devices),
            telemetry_messages=stats.telemetry_messages,
            backfill_messages=stats.backfill_messages,
            points_sent=stats.points_sent,
            status_messages=stats.status_messages,
            connects=stats.connects,
            rejected_points=stats.rejected_points,
            commands_answered=stats.commands_answered,
            commands_ignored=stats.commands_ignored,
            state_reports=stats.state_reports,
            reboots=stats.reboots,
            errors=dict(stats.errors),
            ota=replace(stats.ota, failures=dict(stats.ota.failures)),
        )

    def first_connect_s(self) -> list[float]:
        """Seconds from the fleet's start to each device's first accepted connection, for
        the devices that got one, in boot order."""
        return [
            d.first_connected_at - self.started_at
            for d in self.devices
            if d.first_connected_at is not None
        ]

    def points_sent_by_device(self) -> dict[str, int]:
        return {d.device_id: d.points_sent for d in self.devices}
