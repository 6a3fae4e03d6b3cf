"""The labels namespace on the real server: its database is named after production's whatever that name ends
with, made once, only selected by a flow (one line when missing), and a role that may not create it gets one line
saying what to create."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from aesq.analysis.aggregate import aggregate_versions
from aesq.analysis.versions import version_statistics
from aesq.core import database
from aesq.core.config import ConfigurationError, Settings, get_settings
from aesq.core.namespaces import (
    LabelsDatabaseMissing,
    Leaked,
    leaked_labels,
    namespace_settings,
    prepare_namespace,
    select_namespace,
)
from tests.helpers import noise_image, run_once


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


def test_a_labelled_folder_scored_in_production_by_older_versions_can_be_removed_from_it(
    settings, tmp_path, monkeypatch
):
    monkeypatch.setenv("AESQ_SCORERS", "technical")
    monkeypatch.setenv("AESQ_EMBEDDERS", "")
    get_settings.cache_clear()
    settings = get_settings()
    # What `aesq bench labels` did before the labels namespace: the labelled folder run in production.
    labelled = tmp_path / "eria"
    (labelled / "generated/held-out/1").mkdir(parents=True)
    noise_image(1).save(labelled / "generated/held-out/1/shared.png")
    noise_image(2).save(labelled / "generated/held-out/1/only.png")
    (labelled / "generated/held-out/1/broken.png").write_bytes(b"not an image")
    noise_image(4).save(labelled / "generated/held-out/1/unlabelled.png")  # in the folder, not in its label file
    run_once(str(labelled), settings)
    keys = [f"generated/held-out/1/{name}.png" for name in ("shared", "only", "broken", "never-ingested")]
    # Production: one image with the same bytes as a labelled one (a duplicate of it), one of its own.
    production = tmp_path / "production"
    (production / "generated/m/1").mkdir(parents=True)
    noise_image(1).save(production / "generated/m/1/copy.png")
    noise_image(3).save(production / "generated/m/1/own.png")
    run_once(str(production), settings)
    query = "SELECT bucket || '/' || key AS location, id, status, duplicate_of FROM assets ORDER BY key"
    with database.get_engine(settings).begin() as connection:
        before = {row.location: row for row in connection.execute(sa.text(query))}
        shared = before[f"{labelled}/generated/held-out/1/shared.png"]
        own = before[f"{production}/generated/m/1/own.png"]
        assert before[f"{production}/generated/m/1/copy.png"].duplicate_of == shared.id
        connection.execute(
            sa.text(
                "INSERT INTO defects (asset_id, category, severity, detail) VALUES (:own, 'near_duplicate', 0.9, "
                ":detail), (:own, 'blur', 0.5, 'b')"
            ),
            {"own": own.id, "detail": f"near-duplicate of asset {shared.id} (cosine distance 0.0100); keep asset"},
        )
        connection.execute(sa.text("UPDATE assets SET analysed_at = now()"))
        connection.execute(
            sa.text(
                "INSERT INTO ingest_queue (storage, bucket, key) VALUES ('file', :b, :labelled), ('file', :b, :new)"
            ),
            {"b": str(labelled), "labelled": "generated/held-out/1/only.png", "new": "generated/held-out/1/new.png"},
        )
        connection.execute(
            sa.text(
                "INSERT INTO source_cursors (source, after_key) VALUES (:b, 'generated/held-out/1/unlabelled.png')"
            ),
            {"b": str(labelled)},
        )
    assert {row["generator"] for row in version_statistics(settings)} == {"held-out", "m"}

    sample = tuple(f"generated/held-out/1/{name}.png" for name in ("broken", "only", "shared"))
    expected = Leaked(str(labelled), 3, 2, sample)
    assert leaked_labels(settings, labelled, keys) == expected  # only counted
    assert leaked_labels(settings, labelled, keys, remove=True) == expected
    aggregate_versions(settings)

    with database.get_engine(settings).connect() as connection:
        after = {row.location: row for row in connection.execute(sa.text(query))}
        defects = connection.execute(sa.text("SELECT asset_id, category FROM defects")).all()
        analysed = dict(connection.execute(sa.text("SELECT id, analysed_at IS NOT NULL FROM assets")).all())
        scores = dict(connection.execute(sa.text("SELECT asset_id, count(*) FROM scores GROUP BY asset_id")).all())
        queued = connection.execute(sa.text("SELECT key FROM ingest_queue WHERE bucket = :b"), {"b": str(labelled)})
        left = (queued.scalars().all(), connection.execute(sa.text("SELECT count(*) FROM source_cursors")).scalar())
    copy = after[f"{production}/generated/m/1/copy.png"]
    unlabelled = f"{labelled}/generated/held-out/1/unlabelled.png"
    assert set(after) == {f"{production}/generated/m/1/copy.png", f"{production}/generated/m/1/own.png", unlabelled}
    assert after[unlabelled] == before[unlabelled]  # not named by the label file: untouched
    assert (copy.status, copy.duplicate_of, scores.get(copy.id)) == ("scored", None, 1)  # the scores stay with it
    assert defects == [(own.id, "blur")] and analysed[own.id] is False  # examined again without that partner
    assert left == (["generated/held-out/1/new.png"], 1)  # the other key's queue entry and the cursor stay
    assert {row["generator"] for row in version_statistics(settings)} == {"held-out", "m"}  # unlabelled.png's
    assert leaked_labels(settings, labelled, keys, remove=True) == Leaked(str(labelled), 0, 0)


@pytest.mark.parametrize("where", ["source", "inside a source", "over a source", "data folder", "inside it"])
def test_a_folder_of_production_is_refused_before_anything_is_read(settings, tmp_path, monkeypatch, where):
    source = tmp_path / "production"
    (source / "generated/m/1").mkdir(parents=True)
    noise_image(1).save(source / "generated/m/1/a.png")
    monkeypatch.setenv("AESQ_SOURCES", str(source))
    get_settings.cache_clear()
    settings = get_settings()
    run_once(str(source), settings)
    folder = {
        "source": source,
        "inside a source": source / "generated",
        "over a source": tmp_path,
        "data folder": settings.data_dir,
        "inside it": settings.data_dir / "labelled",
    }[where]
    with pytest.raises(ConfigurationError, match="nothing was removed") as raised:
        leaked_labels(settings, folder, ["generated/m/1/a.png", "m/1/a.png"], remove=True)
    assert "\n" not in str(raised.value)
    with database.get_engine(settings).connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM assets WHERE status = 'scored'")).scalar() == 1
