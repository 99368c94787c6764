"""Alembic environment shared by every package's migrations (see `core.db.ensure_schema`).

The caller passes an open connection and the package's version table; revisions are plain
`op.*` calls, so no metadata is needed here.
"""

from alembic import context

config = context.config
connection = config.attributes["connection"]
context.configure(
    connection=connection,
    version_table=config.attributes["version_table"],
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
