"""aesq's local Prefect server: started once in the data folder where no Prefect API is configured, then shared.

Prefect's ephemeral API costs every command its start-up (10-30 s) and forgets its runs when the command
ends. Without PREFECT_API_URL (environment or Prefect profile), aesq instead starts `prefect server start` once,
detached in its own session (a terminal's Ctrl-C does not reach it, so it can record a cancelled run), on a free
loopback port, and every later command finds it through `DATA_DIR/prefect/server.json`. It runs until
`aesq stop`. Its database is SQLite in `DATA_DIR/prefect/`: it needs no other service up (the embedded Postgres
may not be the database in use), and Prefect's tables stay out of the one that holds the assets. Its output goes to
`server.log` there, the previous start's to `server.log.1`.

A recorded server that still runs is never replaced, even when it does not answer (busy, or still starting): other
commands may be using it. A command waits for it, saying so, and gives up with an error naming `aesq stop`.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import httpx

from aesq.cli import output

HOST = "127.0.0.1"
# A loaded two-core machine may take a minute to start it; a server that has not answered by then never will.
STARTUP_SECONDS = 180.0
# How long a recorded, running server that does not answer is waited for quietly, then with a notice, before the
# command gives up on it (it is never replaced while it runs).
QUIET_SECONDS = 5.0
BUSY_SECONDS = STARTUP_SECONDS
STOP_SECONDS = 20.0
# A traceback's last line: the exception's qualified name and its message.
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception): ")


class LocalPrefectError(RuntimeError):
    """The local Prefect server cannot be started; the message says why and where its log is."""


@dataclass(frozen=True)
class LocalServer:
    """A started server, as recorded in its state file."""

    pid: int
    port: int

    @property
    def api_url(self) -> str:
        """Where Prefect clients call it."""
        return f"http://{HOST}:{self.port}/api"

    @property
    def ui_url(self) -> str:
        """Where a person opens the Prefect UI."""
        return f"http://{HOST}:{self.port}"


def server_dir(data_dir: Path) -> Path:
    """The folder of the server's database, state file, lock and log."""
    return data_dir / "prefect"


def configured_api_url() -> str | None:
    """The Prefect API the environment or the active Prefect profile names, if any."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


@contextmanager
def prefect_api(data_dir: Path, announce: Callable[[str], None], notice: Callable[[str], None]) -> Iterator[None]:
    """Prefect settings for the duration: the configured API where there is one, else the local server (started,
    with a `notice` before the wait and its UI address `announce`d, if it is not running)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if configured_api_url():
        yield
        return
    with temporary_settings(updates={PREFECT_API_URL: ensure_server(data_dir, announce, notice).api_url}):
        yield


def ensure_server(data_dir: Path, announce: Callable[[str], None], notice: Callable[[str], None]) -> LocalServer:
    """The running local server, started first if none is recorded or the recorded one's process ended."""
    with _locked(data_dir):
        recorded = _read_state(data_dir)
        if recorded is not None and _is_ours(recorded) and _answers_while_running(recorded, data_dir, notice):
            return recorded
        notice(f"starting the local Prefect server in {server_dir(data_dir)}…")
        server = _start(data_dir)
        announce(f"Prefect UI on {server.ui_url}")
        return server


def running_server(data_dir: Path) -> LocalServer | None:
    """The recorded local server if it runs and answers now; never starts one (for `aesq bridge`)."""
    recorded = _read_state(data_dir)
    return recorded if recorded is not None and _is_ours(recorded) and _healthy(recorded) else None


def _answers_while_running(server: LocalServer, data_dir: Path, notice: Callable[[str], None]) -> bool:
    """Wait for the recorded server to answer: True once it does, False once its process ended (then it may be
    replaced). A busy or starting one is waited for with a notice, and after BUSY_SECONDS an error says how to
    stop it: another command may be using it, so it is never killed here."""
    running = partial(_is_ours, server)
    if _wait_healthy(server, QUIET_SECONDS, running):
        return True
    if not running():
        return False
    notice(
        f"the local Prefect server on {server.ui_url} (pid {server.pid}) does not answer yet (busy or starting): "
        f"waiting up to {BUSY_SECONDS:g} s for it…"
    )
    if _wait_healthy(server, BUSY_SECONDS, running):
        return True
    if not running():
        return False
    raise LocalPrefectError(
        f"the local Prefect server on {server.ui_url} (pid {server.pid}) runs but has not answered for "
        f"{QUIET_SECONDS + BUSY_SECONDS:g} s: see {log_file(data_dir)}; `aesq stop` stops it (the next command "
        "starts a new one)"
    )


