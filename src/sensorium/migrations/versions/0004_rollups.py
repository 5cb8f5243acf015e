"""Rollups: exact 1-minute, 1-hour and 1-day summaries of the points, kept by the writer.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rollups",
        sa.Column("device", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("key_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("grain", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("bucket", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("vmin", sa.Float(), nullable=False),
        sa.Column("vmax", sa.Float(), nullable=False),
        sa.Column("vsum", sa.Float(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("first_ts", sa.BigInteger(), nullable=False),
        sa.Column("first_value", sa.Float(), nullable=False),
        sa.Column("last_ts", sa.BigInteger(), nullable=False),
        sa.Column("last_value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("device", "key_id", "grain", "bucket", name=op.f("pk_rollups")),
    )
    # Points stored before this revision get their rollups now (same SQL on both databases).
    op.execute(BACKFILL)


BACKFILL = """
INSERT INTO rollups (device, key_id, grain, bucket, vmin, vmax, vsum, n,
                     first_ts, first_value, last_ts, last_value)
SELECT s.device, s.key_id, s.grain, s.bucket, s.vmin, s.vmax, s.vsum, s.n,
       s.first_ts,
       (SELECT p.value FROM points p
        WHERE p.device = s.device AND p.key_id = s.key_id AND p.ts = s.first_ts),
       s.last_ts,
       (SELECT p.value FROM points p
        WHERE p.device = s.device AND p.key_id = s.key_id AND p.ts = s.last_ts)
FROM (
    SELECT points.device, points.key_id, g.grain, points.ts - points.ts % g.grain AS bucket,
           min(points.value) AS vmin, max(points.value) AS vmax, sum(points.value) AS vsum,
           count(*) AS n, min(points.ts) AS first_ts, max(points.ts) AS last_ts
    FROM points
    CROSS JOIN (SELECT 60000 AS grain UNION ALL SELECT 3600000 UNION ALL SELECT 86400000) g
    GROUP BY points.device, points.key_id, g.grain, points.ts - points.ts % g.grain
) s
"""


def downgrade() -> None:
    op.drop_table("rollups")
