"""The local Prefect server: started once where no Prefect API is configured, shared by later commands, stopped
by `aesq stop`. One server serves the module (each start costs 10-20 s)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from aesq.cli import local_prefect
from aesq.cli.local_prefect import (
    LocalPrefectError,
    LocalServer,
    ensure_server,
    log_file,
    previous_log_file,
    server_dir,
    stop_server,
)
from tests.helpers import free_port

AESQ = shutil.which("aesq", path=str(Path(sys.executable).parent))
# Stands in for a busy Prefect server: its command line names prefect and the port; it answers /api/health only
# after the given delay.
SLOW_SERVER = """
import http.server, sys, time
time.sleep(float(sys.argv[3]))
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/api/health" else 404)
        self.end_headers()
http.server.HTTPServer(("127.0.0.1", int(sys.argv[2])), Health).serve_forever()
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The data folder the module's local server lives in; the server is stopped afterwards, whatever happened."""
    folder = tmp_path_factory.mktemp("local-prefect") / "data"
    yield folder
    stop_server(folder)


def _aesq(*args: str, data_dir: Path) -> subprocess.CompletedProcess:
    """Run `aesq` as a user would: no PREFECT_API_URL, the module's data folder."""
    env = {name: value for name, value in os.environ.items() if name != "PREFECT_API_URL"}
    env["AESQ_DATA_DIR"] = str(data_dir)
    return subprocess.run([AESQ, *args], capture_output=True, text=True, env=env, timeout=300)


def _recorded(data_dir: Path) -> LocalServer:
    return LocalServer(**json.loads((server_dir(data_dir) / "server.json").read_text()))


def _answers(server: LocalServer) -> bool:
    try:
        return httpx.get(f"{server.api_url}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _running(pid: int) -> bool:
    """Whether `pid` is a living process (a zombie has no command line)."""
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())
    except FileNotFoundError:
        return False


def _flow_runs(server: LocalServer) -> list[tuple[str, str]]:
    """(flow name, state) of every flow run the server holds, read with a Prefect client pointed at it."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: server.api_url}), get_client(sync_client=True) as client:
        names = {flow.id: flow.name for flow in client.read_flows()}
        return sorted((names[run.flow_id], run.state.type.value) for run in client.read_flow_runs() if run.state)


def _task_runs(server: LocalServer) -> list[tuple[str, str]]:
    """(task name, state) of every task run the server holds: Prefect 3 sends task runs' states as events, which
    a command sends on its way out, and the server records a moment later (polled for up to 30 s)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: server.api_url}), get_client(sync_client=True) as client:
        deadline = time.monotonic() + 30
        while True:
            runs = sorted(
                (run.name.rsplit("-", 1)[0], run.state.type.value) for run in client.read_task_runs() if run.state
            )
            if (runs and all(state == "COMPLETED" for _, state in runs)) or time.monotonic() > deadline:
                return runs
            time.sleep(0.5)


def test_commands_share_one_server_that_replaces_a_stale_record(settings, data_dir):
    unrelated = subprocess.Popen(["sleep", "300"])  # a living pid a dead server's could have been reused for
    try:
        server_dir(data_dir).mkdir(parents=True)
        stale = LocalServer(unrelated.pid, free_port())
        (server_dir(data_dir) / "server.json").write_text(json.dumps({"pid": stale.pid, "port": stale.port}))

        with ThreadPoolExecutor(2) as pool:  # two commands at once start one server
            first = list(pool.map(lambda _: _aesq("defects", data_dir=data_dir), range(2)))
        assert all(result.returncode == 0 for result in first), [result.stderr for result in first]
        server = _recorded(data_dir)
        announced = [line for result in first for line in result.stdout.splitlines() if "Prefect UI" in line]
        assert announced == [f"Prefect UI on http://127.0.0.1:{server.port}"]
        starting = [result.stderr for result in first if "starting the local Prefect server" in result.stderr]
        assert starting == [f"aesq: starting the local Prefect server in {server_dir(data_dir)}…\n"]
        assert server != stale and _answers(server)
        assert _running(unrelated.pid)

        later = _aesq("report", data_dir=data_dir)
        assert later.returncode == 0 and "Prefect UI" not in later.stdout, later.stdout + later.stderr
        assert _recorded(data_dir) == server
        assert _flow_runs(server) == [
            ("aesq-defects", "COMPLETED"),
            ("aesq-defects", "COMPLETED"),
            ("aesq-report", "COMPLETED"),
        ]
        # Every task run reached the server in its final state: aesq's fast exit still sends Prefect's events.
        task_runs = _task_runs(server)
        assert {state for _, state in task_runs} == {"COMPLETED"}, task_runs
        assert {"aggregate-versions", "publish-report"} <= {name for name, _ in task_runs}, task_runs
    finally:
        unrelated.kill()
        unrelated.wait()


def test_aesq_stop_stops_the_local_server(settings, data_dir):
    server = ensure_server(data_dir, print, print)  # the one the test above left, or a new one when run alone

    stopped = _aesq("stop", data_dir=data_dir)
    assert stopped.returncode == 0 and stopped.stdout == "stopped the local Prefect server\n", stopped.stderr
    assert not _answers(server) and not _running(server.pid)
    assert not (server_dir(data_dir) / "server.json").exists()
    again = _aesq("db", "stop", data_dir=data_dir)
    assert again.returncode == 0 and again.stdout == "no local service of aesq was running\n", again.stderr


