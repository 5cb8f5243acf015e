"""`sensorium simulate`: devices from the API or a devices.json, the fleet run with live
progress, and the final count (also after Ctrl-C)."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sensorium.aio import wait_for
from sensorium.broker.endpoint import parse_mqtt_url
from sensorium.simulator.fleet import DeviceSpec, Fleet, FleetConfig, FleetSnapshot, Transport
from sensorium.simulator.links import API_PREFIX, LinkError, MqttLink
from sensorium.simulator.ota import OtaStats
from sensorium.simulator.registry import (
    DeviceRecord,
    DevicesFile,
    DevicesFileError,
    Registration,
    RegistrationError,
    declare_controls,
    load_devices,
    login,
    profile_for,
    register_devices,
    save_devices,
)

DEFAULT_DEVICES = 10
PROFILE_CHOICES = ("climate", "energy", "mixed")


@dataclass(frozen=True, slots=True)
class SimulateOptions:
    """What the command line asked for."""

    devices: int | None
    transport: Transport
    profile: str | None
    config: FleetConfig
    duration_s: float | None = None
    register: bool = False
    api_url: str | None = None
    mqtt_url: str | None = None
    username: str | None = None
    password: str | None = None
    from_file: Path | None = None
    out: Path | None = None
    handle_signals: bool = True
    # Declare dashboard controls for the devices with a relay (needs --api, --user).
    declare_controls: bool = False
    # Where to write the final summary as JSON (for scripts and benchmarks).
    report: Path | None = None


class SimulateError(RuntimeError):
    """A problem the user has to fix; the message says how."""


def raise_nofile_limit() -> tuple[int, int]:
    """Raise this process's open-file limit to its hard limit (one socket per device)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def local_utc_offset_s() -> int:
    offset = datetime.now().astimezone().utcoffset()
    return int(offset.total_seconds()) if offset is not None else 0


def default_mqtt_url(api_url: str | None) -> str:
    host = urlsplit(api_url).hostname if api_url else None
    return f"mqtt://{host or '127.0.0.1'}:1883"


async def simulate(options: SimulateOptions, console: Console) -> Summary:
    """Run the simulation the options describe and print its summary."""
    soft, _hard = raise_nofile_limit()
    devices = await _devices(options, console)
    records = devices.records
    if options.devices is not None and not options.register:
        records = records[: options.devices]
    if not records:
        raise SimulateError("no devices to run")
    if options.transport == "mqtt" and soft < len(records) + 64:
        console.print(
            f"[yellow]warning:[/] the open-file limit is {soft}: not enough for "
            f"{len(records)} MQTT connections (raise the hard limit: ulimit -Hn)"
        )
    if options.transport == "http" and not devices.api_url:
        raise SimulateError("the HTTP transport needs --api (or a devices file that has it)")
    if options.declare_controls:
        await _declare_controls(options, records, devices.api_url, console)
    config = await _with_public_key(options, devices.api_url, console)
    try:
        host, port = parse_mqtt_url(devices.mqtt_url)
    except ValueError:
        raise SimulateError(
            f"--mqtt must look like mqtt://host:1883, got {devices.mqtt_url!r}"
        ) from None
    target = f"mqtt://{host}:{port}" if options.transport == "mqtt" else str(devices.api_url)
    if options.transport == "mqtt" and devices.created:
        # Brokers take a while to create accounts in bulk (Mosquitto's dynsec: ~1 min for
        # 1,000 on a small machine); allow for it rather than start with a storm of refusals.
        with console.status("waiting for the broker to accept the new devices…"):
            await wait_for_broker_account(
                devices.created[-1].spec(),
                host,
                port,
                console=console,
                timeout_s=30 + 0.2 * len(devices.created),
            )
    console.print(
        f"simulating [bold]{len(records)}[/] device(s) over {options.transport.upper()} "
        f"→ {target}, one reading every {config.interval_s:g} s"
        + (f" for {options.duration_s:g} s" if options.duration_s else "; Ctrl-C stops")
    )
    fleet = Fleet(
        [_spec(r, options) for r in records],
        config,
        transport=options.transport,
        mqtt_host=host,
        mqtt_port=port,
        api_url=devices.api_url,
    )
    summary = await run_fleet(
        fleet,
        duration_s=options.duration_s,
        console=console,
        handle_signals=options.handle_signals,
    )
    print_summary(summary, console)
    if options.report is not None:
        options.report.write_bytes(orjson.dumps(summary.to_json(), option=orjson.OPT_INDENT_2))
    return summary


