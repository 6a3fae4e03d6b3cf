"""The labels namespace on the real server: its database is named after production's, made once, and a role
that may not create it gets one line saying what to create."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from aesq.core import database
from aesq.core.config import Settings
from aesq.core.namespaces import namespace_settings, prepare_namespace


def test_the_labels_database_is_created_migrated_and_named_after_production(empty_database_url):
    production = Settings(database_url=empty_database_url)
    assert namespace_settings(production, "production") is production
    labelled = prepare_namespace(production, "labels")
    name = sa.engine.make_url(empty_database_url).database
    assert sa.engine.make_url(labelled.database_url).database == f"{name}_labels"
    assert database.current_revision(labelled) is not None  # migrated: it has aesq's tables
    assert prepare_namespace(labelled, "labels").database_url == labelled.database_url  # the same one, again
    assert prepare_namespace(production, "labels").database_url == labelled.database_url  # it exists: reused


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
