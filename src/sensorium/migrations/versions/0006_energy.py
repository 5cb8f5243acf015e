"""Energy: sites with their meters and tariffs, and the per-hour energy cache.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "energy_hours",
        sa.Column("device", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("key_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("hour", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("max_gap_ms", sa.BigInteger(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("vsum", sa.Float(), nullable=False),
        sa.Column("vmin", sa.Float(), nullable=False),
        sa.Column("vmax", sa.Float(), nullable=False),
        sa.Column("first_ts", sa.BigInteger(), nullable=False),
        sa.Column("first_value", sa.Float(), nullable=False),
        sa.Column("last_ts", sa.BigInteger(), nullable=False),
        sa.Column("last_value", sa.Float(), nullable=False),
        sa.Column("wh", sa.Float(), nullable=False),
        sa.Column("missing", sa.JSON(), nullable=False),
        sa.Column("estimated", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("device", "key_id", "hour", name=op.f("pk_energy_hours")),
    )
    op.create_table(
        "energy_sites",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("max_gap_s", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["users.id"],
            name=op.f("fk_energy_sites_owner_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_energy_sites")),
    )
    with op.batch_alter_table("energy_sites", schema=None) as batch_op:
        batch_op.create_index("ix_energy_sites_owner_id_name", ["owner_id", "name"], unique=False)

    op.create_table(
        "energy_site_meters",
        sa.Column("device_id", sa.String(length=12), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=8), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_energy_site_meters_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["site_id"],
            ["energy_sites.id"],
            name=op.f("fk_energy_site_meters_site_id_energy_sites"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("device_id", name=op.f("pk_energy_site_meters")),
    )
    with op.batch_alter_table("energy_site_meters", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_energy_site_meters_site_id"), ["site_id"], unique=False
        )

    op.create_table(
        "energy_tariffs",
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("price_per_kwh", sa.Float(), nullable=False),
        sa.Column("standing_charge_per_day", sa.Float(), nullable=False),
        sa.Column("co2_g_per_kwh", sa.Float(), nullable=True),
        sa.Column("windows", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["site_id"],
            ["energy_sites.id"],
            name=op.f("fk_energy_tariffs_site_id_energy_sites"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("site_id", name=op.f("pk_energy_tariffs")),
    )


def downgrade() -> None:
    op.drop_table("energy_tariffs")
    with op.batch_alter_table("energy_site_meters", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_energy_site_meters_site_id"))

    op.drop_table("energy_site_meters")
    with op.batch_alter_table("energy_sites", schema=None) as batch_op:
        batch_op.drop_index("ix_energy_sites_owner_id_name")

    op.drop_table("energy_sites")
    op.drop_table("energy_hours")
