"""The keep/drop manifest against the real database, in every format, and through the CLI."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from aesq.analysis.export import COLUMNS, export_manifest
from aesq.core.database import get_engine
from aesq.core.images import ImageFacts
from aesq.core.provenance import GeneratorRef, Provenance
from aesq.core.writes import AssetRecord, ScoreValue, mark_scored, upsert_assets, upsert_generators, write_scores

AESQ = shutil.which("aesq", path=str(Path(sys.executable).parent))
FACTS = ImageFacts(width=8, height=8, format="PNG", mode="RGB", frames=1)


@pytest.fixture
def assets(settings) -> dict[str, int]:
    """good (7), low (3), blurry (8, blur 0.8), faint (8, blur 0.2), other-scorer, duplicate, failed."""
    generator = GeneratorRef("m", "1")
    keys = ["good", "low", "blurry", "faint", "other-scorer", "failed"]
    records = [
        AssetRecord(
            "s3",
            "bkt",
            key,
            f"sha-{key}",
            None,
            10,
            None if key == "failed" else FACTS,
            Provenance("generated", generator, f"prompt {key}", 1, {}),
            "not an image" if key == "failed" else None,
        )
        for key in keys
    ]
    copy = AssetRecord(
        "s3", "bkt", "copy", "sha-good", None, 10, FACTS, Provenance("crawled", None, None, None, {}), None
    )
    with get_engine(settings).begin() as connection:
        upsert_generators(connection, [generator])
        upsert_assets(connection, records)
        upsert_assets(connection, [copy])  # a later object with the same bytes
        ids = dict(connection.execute(sa.text("SELECT key, id FROM assets")).all())
        values = {"good": 7.0, "low": 3.0, "blurry": 8.0, "faint": 8.0}
        write_scores(
            connection,
            [ScoreValue(ids[k], "technical", "1", v, {}) for k, v in values.items()]
            + [ScoreValue(ids["other-scorer"], "laion-aes-v2", "2", 6.0, {})],
        )
        mark_scored(connection, [ids[k] for k in [*values, "other-scorer"]])
        connection.execute(
            sa.text(
                "INSERT INTO defects (asset_id, category, severity, detail) VALUES "
                "(:b, 'blur', 0.8, 'x'), (:f, 'blur', 0.2, 'y'), (:f, 'noise', 0.9, 'z')"
            ),
            {"b": ids["blurry"], "f": ids["faint"]},
        )
    return ids


def _jsonl(path: Path) -> dict[str, dict]:
    return {row["key"]: row for row in map(json.loads, path.read_text().splitlines())}


def test_manifest_keeps_and_drops_with_reasons(settings, assets, tmp_path):
    summary = export_manifest(
        settings, tmp_path / "m.jsonl", "technical", min_score=5, exclude_defects=["blur"], min_severity=0.5
    )
    rows = _jsonl(summary.path)
    assert (summary.kept, summary.dropped) == (2, 5), {k: (r["keep"], r["reason"]) for k, r in rows.items()}
    assert {key for key, row in rows.items() if row["keep"]} == {"good", "faint"}
    assert rows["low"]["reason"] == "score 3 < 5"
    assert rows["blurry"]["reason"] == "defect blur (0.80)"
    assert rows["other-scorer"]["reason"] == "not scored by technical"
    assert rows["copy"]["reason"] == f"duplicate of {assets['good']}"
    assert rows["failed"]["reason"].startswith("failed: not an image")
    assert rows["faint"]["defects"] == [{"category": "blur", "severity": 0.2}, {"category": "noise", "severity": 0.9}]
    assert list(rows["good"]) == list(COLUMNS) and rows["good"]["scores"] == {"technical": 7.0}
    assert rows["good"]["generator"] == "m:1" and rows["good"]["sha256"] == "sha-good"
    mask = os.umask(0o022)
    os.umask(mask)
    assert summary.path.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's private 0600
    assert [p.name for p in tmp_path.iterdir()] == ["m.jsonl"]  # no temporary file left behind


def test_formats_carry_the_same_rows(settings, assets, tmp_path):
    reference = _jsonl(export_manifest(settings, tmp_path / "m.jsonl", "technical", min_score=5).path)
    csv_path = export_manifest(settings, tmp_path / "m.csv", "technical", min_score=5, format="csv").path
    with csv_path.open(newline="") as handle:
        from_csv = {row["key"]: row for row in csv.DictReader(handle)}
    table = pq.read_table(
        export_manifest(settings, tmp_path / "m.parquet", "technical", min_score=5, format="parquet").path
    )
    from_parquet = {row["key"]: row for row in table.to_pylist()}
    assert set(from_csv) == set(from_parquet) == set(reference)
    for key, row in reference.items():
        assert from_parquet[key]["keep"] == row["keep"] and from_parquet[key]["reason"] == row["reason"]
        scores = {name: row["scores"].get(name) for name in ("technical", "laion-aes-v2")}
        assert {name: from_parquet[key][f"score_{name}"] for name in scores} == scores
        assert from_parquet[key]["defects"] == row["defects"]
        assert from_csv[key]["keep"] == str(row["keep"]) and json.loads(from_csv[key]["defects"]) == row["defects"]
    assert table.schema.field("score").type == "double" and table.schema.field("keep").type == "bool"


def test_parquet_carries_a_float_column_per_scorer_and_defects_as_typed_structs(settings, assets, tmp_path):
    table = pq.read_table(export_manifest(settings, tmp_path / "m.parquet", "technical", format="parquet").path)
    assert table.schema.names == [
        *[name for name in COLUMNS if name not in ("scores", "defects")],
        "score_laion-aes-v2",
        "score_technical",
        "defects",
    ]
    assert table.schema.field("score_technical").type == pa.float64()
    assert table.schema.field("score_laion-aes-v2").type == pa.float64()
    defects = table.schema.field("defects").type
    assert pa.types.is_list(defects) and pa.types.is_struct(defects.value_type)
    assert [(field.name, field.type) for field in defects.value_type] == [
        ("category", pa.string()),
        ("severity", pa.float64()),
    ]
    rows = {row["key"]: row for row in table.to_pylist()}
    assert (rows["faint"]["score_technical"], rows["faint"]["score_laion-aes-v2"]) == (8.0, None)
    assert (rows["other-scorer"]["score_technical"], rows["other-scorer"]["score_laion-aes-v2"]) == (None, 6.0)
    assert rows["faint"]["defects"] == [{"category": "blur", "severity": 0.2}, {"category": "noise", "severity": 0.9}]
    assert rows["good"]["defects"] == []
    severities = pc.list_flatten(table.column("defects")).combine_chunks().field("severity")
    assert severities.type == pa.float64() and sorted(severities.to_pylist()) == [0.2, 0.8, 0.9]


def test_the_scorer_list_and_the_rows_are_read_in_one_snapshot(settings, assets, tmp_path):
    """A scorer whose first score is committed between the export's two reads is in neither of them."""
    waiting = sa.text(
        "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE NOT l.granted "
        "AND c.relname = 'assets'"
    )
    with ThreadPoolExecutor(1) as pool, get_engine(settings).connect() as writer:
        with writer.begin():
            writer.execute(sa.text("LOCK TABLE assets IN ACCESS EXCLUSIVE MODE"))  # the rows' read waits here
            export = pool.submit(export_manifest, settings, tmp_path / "during.jsonl", "technical")
            with get_engine(settings).connect() as observer:
                while not observer.execute(waiting).scalar_one() and not export.done():
                    time.sleep(0.05)
            assert not export.done(), export.exception()  # it read the scorer list and waits for the rows
            write_scores(writer, [ScoreValue(assets["good"], "late", "1", 9.0, {})])
        export.result()
    assert _jsonl(tmp_path / "during.jsonl")["good"]["scores"] == {"technical": 7.0}
    after = export_manifest(settings, tmp_path / "after.parquet", "technical", format="parquet").path
    assert pq.read_table(after).column("score_late").to_pylist().count(9.0) == 1  # a later export has both


