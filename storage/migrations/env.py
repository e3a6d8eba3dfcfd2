"""Alembic's entry point: migrations run on the connection storage.db.upgrade hands over.

Pawtrait never runs Alembic's command line against a URL of its own: every process opens
the database through storage.db, which migrates it once, under a lock, on its first use.
"""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    # SQLite cannot ALTER most things in place; batch mode copies the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
