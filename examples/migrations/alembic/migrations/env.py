"""Alembic's environment: what ``alembic init migrations`` wrote, with the marked part changed.

Alembic runs this file for every command; it opens its own connection and
its own transaction, outside any request and outside wsgi_sqla's unit of work.
"""

# -- the top of env.py, changed: the application's metadata and database --
from logging.config import fileConfig

from alembic import context
from myapp.models import DATABASE_URL, Base
from myapp.web import keys
from sqlalchemy import engine_from_config, pool

from wsgi_sqla.celery import task_runs

config = context.config

if config.config_file_name is not None:
    fileConfig(config.config_file_name)

# Several MetaData objects: the models', and each of the package's own tables
# that the application uses (idempotency keys, Celery's once-only task runs).
target_metadata = [Base.metadata, keys.metadata, task_runs.metadata]

# The application's own setting, not alembic.ini's placeholder ('%' escaped for configparser).
config.set_main_option("sqlalchemy.url", DATABASE_URL.replace("%", "%%"))
# -- end of the change --


def run_migrations_offline() -> None:
    """Write the migrations' SQL to standard output (``alembic upgrade head --sql``)."""
    url = config.get_main_option("sqlalchemy.url")
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )

    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on a connection of their own."""
    connectable = engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )

    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)

        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
