"""Bulk writes against the real database: upserts keyed so retries and re-runs change nothing."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import sqlalchemy as sa

from aesq.core.database import get_engine
from aesq.core.images import ImageFacts
from aesq.core.provenance import GeneratorRef, Provenance
from aesq.core.tables import Asset, Critique, Defect
from aesq.core.writes import (
    AssetRecord,
    ScoreValue,
    mark_deleted,
    upsert_assets,
    upsert_generators,
    write_embeddings,
    write_scores,
)

FACTS = ImageFacts(width=8, height=8, format="PNG", mode="RGB", frames=1)


def _record(key: str, sha: str, generator: GeneratorRef | None = None, error: str | None = None) -> AssetRecord:
    """A record as ingest makes it."""
    provenance = Provenance("generated" if generator else "crawled", generator, "p", 1, {})
    return AssetRecord("s3", "bkt", key, sha, f"etag-{sha}", 10, None if error else FACTS, provenance, error)


def _rows(settings, query: str) -> list:
    with get_engine(settings).connect() as connection:
        return connection.execute(sa.text(query)).all()


def test_generators_are_enriched_not_duplicated(settings):
    with get_engine(settings).begin() as connection:
        first = upsert_generators(connection, [GeneratorRef("m", "1")])
        second = upsert_generators(
            connection, [GeneratorRef("m", "2", kind="lora", parent=("m", "1"), metadata={"rank": 16})]
        )
        again = upsert_generators(connection, [GeneratorRef("m", "2")])  # no kind: keeps "lora"
    assert again[("m", "2")] == second[("m", "2")]
    rows = _rows(
        settings,
        "SELECT g.name, g.version, g.kind, p.version, g.metadata FROM generators g "
        "LEFT JOIN generators p ON p.id = g.parent_id ORDER BY g.version",
    )
    assert [tuple(row) for row in rows] == [("m", "1", "other", None, {}), ("m", "2", "lora", "1", {"rank": 16})]
    assert first[("m", "1")] != second[("m", "2")]


def test_duplicates_failures_and_reuploads(settings):
    generator = GeneratorRef("m", "1")
    with get_engine(settings).begin() as connection:
        pending = upsert_assets(
            connection,
            [
                _record("a.png", "sha-a", generator),
                _record("b.png", "sha-a"),  # same bytes, second key
                _record("c.png", "sha-c", error="not an image (no known image format)"),
                _record("d.png", "sha-c", error="not an image (no known image format)"),  # failed bytes may repeat
            ],
        )
    rows = {row.key: row for row in _rows(settings, "SELECT * FROM assets")}
    assert pending == [rows["a.png"].id]
    assert (rows["b.png"].status, rows["b.png"].duplicate_of) == ("duplicate", rows["a.png"].id)
    assert rows["c.png"].status == rows["d.png"].status == "failed"
    assert rows["c.png"].error == "not an image (no known image format)"

    with get_engine(settings).begin() as connection:
        connection.execute(sa.text("UPDATE assets SET status = 'scored' WHERE key = 'a.png'"))
        write_scores(connection, [ScoreValue(rows["a.png"].id, "technical", "1", 7.5, {})])
        # The same bytes uploaded again (new ETag) keep their status and score; a new object elsewhere
        # with those bytes in a later batch is a duplicate of the scored one.
        assert upsert_assets(connection, [_record("a.png", "sha-a", generator), _record("e.png", "sha-a")]) == []
    rows = {row.key: row for row in _rows(settings, "SELECT * FROM assets")}
    assert rows["a.png"].status == "scored"
    assert (rows["e.png"].status, rows["e.png"].duplicate_of) == ("duplicate", rows["a.png"].id)
    assert len(_rows(settings, "SELECT * FROM scores")) == 1

    # New bytes at a known key: that key is scored from scratch, and the old content, still held by its
    # copies, keeps its score and scoring time on the oldest copy, which the other copy now points at.
    with get_engine(settings).begin() as connection:
        assert upsert_assets(connection, [_record("a.png", "sha-new", generator)]) == [rows["a.png"].id]
    after = {row.key: row for row in _rows(settings, "SELECT * FROM assets")}
    assert (after["a.png"].status, after["a.png"].sha256, after["a.png"].scored_at) == ("pending", "sha-new", None)
    assert (after["b.png"].status, after["b.png"].duplicate_of) == ("scored", None)
    assert after["b.png"].scored_at == rows["a.png"].scored_at
    assert (after["e.png"].status, after["e.png"].duplicate_of) == ("duplicate", after["b.png"].id)
    assert [(row.asset_id, row.value) for row in _rows(settings, "SELECT * FROM scores")] == [(after["b.png"].id, 7.5)]


def test_score_and_embedding_writes_are_idempotent(settings):
    with get_engine(settings).begin() as connection:
        ids = upsert_assets(connection, [_record(f"{i}.png", f"sha-{i}") for i in range(3)])
    vectors = np.random.default_rng(0).normal(size=(3, 1280)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for value in (1.0, 9.0):  # the second write is a retry with other values: nothing changes
        with get_engine(settings).begin() as connection:
            write_scores(connection, [ScoreValue(i, "technical", "1", value, {"sharpness": value}) for i in ids])
            write_scores(connection, [ScoreValue(ids[0], "technical", "2", value, {})])
            write_embeddings(connection, "efficientnet-lite0", ids, vectors * value)
    scores = _rows(
        settings, "SELECT asset_id, scorer_version, value, raw FROM scores ORDER BY asset_id, scorer_version"
    )
    assert [tuple(row) for row in scores] == [
        (ids[0], "1", 1.0, {"sharpness": 1.0}),
        (ids[0], "2", 1.0, {}),
        (ids[1], "1", 1.0, {"sharpness": 1.0}),
        (ids[2], "1", 1.0, {"sharpness": 1.0}),
    ]
    stored = {row.asset_id: row.vector.to_numpy() for row in _rows(settings, "SELECT * FROM embeddings")}
    assert sorted(stored) == sorted(ids)
    for index, asset_id in enumerate(ids):
        np.testing.assert_allclose(stored[asset_id], vectors[index], atol=1e-3)
    latest = _rows(settings, f"SELECT scorer_version FROM latest_scores WHERE asset_id = {ids[0]}")
    assert [row.scorer_version for row in latest] == ["2"]


def test_defects_and_critiques_follow_their_content_and_go_with_it(settings):
    with get_engine(settings).begin() as connection:
        (held,) = upsert_assets(connection, [_record("a.png", "sha-a"), _record("b.png", "sha-a")])
        connection.execute(sa.update(Asset).where(Asset.id == held).values(status="scored"))
        connection.execute(sa.insert(Defect).values(asset_id=held, category="blur", severity=0.5))
        aspects = {"Overall Gestalt": "flat", "Composition": "centred"}
        connection.execute(
            sa.insert(Critique).values(asset_id=held, critic="ernie-aes", critic_score=20.0, aspects=aspects)
        )
    copy = _rows(settings, "SELECT id FROM assets WHERE key = 'b.png'")[0].id

    # New bytes at a.png: the old content's outputs move to the copy that still holds it.
    with get_engine(settings).begin() as connection:
        upsert_assets(connection, [_record("a.png", "sha-new")])
    assert [tuple(row) for row in _rows(settings, "SELECT asset_id, category FROM defects")] == [(copy, "blur")]
    critiques = _rows(settings, "SELECT asset_id, critic, critic_score, aspects FROM critiques")
    assert [tuple(row) for row in critiques] == [(copy, "ernie-aes", 20.0, aspects)]
    assert list(critiques[0].aspects) == ["Overall Gestalt", "Composition"]

    # The last copy gone: the content is present nowhere, and its outputs go with it.
    with get_engine(settings).begin() as connection:
        mark_deleted(connection, "s3", "bkt", ["b.png"])
    assert _rows(settings, "SELECT * FROM defects") == _rows(settings, "SELECT * FROM critiques") == []


def test_bytes_moved_to_another_version_are_analysed_again_without_findings_across_versions(settings):
    """A sidecar that names another version for the same bytes: their near-duplicate findings pairing two versions
    go (theirs and those naming them), both assets become due for analysis; other findings and scores stay."""
    v1, v2 = GeneratorRef("m", "1"), GeneratorRef("m", "2")
    with get_engine(settings).begin() as connection:
        upsert_assets(
            connection,
            [_record("a.png", "sha-a", v1), _record("b.png", "sha-b", v1), _record("c.png", "sha-c", v1)],
        )
        ids = dict(connection.execute(sa.select(Asset.key, Asset.id)).tuples().all())
        connection.execute(sa.update(Asset).values(status="scored", scored_at=sa.func.now(), analysed_at=sa.func.now()))
        write_scores(connection, [ScoreValue(asset_id, "technical", "1", 3.0, {}) for asset_id in ids.values()])
        for key, category, other in [
            ("a.png", "near_duplicate", "b.png"),
            ("b.png", "near_duplicate", "a.png"),
            ("a.png", "blur", None),
            ("c.png", "near_duplicate", "b.png"),
        ]:
            partner = ids.get(other)
            detail = f"near-duplicate of asset {partner} (cosine distance 0.0010); keep asset {partner}"
            connection.execute(
                sa.insert(Defect).values(
                    asset_id=ids[key], category=category, severity=0.5, detail=detail if partner else "laplacian 9"
                )
            )

    def state() -> tuple[list, list]:
        findings = _rows(settings, "SELECT a.key, d.category FROM defects d JOIN assets a ON a.id = d.asset_id")
        assets = _rows(settings, "SELECT key, status, analysed_at IS NULL AS due FROM assets ORDER BY key")
        return sorted(tuple(row) for row in findings), [tuple(row) for row in assets]

    # The same bytes and version again, and a changed prompt and seed: nothing to analyse again.
    c = _record("c.png", "sha-c", v1)
    reprompted = replace(c, provenance=replace(c.provenance, prompt="q", seed=2))
    with get_engine(settings).begin() as connection:
        upsert_assets(connection, [_record("a.png", "sha-a", v1), reprompted])
    unchanged = state()
    assert unchanged[1] == [("a.png", "scored", False), ("b.png", "scored", False), ("c.png", "scored", False)]
    assert len(unchanged[0]) == 4

    with get_engine(settings).begin() as connection:
        upsert_assets(connection, [_record("a.png", "sha-a", v2)])
    findings, assets = state()
    assert findings == [("a.png", "blur"), ("c.png", "near_duplicate")]  # c names b, still its version
    assert assets == [("a.png", "scored", True), ("b.png", "scored", True), ("c.png", "scored", False)]
    assert len(_rows(settings, "SELECT * FROM scores")) == 3


def _finding(connection: sa.Connection, asset_id: int, partner: int) -> None:
    """A near-duplicate finding on `asset_id` naming `partner`, worded as defect analysis words it."""
    detail = f"near-duplicate of asset {partner} (cosine distance 0.0010); keep asset {partner}"
    connection.execute(
        sa.insert(Defect).values(asset_id=asset_id, category="near_duplicate", severity=0.5, detail=detail)
    )


def test_outputs_moved_to_a_copy_of_another_version_are_analysed_again_without_findings_across_versions(settings):
    """The same bytes under v1 (canonical) and v2 (its duplicate): v1's copy gone, v2's row inherits the outputs but
    not v1's near-duplicate finding naming another v1 asset, and is due for analysis; its blur finding stays."""
    v1, v2 = GeneratorRef("m", "1"), GeneratorRef("m", "2")
    with get_engine(settings).begin() as connection:
        upsert_assets(
            connection,
            [_record("v1/x.png", "sha-x", v1), _record("v1/y.png", "sha-y", v1), _record("v2/x.png", "sha-x", v2)],
        )
        ids = dict(connection.execute(sa.select(Asset.key, Asset.id)).tuples().all())
        connection.execute(
            sa.update(Asset)
            .where(Asset.status == "pending")
            .values(status="scored", scored_at=sa.func.now(), analysed_at=sa.func.now())
        )
        _finding(connection, ids["v1/x.png"], ids["v1/y.png"])
        connection.execute(sa.insert(Defect).values(asset_id=ids["v1/x.png"], category="blur", severity=0.5))

    with get_engine(settings).begin() as connection:
        mark_deleted(connection, "s3", "bkt", ["v1/x.png"])
    findings = _rows(settings, "SELECT a.key, d.category FROM defects d JOIN assets a ON a.id = d.asset_id")
    assert sorted(tuple(row) for row in findings) == [("v2/x.png", "blur")]
    assets = _rows(settings, "SELECT key, status, analysed_at IS NULL AS due FROM assets ORDER BY key")
    assert [tuple(row) for row in assets] == [
        ("v1/x.png", "deleted", False),
        ("v1/y.png", "scored", True),  # named by a finding across versions now: sought again
        ("v2/x.png", "scored", True),
    ]


