"""labs and links; every node belongs to a lab (a `default` lab exists)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

DEFAULT_LAB_ID = "0" * 32


def upgrade() -> None:
    labs = op.create_table(
        "labs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("topology", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_labs_name", "labs", ["name"], unique=True)
    op.bulk_insert(
        labs,
        [
            {
                "id": DEFAULT_LAB_ID,
                "name": "default",
                "topology": "",
                "created_at": datetime.now(UTC),
            }
        ],
    )
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(
            sa.Column("lab_id", sa.String(32), nullable=False, server_default=DEFAULT_LAB_ID)
        )
        batch.add_column(sa.Column("kind", sa.String(63), nullable=False, server_default=""))
        batch.add_column(sa.Column("management", sa.Text(), nullable=False, server_default="{}"))
        batch.add_column(sa.Column("position_x", sa.Float(), nullable=True))
        batch.add_column(sa.Column("position_y", sa.Float(), nullable=True))
        batch.drop_index("ix_nodes_name")
        batch.create_index("ix_nodes_name", ["name"])
        batch.create_index("ix_nodes_lab_id", ["lab_id"])
        batch.create_unique_constraint("uq_nodes_lab_name", ["lab_id", "name"])
        batch.create_foreign_key("fk_nodes_lab_id", "labs", ["lab_id"], ["id"])
    op.create_table(
        "links",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("lab_id", sa.String(32), sa.ForeignKey("labs.id"), nullable=False),
        sa.Column("a_node", sa.String(32), sa.ForeignKey("nodes.id"), nullable=False),
        sa.Column("a_iface", sa.Integer(), nullable=False),
        sa.Column("b_node", sa.String(32), sa.ForeignKey("nodes.id"), nullable=False),
        sa.Column("b_iface", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("impairment", sa.Text(), nullable=False),
        sa.Column("capturing", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    for column in ("lab_id", "a_node", "b_node"):
        op.create_index(f"ix_links_{column}", "links", [column])


def downgrade() -> None:
    for column in ("lab_id", "a_node", "b_node"):
        op.drop_index(f"ix_links_{column}", table_name="links")
    op.drop_table("links")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_constraint("fk_nodes_lab_id", type_="foreignkey")
        batch.drop_constraint("uq_nodes_lab_name", type_="unique")
        batch.drop_index("ix_nodes_lab_id")
        batch.drop_index("ix_nodes_name")
        batch.create_index("ix_nodes_name", ["name"], unique=True)
        for column in ("position_y", "position_x", "management", "kind", "lab_id"):
            batch.drop_column(column)
    op.drop_index("ix_labs_name", table_name="labs")
    op.drop_table("labs")
