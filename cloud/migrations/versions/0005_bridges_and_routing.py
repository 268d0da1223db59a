"""phone bridges, the printers' BLE side, and degraded-path routing of jobs

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21 09:30:00

Bridges are rows of ``devices`` with ``kind = 'bridge'``: they share credentials, presence,
enable/disable and enrolment with device agents. ``near`` lists the printers a bridge can reach.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=8), nullable=False, server_default="device"))
        batch_op.add_column(sa.Column("near", sa.JSON(), nullable=True))
    with op.batch_alter_table("printers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("unique_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("ble_address", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("ble_name", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("ble_profile", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("public_key", sa.String(length=128), nullable=True))
        batch_op.add_column(
            sa.Column("identity", sa.String(length=16), nullable=False, server_default="preferred")
        )
        batch_op.add_column(sa.Column("latency_threshold_ms", sa.Integer(), nullable=True))
    op.execute("UPDATE printers SET unique_id = 'pf-' || name WHERE unique_id IS NULL")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("origin", sa.String(length=63), nullable=True))
        batch_op.add_column(sa.Column("route", sa.String(length=8), nullable=False, server_default="agent"))
        batch_op.add_column(sa.Column("claimed_at", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("offer_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("offer_until", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("tried_bridges", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for column in ("tried_bridges", "offer_until", "offer_id", "claimed_at", "route", "origin"):
            batch_op.drop_column(column)
    with op.batch_alter_table("printers", schema=None) as batch_op:
        for column in (
            "latency_threshold_ms",
            "identity",
            "public_key",
            "ble_profile",
            "ble_name",
            "ble_address",
            "unique_id",
        ):
            batch_op.drop_column(column)
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("near")
        batch_op.drop_column("kind")
