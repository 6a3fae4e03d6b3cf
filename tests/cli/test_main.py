"""The `aesq` command on the real stack: the demo end to end, the read commands, one-line errors."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
import typer
from PIL import ImageFilter
from typer.testing import CliRunner

from aesq.analysis.versions import version_statistics
from aesq.cli.main import app
from aesq.core import database
from aesq.core.config import get_settings
from aesq.core.namespaces import namespace_settings
from aesq.core.pipeline_status import status_counts
from tests.helpers import (
    answer_with_score_tokens,
    ingest_all,
    noise_image,
    photo,
    ship_vocabulary_files,
    write_tiny_ernie,
)

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
    versions = [row["version"] for row in version_statistics(settings, "technical")]
    assert versions == ["v2.0-sft", "v1.1-lora", "v1.0-base"]
    table = result.output[result.output.index("Generator versions") :]
    positions = [table.index(f"demo-diffusion:{version}") for version in versions]
    assert positions == sorted(positions)

    top = runner.invoke(app, ["top", "--generator", "demo-diffusion:v2.0-sft", "-n", "2"])
    rows = [line for line in top.output.splitlines() if line.startswith("│")]
    assert top.exit_code == 0 and len(rows) == 2, top.output
    assert all("│ v2.0-sft" in row for row in rows) or "version: v2.0-sft" in top.output, top.output  # or said once
    status = runner.invoke(app, ["status"])
    assert "assets: failed 1, scored 25" in status.output
    with database.get_engine(settings).connect() as connection:
        first_scored = connection.execute(sa.text("SELECT min(id) FROM assets WHERE status = 'scored'")).scalar_one()
    similar = runner.invoke(app, ["similar", str(first_scored), "-n", "3"])
    assert similar.exit_code == 0 and sum(line.startswith("│") for line in similar.output.splitlines()) == 3
    assert "defects recorded on low scorers" in result.output
    report = Path(result.output.split("report: ")[1].split()[0])
    assert report.is_file() and "demo-diffusion:v2.0-sft" in report.read_text()

    compared = runner.invoke(
        app, ["compare", "demo-diffusion:v1.0-base", "demo-diffusion:v1.1-lora", "demo-diffusion:v2.0-sft"]
    )
    assert compared.exit_code == 0, compared.output
    assert "each version against demo-diffusion:v1.0-base" in compared.output
    rows = {
        line.split("│")[1].strip(): line.split("│")[3].strip()
        for line in compared.output.splitlines()
        if line.startswith("│ demo-diffusion")
    }
    assert set(rows) == {"demo-diffusion:v1.1-lora", "demo-diffusion:v2.0-sft"}
    assert all(diff.startswith("+") for diff in rows.values()), compared.output
    lonely = runner.invoke(app, ["compare", "demo-diffusion:v1.0-base"])
    assert lonely.exit_code == 2


def _aesq(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run the installed `aesq` command."""
    return subprocess.run([AESQ, *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=120)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["run", "s3://ab"], {}, "an S3 bucket name has at least 3 characters"),
        (["run", "/no/such/folder"], {}, "no such folder"),
        (["status"], {"AESQ_SCORERS": "nope"}, "unknown scorer 'nope'"),
        (["status"], {"AESQ_BATCH_SIZE": "0"}, "AESQ_BATCH_SIZE: must be greater than 0"),
        (["status"], {"AESQ_DATABASE_URL": "postgresql://x@127.0.0.1:1/x"}, "cannot reach the database at 127.0.0.1:1"),
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


def test_explained_errors_keep_their_line_and_others_their_type():
    """An error whose message already says the cause and what to do reaches the user as it is."""
    from aesq.cli.main import _one_line
    from aesq.core.storage import BatchUnread

    assert _one_line(BatchUnread("a worker of pool 'gpu' could not read the batch")) == (
        "a worker of pool 'gpu' could not read the batch"
    )
    assert _one_line(KeyError("x")) == "KeyError: 'x'"


