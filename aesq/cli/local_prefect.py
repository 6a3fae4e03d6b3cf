"""aesq's local Prefect server: started once in the data folder where no Prefect API is configured, then shared.

Prefect's ephemeral API costs every command its start-up (10-30 s) and forgets its runs when the command
ends. Without PREFECT_API_URL (environment or Prefect profile), aesq instead starts `prefect server start` once,
detached in its own session (a terminal's Ctrl-C does not reach it, so it can record a cancelled run), on a free
loopback port, and every later command finds it through `DATA_DIR/prefect/server.json`. It runs until
`aesq stop`. Its database is SQLite in `DATA_DIR/prefect/`: it needs no other service up (the embedded Postgres
may not be the database in use), and Prefect's tables stay out of the one that holds the assets.
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
from pathlib import Path

import httpx

HOST = "127.0.0.1"
# A loaded two-core machine may take a minute to start it; a server that has not answered by then never will.
STARTUP_SECONDS = 180.0
# How long a recorded, living server that does not answer is given before it is replaced (it may be busy).
UNRESPONSIVE_SECONDS = 15.0
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
    """The running local server, started first if the recorded one is missing, dead or unresponsive."""
    with _locked(data_dir):
        recorded = _read_state(data_dir)
        if recorded is not None and _is_ours(recorded):
            # One a stopped command left starting gets the rest of its start-up time.
            starting = STARTUP_SECONDS - (time.time() - _state_file(data_dir).stat().st_mtime)
            if _wait_healthy(recorded, max(UNRESPONSIVE_SECONDS, starting)):
                return recorded
            _terminate(recorded)
        notice(f"starting the local Prefect server in {server_dir(data_dir)}…")
        server = _start(data_dir)
        announce(f"Prefect UI on {server.ui_url}")
        return server


def stop_server(data_dir: Path) -> bool:
    """Stop the local server if it runs; True when one was stopped."""
    if not server_dir(data_dir).is_dir():
        return False
    with _locked(data_dir):
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


@contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    """Hold the data folder's server lock, so two commands starting at once start one server."""
    server_dir(data_dir).mkdir(parents=True, exist_ok=True)
    with open(server_dir(data_dir) / "server.lock", "w") as lock:
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


def _wait_healthy(server: LocalServer, seconds: float, process: subprocess.Popen | None = None) -> bool:
    """Poll the health check for up to `seconds`; False early if `process` (the one just started) ends."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _healthy(server):
            return True
        if process is not None and process.poll() is not None:
            return False
        time.sleep(0.25)
    return _healthy(server)


def _free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _start(data_dir: Path) -> LocalServer:
    """Start a server detached (own session, output to the log file), wait until it answers, record it."""
    port = _free_port()
    database = server_dir(data_dir) / "prefect.db"
    env = {
        **{name: value for name, value in os.environ.items() if name != "PREFECT_API_URL"},
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{database}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port)]
    with open(log_file(data_dir), "ab") as log:
        log_start = log.tell()
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
    if not _wait_healthy(server, STARTUP_SECONDS, process):
        ended = process.poll() is not None
        _terminate(server)
        _state_file(data_dir).unlink(missing_ok=True)
        how = "exited at start-up" if ended else f"did not answer within {STARTUP_SECONDS:g} s"
        raise LocalPrefectError(
            f"the local Prefect server {how} ({_last_error(log_file(data_dir), log_start)}): see {log_file(data_dir)}, "
            "or set PREFECT_API_URL to a Prefect server"
        )
    return server


def _last_error(log: Path, start: int) -> str:
    """The last exception the server logged since `start` (the cause it stopped with), else its last line."""
    with open(log, "rb") as text:
        text.seek(start)
        lines = [line.strip() for line in text.read().decode(errors="replace").splitlines() if line.strip()]
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
