"""requests and charges

Revision ID: orchestrator_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "orchestrator_0001"
down_revision = None
branch_labels = ("orchestrator",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "requests",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("capsule_id", sa.String(64), nullable=False, index=True),
        sa.Column("run_id", sa.String(40), nullable=True, index=True),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("prompt_hash", sa.String(32), nullable=False),
        sa.Column("answer", sa.Text, nullable=True),
        sa.Column("route", sa.String(32), nullable=False),
        sa.Column("path", sa.JSON, nullable=False),
        sa.Column("environment", sa.String(64), nullable=True),
        sa.Column("verified", sa.Boolean, nullable=True),
        sa.Column("feedback", sa.Boolean, nullable=True),
        sa.Column("difficulty", sa.Integer, nullable=True),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("tokens", sa.Integer, nullable=False),
        sa.Column("cost_usd", sa.Float, nullable=False),
        sa.Column("detail", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    )
    op.create_index("ix_requests_capsule_prompt", "requests", ["capsule_id", "prompt_hash"])
    op.create_table(
        "charges",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "request_id",
            sa.String(40),
            sa.ForeignKey("requests.id", ondelete="CASCADE"),
            index=True,
        ),
        sa.Column("capsule_id", sa.String(64), nullable=False, index=True),
        sa.Column("capsule_kind", sa.String(64), nullable=False),
        sa.Column("environment", sa.String(64), nullable=False, index=True),
        sa.Column("layer", sa.String(32), nullable=False, index=True),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("accelerator", sa.String(32), nullable=True),
        sa.Column("accelerator_seconds", sa.Float, nullable=False),
        sa.Column("usd_per_hour", sa.Float, nullable=False),
        sa.Column("usd", sa.Float, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("charges")
    op.drop_table("requests")
