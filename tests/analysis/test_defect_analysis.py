"""Defect analysis on the real database and object store: which assets it picks, the rows it writes, and
near-duplicates by embedding; each called directly, not through the flows."""

from __future__ import annotations

import re

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

from aesq.analysis import defect_analysis
from aesq.analysis.defects import detect_defects
from aesq.core import database
from aesq.core.config import ConfigurationError, DefectRule, Settings
from aesq.core.database import get_engine
from aesq.core.images import ImageFacts
from aesq.core.provenance import GeneratorRef, Provenance
from aesq.core.tables import Asset, Critique
from aesq.core.writes import (
    AssetRecord,
    ScoreValue,
    mark_scored,
    upsert_assets,
    write_embeddings,
    write_scores,
)
from tests.helpers import ingest_all, noise_image, photo, png_bytes, put

FACTS = ImageFacts(width=8, height=8, format="PNG", mode="RGB", frames=1)
V1, V2, V3 = GeneratorRef("m", "1"), GeneratorRef("m", "2"), GeneratorRef("m", "3")
EMBEDDER = "efficientnet-lite0"


def _write_scored(settings, technical: dict[str, tuple[GeneratorRef | None, float]]) -> dict[str, int]:
    """Assets (key → version, technical score), written and marked scored as scoring does; key → asset id."""
    records = [
        AssetRecord(
            "s3", "bkt", key, f"sha-{key}", f"etag-{key}", 10, FACTS,
            Provenance("generated" if version else "crawled", version, None, None, {}), None,
        )
        for key, (version, _) in technical.items()
    ]  # fmt: skip
    with get_engine(settings).begin() as connection:
        upsert_assets(connection, records)
        ids = dict(connection.execute(sa.select(Asset.key, Asset.id)).tuples().all())
        write_scores(
            connection, [ScoreValue(ids[key], "technical", "1", value, {}) for key, (_, value) in technical.items()]
        )
        mark_scored(connection, list(ids.values()))
    return ids


def _execute(settings, statement: str, **params) -> None:
    with get_engine(settings).begin() as connection:
        connection.execute(sa.text(statement), params)


def test_low_scorers_are_under_the_threshold_or_in_their_versions_bottom_share(settings):
    settings = settings.model_copy(
        update={"defect_rules": {"technical": DefectRule(below=5.0, bottom_share=0.1)}, "batch_size": 3}
    )
    ids = _write_scored(
        settings,
        {
            # v1: 3.0 is under 5 and the lowest tenth; 4.0 is under 5 only (its percent rank is 1/9)
            **{f"v1/{i}.png": (V1, value) for i, value in enumerate([3.0, 4.0, 6, 7, 8, 9, 10, 11, 12, 13])},
            # v2: nothing under 5, but 6.0 is its lowest tenth
            **{f"v2/{i}.png": (V2, value) for i, value in enumerate([6.0, 7, 8, 9, 10, 11, 12, 13, 14, 15])},
            "v3/alone.png": (V3, 6.0),  # the lowest of a version of one is no outlier
            "crawled/low.png": (None, 4.9),  # assets without a version are one group, and the threshold holds
            "crawled/fine.png": (None, 9.0),
        },
    )
    with get_engine(settings).begin() as connection:
        # A low score under a scorer without a rule, and one of an asset not marked scored yet: not looked at.
        write_scores(connection, [ScoreValue(ids["v1/5.png"], "laion-aesthetic-v2", "1", 1.0, {})])
        (pending,) = upsert_assets(
            connection, [AssetRecord("s3", "bkt", "pending.png", "sha-p", "e", 10, FACTS, None, None)]
        )
        write_scores(connection, [ScoreValue(pending, "technical", "1", 0.5, {})])

    picked = ["v1/0.png", "v1/1.png", "v2/0.png", "crawled/low.png"]
    expected = sorted(ids[key] for key in picked)
    assert defect_analysis.low_scorer_batches(settings) == [expected[:3], expected[3:]]

    # Analysed since its last scoring: left alone; analysed before it was scored again: picked again.
    _execute(settings, "UPDATE assets SET analysed_at = scored_at + interval '1 minute' WHERE key = 'v1/0.png'")
    _execute(settings, "UPDATE assets SET analysed_at = scored_at - interval '1 minute' WHERE key = 'v1/1.png'")
    assert defect_analysis.low_scorer_batches(settings) == [sorted(ids[key] for key in picked[1:])]


def _key_ids(settings) -> dict[str, int]:
    with get_engine(settings).connect() as connection:
        return dict(connection.execute(sa.select(Asset.key, Asset.id)).tuples().all())


