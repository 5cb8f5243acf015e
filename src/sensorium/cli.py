"""The `sensorium` command: thin wrappers over the services."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import uvicorn
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from rich.console import Console
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from sensorium import __version__, migrate
from sensorium.aio import cancel_and_wait, tune_collector
from sensorium.api.app import create_app
from sensorium.broker import admin as dynsec_admin
from sensorium.broker.endpoint import parse_mqtt_url
from sensorium.broker.mosquitto import BrokerUnavailable
from sensorium.broker.service import Outbox, SyncReport, reconcile
from sensorium.config import InsecureSettings, Settings, get_settings
from sensorium.db import create_engine, session_factory
from sensorium.devices import service as devices
from sensorium.errors import SensoriumError
from sensorium.live.bus import make_bus
from sensorium.ota.signing import (
    DEV_KEY_NAME,
    KeyFileError,
    OtaKeys,
    generate_key_files,
    load_public_key,
    public_path,
)
from sensorium.protocol import InvalidMac, normalize_mac
from sensorium.users import service as users
from sensorium.users.models import User
from sensorium.users.security import Auth
from sensorium.worker.runtime import (
    BrokerAddress,
    EmbeddedBroker,
    MqttServices,
    broker_address,
    broker_files,
)

app = typer.Typer(
    help="Sensorium: a self-hosted IoT platform for ESP32 sensor fleets.", no_args_is_help=True
)
user_app = typer.Typer(help="Manage user accounts.", no_args_is_help=True)
device_app = typer.Typer(help="Manage devices.", no_args_is_help=True)
app.add_typer(user_app, name="user")
app.add_typer(device_app, name="device")

console = Console()
err = Console(stderr=True)
T = TypeVar("T")

DEMO_USER = "demo"


def _settings() -> Settings:
    settings = get_settings()
    try:
        settings.check_secure()
    except InsecureSettings as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    return settings


def _run_in_session(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    async def runner() -> T:
        engine = create_engine(settings.database_url)
        try:
            async with session_factory(engine)() as session, session.begin():
                return await work(session)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(runner())
    except SensoriumError as exc:
        err.print(f"[red]error:[/] {exc.message}")
        raise typer.Exit(1) from None


@app.command()
def version() -> None:
    """Print the version."""
    console.print(__version__)


@app.command("migrate")
def migrate_cmd() -> None:
    """Bring the database schema up to date."""
    settings = _settings()
    migrate.upgrade(settings.database_url)
    console.print("[green]database is up to date[/]")


def _ensure_demo_user(settings: Settings) -> str:
    # A random password per data directory rather than a well-known default.
    password = settings.local_secret("demo-password", nbytes=12)

    async def work(session: AsyncSession) -> None:
        if await session.scalar(select(User.id).where(User.username == DEMO_USER)) is None:
            await users.register_user(
                session, auth=Auth.from_settings(settings), username=DEMO_USER, password=password
            )

    _run_in_session(settings, work)
    return password


def _first_free_port(host: str, start: int) -> int:
    """`start` or the next port after it that nobody listens on."""
    for port in range(start, start + 100):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise typer.BadParameter(f"no free port in {start}..{start + 99}")


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop where it is installed (as uvicorn would), else on asyncio."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def _setup_logging(settings: Settings) -> None:
    # uvicorn configures its own loggers; this gives Sensorium's the same look.
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)-9s %(name)s: %(message)s"
    )


def _banner(settings: Settings, host: str, port: int) -> str:
    url = f"http://{'127.0.0.1' if host in {'0.0.0.0', '::'} else host}:{port}"  # noqa: S104
    console.rule("[bold]Sensorium")
    console.print(f"API and dashboard: [bold cyan]{url}[/]   (OpenAPI: {url}/docs)")
    console.print(f"database:          {settings.database_url}")
    return url


def _uvicorn_config(app: Any, settings: Settings, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=settings.log_level,
        proxy_headers=True,
        access_log=settings.access_log,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )


# Long-polling devices and live browser streams would otherwise hold a stop for up to a
# minute: they get this long to finish, then are cut (they reconnect to the next server).
SHUTDOWN_GRACE_S = 5


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on")] = None,
    run_migrations: Annotated[
        bool, typer.Option("--migrate/--no-migrate", help="Migrate the database first")
    ] = True,
    mqtt: Annotated[
        bool, typer.Option("--mqtt/--no-mqtt", help="Run MQTT (a supervised Mosquitto child)")
    ] = True,
    demo: Annotated[bool, typer.Option(help="Create a demo login and print it")] = False,
    fleet: Annotated[
        int, typer.Option(min=0, help="With --demo: simulated devices sending data (MQTT)")
    ] = 12,
) -> None:
    """Run all of Sensorium in one process: API, dashboard, MQTT ingest, a Mosquitto child."""
    settings = _settings()
    host = host or settings.host
    if port is None:
        port = _first_free_port(host, settings.port)
        if port != settings.port:
            console.print(f"[yellow]port {settings.port} is taken; using {port}[/]")
    if run_migrations:
        migrate.upgrade(settings.database_url)
    _banner(settings, host, port)
    _setup_logging(settings)
    password = _ensure_demo_user(settings) if demo else None

    async def run() -> None:
        embedded: EmbeddedBroker | None = None
        address: BrokerAddress | None = None
        if mqtt:
            if settings.mqtt_url:
                address = broker_address(settings)
                where = "external"
            else:
                embedded = EmbeddedBroker(settings)
                address = await embedded.start()
                where = "supervised Mosquitto child"
            console.print(
                f"MQTT broker:       [bold]mqtt://{address.host}:{address.port}[/] ({where})"
            )
        if password is not None:
            console.print(f"demo login:        [bold]{DEMO_USER}[/] / [bold]{password}[/]")
        console.rule()
        demo_fleet: asyncio.Task[None] | None = None
        try:
            server = uvicorn.Server(
                _uvicorn_config(
                    create_app(settings, broker=address, embedded=embedded), settings, host, port
                )
            )
            if password is not None and address is not None and fleet:
                demo_fleet = asyncio.create_task(
                    _demo_fleet(server, settings, f"http://{host}:{port}", address, password, fleet)
                )
            await server.serve()
        finally:
            await cancel_and_wait(demo_fleet)
            if embedded is not None:
                await embedded.stop()

    try:
        _run_loop(run())
    except BrokerUnavailable as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None


async def _demo_fleet(
    server: uvicorn.Server,
    settings: Settings,
    api_url: str,
    broker: BrokerAddress,
    password: str,
    count: int,
) -> None:
    """A small mixed fleet for the demo login, so the dashboard is alive on first open,
    its energy meters with controls (relay, blink) that the simulated devices obey.
    Registered once; later runs reuse data/demo-devices.json."""
    from sensorium.simulator.fleet import FleetConfig
    from sensorium.simulator.runner import SimulateOptions, local_utc_offset_s, simulate

    while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
        await asyncio.sleep(0.1)
    devices_file = settings.data_dir / "demo-devices.json"
    reuse = devices_file.exists()
    options = SimulateOptions(
        devices=count,
        transport="mqtt",
        profile="mixed",
        config=FleetConfig(interval_s=5.0, seed=7, utc_offset_s=local_utc_offset_s()),
        register=not reuse,
        api_url=api_url,
        mqtt_url=f"mqtt://{broker.host}:{broker.port}",
        username=DEMO_USER,
        password=password,
        from_file=devices_file if reuse else None,
        out=devices_file,
        handle_signals=False,  # the server owns SIGINT/SIGTERM and stops the fleet
        # A relay switch and a "Blink" button on the energy meters' pages (kept if the
        # user changed them).
        declare_controls=True,
    )
    quiet = Console(file=io.StringIO())
    try:
        await simulate(options, quiet)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        err.print(f"[yellow]demo fleet stopped:[/] {exc}")


@app.command()
def api(
    host: Annotated[str | None, typer.Option(help="Address to listen on")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on")] = None,
    workers: Annotated[int, typer.Option(min=1, help="API processes")] = 1,
) -> None:
    """Run only the API (production: next to `sensorium worker` and a broker)."""
    settings = _settings()
    host = host or settings.host
    port = port or settings.port
    _banner(settings, host, port)
    console.rule()
    uvicorn.run(
        "sensorium.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level,
        proxy_headers=True,
        access_log=settings.access_log,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )


@app.command()
def worker(
    name: Annotated[
        str, typer.Option(help="Stable worker name: its persistent MQTT session is kept by it")
    ] = socket.gethostname(),
    leave: Annotated[
        bool,
        typer.Option(
            help="On exit, leave the shared subscription and end the session (scale down)"
        ),
    ] = False,
    shared: Annotated[
        bool,
        typer.Option(
            help="Share the uplink with other workers ($share/sensorium/...). --no-shared for a "
            "single worker: it then also keeps what devices send right after a broker restart"
        ),
    ] = True,
) -> None:
    """Run MQTT ingest, broker provisioning and the scheduler (needs SENSORIUM_MQTT_URL)."""
    settings = _settings()
    if not settings.mqtt_url:
        err.print("[red]error:[/] set SENSORIUM_MQTT_URL (e.g. mqtt://127.0.0.1:1883)")
        raise typer.Exit(2)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )

    async def run() -> None:
        engine = create_engine(settings.database_url)
        # Live events (readings, status, command results) reach the API processes'
        # browsers through Redis; without SENSORIUM_REDIS_URL they stay in this process.
        bus = make_bus(settings)
        await bus.start()
        services = MqttServices(
            settings,
            session_factory(engine),
            broker_address(settings),
            client_id=f"sensorium-worker-{name}",
            shared=shared,
            bus=bus,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await services.start()
            tune_collector()  # why, with the measurements: sensorium/aio.py
            console.print(f"worker [bold]{name}[/] ingesting from {settings.mqtt_url}")
            await stop.wait()
        finally:
            await services.stop(leave_group=leave)
            await bus.stop()
            await engine.dispose()

    _run_loop(run())


broker_app = typer.Typer(help="Manage the MQTT broker's accounts.", no_args_is_help=True)
app.add_typer(broker_app, name="broker")


@broker_app.command("init")
def broker_init(
    directory: Annotated[Path, typer.Argument(help="Where to write the files")],
    port: Annotated[int, typer.Option(help="Listener port")] = 1883,
    listen: Annotated[str, typer.Option(help="Listener address")] = "0.0.0.0",  # noqa: S104
) -> None:
    """Write a Mosquitto config and Dynamic Security file for your own broker."""
    settings = _settings()
    files = broker_files(settings, directory, host=listen, port=port)
    console.print(f"wrote {files.config} and {files.dynsec}")
    console.print(f"start it: [bold]mosquitto -c {files.config}[/]; then point Sensorium at it:")
    console.print(f"  SENSORIUM_MQTT_URL=mqtt://<this host>:{port}")
    console.print(
        f"  SENSORIUM_MQTT_ADMIN_PASSWORD=<from {settings.data_dir}/mqtt-admin-password or yours>"
    )
    console.print("  SENSORIUM_MQTT_SERVICE_PASSWORD=<likewise mqtt-service-password>")


@broker_app.command("sync")
def broker_sync() -> None:
    """Make the broker's accounts match the database (idempotent)."""
    settings = _settings()
    if not settings.mqtt_url:
        err.print("[red]error:[/] set SENSORIUM_MQTT_URL to the broker to synchronise")
        raise typer.Exit(2)
    host, port = parse_mqtt_url(settings.mqtt_url)
    (admin_user, admin_pw), _ = settings.mqtt_credentials()

    async def run() -> SyncReport:
        engine = create_engine(settings.database_url)
        try:
            async with dynsec_admin.connect(
                host, port, username=admin_user, password=admin_pw
            ) as admin:
                return await reconcile(
                    session_factory(engine), admin, Outbox(settings.resolved_secret_key())
                )
        finally:
            await engine.dispose()

    report = asyncio.run(run())
    console.print(f"applied {report.delivered} queued change(s)")
    for label, ids in (
        ("deleted (no such device)", report.deleted),
        ("disabled (no valid token)", report.disabled),
        ("missing on the broker — rotate their tokens", report.missing),
    ):
        if ids:
            console.print(f"{label}: {', '.join(ids)}")
    console.print(
        "[green]broker is in sync[/]" if not report.missing else "[yellow]done, see above[/]"
    )


