"""The `aesq` command on the real stack: the demo end to end, the read commands, one-line errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aesq.cli import app
from aesq.config import get_settings
from aesq.queries import version_comparison

AESQ = shutil.which("aesq", path=str(Path(sys.executable).parent))


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_demo_runs_the_spine_and_ranks_the_versions(settings, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["demo", "--folder", str(tmp_path / "sample")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "built 26 demo images" in result.output
    assert "assets: failed 1, scored 25" in result.output
    assert "broken.jpg" in result.output and "truncated" in result.output
    versions = [row["version"] for row in version_comparison(settings, "technical")]
    assert versions == ["v2.0-sft", "v1.1-lora", "v1.0-base"]
    table = result.output[result.output.index("Generator versions") :]
    positions = [table.index(f"demo-diffusion:{version}") for version in versions]
    assert positions == sorted(positions)

    top = runner.invoke(app, ["top", "--generator", "demo-diffusion:v2.0-sft", "-n", "2"])
    rows = [line for line in top.output.splitlines() if line.startswith("│")]
    assert top.exit_code == 0 and len(rows) == 2 and all("│ v2.0-sft" in row for row in rows), top.output
    status = runner.invoke(app, ["status"])
    assert "assets: failed 1, scored 25" in status.output
    similar = runner.invoke(app, ["similar", "1", "-n", "3"])
    assert similar.exit_code == 0 and len(similar.output.strip().splitlines()) == 3, similar.output
    assert "defects recorded on low scorers" in result.output
    report = Path(result.output.split("report: ")[1].split()[0])
    assert report.is_file() and "demo-diffusion:v2.0-sft" in report.read_text()

    compared = runner.invoke(
        app, ["compare", "demo-diffusion:v1.0-base", "demo-diffusion:v1.1-lora", "demo-diffusion:v2.0-sft"]
    )
    assert compared.exit_code == 0, compared.output
    assert "each version against demo-diffusion:v1.0-base" in compared.output
    rows = {line.split("│")[1].strip(): line.split("│")[3].strip() for line in compared.output.splitlines()
            if line.startswith("│ demo-diffusion")}
    assert set(rows) == {"demo-diffusion:v1.1-lora", "demo-diffusion:v2.0-sft"}
    assert all(diff.startswith("+") for diff in rows.values()), compared.output
    lonely = runner.invoke(app, ["compare", "demo-diffusion:v1.0-base"])
    assert lonely.exit_code != 0


def _aesq(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run the installed `aesq` command."""
    return subprocess.run([AESQ, *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=120)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["run", "s3://ab"], {}, "an S3 bucket name has at least 3 characters"),
        (["run", "/no/such/folder"], {}, "no such folder"),
        (["status"], {"AESQ_SCORERS": "nope"}, "unknown scorer 'nope'"),
        (["status"], {"AESQ_BATCH_SIZE": "0"}, "AESQ_BATCH_SIZE: Input should be greater than 0"),
        (["status"], {"AESQ_DATABASE_URL": "postgresql://x@127.0.0.1:1/x"}, "cannot use the database"),
        (["top", "--generator", "nobody"], {}, "no scored assets for generator 'nobody'"),
        (["worker"], {"AESQ_SOURCES": ""}, "no sources configured"),
        (["bridge", "--listen", "0.0.0.0:8787"], {}, "listening beyond loopback needs AESQ_BRIDGE_TOKEN"),
        (["bridge", "--listen", "127.0.0.1:http"], {}, "--listen takes host:port"),
        (["serve", "--host", "0.0.0.0"], {}, "listening beyond loopback needs AESQ_API_TOKEN"),
    ],
)
def test_errors_are_one_clear_line(settings, args, env, message):
    result = _aesq(*args, env=env)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aesq: error: ") and message in lines[0], result.stderr


def test_db_upgrade_and_downgrade_commands(empty_database_url, monkeypatch, tmp_path):
    monkeypatch.setenv("AESQ_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("AESQ_DATABASE_URL", empty_database_url)
    get_settings.cache_clear()
    runner = CliRunner()
    refused = _aesq("status", env={"AESQ_DATABASE_URL": empty_database_url})
    assert "the database schema is not current: run `aesq db upgrade`" in refused.stderr
    upgraded = runner.invoke(app, ["db", "upgrade"])
    head = sorted(path.name[:4] for path in (Path(__file__).parents[2] / "migrations" / "versions").glob("0*.py"))[-1]
    assert upgraded.exit_code == 0 and f"database at revision {head}" in upgraded.output
    downgraded = runner.invoke(app, ["db", "downgrade", "base"])
    assert downgraded.exit_code == 0 and "database at revision None" in downgraded.output
    get_settings.cache_clear()
