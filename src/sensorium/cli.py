"""The `sensorium` command: thin wrappers over the services."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
import uvicorn
from rich.console import Console
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from sensorium import __version__, migrate
from sensorium.config import InsecureSettings, Settings, get_settings
from sensorium.db import create_engine, session_factory
from sensorium.devices import service as devices
from sensorium.errors import SensoriumError
from sensorium.users import service as users
from sensorium.users.models import User
from sensorium.users.security import Auth

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


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on")] = None,
    workers: Annotated[int, typer.Option(min=1, help="API processes")] = 1,
    run_migrations: Annotated[
        bool, typer.Option("--migrate/--no-migrate", help="Migrate the database first")
    ] = True,
    demo: Annotated[bool, typer.Option(help="Create a demo login and print it")] = False,
) -> None:
    """Run Sensorium: the API and dashboard."""
    settings = _settings()
    host = host or settings.host
    if port is None:
        port = _first_free_port(host, settings.port)
        if port != settings.port:
            console.print(f"[yellow]port {settings.port} is taken; using {port}[/]")
    if run_migrations:
        migrate.upgrade(settings.database_url)
    url = f"http://{'127.0.0.1' if host in {'0.0.0.0', '::'} else host}:{port}"  # noqa: S104
    console.rule("[bold]Sensorium")
    console.print(f"API and dashboard: [bold cyan]{url}[/]   (OpenAPI: {url}/docs)")
    console.print(f"database:          {settings.database_url}")
    if demo:
        password = _ensure_demo_user(settings)
        console.print(f"demo login:        [bold]{DEMO_USER}[/] / [bold]{password}[/]")
    console.rule()
    uvicorn.run(
        "sensorium.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level,
        proxy_headers=True,
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
        device, token = await devices.register_device(
            session, owner=user, mac=mac, name=name, location=location
        )
        return device.id, token

    device_id, token = _run_in_session(settings, work)
    console.print(f"registered device [bold]{device_id}[/]")
    console.print(f"token (shown once): [bold yellow]{token}[/]")