def _spec(record: DeviceRecord, options: SimulateOptions) -> DeviceSpec:
    spec = record.spec()
    if options.profile is None:
        return spec
    profile = profile_for(options.profile, seed=options.config.seed, index=record.index)
    return DeviceSpec(spec.device_id, spec.token, profile, spec.index)


async def _declare_controls(
    options: SimulateOptions, records: list[DeviceRecord], api_url: str | None, console: Console
) -> None:
    """Controls for the devices that have a relay; a failure is reported, not fatal (the
    devices run without their controls)."""
    if not api_url or not options.username or options.password is None:
        console.print("[yellow]warning:[/] declaring controls needs --api, --user and --password")
        return
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as client:
        try:
            token = await login(client, options.username, options.password)
        except RegistrationError as exc:
            console.print(f"[yellow]warning:[/] no controls declared: {exc}")
            return
        result = await declare_controls(client, access_token=token, devices=records)
    if result.declared:
        console.print(f"declared controls of {len(result.declared)} device(s)")
    for device_id, message in list(result.failures.items())[:3]:
        console.print(f"[yellow]declaring controls of {device_id} failed:[/] {message}")


async def fetch_public_key(client: httpx.AsyncClient, access_token: str) -> str:
    """The key the server's images are signed with (base64 of the raw 32 bytes)."""
    try:
        r = await client.get(
            f"{API_PREFIX}/firmware/public-key",
            headers={"Authorization": f"Bearer {access_token}"},
        )
    except httpx.HTTPError as exc:
        raise RegistrationError(f"cannot reach the API: {exc}") from None
    if r.status_code != 200:
        raise RegistrationError(f"the server gave no OTA public key (HTTP {r.status_code})")
    return str(r.json()["public_key"])


async def _with_public_key(
    options: SimulateOptions, api_url: str | None, console: Console
) -> FleetConfig:
    """The fleet's configuration with the key its devices check images against: the one
    given, else the server's (GET /firmware/public-key, which needs the user's login).
    Without one the devices still follow assignments, and fail them for that reason."""
    config = options.config
    if not config.downlink or not config.ota.enabled or config.ota.public_key is not None:
        return config
    if not api_url or not options.username or options.password is None:
        console.print(
            "[yellow]warning:[/] no OTA public key (give --ota-public-key, or --api, --user "
            "and --password to fetch it): firmware updates will fail"
        )
        return config
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as client:
        try:
            token = await login(client, options.username, options.password)
            key = await fetch_public_key(client, token)
        except RegistrationError as exc:
            console.print(f"[yellow]warning:[/] no OTA public key: {exc}")
            return config
    return replace(config, ota=replace(config.ota, public_key=key))


@dataclass(frozen=True, slots=True)
class _Devices:
    records: list[DeviceRecord]
    api_url: str | None
    mqtt_url: str
    created: list[DeviceRecord] = field(default_factory=list)


