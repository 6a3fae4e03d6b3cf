"""Alembic environment: the tables' metadata from aesq.core.tables, the URL from aesq's settings."""

from alembic import context

from aesq.core.config import get_settings
from aesq.core.database import database_url, engine
from aesq.core.tables import Base

target_metadata = Base.metadata


def run_migrations() -> None:
    """Migrate online; the URL comes from the caller (`aesq db …`), or from aesq's settings when Alembic's own
    command is the entry point."""
    url = context.config.attributes.get("url") or database_url(get_settings())
    with engine(url).connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run_migrations()
