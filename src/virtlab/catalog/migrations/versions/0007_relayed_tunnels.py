"""links: a link with an end on a libvirt host that goes through the server's relay keeps the
server's UDP port of each such end (a_relay_port, b_relay_port); a local end needs none

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("links") as batch:
        batch.add_column(sa.Column("a_relay_port", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("b_relay_port", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("links") as batch:
        batch.drop_column("b_relay_port")
        batch.drop_column("a_relay_port")
