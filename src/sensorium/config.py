"""The one Settings class; nothing else in Sensorium reads os.environ."""

from __future__ import annotations

import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Values people copy from examples; production refuses them like a missing key.
_WEAK_SECRETS = frozenset({"", "change-me", "changeme", "secret", "dev", "sensorium", "default"})
MIN_SECRET_LENGTH = 32


class InsecureSettings(RuntimeError):
    """Production mode was asked to start with a secret that is missing or a default."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SENSORIUM_", env_file=".env", extra="ignore")

    mode: Literal["dev", "production"] = "dev"
    data_dir: Path = Path("./data")
    database_url: str = ""
    secret_key: str = ""

    access_token_ttl_s: int = Field(15 * 60, ge=30)
    refresh_token_ttl_s: int = Field(30 * 24 * 3600, ge=60)
    # How long a rotated device token keeps working; 0 cuts it off at once.
    device_token_grace_s: int = Field(0, ge=0)

    # argon2id cost; the defaults follow RFC 9106's second recommended option.
    argon2_time_cost: int = Field(3, ge=1)
    argon2_memory_kib: int = Field(64 * 1024, ge=8)
    argon2_parallelism: int = Field(2, ge=1)
    password_min_length: int = Field(10, ge=6)

    login_max_failures_per_user: int = Field(5, ge=1)
    login_max_failures_per_ip: int = Field(20, ge=1)
    login_failure_window_s: int = Field(15 * 60, ge=1)
    device_rate_limit: str = "50/second"
    # Commands created per device, and how many may wait for delivery or result at once.
    command_rate_limit: str = "5/second"
    command_max_pending: int = Field(100, ge=1)
    rate_limit_storage_url: str = "async+memory://"

    # Raw points older than this are rejected at ingest (and later dropped by retention).
    raw_retention_days: int = Field(90, ge=1)
    # Rollups (1 min / 1 h / 1 day summaries) are kept forever unless this is set.
    rollup_retention_days: int | None = Field(None, ge=1)
    # A device with no data for this long counts as offline when it never said its interval.
    offline_after_s: int = Field(180, ge=5)

    # The writer group-commits: it takes everything queued while the previous transaction
    # ran, up to max_batch readings. A linger makes it wait that long for more (bigger
    # batches, higher latency); 0 suits HTTP clients that wait for their commit.
    writer_max_batch: int = Field(5000, ge=1)
    writer_max_linger_ms: int = Field(0, ge=0, le=1000)
    writer_queue_size: int = Field(100_000, ge=1)
    # Transactions a writer runs at once, each for its own share of the devices
    # (PostgreSQL; SQLite always takes one).
    writer_lanes: int = Field(1, ge=1, le=8)

    # MQTT. Empty mqtt_url: `sensorium serve` starts and supervises its own Mosquitto.
    # Set it (mqtt://host:port) to use an operator's broker provisioned with
    # `sensorium broker init`; the admin and service passwords are then required.
    mqtt_url: str = ""
    mqtt_admin_username: str = "sensorium-admin"
    mqtt_admin_password: str = ""
    mqtt_service_username: str = "sensorium-service"
    mqtt_service_password: str = ""
    # What a device connecting to the embedded broker is told to use (printed, and in
    # the firmware config); the embedded broker listens here or on a free port.
    mqtt_embedded_host: str = "127.0.0.1"
    mqtt_embedded_port: int = 1883
    mosquitto_binary: str = "mosquitto"
    mosquitto_dynsec_plugin: str = ""
    # Session expiry of the worker's persistent MQTT session: messages published while it
    # is down wait this long in the broker.
    mqtt_session_expiry_s: int = Field(7 * 86400, ge=60)
    # 0: group commit only (measured: live latency p50 4-11 ms instead of 50-65 ms, no loss
    # of throughput); a linger saves CPU at low rates at the cost of latency.
    worker_max_linger_ms: int = Field(0, ge=0, le=1000)
    # The worker's writer lanes (see writer_lanes; PostgreSQL only): its batches come from
    # a whole fleet, and two transactions at once keep PostgreSQL and the worker busy
    # while the other waits (docs/benchmarks.md, "MQTT ingest", session 3).
    worker_writer_lanes: int = Field(2, ge=1, le=8)

    # Redis for the live bus (and shared rate limits) when several processes run.
    redis_url: str = ""
    # Several installations may share one Redis: each needs its own channel.
    live_channel: str = "sensorium:live"
    live_queue_capacity: int = Field(1000, ge=10)

    # Alerts. The scheduler's alert pass (duration timers, silence, notifications, live
    # events) runs every alert_tick_s.
    alert_tick_s: float = Field(1.0, gt=0, le=60)
    # Flood guard: at most this many notifications per channel per window; the rest are
    # summarised in one digest at the end of the window.
    alert_channel_max_per_window: int = Field(10, ge=1)
    alert_flood_window_s: float = Field(60.0, gt=0)
    # Failed webhooks and e-mails are retried after base, 2 x base, 4 x base, ... seconds.
    alert_retry_base_s: float = Field(5.0, gt=0)
    alert_retry_max_attempts: int = Field(8, ge=1, le=30)
    alert_send_timeout_s: float = Field(10.0, gt=0)
    # Where links in notifications point (the dashboard as users reach it).
    public_url: str = "http://127.0.0.1:8000"
    # E-mail notifications (aiosmtplib). smtp_tls: "starttls", "tls" (implicit) or "none".
    smtp_host: str = ""
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_from: str = "sensorium@localhost"
    smtp_tls: Literal["none", "starttls", "tls"] = "starttls"

    # Over-the-air updates (docs/ota.md). Images live under <data_dir>/firmware.
    ota_max_image_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # The Ed25519 private key (PEM, from `sensorium ota keygen`, readable by its owner
    # only) that signs uploaded images. Without it, every upload brings a detached
    # signature, checked against ota_public_key. Production mode needs one of the two;
    # dev mode makes a key in the data directory. Keys are never stored in the database.
    ota_signing_key: Path | None = None
    ota_public_key: Path | None = None
    # A device not UPDATED this long after its assignment went out is FAILED (timed out).
    ota_device_timeout_s: int = Field(3600, ge=10)
    # How often the scheduler advances rollouts (batches, timeouts, the abort threshold).
    ota_tick_s: float = Field(1.0, gt=0, le=60)

    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    # One log line per HTTP request; off by default (/metrics counts requests), it costs
    # ~10 % of the CPU of a small request.
    access_log: bool = False

    @model_validator(mode="after")
    def _defaults(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{self.data_dir / 'sensorium.db'}"
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def check_secure(self) -> None:
        """Raise unless the settings are fit for production; a no-op in dev mode."""
        if self.mode != "production":
            return
        key = self.secret_key
        if key.lower() in _WEAK_SECRETS or len(key) < MIN_SECRET_LENGTH:
            raise InsecureSettings(
                "SENSORIUM_SECRET_KEY must be set to a random value of at least "
                f"{MIN_SECRET_LENGTH} characters in production mode "
                '(e.g. python -c "import secrets; print(secrets.token_urlsafe(48))")'
            )
        if self.ota_signing_key is None and self.ota_public_key is None:
            raise InsecureSettings(
                "SENSORIUM_OTA_SIGNING_KEY (a key file from `sensorium ota keygen`) or "
                "SENSORIUM_OTA_PUBLIC_KEY (to accept only images signed elsewhere) must be "
                "set in production mode"
            )

    def mqtt_credentials(self) -> tuple[tuple[str, str], tuple[str, str]]:
        """(admin, service) username/password pairs; generated and kept in dev mode."""
        admin = self.mqtt_admin_password
        service = self.mqtt_service_password
        if self.mode == "production" and self.mqtt_url and not (admin and service):
            raise InsecureSettings(
                "SENSORIUM_MQTT_ADMIN_PASSWORD and SENSORIUM_MQTT_SERVICE_PASSWORD must be set "
                "in production mode"
            )
        admin = admin or self.local_secret("mqtt-admin-password", nbytes=24)
        service = service or self.local_secret("mqtt-service-password", nbytes=24)
        return (self.mqtt_admin_username, admin), (self.mqtt_service_username, service)

    def resolved_secret_key(self) -> str:
        """The signing key; in dev mode a random one is kept in the data directory."""
        self.check_secure()
        if self.secret_key:
            return self.secret_key
        self.secret_key = self.local_secret("secret_key", nbytes=48)
        return self.secret_key

    def local_secret(self, name: str, *, nbytes: int) -> str:
        """A random secret kept in the data directory (mode 0600), made on first use."""
        path = self.data_dir / name
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        value = secrets.token_urlsafe(nbytes)
        path.touch(mode=0o600)
        path.write_text(value)
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