def test_a_database_refusal_is_one_line_without_the_statement(settings):
    role = f"stranger_{uuid.uuid4().hex[:8]}"
    admin = database.engine(settings.database_url)
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
        connection.execute(sa.text(f'GRANT SELECT ON alembic_version TO "{role}"'))
    try:
        url = sa.engine.make_url(settings.database_url).set(username=role).render_as_string(hide_password=False)
        result = _aesq("status", env={"AESQ_DATABASE_URL": url})
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP OWNED BY "{role}"'))
            connection.execute(sa.text(f'DROP ROLE "{role}"'))
    assert result.returncode == 1
    assert result.stderr == "aesq: error: cannot use the database: permission denied for table assets\n"


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


def _image_folder(folder: Path, count: int) -> Path:
    """`count` distinct JPEGs, enough for a run that lasts some seconds."""
    folder.mkdir()
    for seed in range(count):
        noise_image(seed, 256).save(folder / f"{seed:03d}.jpg", quality=90)
    return folder


@pytest.fixture
def start_run(tmp_path: Path) -> Iterator[Callable[[Path, dict[str, str]], subprocess.Popen]]:
    """Start `aesq run SOURCE` in its own process group, as a terminal runs a command, with stdout and stderr
    in tmp_path; whatever is left of the group is killed afterwards."""
    started: list[subprocess.Popen] = []

    def start(source: Path, env: dict[str, str]) -> subprocess.Popen:
        with (tmp_path / "stdout").open("w") as stdout, (tmp_path / "stderr").open("w") as stderr:
            started.append(
                subprocess.Popen(
                    [AESQ, "run", str(source)], stdout=stdout, stderr=stderr, env=env, start_new_session=True
                )
            )
        return started[-1]

    yield start
    for process in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _harness_env() -> dict[str, str]:
    """This environment, pointed at the test harness's Prefect API."""
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}


def _wait_until_scoring(process: subprocess.Popen, settings, seconds: float = 180) -> None:
    """Return once the run has scored its first assets, while it still runs."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, f"aesq run ended early with status {process.returncode}"
        if status_counts(settings).get("scored"):
            return
        time.sleep(0.2)
    raise AssertionError("the run scored nothing in time")


def _seconds_to_stop(process: subprocess.Popen, send: Callable[[], None]) -> float:
    """Send a signal; the seconds until the process was gone."""
    sent = time.monotonic()
    send()
    process.wait(30)
    return time.monotonic() - sent


def _live_members(group: int) -> list[int]:
    """Processes of process group `group` that are not zombies (those only wait for a parent to reap them)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            state, _parent, process_group = stat.read_text().rsplit(")", 1)[1].split()[:3]
            if int(process_group) == group and state != "Z":
                members.append(int(stat.parent.name))
    return members


