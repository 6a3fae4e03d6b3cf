"""Where the pipeline stands, read from assets that real ingests recorded: failures grouped by the kind of their
reason, with examples, for one source or all."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import sqlalchemy as sa

from aesq.core import images
from aesq.core.database import get_engine
from aesq.core.pipeline_status import (
    OTHER_REASON,
    RunSummary,
    database_now,
    failure_reasons,
    reason_kind,
    run_summary,
)
from tests.helpers import ingest_all, noise_image, png_bytes, run_once


def _failing_folder(root, broken: int, empty: int, bad_sidecars: int) -> None:
    """A folder with one good image and objects that fail ingest for three different reasons."""
    root.mkdir(parents=True)
    (root / "good.png").write_bytes(png_bytes(noise_image(0, 16)))
    for index in range(broken):
        (root / f"broken-{index}.png").write_bytes(b"not an image at all")
    for index in range(empty):
        (root / f"empty-{index}.png").write_bytes(b"")
    for index in range(bad_sidecars):
        (root / f"sidecar-{index}.png").write_bytes(png_bytes(noise_image(10 + index, 16)))
        (root / f"sidecar-{index}.png.json").write_text("{not json")


def test_failures_are_grouped_by_reason_most_frequent_first_with_the_latest_examples(settings, tmp_path):
    _failing_folder(tmp_path / "one", broken=4, empty=1, bad_sidecars=2)
    ingest_all(str(tmp_path / "one"), settings)

    reasons = failure_reasons(settings, examples=3)

    assert [(group.reason, group.count) for group in reasons] == [("not an image", 4), ("sidecar", 2), ("empty", 1)]
    broken = reasons[0]
    assert len(broken.examples) == 3
    assert all(example.location.startswith(f"{tmp_path / 'one'}/broken-") for example in broken.examples)
    assert all(example.error.startswith("not an image") and example.asset_id for example in broken.examples)
    assert reasons[1].examples[0].error.startswith("sidecar JSON is malformed")


def test_failures_of_one_source_leave_the_others_out(settings, tmp_path):
    _failing_folder(tmp_path / "one", broken=2, empty=0, bad_sidecars=0)
    _failing_folder(tmp_path / "two", broken=1, empty=3, bad_sidecars=0)
    ingest_all(str(tmp_path / "one"), settings)
    ingest_all(str(tmp_path / "two"), settings)

    assert [(group.reason, group.count) for group in failure_reasons(settings, str(tmp_path / "two"))] == [
        ("empty", 3),
        ("not an image", 1),
    ]
    assert [(group.reason, group.count) for group in failure_reasons(settings)] == [
        ("empty", 3),
        ("not an image", 3),
    ]
    assert failure_reasons(settings, str(tmp_path / "elsewhere")) == []


def test_a_reason_no_writer_is_known_for_counts_as_other(settings, tmp_path):
    _failing_folder(tmp_path / "one", broken=2, empty=0, bad_sidecars=0)
    ingest_all(str(tmp_path / "one"), settings)
    with get_engine(settings).begin() as connection:
        connection.execute(
            sa.text("UPDATE assets SET error = 'the moon was in the wrong phase' WHERE key = 'broken-0.png'")
        )

    assert [(group.reason, group.count) for group in failure_reasons(settings)] == [("not an image", 1), ("other", 1)]


def test_a_run_summary_counts_only_what_happened_to_its_source_since_it_started(settings, tmp_path):
    source, other = tmp_path / "source", tmp_path / "other"
    _failing_folder(source, broken=1, empty=0, bad_sidecars=0)
    (source / "kept.png").write_bytes(png_bytes(noise_image(1, 16)))
    (source / "gone.png").write_bytes(png_bytes(noise_image(2, 16)))
    _failing_folder(other, broken=1, empty=0, bad_sidecars=0)
    run_once(str(source), settings)
    since = database_now(settings)
    (source / "gone.png").unlink()
    (source / "new.png").write_bytes(png_bytes(noise_image(3, 16)))
    shutil.copy(source / "kept.png", source / "copy.png")
    (source / "empty.png").write_bytes(b"")
    run_once(str(source), settings)
    run_once(str(other), settings)  # another source's work in the same time

    summary = run_summary(settings, str(source), since)

    assert summary == RunSummary(new=3, scored=1, failed=1, duplicates=1, deleted=1, waiting=0)
    this_run = failure_reasons(settings, str(source), since=since)
    assert [(group.reason, group.count, group.examples[0].location) for group in this_run] == [
        ("empty", 1, f"{source}/empty.png")
    ]
    assert run_summary(settings, str(source), database_now(settings)) == RunSummary(0, 0, 0, 0, 0, 0)


def test_source_progress_counts_what_discovery_queued_before_it_is_ingested(settings, tmp_path):
    from aesq.core import claims
    from aesq.core.pipeline_status import source_progress

    folder = tmp_path / "images"
    folder.mkdir()
    for seed in range(2):
        noise_image(seed, 32).save(folder / f"{seed}.png")
    ingest_all(str(folder), settings)
    bucket = str(folder.resolve())
    assert source_progress(settings, "file", bucket, "") == (0, 2)  # ingested, waiting for scores
    with get_engine(settings).begin() as connection:  # one known key changed, three new ones
        claims.queue_objects(connection, "file", bucket, [claims.Listed(key, "e") for key in ("0.png", "a", "b", "c")])
    assert source_progress(settings, "file", bucket, "") == (0, 5)


def test_every_reason_the_image_checks_write_has_a_kind_of_its_own(settings):
    """Each `_rejecting(problem)` of aesq/core/images.py is a kind on the failures page, not "other"."""
    tree = ast.parse(Path(images.__file__).read_text())
    problems = [
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", None) == "_rejecting"
        and isinstance(node.args[0], ast.Constant)
    ]
    assert len(problems) >= 4, problems  # the checks are still written this way
    reasons = [f"{problem}: ValueError: something" for problem in problems]
    with get_engine(settings).connect() as connection:
        kinds = connection.execute(
            sa.select(reason_kind(sa.column("error"))).select_from(
                sa.values(sa.column("error", sa.Text), name="reasons").data([(reason,) for reason in reasons])
            )
        ).scalars()
        assert {reason: kind for reason, kind in zip(reasons, kinds) if kind == OTHER_REASON} == {}
