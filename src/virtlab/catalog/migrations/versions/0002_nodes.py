"""nodes: QEMU machines on overlays of catalog images

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("image", sa.String(255), nullable=False),
        sa.Column("disk_size_mb", sa.BigInteger(), nullable=True),
        sa.Column("cpus", sa.Integer(), nullable=False),
        sa.Column("ram_mb", sa.Integer(), nullable=False),
        sa.Column("disk_bus", sa.String(16), nullable=False),
        sa.Column("nics", sa.Integer(), nullable=False),
        sa.Column("nic_model", sa.String(32), nullable=False),
        sa.Column("serial", sa.Boolean(), nullable=False),
        sa.Column("vnc", sa.Boolean(), nullable=False),
        sa.Column("extra_args", sa.Text(), nullable=False),
        sa.Column("telnet_port", sa.Integer(), nullable=True),
        sa.Column("vnc_port", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("telnet_port"),
        sa.UniqueConstraint("vnc_port"),
    )
    op.create_index("ix_nodes_name", "nodes", ["name"], unique=True)
    op.create_index("ix_nodes_image", "nodes", ["image"])


def downgrade() -> None:
    op.drop_index("ix_nodes_image", table_name="nodes")
    op.drop_index("ix_nodes_name", table_name="nodes")
    op.drop_table("nodes")
