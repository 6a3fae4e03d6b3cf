"""`aesq run` ends with what this run did and only its failures; `aesq retry` sends failed assets back
through ingest and runs their source, on the real stack (embedded Postgres, Prefect's harness)."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from aesq.cli.main import app
from aesq.core.config import get_settings
from aesq.core.database import get_engine
from aesq.core.writes import mark_failed
from tests.helpers import noise_image, png_bytes, put

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def _status(settings) -> dict[str, tuple]:
    """(status, error) of every asset, by key."""
    with get_engine(settings).connect() as connection:
        return {row.key: (row.status, row.error) for row in connection.execute(sa.text("SELECT * FROM assets"))}


def _fail_at_scoring(settings, key: str) -> None:
    """Record a scorer's bad output for the asset at `key` at its first scoring, as scoring records it."""
    with get_engine(settings).begin() as connection:
        asset_id = connection.execute(sa.text("SELECT id FROM assets WHERE key = :key"), {"key": key}).scalar_one()
        connection.execute(
            sa.text("UPDATE assets SET status = 'pending', scored_at = NULL WHERE id = :id"), {"id": asset_id}
        )
        mark_failed(connection, {asset_id: "scorer technical returned nan"})


def test_a_run_summarises_itself_and_retry_examines_failed_assets_again(settings, tmp_path):
    source = tmp_path / "images"
    source.mkdir()
    for index in range(3):
        (source / f"{index}.png").write_bytes(png_bytes(noise_image(index, 32)))
    (source / "broken.png").write_bytes(b"not an image")
    (source / "2.png.json").write_text("{oops")
    runner = CliRunner()

    first = runner.invoke(app, ["run", str(source)], catch_exceptions=False)

    assert first.exit_code == 0, first.output
    assert "this run: 4 new, 2 scored, 2 failed, 0 duplicates" in first.output
    assert "failed (not an image): 1" in first.output and f"{source}/broken.png: not an image" in first.output
    assert "failed (sidecar): 1" in first.output and f"aesq retry --source {source}" in first.output

    (source / "2.png.json").write_text(json.dumps({"prompt": "fixed"}))
    second = runner.invoke(app, ["run", str(source)], catch_exceptions=False)

    assert "this run: 0 new, 1 scored, 0 failed" in second.output, second.output
    assert "broken.png" not in second.output  # an earlier run's failure is not this run's
    _fail_at_scoring(settings, "0.png")

    queued = runner.invoke(app, ["retry", "--queue-only"], catch_exceptions=False)

    assert queued.exit_code == 0 and "2 failed assets queued for ingest again" in queued.output, queued.output
    assert _status(settings)["0.png"] == ("failed", "scorer technical returned nan")  # until the new outcome

    retried = runner.invoke(app, ["retry", "--source", str(source)], catch_exceptions=False)

    assert retried.exit_code == 0, retried.output
    assert "0 failed assets queued for ingest again (2 were waiting in the queue already)" in retried.output
    assert "this run: 0 new, 1 scored, 1 failed" in retried.output, retried.output
    assert _status(settings)["0.png"] == ("scored", None)
    assert _status(settings)["broken.png"] == ("failed", "not an image (no known image format)")


def test_a_retry_ingests_what_it_queued_and_nothing_else_of_the_bucket(settings, s3_client, bucket, monkeypatch):
    for index, key in enumerate(("gen/0.png", "gen/1.png", "raw/2.png", "raw/3.png")):
        put(s3_client, bucket, key, png_bytes(noise_image(index, 32)))
    put(s3_client, bucket, "reports/today.html", b"<html></html>")
    runner = CliRunner()
    assert runner.invoke(app, ["run", f"s3://{bucket}/gen/"], catch_exceptions=False).exit_code == 0
    _fail_at_scoring(settings, "gen/0.png")
    monkeypatch.setenv("AESQ_SOURCES", f"s3://{bucket}/gen/")
    get_settings.cache_clear()

    configured = runner.invoke(app, ["retry", "--queue-only"], catch_exceptions=False)

    assert "1 failed asset queued for ingest again" in configured.output, configured.output
    assert "warning" not in configured.output
    monkeypatch.delenv("AESQ_SOURCES")
    get_settings.cache_clear()

    unconfigured = runner.invoke(app, ["retry", "--queue-only"], catch_exceptions=False)

    assert unconfigured.exit_code == 0, unconfigured.output
    assert "aesq: warning: 1 of them lie under no configured source (AESQ_SOURCES)" in unconfigured.output

    retried = runner.invoke(app, ["retry"], catch_exceptions=False)

    assert retried.exit_code == 0, retried.output
    assert "this run: 0 new, 1 scored, 0 failed" in retried.output, retried.output
    assert _status(settings) == {"gen/0.png": ("scored", None), "gen/1.png": ("scored", None)}
    with get_engine(settings).connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM ingest_queue")).scalar_one() == 0
