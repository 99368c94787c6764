"""context learn queue: the request's query embedding, which keys the memory learned from it

Revision ID: context_0003
Revises: context_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "context_0003"
down_revision = "context_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: rows queued before this revision (and trajectories queued without a query
    # vector) are keyed by their memory text, as before.
    op.add_column("context_learn_queue", sa.Column("query_vector", sa.LargeBinary, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("context_learn_queue") as batch:
        batch.drop_column("query_vector")