def _defects(settings) -> dict[str, set[tuple[str, float, str | None]]]:
    """key → its defect rows (category, severity, detail)."""
    query = "SELECT a.key, d.category, d.severity, d.detail FROM defects d JOIN assets a ON a.id = d.asset_id"
    found: dict[str, set[tuple[str, float, str | None]]] = {}
    with get_engine(settings).connect() as connection:
        for key, category, severity, detail in connection.execute(sa.text(query)):
            found.setdefault(key, set()).add((category, severity, detail))
    return found


def test_each_finding_is_one_row_replaced_on_the_next_run_and_never_a_critique(settings, s3_client, bucket):
    images = {
        "clean.png": photo("astronaut"),
        "grey.png": Image.new("RGB", (256, 256), (128, 128, 128)),
        "tiny.png": noise_image(1, 24),
        "gone.png": noise_image(2, 128),
    }
    for key, image in images.items():
        put(s3_client, bucket, key, png_bytes(image))
    ids = ingest_all(f"s3://{bucket}/", settings)
    put(s3_client, bucket, "grey-copy.png", png_bytes(images["grey.png"]))  # the same bytes later: a duplicate
    ingest_all(f"s3://{bucket}/", settings)
    keys = _key_ids(settings)
    defect_analysis.analyse_assets(ids, settings)
    assert {category for category, _, _ in _defects(settings)["gone.png"]} - {"unreadable"}  # readable yet
    s3_client.remove_object(bucket, "gone.png")
    with get_engine(settings).begin() as connection:  # a critique stays what it is whatever analysis finds
        connection.execute(
            sa.insert(Critique).values(asset_id=keys["grey.png"], critic="c", critic_score=5.0, aspects={"a": "b"})
        )

    # Every detector's finding on the image as stored (PNG: the very pixels), one row each; the object
    # gone is `unreadable`. Asked about the duplicate, the findings go to the asset holding its bytes.
    expected = {
        key: {(f.category, f.severity, f.detail) for f in detect_defects(image)}
        for key, image in images.items()
        if key != "gone.png"
    }
    assert expected["grey.png"] and expected["tiny.png"] and not expected["clean.png"]  # the oracle says something
    for run in range(2):  # each run replaces the rows (gone.png's earlier findings too), it adds none
        written = defect_analysis.analyse_assets([*ids, keys["grey-copy.png"]], settings)
        found = _defects(settings)
        unreadable = found.pop("gone.png")
        assert found == {key: rows for key, rows in expected.items() if rows}, f"run {run}"
        assert [(category, severity) for category, severity, _ in unreadable] == [("unreadable", 1.0)]
        assert written == sum(len(rows) for rows in found.values()) + 1
    with get_engine(settings).connect() as connection:
        analysed = dict(connection.execute(sa.select(Asset.key, Asset.analysed_at.is_not(None))).tuples().all())
        critiques = connection.execute(sa.select(Critique.asset_id, Critique.aspects)).all()
    assert analysed == {**dict.fromkeys(images, True), "grey-copy.png": False}
    assert [tuple(row) for row in critiques] == [(keys["grey.png"], {"a": "b"})]


def test_the_nearest_asset_within_the_distance_is_named_as_the_copy_to_keep(settings, s3_client, bucket):
    settings = settings.model_copy(update={"embedders": [EMBEDDER], "near_duplicate_distance": 0.02})
    for name in ("a", "b", "far", "none"):
        put(s3_client, bucket, f"{name}.png", png_bytes(noise_image(ord(name[0]), 64)))
    ingest_all(f"s3://{bucket}/", settings)
    keys = _key_ids(settings)
    rng = np.random.default_rng(0)
    base = rng.normal(size=1280)
    vectors = {"a": base, "b": base + 0.08 * rng.normal(size=1280), "far": rng.normal(size=1280)}
    unit = {name: vector / np.linalg.norm(vector) for name, vector in vectors.items()}
    distance = 1.0 - float(unit["a"] @ unit["b"])
    assert 0.001 < distance < 0.02  # near, but not identical
    with get_engine(settings).begin() as connection:  # "none" has no embedding
        write_embeddings(
            connection,
            EMBEDDER,
            [keys[f"{name}.png"] for name in unit],
            np.stack(list(unit.values())).astype(np.float32),
        )

    defect_analysis.analyse_assets(list(keys.values()), settings)
    near = {
        key: rows.pop() for key, found in _defects(settings).items()
        if (rows := {row for row in found if row[0] == "near_duplicate"})
    }  # fmt: skip
    assert sorted(near) == ["a.png", "b.png"]
    for key, other in (("a.png", "b.png"), ("b.png", "a.png")):
        _, severity, detail = near[key]
        assert detail is not None and detail.startswith(f"near-duplicate of asset {keys[other]} ")
        assert detail.endswith(f"keep asset {keys[other]}")
        measured = float(re.search(r"cosine distance ([0-9.]+)", detail).group(1))
        assert measured == pytest.approx(distance, abs=5e-4)  # half precision in the index
        assert severity == pytest.approx(1 - measured / 0.02, abs=0.003)  # the detail rounds to 4 decimals