def test_bad_requests_fail_clearly_and_leave_no_file(settings, assets, tmp_path):
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        export_manifest(settings, tmp_path / "m.xml", "technical", format="xml")
    with pytest.raises(ValueError, match="no asset has a 'nope' score"):
        export_manifest(settings, tmp_path / "m.jsonl", "nope")
    assert list(tmp_path.iterdir()) == []


def test_cli_export(settings, assets, tmp_path):
    out = tmp_path / "keep.jsonl"
    done = subprocess.run(
        [
            AESQ,
            "export",
            "--scorer",
            "technical",
            "--min-score",
            "5",
            "--exclude-defects",
            "blur,noise",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=os.environ,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "kept 1, dropped 6" in done.stdout
    assert [key for key, row in _jsonl(out).items() if row["keep"]] == ["good"]
    bad = subprocess.run(
        [AESQ, "export", "--scorer", "technical", "--format", "xml", "--out", str(out)],
        capture_output=True,
        text=True,
        env=os.environ,
        timeout=120,
    )
    # A usage error, as Click reports one: exit status 2, the choices named.
    said = " ".join(bad.stderr.replace("│", " ").split())  # Typer's error box wraps at the terminal's width
    assert bad.returncode == 2 and "'xml' is not one of 'jsonl', 'csv', 'parquet'" in said, bad.stderr