def stop_server(data_dir: Path, notice: Callable[[str], None] = output.notice) -> bool:
    """Stop the local server if it runs; True when one was stopped. Where another command holds the server's lock
    (starting the server or waiting for it to answer), `notice` says so before the wait."""
    if not server_dir(data_dir).is_dir():
        return False
    longest = max(STARTUP_SECONDS, QUIET_SECONDS + BUSY_SECONDS)
    waiting = (
        "waiting for another aesq command to finish starting or checking the local Prefect server "
        f"(at most {longest:g} s)…"
    )
    with _locked(data_dir, lambda: notice(waiting)):
        recorded = _read_state(data_dir)
        _state_file(data_dir).unlink(missing_ok=True)
        if recorded is None or not _is_ours(recorded):
            return False
        _terminate(recorded)
        return True


def _state_file(data_dir: Path) -> Path:
    """The record of the running server (pid and port), read by every command."""
    return server_dir(data_dir) / "server.json"


def log_file(data_dir: Path) -> Path:
    """Where the server's output goes."""
    return server_dir(data_dir) / "server.log"


def previous_log_file(data_dir: Path) -> Path:
    """The log of the start before, kept when a new server starts (so the log never grows past two starts)."""
    return server_dir(data_dir) / "server.log.1"


@contextmanager
def _locked(data_dir: Path, before_waiting: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Hold the data folder's server lock, so two commands starting at once start one server; `before_waiting` is
    called when another command holds it."""
    server_dir(data_dir).mkdir(parents=True, exist_ok=True)
    with open(server_dir(data_dir) / "server.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            before_waiting()
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def _read_state(data_dir: Path) -> LocalServer | None:
    """The recorded server, or None where there is no readable record."""
    try:
        return LocalServer(**json.loads(_state_file(data_dir).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_state(data_dir: Path, server: LocalServer) -> None:
    """Record the server atomically, so a reader never sees half a file."""
    temporary = _state_file(data_dir).with_suffix(".tmp")
    temporary.write_text(json.dumps(asdict(server)))
    temporary.replace(_state_file(data_dir))


def _is_ours(server: LocalServer) -> bool:
    """Whether the recorded pid is still a Prefect server on the recorded port (not a dead one's reused pid)."""
    try:
        arguments = Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc here: trust a living pid
        try:
            os.kill(server.pid, 0)
        except ProcessLookupError:
            return False
        return True
    return b"prefect" in arguments and str(server.port).encode() in arguments


def _healthy(server: LocalServer) -> bool:
    """Whether the server answers its health check."""
    try:
        return httpx.get(f"{server.api_url}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _wait_healthy(server: LocalServer, seconds: float, running: Callable[[], bool]) -> bool:
    """Poll the health check for up to `seconds`; False early once `running` says the server's process ended."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _healthy(server):
            return True
        if not running():
            return False
        time.sleep(0.25)
    return _healthy(server)


def _free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _start(data_dir: Path) -> LocalServer:
    """Start a server detached (own session, output to a new log file, the previous one kept), wait until it
    answers, record it."""
    port = _free_port()
    database = server_dir(data_dir) / "prefect.db"
    env = {
        **{name: value for name, value in os.environ.items() if name != "PREFECT_API_URL"},
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{database}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port)]
    if log_file(data_dir).exists():
        log_file(data_dir).replace(previous_log_file(data_dir))
    with open(log_file(data_dir), "wb") as log:
        process = subprocess.Popen(  # in its folder, so it keeps no user's working directory busy
            command,
            cwd=server_dir(data_dir),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = LocalServer(process.pid, port)
    _write_state(data_dir, server)  # at once: a command stopped while it waits leaves no unrecorded server
    if not _wait_healthy(server, STARTUP_SECONDS, lambda: process.poll() is None):
        ended = process.poll() is not None
        _terminate(server)
        _state_file(data_dir).unlink(missing_ok=True)
        how = "exited at start-up" if ended else f"did not answer within {STARTUP_SECONDS:g} s"
        raise LocalPrefectError(
            f"the local Prefect server {how} ({_last_error(log_file(data_dir))}): see {log_file(data_dir)}, "
            "or set PREFECT_API_URL to a Prefect server"
        )
    return server


def _last_error(log: Path) -> str:
    """The last exception the server logged (the cause it stopped with), else its last line."""
    lines = [line.strip() for line in log.read_bytes().decode(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if EXCEPTION_LINE.match(line)]
    return (errors or lines or ["nothing logged"])[-1]


def _terminate(server: LocalServer) -> None:
    """Stop the server's whole process group: SIGTERM, then SIGKILL for what is left after STOP_SECONDS."""
    for signum, grace in ((signal.SIGTERM, STOP_SECONDS), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(server.pid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(server.pid, 0)
            except ProcessLookupError:
                return
            _reap(server.pid)
            time.sleep(0.1)


def _reap(pid: int) -> None:
    """Collect the exit status of the server where this process started it, so it does not linger as a zombie."""
    with suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
