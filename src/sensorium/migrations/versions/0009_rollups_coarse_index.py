"""Rollups: a covering index for the coarse grains (index-only scans for long charts).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from collections.abc import Sequence

from alembic import op
from sqlalchemy import text

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_rollups_coarse",
        "rollups",
        ["device", "key_id", "grain", "bucket"],
        postgresql_include=["vmin", "vmax", "vsum", "n"],
        postgresql_where=text("grain >= 900000"),
        sqlite_where=text("grain >= 900000"),
    )


def downgrade() -> None:
    op.drop_index("ix_rollups_coarse", table_name="rollups")