ota_app = typer.Typer(help="Over-the-air updates: the image signing key.", no_args_is_help=True)
app.add_typer(ota_app, name="ota")


@ota_app.command("keygen")
def ota_keygen(
    out: Annotated[
        Path | None,
        typer.Option(help="Private key file to create (default: <data dir>/ota-signing-key.pem)"),
    ] = None,
) -> None:
    """Create the Ed25519 key that signs firmware images (mode 0600, never overwritten)
    and print the public key to flash into devices."""
    # No check_secure: in production this is how the required key comes to exist.
    settings = get_settings()
    path = out if out is not None else settings.data_dir / DEV_KEY_NAME
    try:
        public = generate_key_files(path)
    except FileExistsError:
        err.print(f"[red]error:[/] {path} exists; a new key would orphan every flashed device")
        raise typer.Exit(1) from None
    keys = OtaKeys(public)
    # soft_wrap: paths and the key stay on one line, to be copied as they are.
    console.print(
        f"wrote {path} (private, mode 0600) and {public_path(path)} (public)", soft_wrap=True
    )
    console.print(f"public key for the firmware: [bold]{keys.public_key_b64}[/]", soft_wrap=True)
    console.print(
        f"configure the server: SENSORIUM_OTA_SIGNING_KEY={path.resolve()}", soft_wrap=True
    )


