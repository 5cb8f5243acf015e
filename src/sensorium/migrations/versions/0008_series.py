"""Points keyed by (series, ts): one bigint per (device, key) in a new `series` table.

A 16-byte key lets PostgreSQL fill its B-tree leaves (it splits after the new item only
for keys up to 16 bytes); (device, key_id, ts) left them half empty. Measured on the
history bench: 129 bytes a point before, about 84 after.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy import text

from sensorium.db import epoch_ms
from sensorium.telemetry.partitions import create_statements, week_of

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WEEKS = (
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
    "WHERE i.inhparent = 'points'::regclass"
)


def _points(*columns: sa.Column[object], key: Sequence[str]) -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    options: dict[str, Any] = {"postgresql_partition_by": "RANGE (ts)"} if postgresql else {}
    op.create_table(
        "points",
        *columns,
        sa.Column("ts", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint(*key, "ts", name=op.f("pk_points")),
        **options,
    )


def _swap(build: Callable[[], None], copy_sql: str) -> None:
    """Rename points (and its partitions) out of the way, build the new table with the
    same partitions, copy the rows over and drop the old table."""
    bind = op.get_bind()
    weeks: set[int] = set()
    if bind.dialect.name == "postgresql":
        for (name,) in bind.execute(text(_WEEKS)):
            week = int(name.removeprefix("points_w"))
            weeks.add(week)
            op.execute(f"ALTER TABLE {name} RENAME TO points_old_w{week}")
    op.execute("ALTER TABLE points RENAME TO points_old")
    if bind.dialect.name == "postgresql":
        op.execute("ALTER TABLE points_old RENAME CONSTRAINT pk_points TO pk_points_old")
    build()
    if bind.dialect.name == "postgresql":
        now = week_of(epoch_ms())
        for statement in create_statements(weeks | {now, now + 1, now + 2}):
            op.execute(statement)
    op.execute(copy_sql)
    op.execute("DROP TABLE points_old")


def upgrade() -> None:
    op.create_table(
        "series",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("device", sa.BigInteger(), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_series")),
        sa.UniqueConstraint("device", "key_id", name="uq_series_device_key_id"),
    )
    # Every key a device has sent has a latest value; the UNION catches any other.
    op.execute(
        "INSERT INTO series (device, key_id) "
        "SELECT device, key_id FROM latest_values "
        "UNION SELECT DISTINCT device, key_id FROM points ORDER BY 1, 2"
    )

    def build() -> None:
        _points(sa.Column("series", sa.BigInteger(), autoincrement=False, nullable=False),
                key=["series"])  # fmt: skip

    _swap(
        build,
        "INSERT INTO points (series, ts, value) SELECT s.id, p.ts, p.value FROM points_old p "
        "JOIN series s ON s.device = p.device AND s.key_id = p.key_id",
    )


def downgrade() -> None:
    def build() -> None:
        _points(
            sa.Column("device", sa.BigInteger(), autoincrement=False, nullable=False),
            sa.Column("key_id", sa.Integer(), autoincrement=False, nullable=False),
            key=["device", "key_id"],
        )

    _swap(
        build,
        "INSERT INTO points (device, key_id, ts, value) SELECT s.device, s.key_id, p.ts, "
        "p.value FROM points_old p JOIN series s ON s.id = p.series",
    )
    op.drop_table("series")
