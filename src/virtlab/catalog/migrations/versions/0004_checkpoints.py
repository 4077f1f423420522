"""checkpoints: a node's saved machines (internal snapshots of its disk), alone or by lab

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "node_id",
            sa.String(32),
            sa.ForeignKey("nodes.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "lab_id", sa.String(32), sa.ForeignKey("labs.id", ondelete="CASCADE"), nullable=True
        ),
        sa.Column("tag", sa.String(63), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("vm_state_size", sa.BigInteger(), nullable=False),
        sa.Column("save_seconds", sa.Float(), nullable=False),
        sa.Column("ram_mb", sa.Integer(), nullable=False),
        sa.Column("qemu_version", sa.String(32), nullable=False),
        sa.Column("machine", sa.String(63), nullable=False),
        sa.Column("accel", sa.String(8), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.UniqueConstraint("node_id", "tag", name="uq_checkpoints_node_tag"),
    )
    op.create_index("ix_checkpoints_node_id", "checkpoints", ["node_id"])
    op.create_index("ix_checkpoints_lab_id", "checkpoints", ["lab_id"])


def downgrade() -> None:
    op.drop_index("ix_checkpoints_lab_id", table_name="checkpoints")
    op.drop_index("ix_checkpoints_node_id", table_name="checkpoints")
    op.drop_table("checkpoints")
