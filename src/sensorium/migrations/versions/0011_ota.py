"""Over-the-air updates: firmware images, rollouts and per-device update jobs.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "firmware",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=100), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("notes", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.String(length=100), nullable=False),
        sa.Column("signed_by", sa.String(length=8), nullable=False),
        sa.Column("blob", sa.String(length=64), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name=op.f("fk_firmware_owner_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_firmware")),
        sa.UniqueConstraint("owner_id", "version", name=op.f("uq_firmware_owner_id")),
    )
    with op.batch_alter_table("firmware", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_firmware_owner_id"), ["owner_id"], unique=False)

    op.create_table(
        "ota_rollouts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("firmware_id", sa.Integer(), nullable=True),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("target", sa.JSON(), nullable=False),
        sa.Column("strategy", sa.String(length=8), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("batch_wait_s", sa.Integer(), nullable=False),
        sa.Column("abort_failure_percent", sa.Float(), nullable=False),
        sa.Column("device_timeout_s", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("pause_reason", sa.Text(), nullable=True),
        sa.Column("current_batch", sa.Integer(), nullable=False),
        sa.Column("next_batch_ms", sa.BigInteger(), nullable=True),
        sa.Column("baseline_finished", sa.Integer(), nullable=False),
        sa.Column("baseline_failed", sa.Integer(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.Column("finished_ms", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["firmware_id"],
            ["firmware.id"],
            name=op.f("fk_ota_rollouts_firmware_id_firmware"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["users.id"],
            name=op.f("fk_ota_rollouts_owner_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ota_rollouts")),
    )
    with op.batch_alter_table("ota_rollouts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_ota_rollouts_firmware_id"), ["firmware_id"], unique=False
        )
        batch_op.create_index("ix_ota_rollouts_owner_id_state", ["owner_id", "state"], unique=False)

    op.create_table(
        "ota_jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(length=12), nullable=False),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("token", sa.String(length=40), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("progress", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("from_version", sa.String(length=64), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("assigned_ms", sa.BigInteger(), nullable=True),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.Column("finished_ms", sa.BigInteger(), nullable=True),
        sa.Column("deadline_ms", sa.BigInteger(), nullable=True),
        sa.Column("history", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_ota_jobs_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["rollout_id"],
            ["ota_rollouts.id"],
            name=op.f("fk_ota_jobs_rollout_id_ota_rollouts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ota_jobs")),
        sa.UniqueConstraint("rollout_id", "device_id", name=op.f("uq_ota_jobs_rollout_id")),
        sa.UniqueConstraint("token", name=op.f("uq_ota_jobs_token")),
    )
    with op.batch_alter_table("ota_jobs", schema=None) as batch_op:
        batch_op.create_index("ix_ota_jobs_device_id_state", ["device_id", "state"], unique=False)
        batch_op.create_index(
            "ix_ota_jobs_state_deadline_ms", ["state", "deadline_ms"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("ota_jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_ota_jobs_state_deadline_ms")
        batch_op.drop_index("ix_ota_jobs_device_id_state")

    op.drop_table("ota_jobs")
    with op.batch_alter_table("ota_rollouts", schema=None) as batch_op:
        batch_op.drop_index("ix_ota_rollouts_owner_id_state")
        batch_op.drop_index(batch_op.f("ix_ota_rollouts_firmware_id"))

    op.drop_table("ota_rollouts")
    with op.batch_alter_table("firmware", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_firmware_owner_id"))

    op.drop_table("firmware")