@user_app.command("create")
def user_create(
    username: str,
    password: Annotated[str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True)],
) -> None:
    """Create a user account."""
    settings = _settings()

    async def work(session: AsyncSession) -> User:
        return await users.register_user(
            session, auth=Auth.from_settings(settings), username=username, password=password
        )

    user = _run_in_session(settings, work)
    console.print(f"created user [bold]{user.username}[/] (id {user.id})")


@device_app.command("create")
def device_create(
    owner: Annotated[str, typer.Option(help="Username of the owner")],
    mac: Annotated[str, typer.Option(help="Wi-Fi MAC, e.g. A4:CF:12:B3:C4:D5")],
    name: Annotated[str, typer.Option(help="Display name")],
    location: Annotated[str, typer.Option(help="Where it is")] = "",
) -> None:
    """Register a device and print its token (shown only this once)."""
    settings = _settings()

    async def work(session: AsyncSession) -> tuple[str, str]:
        user = await session.scalar(
            select(User).where(User.username == users.normalize_username(owner))
        )
        if user is None:
            raise SensoriumError(f"no user named {owner!r}")
        # Give the device its MQTT account too when this installation runs a broker.
        uses_mqtt = settings.mqtt_url or (settings.data_dir / "mosquitto").is_dir()
        outbox = Outbox(settings.resolved_secret_key()) if uses_mqtt else None
        device, token = await devices.register_device(
            session, owner=user, mac=mac, name=name, location=location, broker=outbox
        )
        return device.id, token

    device_id, token = _run_in_session(settings, work)
    console.print(f"registered device [bold]{device_id}[/]")
    console.print(f"token (shown once): [bold yellow]{token}[/]")


