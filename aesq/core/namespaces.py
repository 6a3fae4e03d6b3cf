"""Where a run's data lives: production, or the labels namespace of benchmark runs (`aesq bench labels`).

A held-out labelled set must never reach production data: not the gallery, the API, the leaderboards, the
reports, nor `aesq export`, whose manifest feeds training. Labelled runs therefore write to a database of
their own on the same server, named after the production database with `_labels` appended (the embedded
server's `postgres` → `postgres_labels`). It is created from the production connection when missing and
migrated like the embedded one. Every table, view, claim, score and statistic of a labelled run is then
apart by construction: a production read holds no filter that could be forgotten, and an image that is both
in production and in a labelled set is two assets, one in each database, whose scores and duplicates never
meet.

A schema of the same database with its own search_path was the alternative; it was not chosen because the
pgvector extension lives in one schema per database, Alembic keeps one version table per search_path, and
every raw query would depend on the connection's search_path being right.

The namespace is never inferred from a database's name: production may be called anything, `..._labels` too,
and its labels database is still its name + `_labels`. Only `aesq bench labels` creates and migrates it
(`prepare_namespace`); a flow run in the labels namespace only selects it (`select_namespace`) and stops with
one line when it is missing. What versions before this namespace left in production of a labelled set (the
images its label file names, nothing else of the folder) is found and removed by `leaked_labels` (`aesq bench
forget`), which refuses a folder of production's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy import bindparam, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from aesq.core import database
from aesq.core.config import ConfigurationError, Settings
from aesq.core.storage import parse_location
from aesq.core.writes import mark_deleted

Namespace = Literal["production", "labels"]
LABELS_SUFFIX = "_labels"
# The longest database name Postgres keeps; a longer one is cut to this, which could land on production's.
MAX_NAME_BYTES = 63


class LabelsDatabaseMissing(ConfigurationError):
    """A run in the labels namespace whose database was never prepared; the message says what creates it."""


def labels_database_url(settings: Settings) -> str:
    """The labels database's URL, from production's `settings`: the same server and credentials, its name +
    `_labels` (whatever production's name ends with, so the two are never one database)."""
    production = make_url(database.database_url(settings))
    name = production.database or "postgres"
    labels = name + LABELS_SUFFIX
    if len(labels.encode()) > MAX_NAME_BYTES:
        raise ConfigurationError(
            f"the labels database's name {labels!r} is longer than Postgres's {MAX_NAME_BYTES} bytes, which would "
            f"cut it (possibly to production's {name!r}): give the production database a shorter name"
        )
    return production.set(database=labels).render_as_string(hide_password=False)


def namespace_settings(settings: Settings, namespace: Namespace) -> Settings:
    """The namespace's settings, from production's `settings` (the same settings for production)."""
    if namespace == "production":
        return settings
    return settings.model_copy(update={"database_url": labels_database_url(settings)})


def _database_exists(settings: Settings, name: str) -> bool:
    """Whether the production server holds a database called `name` (one query)."""
    with database.connect(settings) as connection:
        found = connection.execute(text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name})
        return found.first() is not None


def select_namespace(settings: Settings, namespace: Namespace) -> Settings:
    """The namespace's settings for a flow run, from production's `settings`; never creates a database:
    LabelsDatabaseMissing when the labels one was not prepared."""
    selected = namespace_settings(settings, namespace)
    if namespace == "production":
        return selected
    name = make_url(selected.database_url or "").database or ""
    if not _database_exists(settings, name):
        raise LabelsDatabaseMissing(
            f"the labels database {name!r} does not exist: `aesq bench labels` creates and migrates it before "
            "it runs the flow with namespace 'labels'"
        )
    return selected


def _create_labels_database(settings: Settings, url: str) -> None:
    """Create the labels database through the production connection unless it exists."""
    name = make_url(url).database
    production = database.engine(database.database_url(settings))
    try:
        with production.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            exists = connection.execute(text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name})
            if exists.first() is None:
                quoted = (name or "").replace('"', '""')
                connection.execute(text(f'CREATE DATABASE "{quoted}"'))
    except SQLAlchemyError as error:
        if "already exists" in str(error):  # created by another process meanwhile
            return
        cause = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        raise database.DatabaseError(
            f"cannot create the labels database {name!r} for `aesq bench labels` ({cause}): create it on the same "
            f"server (CREATE DATABASE {name}, by a role allowed to create pgvector's extension) or grant CREATEDB"
        ) from None