def test_a_failed_asset_keeping_its_embedding_is_never_named_the_copy_to_keep(settings, s3_client, bucket):
    """An image whose sidecar broke keeps its outputs while failed (aesq/core/identity.py), but counts nowhere."""
    settings = settings.model_copy(update={"embedders": [EMBEDDER], "near_duplicate_distance": 0.02})
    for name in ("a", "b"):
        put(s3_client, bucket, f"{name}.png", png_bytes(noise_image(ord(name), 64)))
    ingest_all(f"s3://{bucket}/", settings)
    keys = _key_ids(settings)
    base = np.random.default_rng(0).normal(size=1280)
    vectors = np.stack([base, base + 0.01]) / np.linalg.norm(base)
    with get_engine(settings).begin() as connection:
        write_embeddings(connection, EMBEDDER, [keys["a.png"], keys["b.png"]], vectors.astype(np.float32))
    defect_analysis.analyse_assets([keys["a.png"]], settings)
    assert {row[0] for row in _defects(settings)["a.png"]} >= {"near_duplicate"}  # b is near
    _execute(settings, "UPDATE assets SET status = 'failed', scored_at = now(), error = 'sidecar' WHERE key = 'b.png'")
    defect_analysis.analyse_assets([keys["a.png"]], settings)
    assert "near_duplicate" not in {row[0] for row in _defects(settings).get("a.png", set())}


def test_near_duplicates_are_within_a_version_or_against_crawled_data_never_across_versions(
    settings, s3_client, bucket
):
    settings = settings.model_copy(update={"embedders": [EMBEDDER], "near_duplicate_distance": 0.02})
    objects = {  # key → (prompt and seed metadata, the cluster of near-identical embeddings it belongs to)
        "generated/m/1/paired.png": ({"prompt": "a cat", "seed": "7"}, "paired"),
        "generated/m/2/paired.png": ({"prompt": "a cat", "seed": "7"}, "paired"),
        "generated/m/1/twin-a.png": ({"prompt": "a dog", "seed": "1"}, "twins"),
        "generated/m/1/twin-b.png": ({"prompt": "a dog", "seed": "2"}, "twins"),
        "generated/m/3/copied.png": ({"prompt": "a tree", "seed": "1"}, "crawled"),
        "crawled/web/tree.png": ({}, "crawled"),
    }
    for index, (key, (metadata, _)) in enumerate(objects.items()):
        put(s3_client, bucket, key, png_bytes(noise_image(100 + index, 64)), metadata)
    ingest_all(f"s3://{bucket}/", settings)
    keys = _key_ids(settings)
    with get_engine(settings).connect() as connection:
        provenance = connection.execute(
            sa.text(
                "SELECT a.key, g.version, a.prompt, a.seed FROM assets a LEFT JOIN generators g ON g.id = a.generator_id"
            )
        ).all()
    assert {row.key: (row.version, row.prompt, row.seed) for row in provenance if "paired" in row.key} == {
        "generated/m/1/paired.png": ("1", "a cat", 7),
        "generated/m/2/paired.png": ("2", "a cat", 7),
    }  # the same prompt and seed in two versions: paired generations
    rng = np.random.default_rng(1)
    centres = {cluster: rng.normal(size=1280) for cluster in ("paired", "twins", "crawled")}
    vectors = [centres[cluster] + 0.05 * rng.normal(size=1280) for _, cluster in objects.values()]
    unit = np.stack([vector / np.linalg.norm(vector) for vector in vectors]).astype(np.float32)
    assert 0.001 < 1.0 - float(unit[0] @ unit[1]) < 0.02  # the paired versions are as close as the twins
    with get_engine(settings).begin() as connection:
        write_embeddings(connection, EMBEDDER, [keys[key] for key in objects], unit)

    defect_analysis.analyse_assets(list(keys.values()), settings)
    near = {
        key: next(iter(rows))[2] for key, found in _defects(settings).items()
        if (rows := {row for row in found if row[0] == "near_duplicate"})
    }  # fmt: skip
    assert sorted(near) == [
        "crawled/web/tree.png",
        "generated/m/1/twin-a.png",
        "generated/m/1/twin-b.png",
        "generated/m/3/copied.png",
    ]
    for key, other in (
        ("generated/m/1/twin-a.png", "generated/m/1/twin-b.png"),
        ("generated/m/3/copied.png", "crawled/web/tree.png"),
        ("crawled/web/tree.png", "generated/m/3/copied.png"),
    ):
        assert near[key].startswith(f"near-duplicate of asset {keys[other]} "), key


