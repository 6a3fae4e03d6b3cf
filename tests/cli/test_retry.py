"""`aesq run` ends with what this run did and only its failures; `aesq retry` sends failed assets back
through ingest and runs their source, on the real stack (embedded Postgres, Prefect's harness)."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from aesq.cli.main import app
from aesq.core.database import get_engine
from aesq.core.writes import mark_failed
from tests.helpers import noise_image, png_bytes

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def _status(settings) -> dict[str, tuple]:
    """(status, error) of every asset, by key."""
    with get_engine(settings).connect() as connection:
        return {row.key: (row.status, row.error) for row in connection.execute(sa.text("SELECT * FROM assets"))}


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
    with get_engine(settings).begin() as connection:  # a scorer's bad output, as scoring records it
        asset_id = connection.execute(sa.text("SELECT id FROM assets WHERE key = '0.png'")).scalar_one()
        connection.execute(sa.text("UPDATE assets SET status = 'pending' WHERE id = :id"), {"id": asset_id})
        mark_failed(connection, {asset_id: "scorer technical returned nan"})

    queued = runner.invoke(app, ["retry", "--queue-only"], catch_exceptions=False)

    assert queued.exit_code == 0 and "2 failed assets queued for ingest again" in queued.output, queued.output
    assert _status(settings)["0.png"] == ("failed", "scorer technical returned nan")  # until the new outcome

    retried = runner.invoke(app, ["retry", "--source", str(source)], catch_exceptions=False)

    assert retried.exit_code == 0, retried.output
    assert "0 failed assets queued for ingest again (2 were waiting in the queue already)" in retried.output
    assert "this run: 0 new, 1 scored, 1 failed" in retried.output, retried.output
    assert _status(settings)["0.png"] == ("scored", None)
    assert _status(settings)["broken.png"] == ("failed", "not an image (no known image format)")
