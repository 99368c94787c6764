"""domain_tenancies table: a domain's tenancy outlives its capsules

Revision ID: fleet_0003
Revises: fleet_0002

Backfilled from the capsules registered today (the first capsule of each domain, by id, fixes
it; the registry already refused domains that mix tenancies).
"""

import sqlalchemy as sa
from alembic import op

revision = "fleet_0003"
down_revision = "fleet_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    tenancies = op.create_table(
        "domain_tenancies",
        sa.Column("domain", sa.String(64), primary_key=True),
        sa.Column("sovereign", sa.Boolean, nullable=False),
        sa.Column("jurisdiction", sa.String(64), nullable=True),
        sa.Column("fixed_by", sa.String(64), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    )
    capsules = sa.table(
        "capsules",
        sa.column("id", sa.String),
        sa.column("domain", sa.String),
        sa.column("spec", sa.JSON),
    )
    rows: dict[str, dict[str, object]] = {}
    query = sa.select(capsules.c.id, capsules.c.domain, capsules.c.spec).order_by(capsules.c.id)
    for capsule_id, domain, spec in op.get_bind().execute(query):
        if domain in rows:
            continue
        sovereign = spec.get("kind") == "sovereign"
        rows[domain] = {
            "domain": domain,
            "sovereign": sovereign,
            "jurisdiction": spec.get("jurisdiction") if sovereign else None,
            "fixed_by": capsule_id,
        }
    if rows:
        op.bulk_insert(tenancies, list(rows.values()))


def downgrade() -> None:
    op.drop_table("domain_tenancies")
