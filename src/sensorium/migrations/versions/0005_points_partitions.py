"""PostgreSQL: points range-partitioned by week (SQLite: nothing changes).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op
from sqlalchemy import text

from sensorium.db import epoch_ms
from sensorium.telemetry.partitions import WEEK, create_statements, week_of

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    "device bigint NOT NULL, key_id integer NOT NULL, ts bigint NOT NULL, "
    "value double precision NOT NULL"
)


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE points RENAME TO points_unpartitioned")
    op.execute("ALTER TABLE points_unpartitioned RENAME CONSTRAINT pk_points TO pk_points_old")
    op.execute(
        f"CREATE TABLE points ({COLUMNS}, CONSTRAINT pk_points PRIMARY KEY (device, key_id, ts))"
        " PARTITION BY RANGE (ts)"
    )
    found = bind.execute(
        text("SELECT DISTINCT ts / :week FROM points_unpartitioned"), {"week": WEEK}
    )
    weeks = {int(w) for (w,) in found}
    now = week_of(epoch_ms())
    weeks |= {now, now + 1, now + 2}
    for statement in create_statements(weeks):
        op.execute(statement)
    op.execute("INSERT INTO points SELECT device, key_id, ts, value FROM points_unpartitioned")
    op.execute("DROP TABLE points_unpartitioned")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE points RENAME TO points_partitioned")
    op.execute("ALTER TABLE points_partitioned RENAME CONSTRAINT pk_points TO pk_points_old")
    op.execute(
        f"CREATE TABLE points ({COLUMNS}, CONSTRAINT pk_points PRIMARY KEY (device, key_id, ts))"
    )
    op.execute("INSERT INTO points SELECT device, key_id, ts, value FROM points_partitioned")
    op.execute("DROP TABLE points_partitioned")