def _public_key_text(value: str) -> str:
    """The simulator's OTA key as base64 of the raw 32 bytes: given so, or read from a
    file (a PEM, or that base64, e.g. the `.pub` next to the signing key)."""
    path = Path(value).expanduser()
    if not path.is_file():
        return value
    return base64.b64encode(
        load_public_key(path).public_bytes(Encoding.Raw, PublicFormat.Raw)
    ).decode()


@app.command()
def simulate(
    devices: Annotated[
        int | None,
        typer.Option(
            "--devices",
            "-n",
            min=1,
            help="How many devices: to register (default 10), or the first N of --from-file",
        ),
    ] = None,
    interval: Annotated[
        float, typer.Option(min=0.05, help="Seconds between two readings of a device")
    ] = 5.0,
    transport: Annotated[str, typer.Option(help="How the devices send: mqtt or http")] = "mqtt",
    profile: Annotated[
        str | None,
        typer.Option(
            help="What they measure: climate, energy or mixed [default: mixed, or as in "
            "--from-file]"
        ),
    ] = None,
    register: Annotated[
        bool, typer.Option(help="Register the devices through the API first (--api, --user)")
    ] = False,
    api: Annotated[
        str | None, typer.Option(help="API base URL, e.g. http://127.0.0.1:8000")
    ] = None,
    mqtt_url: Annotated[
        str | None,
        typer.Option("--mqtt", help="Broker, e.g. mqtt://127.0.0.1:1883 [default: API host]"),
    ] = None,
    user: Annotated[str | None, typer.Option(help="Account that will own the devices")] = None,
    password: Annotated[str | None, typer.Option(help="Its password (prompted if missing)")] = None,
    from_file: Annotated[
        Path | None, typer.Option(help="devices.json of an earlier --register run")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Where --register saves credentials [default: --from-file or devices.json]"
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of MACs, signals and outages")] = 1,
    duration: Annotated[
        float | None, typer.Option(min=0.1, help="Stop after this many seconds [default: Ctrl-C]")
    ] = None,
    offline_ratio: Annotated[
        float, typer.Option(min=0.0, max=0.95, help="Share of time devices spend offline")
    ] = 0.0,
    outage: Annotated[float, typer.Option(min=0.1, help="Mean length of an outage (s)")] = 30.0,
    status_every: Annotated[
        float, typer.Option(min=0.1, help="Seconds between status heartbeats")
    ] = 30.0,
    ramp: Annotated[float, typer.Option(min=0.1, help="Devices booting per second")] = 200.0,
    downlink: Annotated[
        bool,
        typer.Option(
            help="Obey desired state and answer commands (--no-downlink: only send, as in "
            "an ingest benchmark)"
        ),
    ] = True,
    poll_wait: Annotated[
        int, typer.Option(min=1, max=60, help="HTTP devices: long-poll wait (s)")
    ] = 30,
    controls: Annotated[
        bool,
        typer.Option(help="With --register: declare Relay/Blink controls for energy meters"),
    ] = False,
    report: Annotated[
        Path | None,
        typer.Option(help="Write the final summary as JSON to this file (for scripts)"),
    ] = None,
    ota: Annotated[
        bool, typer.Option(help="Follow firmware update rollouts (with --downlink)")
    ] = True,
    ota_public_key: Annotated[
        str | None,
        typer.Option(
            help="Key images must be signed with: base64, or a key file [default: the "
            "server's, fetched with --user]"
        ),
    ] = None,
    ota_concurrency: Annotated[
        int, typer.Option(min=1, help="Image downloads at once, over the whole fleet")
    ] = 32,
    ota_fail_rate: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Share of updates whose flash write fails"),
    ] = 0.0,
    ota_rollback_rate: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Share of updates whose new version does not boot (back on the old one)",
        ),
    ] = 0.0,
    ota_rollback: Annotated[
        list[str] | None,
        typer.Option(help="Device (MAC) on which new versions never boot; repeatable"),
    ] = None,
) -> None:
    """Run simulated devices: realistic readings, status, last will, outages and backfill;
    they obey desired state, answer commands and install firmware updates like the
    firmware."""
    from sensorium.simulator.fleet import TRANSPORTS, FleetConfig
    from sensorium.simulator.ota import OtaConfig
    from sensorium.simulator.runner import (
        PROFILE_CHOICES,
        SimulateError,
        SimulateOptions,
        local_utc_offset_s,
    )
    from sensorium.simulator.runner import simulate as run_simulation

    if transport not in TRANSPORTS:
        raise typer.BadParameter("must be mqtt or http", param_hint="--transport")
    if profile is not None and profile not in PROFILE_CHOICES:
        raise typer.BadParameter("must be climate, energy or mixed", param_hint="--profile")
    if register and password is None:
        password = typer.prompt("password", hide_input=True)
    try:
        rollback = frozenset(normalize_mac(mac) for mac in ota_rollback or ())
    except InvalidMac as exc:
        raise typer.BadParameter(str(exc), param_hint="--ota-rollback") from None
    try:
        ota_config = OtaConfig(
            enabled=ota,
            public_key=_public_key_text(ota_public_key) if ota_public_key else None,
            concurrency=ota_concurrency,
            fail_rate=ota_fail_rate,
            rollback_rate=ota_rollback_rate,
            rollback_devices=rollback,
        )
    except (ValueError, KeyFileError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--ota-public-key") from None
    options = SimulateOptions(
        devices=devices,
        transport="http" if transport == "http" else "mqtt",
        profile=profile,
        config=FleetConfig(
            interval_s=interval,
            status_every_s=status_every,
            offline_ratio=offline_ratio,
            outage_s=outage,
            ramp_per_s=ramp,
            seed=seed,
            utc_offset_s=local_utc_offset_s(),
            downlink=downlink,
            poll_wait_s=poll_wait,
            ota=ota_config,
        ),
        duration_s=duration,
        declare_controls=controls,
        register=register,
        api_url=api,
        mqtt_url=mqtt_url,
        username=user,
        password=password,
        from_file=from_file,
        out=out,
        report=report,
    )

    async def main() -> None:
        await run_simulation(options, console)

    try:
        _run_loop(main())
    except SimulateError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        # Ctrl-C before the fleet ran (registering): what was registered is saved.
        raise typer.Exit(130) from None
