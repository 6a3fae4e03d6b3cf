"""The health answer of a process that serves no HTTP of its own (a scoring pool's worker), for Kubernetes probes."""

from __future__ import annotations

import socket
import threading

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from aesq.core.config import ConfigurationError, Settings
from aesq.core.database import answers


def health_app(settings: Settings) -> Starlette:
    """GET /healthz: 200 while the database answers (scores are written there), else 503 saying so (never where)."""

    async def healthz(request: Request) -> Response:
        if not await anyio.to_thread.run_sync(answers, settings):
            return JSONResponse({"status": "database unreachable"}, 503)
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/healthz", healthz, methods=["GET"])])


def bind_health_port(port: int) -> socket.socket:
    """Bind `port` on every interface now, so a port in use is a one-line error at start; nothing is answered (a
    connection is refused) until `serve_health` listens on it."""
    bound = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    bound.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        bound.bind(("0.0.0.0", port))
    except OSError as error:
        bound.close()
        raise ConfigurationError(
            f"cannot answer health probes on port {port} ({error.strerror}): choose another"
        ) from None
    return bound


def serve_health(settings: Settings, bound: socket.socket) -> None:
    """Answer /healthz on the bound socket from a daemon thread until the process ends: called once the worker's
    models are loaded, so its port opening says they are (what a startup probe waits for). uvicorn's own logging
    configuration stays out (log_config None), leaving Prefect's log handlers as they are."""
    server = uvicorn.Server(uvicorn.Config(health_app(settings), log_config=None, access_log=False))
    threading.Thread(target=server.run, kwargs={"sockets": [bound]}, name="aesq-health", daemon=True).start()