@pytest.mark.usefixtures("prefect_harness")
def test_a_configured_api_starts_no_local_server(settings, tmp_path):
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "AESQ_DATA_DIR": str(tmp_path / "data")}
    result = subprocess.run([AESQ, "defects"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and "Prefect UI" not in result.stdout, result.stderr
    assert not server_dir(tmp_path / "data").exists()


def test_a_server_that_cannot_start_is_one_line_naming_its_log(settings, tmp_path):
    data = tmp_path / "data"
    (server_dir(data) / "prefect.db").mkdir(parents=True)  # where its SQLite file should be: it cannot open it
    log_file(data).write_text("an earlier start's log\n")
    result = _aesq("defects", data_dir=data)
    assert result.returncode == 1 and result.stdout == "", result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0] == f"aesq: starting the local Prefect server in {server_dir(data)}…", lines
    assert lines[1].startswith(
        "aesq: error: the local Prefect server exited at start-up (sqlalchemy.exc.OperationalError"
    )
    assert "unable to open database file" in lines[1]
    assert lines[1].endswith(f"see {server_dir(data) / 'server.log'}, or set PREFECT_API_URL to a Prefect server")
    assert not (server_dir(data) / "server.json").exists()
    assert previous_log_file(data).read_text() == "an earlier start's log\n"  # kept once, not appended to
    assert "earlier" not in log_file(data).read_text() and "unable to open database file" in log_file(data).read_text()


def test_a_server_whose_starter_was_stopped_is_reused(settings, tmp_path):
    data = tmp_path / "data"
    env = {name: value for name, value in os.environ.items() if name != "PREFECT_API_URL"}
    starter = subprocess.Popen([AESQ, "defects"], env={**env, "AESQ_DATA_DIR": str(data)}, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (server_dir(data) / "server.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _answers(_recorded(data))  # recorded before it is up
        os.killpg(starter.pid, signal.SIGINT)  # a terminal's Ctrl-C while the server starts
        assert starter.wait(30) == -signal.SIGINT
        server = _recorded(data)
        assert _running(server.pid)

        later = _aesq("defects", data_dir=data)
        assert later.returncode == 0 and "Prefect UI" not in later.stdout, later.stdout + later.stderr
        assert _recorded(data) == server and _answers(server)
    finally:
        stop_server(data)


@pytest.fixture
def slow_server(tmp_path, monkeypatch) -> Iterator[tuple[Path, LocalServer]]:
    """A recorded local server that runs but answers only after 3 s; waited for 0.5 s quietly and 1 s (or 5 s, as
    the test sets BUSY_SECONDS) with a notice. Ended afterwards whatever happened."""
    monkeypatch.setattr(local_prefect, "QUIET_SECONDS", 0.5)
    monkeypatch.setattr(local_prefect, "BUSY_SECONDS", 1.0)
    data, port = tmp_path / "data", free_port()
    process = subprocess.Popen([sys.executable, "-c", SLOW_SERVER, "prefect", str(port), "3"], start_new_session=True)
    # Until the child has exec'd, /proc shows the forking parent's command line: not yet a "prefect" process.
    deadline = time.monotonic() + 10
    while b"prefect" not in Path(f"/proc/{process.pid}/cmdline").read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)
    server_dir(data).mkdir(parents=True)
    (server_dir(data) / "server.json").write_text(json.dumps({"pid": process.pid, "port": port}))
    try:
        yield data, LocalServer(process.pid, port)
    finally:
        process.kill()
        process.wait()


def test_a_running_server_that_does_not_answer_is_waited_for_never_killed(slow_server):
    data, server = slow_server
    notices: list[str] = []
    with pytest.raises(LocalPrefectError) as raised:
        ensure_server(data, print, notices.append)
    assert notices == [
        f"the local Prefect server on {server.ui_url} (pid {server.pid}) does not answer yet (busy or starting): "
        "waiting up to 1 s for it…"
    ]
    assert str(raised.value) == (
        f"the local Prefect server on {server.ui_url} (pid {server.pid}) runs but has not answered for 1.5 s: "
        f"see {log_file(data)}; `aesq stop` stops it (the next command starts a new one)"
    )
    assert _running(server.pid) and _recorded(data) == server


def test_a_busy_server_that_answers_later_is_reused(slow_server, monkeypatch):
    monkeypatch.setattr(local_prefect, "BUSY_SECONDS", 5.0)
    data, server = slow_server
    notices: list[str] = []
    assert ensure_server(data, notices.append, notices.append) == server
    assert len(notices) == 1 and "does not answer yet (busy or starting)" in notices[0], notices
    assert _answers(server) and _recorded(data) == server


def test_aesq_stop_says_what_it_waits_for(tmp_path):
    data = tmp_path / "data"
    server_dir(data).mkdir(parents=True)
    notices: list[str] = []
    with open(server_dir(data) / "server.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a command starting the server holds it
        stopping = threading.Thread(target=lambda: notices.append(str(stop_server(data, notices.append))))
        stopping.start()
        deadline = time.monotonic() + 10
        while not notices and time.monotonic() < deadline:
            time.sleep(0.05)
        assert notices == [
            "waiting for another aesq command to finish starting or checking the local Prefect server (at most 185 s)…"
        ]
    stopping.join(10)
    assert notices[1:] == ["False"]
