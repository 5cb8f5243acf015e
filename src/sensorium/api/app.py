"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from sensorium import __version__
from sensorium.aio import tune_collector
from sensorium.alerts.router import router as alerts_router
from sensorium.api.context import AppContext
from sensorium.api.deps import ContextDep
from sensorium.api.errors import error_response, error_responses, install_error_handlers
from sensorium.api.metrics import MetricsMiddleware
from sensorium.broker.endpoint import parse_mqtt_url
from sensorium.broker.service import Outbox
from sensorium.config import Settings, get_settings
from sensorium.control.delivery import ControlPlane, MqttDownlink
from sensorium.control.router import router as control_router
from sensorium.db import create_engine, session_factory
from sensorium.devices.router import router as devices_router
from sensorium.devices.tokens import DeviceTokenCache
from sensorium.energy.router import router as energy_router
from sensorium.live.bus import make_bus
from sensorium.live.router import router as live_router
from sensorium.ota.router import router as ota_router
from sensorium.ota.signing import OtaKeys
from sensorium.ratelimit import RateLimiter, make_storage
from sensorium.telemetry.router import csv_router as telemetry_csv_router
from sensorium.telemetry.router import fleet_csv_router
from sensorium.telemetry.router import router as telemetry_router
from sensorium.telemetry.writer import BatchWriter
from sensorium.users.router import router as users_router
from sensorium.users.security import Auth
from sensorium.web.router import HERE as WEB_DIR
from sensorium.web.router import LoginRequired
from sensorium.web.router import router as web_router
from sensorium.worker.runtime import (
    BrokerAddress,
    EmbeddedBroker,
    MqttServices,
    broker_address,
    service_endpoint,
)
from sensorium.worker.scheduler import Scheduler

API_PREFIX = "/api/v1"


def build_context(settings: Settings) -> AppContext:
    settings.check_secure()
    engine = create_engine(settings.database_url)
    sessions = session_factory(engine)
    storage = make_storage(settings.rate_limit_storage_url)
    window = settings.login_failure_window_s
    bus = make_bus(settings)
    return AppContext(
        settings=settings,
        engine=engine,
        sessions=sessions,
        auth=Auth.from_settings(settings),
        writer=BatchWriter.from_settings(
            sessions, settings, linger_ms=settings.writer_max_linger_ms, bus=bus, transport="http"
        ),
        bus=bus,
        device_tokens=DeviceTokenCache(),
        login_user_limiter=RateLimiter.from_spec(
            storage, f"{settings.login_max_failures_per_user}/{window} seconds", "login-user"
        ),
        login_ip_limiter=RateLimiter.from_spec(
            storage, f"{settings.login_max_failures_per_ip}/{window} seconds", "login-ip"
        ),
        device_limiter=RateLimiter.from_spec(storage, settings.device_rate_limit, "device"),
        command_limiter=RateLimiter.from_spec(storage, settings.command_rate_limit, "commands"),
        control=ControlPlane(sessions, bus),
        ota_keys=OtaKeys.from_settings(settings),
    )


def create_app(
    settings: Settings | None = None,
    *,
    broker: BrokerAddress | None = None,
    embedded: EmbeddedBroker | None = None,
) -> FastAPI:
    """The API. With `broker`, this process also runs MQTT ingest, provisioning and the
    scheduler (`sensorium serve`); with only SENSORIUM_MQTT_URL set, it records broker
    changes for the worker to apply (`sensorium api` next to `sensorium worker`)."""
    ctx = build_context(settings or get_settings())
    mqtt: MqttServices | None = None
    downlink: MqttDownlink | None = None
    # Without a worker (no MQTT at all), this process runs the periodic jobs itself.
    scheduler: Scheduler | None = None
    if broker is not None:
        downlink = MqttDownlink(service_endpoint(ctx.settings, broker))
        ctx.control.downlink = downlink
        mqtt = MqttServices(
            ctx.settings, ctx.sessions, broker, bus=ctx.bus, control=ctx.control, embedded=embedded
        )
        ctx.broker, ctx.provisioner = mqtt.outbox, mqtt.provisioner
        ctx.mqtt_port = broker.port
    elif ctx.settings.mqtt_url:
        ctx.broker = Outbox(ctx.settings.resolved_secret_key())
        ctx.mqtt_port = parse_mqtt_url(ctx.settings.mqtt_url)[1]
        downlink = MqttDownlink(service_endpoint(ctx.settings, broker_address(ctx.settings)))
        ctx.control.downlink = downlink
    else:
        scheduler = Scheduler.from_settings(
            ctx.sessions, ctx.settings, bus=ctx.bus, control=ctx.control
        )

    running = False

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # A second server over the same app would start its background tasks again and
        # orphan the first ones, which then outlive the shutdown.
        nonlocal running
        if running:
            raise RuntimeError("this app is already running; create another one")
        running = True
        await ctx.bus.start()
        await ctx.writer.start()
        tune_collector()
        if downlink is not None:
            await downlink.start()
        if mqtt is not None:
            await mqtt.start()
        if scheduler is not None:
            await scheduler.start()
        try:
            yield
        finally:
            if scheduler is not None:
                await scheduler.stop()
            if mqtt is not None:
                await mqtt.stop()
            if downlink is not None:
                await downlink.stop()
            # Stopped here, not only by whoever started it: uvicorn re-raises SIGTERM once
            # the app has shut down, which ends the process before code after serve() runs.
            if embedded is not None:
                await embedded.stop()
            await ctx.writer.stop()
            await ctx.bus.stop()
            await ctx.engine.dispose()
            running = False

    app = FastAPI(
        title="Sensorium",
        version=__version__,
        description=(
            "Self-hosted IoT platform for ESP32 sensor fleets. Users authenticate with a "
            "Bearer access token from `/api/v1/auth/login`; devices with their device token. "
            'Errors are always `{"error": {"code", "message", "field"}}`.'
        ),
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    # The MQTT side of this process (ingest, provisioning), when it has one.
    app.state.mqtt = mqtt
    app.add_middleware(MetricsMiddleware)
    install_error_handlers(app)

    # Every API route documents the one error shape (and replaces FastAPI's default 422).
    documented = error_responses(401, 403, 404, 409, 412, 413, 415, 422, 429)
    # Included straight into the app: through an intermediate router, FastAPI builds every
    # route's validators once at include time and again for the first request.
    for router in (
        users_router,
        devices_router,
        control_router,
        telemetry_router,
        telemetry_csv_router,
        fleet_csv_router,
        live_router,
        energy_router,
        alerts_router,
        ota_router,
    ):
        app.include_router(router, prefix=API_PREFIX, responses=documented)
    app.include_router(_ops_router())
    app.include_router(web_router)
    app.mount("/static", StaticFiles(directory=WEB_DIR / "static"), name="static")
    app.add_exception_handler(LoginRequired, _to_login)
    return app


async def _to_login(request: Request, _exc: Exception) -> Response:
    return RedirectResponse(f"/login?next={request.url.path}", status_code=303)


def _ops_router() -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/healthz")
    async def healthz(ctx: ContextDep) -> Response:
        """200 when the database answers, 503 otherwise."""
        try:
            async with ctx.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:  # any driver error means "not healthy"
            return error_response(503, "database_unavailable", f"database: {type(exc).__name__}")
        return Response(b'{"status":"ok","database":"ok"}', media_type="application/json")

    @router.get("/metrics")
    async def metrics() -> Response:
        """Prometheus metrics."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router