async def wait_for_broker_account(
    spec: DeviceSpec, host: str, port: int, *, console: Console, timeout_s: float = 30.0
) -> None:
    """Until the broker accepts a just-registered device: the server provisions broker
    accounts in registration order, shortly after each commit, so the newest one being
    there means the whole fleet can connect without a round of refusals."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    with ThreadPoolExecutor(1, thread_name_prefix="sim-probe") as executor:
        link = MqttLink(spec.device_id, spec.token, host=host, port=port, executor=executor)
        while True:
            try:
                await link.connect()
            except LinkError as exc:
                if loop.time() > deadline:
                    console.print(
                        f"[yellow]warning:[/] the broker still refuses {spec.device_id} "
                        f"({exc}); starting anyway"
                    )
                    return
                await asyncio.sleep(0.2)
                continue
            await link.close()
            return


async def _devices(options: SimulateOptions, console: Console) -> _Devices:
    """The devices to run and where their server is, registering missing ones first when
    asked to."""
    saved: DevicesFile | None = None
    if options.from_file is not None and (options.from_file.exists() or not options.register):
        try:
            saved = load_devices(options.from_file)
        except DevicesFileError as exc:
            raise SimulateError(str(exc)) from None
    api_url = options.api_url or (saved.api if saved else None)
    mqtt_url = options.mqtt_url or (saved.mqtt if saved else None) or default_mqtt_url(api_url)
    if not options.register:
        if saved is None:
            raise SimulateError("give --register (with --api, --user, --password) or --from-file")
        return _Devices(list(saved.devices), api_url, mqtt_url)
    if not api_url or not options.username or options.password is None:
        raise SimulateError("--register needs --api, --user and --password")
    out = options.out or options.from_file or Path("devices.json")
    known = list(saved.devices) if saved is not None else []
    if out.exists() and out != options.from_file:
        # Never overwrite credentials: the devices already in the output file are kept
        # (and reused when this run wants them).
        try:
            existing = load_devices(out)
        except DevicesFileError as exc:
            raise SimulateError(f"{exc}; not overwriting it (choose another --out)") from None
        seen = {d.id for d in known}
        known += [d for d in existing.devices if d.id not in seen]
    result = await _register(
        options, console, api_url=api_url, mqtt_url=mqtt_url, known=known, out=out
    )
    saved_to = f"; credentials saved to [bold]{out}[/]" if result.created else ""
    console.print(
        f"registered {len(result.created)} device(s), reused {len(result.reused)}{saved_to}"
    )
    if result.conflicts:
        console.print(
            f"[yellow]{len(result.conflicts)} device(s) of seed {options.config.seed} were "
            f"registered by an earlier run[/] (e.g. {result.conflicts[0]}); their tokens are "
            "only in that run's devices.json: pass it with --from-file, or use another --seed. "
            "Skipping them."
        )
    for device_id, message in list(result.failures.items())[:5]:
        console.print(f"[red]registering {device_id} failed:[/] {message}")
    if len(result.failures) > 5:
        console.print(f"[red]… and {len(result.failures) - 5} more failures[/]")
    return _Devices(result.devices, api_url, mqtt_url, created=result.created)


async def _register(
    options: SimulateOptions,
    console: Console,
    *,
    api_url: str,
    mqtt_url: str,
    known: list[DeviceRecord],
    out: Path,
) -> Registration:
    assert options.username is not None
    assert options.password is not None
    count = options.devices if options.devices is not None else DEFAULT_DEVICES
    seed = options.config.seed
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as client:
        try:
            token = await login(client, options.username, options.password)
        except RegistrationError as exc:
            raise SimulateError(str(exc)) from None
        registration = Registration()
        with Progress(
            TextColumn("registering devices"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task("register", total=count)
            try:
                await register_devices(
                    client,
                    access_token=token,
                    count=count,
                    seed=seed,
                    profile=options.profile or "mixed",
                    known=known,
                    progress=lambda n: bar.advance(task, n),
                    into=registration,
                )
            finally:
                # Tokens are shown once: keep every one obtained, even when interrupted.
                if registration.created:
                    merged = {d.id: d for d in known} | {d.id: d for d in registration.created}
                    save_devices(
                        out,
                        DevicesFile(
                            api=api_url,
                            mqtt=mqtt_url,
                            seed=seed,
                            devices=sorted(merged.values(), key=lambda d: d.index),
                        ),
                    )
    return registration


@dataclass(frozen=True, slots=True)
class Summary:
    snapshot: FleetSnapshot
    elapsed_s: float
    interrupted: bool
    cpu_s: float = 0.0
    # Seconds from the start to each device's first accepted connection (boot order).
    first_connect_s: tuple[float, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """What `--report` writes: the counters, and when the devices first connected."""
        snap = self.snapshot
        times = sorted(self.first_connect_s)
        report: dict[str, Any] = {
            "elapsed_s": round(self.elapsed_s, 3),
            "interrupted": self.interrupted,
            "cpu_s": round(self.cpu_s, 3),
            **{k: v for k, v in asdict(snap).items() if k != "errors"},
            "errors": dict(snap.errors),
            "first_connected": len(times),
        }
        if times:
            report["first_connect_s"] = {
                "p50": round(times[len(times) // 2], 3),
                "p90": round(times[min(len(times) - 1, int(len(times) * 0.9))], 3),
                "p99": round(times[min(len(times) - 1, int(len(times) * 0.99))], 3),
                "max": round(times[-1], 3),
            }
        return report


async def run_fleet(
    fleet: Fleet, *, duration_s: float | None, console: Console, handle_signals: bool = True
) -> Summary:
    """Run `fleet` until `duration_s` passes or SIGINT/SIGTERM (when `handle_signals`;
    inside another program, e.g. `serve --demo`, its owner stops it), showing progress."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    interrupted = False

    def on_signal() -> None:
        nonlocal interrupted
        if interrupted:
            console.print("[yellow]stopping now, without waiting for acknowledgements[/]")
            fleet.abort()
        interrupted = True
        stop.set()

    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM) if handle_signals else ():
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)
    started = time.monotonic()
    cpu_started = time.process_time()
    progress = _ProgressView(console)
    try:
        async with fleet:
            deadline = None if duration_s is None else loop.time() + duration_s
            with progress:
                while not stop.is_set() and not fleet.done:
                    timeout = 1.0 if deadline is None else min(1.0, deadline - loop.time())
                    if timeout <= 0:
                        break
                    with contextlib.suppress(TimeoutError):
                        await wait_for(stop.wait(), timeout)
                    progress.update(fleet.snapshot(), time.monotonic() - started)
            console.print(
                "stopping: letting devices finish what they are sending… (Ctrl-C again to "
                "stop at once)"
            )
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
    return Summary(
        fleet.snapshot(),
        time.monotonic() - started,
        interrupted,
        cpu_s=time.process_time() - cpu_started,
        first_connect_s=tuple(fleet.first_connect_s()),
    )


