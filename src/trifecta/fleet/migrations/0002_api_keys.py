"""api_keys table

Revision ID: fleet_0002
Revises: fleet_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "fleet_0002"
down_revision = "fleet_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("admin", sa.Boolean, nullable=False),
        sa.Column("capsule_id", sa.String(64), nullable=True, index=True),
        sa.Column("capsule_created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("secret_hash", sa.String(256), nullable=False),
        sa.Column("label", sa.String(200), nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("api_keys")
