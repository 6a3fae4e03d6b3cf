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
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from aesq.core import database
from aesq.core.config import Settings

Namespace = Literal["production", "labels"]
LABELS_SUFFIX = "_labels"


def labels_database_url(settings: Settings) -> str:
    """The labels database's URL: the production database's server and credentials, its name + `_labels`."""
    production = make_url(database.database_url(settings))
    name = production.database or "postgres"
    if name.endswith(LABELS_SUFFIX):  # these settings are the labels namespace's already
        return production.render_as_string(hide_password=False)
    return production.set(database=name + LABELS_SUFFIX).render_as_string(hide_password=False)


def namespace_settings(settings: Settings, namespace: Namespace) -> Settings:
    """The settings whose database is the namespace's (the same settings for production)."""
    if namespace == "production":
        return settings
    return settings.model_copy(update={"database_url": labels_database_url(settings)})


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
    """The namespace's settings, its database created when missing and migrated to the current schema."""
    if namespace == "production":
        return settings
    labelled = namespace_settings(settings, namespace)
    _create_labels_database(settings, labelled.database_url or "")
    database.upgrade(settings=labelled)
    return labelled