class _ProgressView:
    """A live table on a terminal; a plain line every 10 s otherwise (logs, CI)."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._live: Live | None = None
        self._last: tuple[float, int, int] = (0.0, 0, 0)
        self._printed_at = 0.0

    def __enter__(self) -> _ProgressView:
        if self._console.is_terminal:
            self._live = Live(console=self._console, auto_refresh=False, transient=False)
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()

    def update(self, snap: FleetSnapshot, elapsed: float) -> None:
        then, messages, points = self._last
        span = max(elapsed - then, 1e-9)
        msg_rate = (snap.telemetry_messages - messages) / span
        point_rate = (snap.points_sent - points) / span
        self._last = (elapsed, snap.telemetry_messages, snap.points_sent)
        if self._live is not None:
            self._live.update(_progress_table(snap, elapsed, msg_rate, point_rate), refresh=True)
        elif elapsed - self._printed_at >= 10:
            self._printed_at = elapsed
            self._console.print(
                f"[{elapsed:6.0f} s] connected {snap.connected}/{snap.devices}, "
                f"offline {snap.offline}, {msg_rate:,.0f} msgs/s, {point_rate:,.0f} points/s, "
                f"sent {snap.points_sent:,} points in {snap.telemetry_messages:,} msgs, "
                f"buffered {snap.buffered_points:,}, commands answered "
                f"{snap.commands_answered:,}, state reports {snap.state_reports:,}, "
                f"errors {snap.error_count}"
            )


def _progress_table(snap: FleetSnapshot, elapsed: float, msgs: float, points: float) -> Table:
    table = Table(title=f"Sensorium simulator — {elapsed:,.0f} s", show_header=False)
    table.add_column(justify="right", style="bold")
    table.add_column()
    table.add_row("devices", f"{snap.connected:,} connected / {snap.devices:,}")
    table.add_row("offline (scheduled)", f"{snap.offline:,}")
    table.add_row("rate", f"{msgs:,.0f} msgs/s, {points:,.0f} points/s")
    table.add_row(
        "sent",
        f"{snap.points_sent:,} points in {snap.telemetry_messages:,} messages "
        f"({snap.backfill_messages:,} backfill batches)",
    )
    table.add_row("buffered", f"{snap.buffered_points:,} points waiting")
    table.add_row("control", _control(snap))
    if snap.ota.assigned:
        table.add_row("updates", _updates(snap.ota))
    table.add_row("errors", _errors(snap) or "none")
    return table


def _control(snap: FleetSnapshot) -> str:
    ignored = f" ({snap.commands_ignored:,} expired or repeated)" if snap.commands_ignored else ""
    reboots = f", {snap.reboots:,} reboots" if snap.reboots else ""
    return (
        f"{snap.commands_answered:,} commands answered{ignored}, "
        f"{snap.state_reports:,} state reports{reboots}"
    )


def _updates(ota: OtaStats) -> str:
    failures = ", ".join(f"{kind} {n:,}" for kind, n in sorted(ota.failures.items()))
    return (
        f"{ota.assigned:,} assigned, {ota.verified:,} verified, {ota.installed:,} installed, "
        f"{ota.rolled_back:,} rolled back, {ota.failed:,} failed"
        + (f" ({failures})" if failures else "")
        + (f", {ota.abandoned:,} withdrawn" if ota.abandoned else "")
        + f"; {ota.bytes / 1e6:,.1f} MB downloaded, {ota.resumes:,} resumes"
    )


def _errors(snap: FleetSnapshot) -> str:
    return ", ".join(f"{kind} {n:,}" for kind, n in sorted(snap.errors.items()))


def print_summary(summary: Summary, console: Console) -> None:
    snap = summary.snapshot
    elapsed = max(summary.elapsed_s, 1e-9)
    table = Table(title="Simulation summary", show_header=False)
    table.add_column(justify="right", style="bold")
    table.add_column()
    table.add_row(
        "ran", f"{summary.elapsed_s:,.1f} s" + (" (interrupted)" if summary.interrupted else "")
    )
    table.add_row("devices", f"{snap.devices:,} ({snap.connects:,} connections made)")
    if summary.first_connect_s:
        first = summary.first_connect_s
        table.add_row(
            "first connect",
            f"{len(first):,} of {snap.devices:,} devices, the last {max(first):,.1f} s "
            "after the start",
        )
    table.add_row(
        "telemetry",
        f"{snap.telemetry_messages:,} messages, {snap.backfill_messages:,} of them backfill "
        f"batches ({snap.telemetry_messages / elapsed:,.1f} msgs/s)",
    )
    table.add_row(
        "points sent",
        f"{snap.points_sent:,} acknowledged ({snap.points_sent / elapsed:,.1f} points/s)",
    )
    table.add_row("status", f"{snap.status_messages:,} messages")
    table.add_row("control", _control(snap))
    if snap.ota.assigned:
        table.add_row("updates", _updates(snap.ota))
    table.add_row("not sent", f"{snap.buffered_points:,} points still buffered at exit")
    if snap.dropped_points or snap.rejected_points:
        table.add_row(
            "lost",
            f"{snap.dropped_points:,} dropped (buffer full), {snap.rejected_points:,} refused",
        )
    table.add_row("errors", _errors(snap) or "none")
    table.add_row(
        "simulator CPU", f"{summary.cpu_s:,.1f} s ({summary.cpu_s / elapsed:.0%} of one core)"
    )
    console.print(table)
