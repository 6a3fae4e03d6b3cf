"""The labels namespace on the real server: its database is named after production's whatever that name ends
with, made once, only selected by a flow (one line when missing), and a role that may not create it gets one line
saying what to create."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from aesq.core import database
from aesq.core.config import ConfigurationError, Settings
from aesq.core.namespaces import LabelsDatabaseMissing, namespace_settings, prepare_namespace, select_namespace


def _databases(admin_url: str) -> set[str]:
    """The names of the server's databases."""
    with sa.create_engine(admin_url).connect() as connection:
        return set(connection.execute(sa.text("SELECT datname FROM pg_database")).scalars())


def test_the_labels_database_is_created_migrated_and_named_after_production(empty_database_url):
    production = Settings(database_url=empty_database_url)
    assert namespace_settings(production, "production") is production
    labelled = prepare_namespace(production, "labels")
    name = sa.engine.make_url(empty_database_url).database
    assert sa.engine.make_url(labelled.database_url).database == f"{name}_labels"
    assert database.current_revision(labelled) is not None  # migrated: it has aesq's tables
    assert prepare_namespace(production, "labels").database_url == labelled.database_url  # it exists: reused


def test_a_production_database_named_like_a_labels_one_still_gets_a_labels_database_of_its_own(postgres_server):
    name = f"aesq_{uuid.uuid4().hex[:8]}_labels"
    with sa.create_engine(postgres_server, isolation_level="AUTOCOMMIT").connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    production = Settings(database_url=sa.engine.make_url(postgres_server).set(database=name).render_as_string(False))
    labelled = prepare_namespace(production, "labels")
    assert sa.engine.make_url(labelled.database_url).database == f"{name}_labels"
    assert database.current_revision(production) is None  # production itself was not migrated as the labels one


def test_a_labels_name_postgres_would_cut_is_refused(postgres_server):
    name = "p" * 63  # the longest name Postgres keeps: + "_labels" would be cut back to production's own name
    production = Settings(database_url=sa.engine.make_url(postgres_server).set(database=name).render_as_string(False))
    with pytest.raises(ConfigurationError, match="longer than Postgres's 63 bytes"):
        namespace_settings(production, "labels")
    assert namespace_settings(production, "production") is production


def test_selecting_the_labels_namespace_never_creates_it_and_says_what_does(postgres_server, empty_database_url):
    production = Settings(database_url=empty_database_url)
    name = sa.engine.make_url(empty_database_url).database
    with pytest.raises(LabelsDatabaseMissing) as raised:
        select_namespace(production, "labels")
    assert str(raised.value) == (
        f"the labels database '{name}_labels' does not exist: `aesq bench labels` creates and migrates it before "
        "it runs the flow with namespace 'labels'"
    )
    assert f"{name}_labels" not in _databases(postgres_server)
    assert select_namespace(production, "production") is production
    prepared = prepare_namespace(production, "labels")
    assert select_namespace(production, "labels").database_url == prepared.database_url


def test_a_role_that_may_not_create_it_is_told_what_to_create(postgres_server, empty_database_url):
    role = f"reader_{uuid.uuid4().hex[:8]}"
    with sa.create_engine(postgres_server, isolation_level="AUTOCOMMIT").connect() as connection:
        connection.execute(sa.text(f"CREATE ROLE {role} LOGIN NOCREATEDB"))
    url = sa.engine.make_url(empty_database_url).set(username=role).render_as_string(hide_password=False)
    name = sa.engine.make_url(empty_database_url).database
    with pytest.raises(database.DatabaseError) as raised:
        prepare_namespace(Settings(database_url=url), "labels")
    message = str(raised.value)
    assert "\n" not in message and f"cannot create the labels database '{name}_labels'" in message
    assert "permission denied" in message and f"CREATE DATABASE {name}_labels" in message