def prepare_namespace(settings: Settings, namespace: Namespace) -> Settings:
    """The namespace's settings, from production's `settings`, its database created when missing and migrated
    to the current schema (for the CLI, before it starts a flow run in the namespace)."""
    if namespace == "production":
        return settings
    labelled = namespace_settings(settings, namespace)
    _create_labels_database(settings, labelled.database_url or "")
    database.upgrade(settings=labelled)
    return labelled


@dataclass(frozen=True)
class Leaked:
    """A labelled folder's assets found in production: how many, how many of them were scored, and a few keys."""

    location: str
    assets: int
    scored: int
    sample: tuple[str, ...] = ()


SAMPLE_KEYS = 5

# Near-duplicate findings name the asset to keep in their detail ("near-duplicate of asset 12 (...").
_NAMING_REMOVED = text(
    """
    DELETE FROM defects WHERE category = 'near_duplicate'
      AND substring(detail FROM '^near-duplicate of asset ([0-9]+) ')::bigint IN :ids
    RETURNING asset_id
    """
).bindparams(bindparam("ids", expanding=True))


def _overlaps(folder: Path, other: Path) -> bool:
    """Whether one folder lies in the other (or they are the same)."""
    return folder.is_relative_to(other) or other.is_relative_to(folder)


def check_forgettable(settings: Settings, folder: Path) -> None:
    """ConfigurationError unless `folder` is apart from production's folders: not a configured source, not in or
    over one, and not in or over the data folder (its database, reports and models)."""
    location = Path(parse_location(str(folder)).bucket)
    for source in settings.sources:
        configured = parse_location(source)
        if configured.storage == "file" and _overlaps(location, Path(configured.bucket)):
            raise ConfigurationError(
                f"{location} is or overlaps the configured source {configured.uri} (AESQ_SOURCES): `aesq bench "
                "forget` removes only a labelled folder that is not production's; nothing was removed"
            )
    data_dir = settings.data_dir.expanduser().resolve()
    if _overlaps(location, data_dir):
        raise ConfigurationError(
            f"{location} lies in or over the data folder {data_dir} (AESQ_DATA_DIR): `aesq bench forget` removes "
            "only a labelled folder apart from it; nothing was removed"
        )


def leaked_labels(settings: Settings, folder: Path, keys: Sequence[str], remove: bool = False) -> Leaked:
    """The assets of the labelled images `keys` (their paths below `folder`, from its label file) that versions
    of `aesq bench labels` before the labels namespace left in production, removed when `remove`: marked deleted
    first, so a content production also holds elsewhere keeps its scores there (as when an object is deleted),
    then gone with their queued objects and the near-duplicate findings naming them, whose assets defect analysis
    may examine again. Only those keys: any other asset, queued object or listing cursor of the folder stays;
    ConfigurationError (nothing read) when `folder` is production's (check_forgettable)."""
    check_forgettable(settings, folder)
    location = parse_location(str(folder))
    where = {"storage": location.storage, "bucket": location.bucket, "keys": sorted(set(keys))}
    in_keys = "storage = :storage AND bucket = :bucket AND key IN :keys"
    with database.connect(settings) as connection, connection.begin():
        rows = connection.execute(
            text(f"SELECT key, id, status FROM assets WHERE {in_keys} ORDER BY key").bindparams(
                bindparam("keys", expanding=True)
            ),
            where,
        ).all()
        sample = tuple(row.key for row in rows[:SAMPLE_KEYS])
        leaked = Leaked(location.uri, len(rows), sum(row.status == "scored" for row in rows), sample)
        if not remove or not rows:
            return leaked
        mark_deleted(connection, location.storage, location.bucket, [row.key for row in rows])
        ids = [row.id for row in rows]
        named = list(connection.execute(_NAMING_REMOVED, {"ids": ids}).scalars())
        if named:
            connection.execute(
                text("UPDATE assets SET analysed_at = NULL WHERE id IN :named").bindparams(
                    bindparam("named", expanding=True)
                ),
                {"named": named},
            )
        connection.execute(
            text(f"DELETE FROM ingest_queue WHERE {in_keys}").bindparams(bindparam("keys", expanding=True)), where
        )
        connection.execute(
            text("DELETE FROM assets WHERE id IN :ids").bindparams(bindparam("ids", expanding=True)), {"ids": ids}
        )
        remaining = connection.execute(
            text("SELECT 1 FROM assets WHERE storage = :storage AND bucket = :bucket LIMIT 1"), where
        ).first()
        if remaining is None:  # the whole folder gone: its next listing starts from the beginning
            connection.execute(text("DELETE FROM source_cursors WHERE source = :source"), {"source": location.uri})
    return leaked