def _near_duplicate_shares(connection) -> dict[str, float]:
    """Each version's share of scored assets with a near-duplicate finding, from the view the reports read."""
    rows = connection.execute(
        sa.text("SELECT version, share FROM version_defect_shares WHERE category = 'near_duplicate'")
    ).all()
    return {row.version: row.share for row in rows}


def test_migration_0012_drops_cross_version_findings_and_has_near_duplicates_analysed_again(empty_database_url):
    """Findings under the old rule (a paired version as the copy) are deleted, also on an asset no longer a low
    scorer, which analysis will not look at again; findings within a version or against crawled data stay."""
    settings = Settings(database_url=empty_database_url, defect_rules={"technical": DefectRule(below=5)})
    database.upgrade("0011", settings=settings)
    # key → (version, technical score, its findings as (category, the key its detail names))
    assets = {
        "paired-1": ("1", 9.0, [("near_duplicate", "paired-2"), ("blur", None)]),
        "paired-2": ("2", 9.0, [("near_duplicate", "paired-1")]),
        "twin-a": ("1", 3.0, [("near_duplicate", "twin-b")]),
        "twin-b": ("1", 9.0, [("near_duplicate", "twin-a")]),
        "copied": ("3", 9.0, [("near_duplicate", "tree")]),
        "tree": (None, 9.0, [("near_duplicate", "copied")]),
        "blurred": ("2", 3.0, [("blur", None)]),
    }
    with database.engine(empty_database_url).begin() as connection:
        versions = dict(
            connection.execute(
                sa.text("INSERT INTO generators (name, version) VALUES ('m', '1'), ('m', '2'), ('m', '3')"
                        " RETURNING version, id")
            ).tuples().all()
        )  # fmt: skip
        ids = {
            key: connection.execute(
                sa.text(
                    "INSERT INTO assets (storage, bucket, key, sha256, size_bytes, source_kind, generator_id, status,"
                    " scored_at, analysed_at) VALUES ('s3', 'b', :key, :key, 1, 'generated', :generator, 'scored',"
                    " now() - interval '1 day', now()) RETURNING id"
                ),
                {"key": key, "generator": versions.get(version)},
            ).scalar_one()
            for key, (version, _, _) in assets.items()
        }
        for key, (_, score, findings) in assets.items():
            connection.execute(
                sa.text(
                    "INSERT INTO scores (asset_id, scorer, scorer_version, value) VALUES (:id, 'technical', '1', :v)"
                ),
                {"id": ids[key], "v": score},
            )
            for category, other in findings:
                partner = ids.get(other)
                detail = f"near-duplicate of asset {partner} (cosine distance 0.0010); keep asset {partner}"
                connection.execute(
                    sa.text("INSERT INTO defects (asset_id, category, severity, detail) VALUES (:id, :c, 0.5, :d)"),
                    {"id": ids[key], "c": category, "d": detail if partner else "variance of Laplacian 12.0"},
                )
        assert _near_duplicate_shares(connection) == {"1": 1.0, "2": 0.5, "3": 1.0}

    database.upgrade("0012", settings=settings)
    with database.engine(empty_database_url).connect() as connection:
        found = connection.execute(
            sa.text("SELECT a.key, d.category FROM defects d JOIN assets a ON a.id = d.asset_id")
        )
        due = connection.execute(sa.text("SELECT key FROM assets WHERE analysed_at IS NULL")).scalars().all()
        shares = _near_duplicate_shares(connection)
    assert sorted(found.tuples().all()) == [
        ("blurred", "blur"),
        ("copied", "near_duplicate"),
        ("paired-1", "blur"),
        ("tree", "near_duplicate"),
        ("twin-a", "near_duplicate"),
        ("twin-b", "near_duplicate"),
    ]
    assert sorted(due) == ["copied", "paired-1", "paired-2", "tree", "twin-a", "twin-b"]
    assert shares == {"1": 2 / 3, "2": 0.0, "3": 1.0}  # the view recomputes them from the rows left

    database.upgrade("0016", settings=settings)  # 0017 has every low scorer analysed again: see its own test
    by_id = {asset_id: key for key, asset_id in ids.items()}
    # Only twin-a is a low scorer: the paired assets are never analysed again, so their rows had to go here.
    assert [by_id[i] for batch in defect_analysis.low_scorer_batches(settings) for i in batch] == ["twin-a"]
    database.downgrade("0011", settings=settings)


@pytest.mark.parametrize("version", ["0.8.0", "0.8.1", "0.10.0", "1.0.0"])
def test_pgvector_from_0_8_does_the_iterative_scans_near_duplicates_need(version):
    defect_analysis.check_iterative_scan(version)


def test_an_older_pgvector_is_a_configuration_error_naming_its_version_and_the_update():
    with pytest.raises(ConfigurationError, match=r"needs pgvector 0\.8 or later; the database has 0\.7\.4: .*UPDATE"):
        defect_analysis.check_iterative_scan("0.7.4")