def _flow_run_states(source: Path) -> list[str]:
    """States of the aesq-run flow runs of `source`, from the test harness's Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["aesq-run"])))
    return [run.state.type.value for run in runs if run.parameters.get("source") == str(source)]


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_run_at_once_and_cancels_its_flow_run(settings, tmp_path, start_run, signum):
    source = _image_folder(tmp_path / "images", 120)
    process = start_run(source, _harness_env())
    _wait_until_scoring(process, settings)
    seconds = _seconds_to_stop(process, lambda: process.send_signal(signum))
    stderr = (tmp_path / "stderr").read_text()
    assert seconds < 5 and process.returncode == -signum, (seconds, process.returncode, stderr)
    assert stderr.strip().splitlines() == [stderr.strip()], stderr
    assert stderr.startswith(f"aesq: stopped by {signum.name}; flow run ") and "marked Cancelled" in stderr
    assert _flow_run_states(source) == ["CANCELLED"]
    assert status_counts(settings).get("scored", 0) < 120


@pytest.mark.slow
def test_terminal_ctrl_c_leaves_the_local_prefect_server_up_to_record_the_cancel(settings, tmp_path, start_run):
    """A terminal sends SIGINT to the whole process group; the local Prefect server runs in its own session."""
    from aesq.cli.local_prefect import server_dir, stop_server

    source = _image_folder(tmp_path / "images", 120)
    env = {name: value for name, value in os.environ.items() if name != "PREFECT_API_URL"}
    try:
        process = start_run(source, env)
        _wait_until_scoring(process, settings)
        seconds = _seconds_to_stop(process, lambda: os.killpg(process.pid, signal.SIGINT))
        stderr = (tmp_path / "stderr").read_text()
        assert seconds < 5 and process.returncode == -signal.SIGINT, (seconds, process.returncode, stderr)
        starting, stopped = stderr.strip().splitlines()  # the cold start's notice, then the one line of the stop
        assert starting == f"aesq: starting the local Prefect server in {server_dir(settings.data_dir)}…", stderr
        assert "marked Cancelled" in stopped, stderr
        deadline = time.monotonic() + 20  # nothing of the command's group lingers (image validation workers)
        while _live_members(process.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _live_members(process.pid) == []
        with sqlite3.connect(server_dir(settings.data_dir) / "prefect.db") as prefect_db:
            states = prefect_db.execute("SELECT state_type FROM flow_run").fetchall()
        assert states == [("CANCELLED",)]
    finally:
        stop_server(settings.data_dir)


@contextmanager
def _connections_refused(database_url: str, admin_url: str) -> Iterator[None]:
    """The database refuses connections and drops the open ones for the duration: a database blip."""
    name = sa.engine.make_url(database_url).database
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false'))
        connection.execute(
            sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"), {"name": name}
        )
        try:
            yield
        finally:
            connection.execute(sa.text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true'))
    admin.dispose()


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_a_database_blip_during_run_is_ridden_out(settings, postgres_server, tmp_path, start_run):
    source = _image_folder(tmp_path / "images", 60)
    process = start_run(source, _harness_env())
    _wait_until_scoring(process, settings)
    with _connections_refused(settings.database_url, postgres_server):
        time.sleep(3)  # the progress display polls every 0.5 s; tasks retry after 2 s, then 10 s
    assert process.wait(300) == 0, (tmp_path / "stderr").read_text()
    stdout = (tmp_path / "stdout").read_text()
    assert "assets: scored 60" in stdout, stdout
    assert _flow_run_states(source) == ["COMPLETED"]


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_a_run_that_fails_says_why_in_one_line(settings):
    result = subprocess.run(
        [AESQ, "run", "s3://no-such-bucket-here/"], capture_output=True, text=True, env=_harness_env(), timeout=120
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "aesq: error: s3://no-such-bucket-here/: no such bucket 'no-such-bucket-here' at "
        f"{settings.s3_endpoint} (AESQ_S3_ENDPOINT): create it, or fix the name"
    ], result.stderr


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_run_ends_with_the_versions_of_its_source_or_says_it_found_no_images(settings, tmp_path):
    def run(source: Path) -> str:
        result = subprocess.run(
            [AESQ, "run", str(source)], capture_output=True, text=True, env={**_harness_env(), "COLUMNS": "200"}
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    (tmp_path / "empty").mkdir()
    nothing = run(tmp_path / "empty")
    assert nothing.splitlines()[-1] == f"no images found in {tmp_path / 'empty'}", nothing
    for offset, name in enumerate(("alpha", "beta")):
        folder = tmp_path / name / "generated" / name / "v1"
        folder.mkdir(parents=True)
        for seed in range(2):
            noise_image(10 * offset + seed, 96).save(folder / f"{seed}.jpg", quality=90)
    run(tmp_path / "alpha")
    beta = run(tmp_path / "beta")
    assert f"Generator versions with images in {tmp_path / 'beta'}" in beta, beta
    assert "beta:v1" in beta and "alpha:v1" not in beta, beta


def test_status_shows_work_in_progress_and_who_holds_it(settings):
    from aesq.core import claims

    with database.get_engine(settings).begin() as connection:
        claims.queue_objects(connection, "s3", "b", [claims.Listed(key, "e") for key in ("a", "b", "c")])
        claims.claim_objects(connection, "s3", "b", "", 2, 60)
    status = CliRunner().invoke(app, ["status"], terminal_width=80)
    assert status.exit_code == 0, status.output
    line = " ".join(status.output.split())
    assert "in progress: 3 objects queued for ingest (2 claimed), 0 assets claimed for scoring" in line
    assert f"workers: {claims.WORKER}" in line
    with database.get_engine(settings).begin() as connection:
        claims.release_worker(connection)
        connection.execute(sa.text("DELETE FROM ingest_queue WHERE key IN ('b', 'c')"))
    single = " ".join(CliRunner().invoke(app, ["status"], terminal_width=80).output.split())
    assert "in progress: 1 object queued for ingest (0 claimed), 0 assets claimed for scoring" in single, single


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_bench_labels_scores_with_the_named_scorer_also_when_pools_are_configured(settings, tmp_path, monkeypatch):
    # A pool of other models and no worker serving it: the labelled set is scored here, with the scorer named.
    monkeypatch.setenv("AESQ_POOLS", json.dumps({"vectors": {"embedders": ["efficientnet-lite0"], "device": "cpu"}}))
    monkeypatch.setenv("AESQ_POOL_WAIT_SECONDS", "5")
    monkeypatch.setenv("AESQ_EMBEDDERS", "")
    get_settings.cache_clear()
    folder = tmp_path / "labelled"
    folder.mkdir()
    for seed in range(6):
        noise_image(seed, 64).filter(ImageFilter.GaussianBlur(seed)).save(folder / f"{seed}.png")
    (folder / "test.json").write_text(
        json.dumps([{"image": f"{seed}.png", "gt_score": 9.0 - seed} for seed in range(6)])
    )
    # Production assets waiting for the pools' models: the benchmark leaves them to the pools.
    production = tmp_path / "production"
    production.mkdir()
    noise_image(99, 64).save(production / "waiting.png")
    waiting = ingest_all(str(production), settings)
    result = CliRunner().invoke(
        app, ["bench", "labels", "--data", str(folder), "--scorer", "technical", "--bootstrap", "100"]
    )
    assert result.exit_code == 0, (result.output, result.exception)
    assert "technical against human scores: 6 images" in result.output
    labelled = namespace_settings(settings, "labels")  # the labelled set's own database, shared by tests
    with database.get_engine(labelled).connect() as connection:
        outputs = connection.execute(
            sa.text(
                "SELECT 'score:' || scorer, count(*) FROM scores JOIN assets a ON a.id = asset_id "
                "WHERE a.bucket = :folder GROUP BY scorer UNION ALL "
                "SELECT 'embedding:' || embedder, count(*) FROM embeddings JOIN assets a ON a.id = asset_id "
                "WHERE a.bucket = :folder GROUP BY embedder"
            ),
            {"folder": str(folder.resolve())},
        ).all()
    assert outputs == [("score:technical", 6)]
    with database.get_engine(settings).connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM scores")).scalar_one() == 0
    assert status_counts(settings)["pending"] == len(waiting) == 1


# What a command that only reads results must not import: each takes seconds to load.
HEAVY_MODULES = ("torch", "scipy", "transformers", "prefect")
# main() ends the process itself after the exit hooks: the probe reports from one of them.
_IMPORTS_PROBE = """
import atexit, json, sys
atexit.register(lambda: print(json.dumps([name for name in HEAVY if name in sys.modules]), file=sys.stderr))
from aesq.cli.main import main
sys.argv = ["aesq", *sys.argv[1:]]
main()
"""


def _imports_of(*args: str, preload: str = "sys") -> dict:
    """Run `aesq ARGS` in a fresh interpreter (after importing `preload`): its exit status and which of
    HEAVY_MODULES it imported."""
    probe = f"import {preload}\nHEAVY = {HEAVY_MODULES!r}\n{_IMPORTS_PROBE}"
    result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120)
    return {"code": result.returncode, "heavy": json.loads(result.stderr.strip().splitlines()[-1])}


def test_read_only_commands_import_no_ml_or_prefect(demo_settings, tmp_path):
    with database.get_engine(demo_settings).connect() as connection:
        scored = connection.execute(sa.text("SELECT min(id) FROM assets WHERE status = 'scored'")).scalar_one()
    commands = [
        ["--help"],
        ["--version"],
        ["export"],  # a usage error
        ["status"],
        ["compare"],
        ["top", "-g", "demo-diffusion"],
        ["similar", str(scored)],
        ["export", "--scorer", "technical", "--out", str(tmp_path / "manifest.jsonl")],
        ["db", "current"],
    ]
    seen = {" ".join(command): _imports_of(*command) for command in commands}
    assert seen == {
        " ".join(command): {"code": 2 if command == ["export"] else 0, "heavy": []} for command in commands
    }, seen
    assert _imports_of("--help", preload="scipy")["heavy"] == ["scipy"]  # the probe does see an import


def test_usage_errors_follow_click(settings):
    missing = _aesq("export", env={})
    assert missing.returncode == 2 and missing.stdout == ""
    assert "Usage: aesq export [OPTIONS]" in missing.stderr and "Try 'aesq export --help' for help." in missing.stderr
    assert "Missing option '--scorer'" in missing.stderr
    mistyped = _aesq("statsu", env={})
    assert mistyped.returncode == 2 and "Did you mean 'status'?" in mistyped.stderr, mistyped.stderr
    option = _aesq("top", "--generatr", "x", env={})
    assert option.returncode == 2 and "--generator" in option.stderr and "No such option" in option.stderr
    version = _aesq("--version", env={})
    assert version.returncode == 0 and version.stdout == f"aesq {importlib.metadata.version('aesq')}\n"


def test_tables_fit_80_columns_and_keep_names_at_120(demo_settings):
    versions = ["demo-diffusion:v1.0-base", "demo-diffusion:v1.1-lora", "demo-diffusion:v2.0-sft"]
    for command, names in (
        (["compare"], versions),
        (["compare", *versions], versions[1:]),
        (["top", "-g", "demo-diffusion"], ["v2.0-sft", "v1.1-lora"]),
    ):
        narrow = _aesq(*command, env={"COLUMNS": "80"})
        assert narrow.returncode == 0, narrow.stderr
        lines = narrow.stdout.splitlines()
        assert all(len(line) <= 80 for line in lines), narrow.stdout
        assert not re.search(r"(^|[\s│┃])\S{1,3}…", narrow.stdout), narrow.stdout  # no cell cut to a stub
        assert all(name in narrow.stdout for name in names), narrow.stdout
    wide = _aesq("compare", env={"COLUMNS": "120"})
    rows = [line for line in wide.stdout.splitlines() if line.startswith("│ demo-diffusion")]
    assert [row.split("│")[1].strip() for row in rows] == versions[::-1], wide.stdout
    assert all(len(line) <= 120 for line in wide.stdout.splitlines()), wide.stdout
    # p-values in scientific notation when small
    compared = _aesq("compare", versions[0], versions[2], env={"COLUMNS": "200"})
    row = next(line for line in compared.stdout.splitlines() if line.startswith("│ demo-diffusion:v2.0-sft"))
    assert re.fullmatch(r"\d\.\de-\d\d", row.split("│")[5].strip()), compared.stdout
    assert "0.0000" not in compared.stdout


def test_what_does_not_exist_is_an_error_naming_what_does(demo_settings):
    for args, message in (
        (["compare", "--scorer", "nosuch"], "no figures for scorer 'nosuch'; scorers with figures: technical"),
        (
            ["compare", "demo-diffusion:v1.0-base", "demo-diffusion:v9"],
            "no technical scores for version 'demo-diffusion:v9'; versions with technical scores: demo-diffusion:v1.0",
        ),
        (["similar", "99999"], "no such asset 99999"),
    ):
        result = _aesq(*args, env={})
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr.startswith("aesq: error: ") and message in result.stderr, result.stderr


def test_similar_prints_a_table_and_says_when_an_asset_has_no_embedding(demo_settings):
    with database.get_engine(demo_settings).connect() as connection:
        scored = connection.execute(sa.text("SELECT min(id) FROM assets WHERE status = 'scored'")).scalar_one()
        failed = connection.execute(sa.text("SELECT min(id) FROM assets WHERE status = 'failed'")).scalar_one()
    similar = _aesq("similar", str(scored), "-n", "3", env={"COLUMNS": "100"})
    assert similar.returncode == 0, similar.stderr
    header = next(line for line in similar.stdout.splitlines() if line.startswith("┃"))
    assert [cell.strip() for cell in header.split("┃")[1:-1]] == ["key", "id", "generator", "version", "distance"]
    rows = [line.split("│")[1:-1] for line in similar.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 3 and all(re.fullmatch(r"0\.\d{4}", row[4].strip()) for row in rows), similar.stdout
    assert all(row[2].strip() in ("demo-diffusion", "other-model") for row in rows), similar.stdout
    lonely = _aesq("similar", str(failed), env={})
    assert lonely.returncode == 1 and lonely.stderr.startswith(
        f"aesq: error: asset {failed} failed, so it has no embedding: truncated or corrupt image data"
    ), lonely.stderr


def test_similar_at_80_columns_keeps_what_tells_neighbours_apart(demo_settings):
    with database.get_engine(demo_settings).connect() as connection:
        motorcycle = connection.execute(
            sa.text("SELECT min(id) FROM assets WHERE key LIKE '%/v1.0-base/stereo_motorcycle.jpg'")
        ).scalar_one()
    lines = _aesq("similar", str(motorcycle), "-n", "8", env={"COLUMNS": "80"}).stdout.splitlines()
    assert all(len(line) <= 80 and line == line.rstrip() for line in lines), lines
    keys = [line.split("│")[1].strip() for line in lines if line.startswith("│")]
    assert len(keys) == len(set(keys)) == 8 and all("/" in key and "…" not in key for key in keys), lines


def test_help_reads_well_at_80_columns(settings):
    main = _aesq("--help", env={"COLUMNS": "80"})
    assert main.returncode == 0 and "<bool>" not in main.stdout, main.stdout
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    assert [name for name, command in commands.items() if "\n" in (command.help or "")] == []  # wrapped by width
    assert "keeping its old reason" in " ".join(line.strip(" │") for line in main.stdout.splitlines())
    run = _aesq("run", "--help", env={"COLUMNS": "80"})
    assert re.search(r"Usage: aesq run \[OPTIONS\] SOURCE *\n", run.stdout) and "<bool>" not in run.stdout, run.stdout
    assert "--verbose" in run.stdout
    export = _aesq("export", "--help", env={"COLUMNS": "80"})
    assert "<jsonl|csv|parquet>" in export.stdout, export.stdout


def test_a_wrong_choice_or_a_lone_version_is_a_usage_error(settings):
    wrong = _aesq("export", "--scorer", "technical", "--out", "/tmp/x.jsonl", "--format", "xml", env={})
    said = " ".join(wrong.stderr.replace("│", " ").split())
    assert wrong.returncode == 2 and "'xml' is not one of 'jsonl', 'csv', 'parquet'" in said, wrong.stderr
    lone = _aesq("compare", "demo-diffusion:v1.0-base", env={})
    assert lone.returncode == 2 and "name at least two versions" in lone.stderr, lone.stderr
    assert "Usage: aesq compare [OPTIONS] [VERSIONS]..." in lone.stderr


def test_db_current_and_history_read_like_alembic(settings):
    versions = sorted((Path(__file__).parents[2] / "migrations" / "versions").glob("0*.py"))
    head = versions[-1].name[:4]
    current = _aesq("db", "current", env={})
    assert current.returncode == 0 and current.stdout == f"{head} (head)\n", current.stderr
    history = _aesq("db", "history", env={"COLUMNS": "300"}).stdout.splitlines()
    assert len(history) == len(versions)
    assert history[0].startswith(f"{versions[-2].name[:4]} -> {head} (head) (current), ")
    assert history[-1].startswith("<base> -> 0001, Initial schema")
    narrow = _aesq("db", "history", env={"COLUMNS": "80"}).stdout.splitlines()
    assert len(narrow) == len(versions) and all(len(line) <= 80 for line in narrow), narrow
    assert [line.split(",")[0] for line in narrow] == [line.split(",")[0] for line in history]


@pytest.mark.slow
def test_a_cold_start_says_what_it_does(tmp_path):
    env = {"AESQ_DATA_DIR": str(tmp_path / "data"), "AESQ_CONFIG": str(tmp_path / "absent.toml")}
    env = {**{name: value for name, value in os.environ.items() if name != "AESQ_DATABASE_URL"}, **env}
    try:
        cold = subprocess.run([AESQ, "status"], capture_output=True, text=True, env=env, timeout=300)
        warm = subprocess.run([AESQ, "status"], capture_output=True, text=True, env=env, timeout=120)
    finally:
        subprocess.run([AESQ, "db", "stop"], capture_output=True, env=env, timeout=120)
    head = sorted((Path(__file__).parents[2] / "migrations" / "versions").glob("0*.py"))[-1].name[:4]
    assert cold.returncode == 0 and cold.stdout == "assets: none\n", cold.stderr
    assert cold.stderr.splitlines() == [
        f"aesq: starting the embedded Postgres in {tmp_path / 'data' / 'postgres'}…",
        f"aesq: migrating the database to {head}…",
    ]
    assert warm.returncode == 0 and warm.stderr == ""


def _models_check(*args: str, folder: Path) -> subprocess.CompletedProcess:
    """Run `aesq models check ARGS` in `folder` at 80 columns, without configured weights."""
    env = {**os.environ, "COLUMNS": "80", "AESQ_CONFIG": str(folder / "absent.toml")}
    env.pop("AESQ_WEIGHTS_DIR", None)
    return subprocess.run(
        [AESQ, "models", "check", *args], capture_output=True, text=True, env=env, cwd=folder, timeout=300
    )


def _table_rows(output: str) -> dict[str, list[str]]:
    """The rows of the tables printed, by their first cell (continuation lines of wrapped cells left out)."""
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in output.splitlines() if line.startswith("│")]
    return {cells[0]: cells[1:] for cells in rows if cells[0]}


def test_models_check_prints_checks_and_scores_at_80_columns(tmp_path):
    weights = write_tiny_ernie(tmp_path / "weights")
    answer_with_score_tokens(ship_vocabulary_files(weights / "ERNIE-Image-Aes"))
    photo("astronaut").save(tmp_path / "astronaut.png")
    photo("coffee").save(tmp_path / "coffee.jpg")
    (tmp_path / "notes.txt").write_text("no pixels here")

    result = _models_check(
        "ernie-aes", "--weights", "weights", "astronaut.png", "notes.txt", "coffee.jpg", folder=tmp_path
    )

    assert result.returncode == 0, result.stderr
    assert all(len(line) <= 80 for line in result.stdout.splitlines()), result.stdout
    rows = _table_rows(result.stdout)
    for subject in ("template", "ps_version", "score tokens", "scoring prompt", "critique prompts", "model"):
        assert rows[subject][0] == "ok", result.stdout
    for image in ("astronaut.png", "coffee.jpg"):
        score, argmax, probability, mass = (float(cell) for cell in rows[image])
        assert 0 <= score <= 100 and 0 <= argmax <= 100 and 0 < probability <= 1 and 0.5 <= mass <= 1
    assert "notes.txt: not an image (no known image format)" in result.stdout
    assert result.stdout.splitlines()[-1].endswith(", 0 warn, 0 fail")


def test_models_check_exits_1_when_a_check_fails(tmp_path):
    weights = write_tiny_ernie(tmp_path / "weights")
    ship_vocabulary_files(weights / "ERNIE-Image-Aes", without_merge="ey")

    result = _models_check("ernie-aes", "--weights", "weights/ERNIE-Image-Aes", folder=tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    rows = _table_rows(result.stdout)
    assert rows["scoring prompt"][0] == rows["score tokens"][0] == "fail"
    assert result.stdout.splitlines()[-1] == "ernie-aes: 11 ok, 0 warn, 2 fail"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ernie"], "unknown model 'ernie'; scorers: artimuse, ernie-aes, laion-aes-v2, technical"),
        (["ernie-aes", "--weights", "."], "ernie-aes weights not found: put the InternVL-chat checkpoint"),
        (["technical", "--device", "nowhere"], "--device=nowhere is not a torch device"),
    ],
)
def test_models_check_errors_are_one_line(tmp_path, args, message):
    result = _models_check(*args, folder=tmp_path)

    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aesq: error: ") and message in lines[0], result.stderr


def test_models_check_help_imports_no_ml():
    assert _imports_of("models", "check", "--help") == {"code": 0, "heavy": []}
