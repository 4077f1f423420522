"""hosts: the machines nodes run on (the local one, libvirt hosts); every node names its host;
a link between nodes on libvirt hosts keeps the UDP port of each end on its host

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

LOCAL_HOST = "local"


def upgrade() -> None:
    hosts = op.create_table(
        "hosts",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("uri", sa.String(1024), nullable=False, unique=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("facts", sa.Text(), nullable=False),
        sa.Column("drained", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.bulk_insert(
        hosts,
        [{"name": LOCAL_HOST, "uri": LOCAL_HOST, "state": "up", "facts": "{}", "drained": False,
          "created_at": datetime.now(UTC)}],
    )  # fmt: skip
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(
            sa.Column("host", sa.String(63), nullable=False, server_default=LOCAL_HOST)
        )
        batch.create_index("ix_nodes_host", ["host"])
        batch.create_foreign_key("fk_nodes_host_hosts", "hosts", ["host"], ["name"])
    with op.batch_alter_table("links") as batch:
        batch.add_column(sa.Column("a_port", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("b_port", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("links") as batch:
        batch.drop_column("b_port")
        batch.drop_column("a_port")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_constraint("fk_nodes_host_hosts", type_="foreignkey")
        batch.drop_index("ix_nodes_host")
        batch.drop_column("host")
    op.drop_table("hosts")