def test_a_keeper_whose_provenance_failed_keeps_its_provenance_and_is_not_analysed_again_once_fixed(settings):
    """A scored image whose sidecar breaks stays generated by its version (not crawled), and the fixed sidecar naming
    the same version changes no version: its analysis and findings stand."""
    v1 = GeneratorRef("m", "1")
    scored = _record("a.png", "sha-a", v1)
    with get_engine(settings).begin() as connection:
        (asset_id,) = upsert_assets(connection, [scored])
        connection.execute(sa.update(Asset).values(status="scored", scored_at=sa.func.now(), analysed_at=sa.func.now()))
        connection.execute(sa.insert(Defect).values(asset_id=asset_id, category="blur", severity=0.5))
    provenance_query = "SELECT status, source_kind, generator_id IS NULL AS unknown, prompt, seed FROM assets"

    broken = replace(scored, provenance=None, error="sidecar a.json: not JSON")
    with get_engine(settings).begin() as connection:
        assert upsert_assets(connection, [broken]) == []
    assert [tuple(row) for row in _rows(settings, provenance_query)] == [("failed", "generated", False, "p", 1)]

    with get_engine(settings).begin() as connection:
        assert upsert_assets(connection, [scored]) == []
    assert [tuple(row) for row in _rows(settings, provenance_query)] == [("scored", "generated", False, "p", 1)]
    assert _rows(settings, "SELECT analysed_at IS NULL FROM assets") == [(False,)]
    assert len(_rows(settings, "SELECT * FROM defects")) == 1
