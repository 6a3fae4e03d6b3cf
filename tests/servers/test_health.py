"""The health answer of a scoring pool's worker: what its Kubernetes probes read."""

from __future__ import annotations

import socket

import httpx
import pytest

from aesq.core.config import ConfigurationError
from aesq.servers.health import bind_health_port, health_app
from tests.helpers import free_port


async def healthz(settings) -> httpx.Response:
    transport = httpx.ASGITransport(app=health_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://10.1.2.3:8081") as client:
        return await client.get("/healthz", timeout=30)


@pytest.mark.anyio
async def test_ok_while_the_database_answers_and_503_without_naming_it_when_it_does_not(settings):
    answer = await healthz(settings)
    assert (answer.status_code, answer.json()) == (200, {"status": "ok"})
    gone = settings.model_copy(update={"database_url": f"postgresql://aesq:hunter2@127.0.0.1:{free_port()}/aesq"})
    answer = await healthz(gone)
    assert (answer.status_code, answer.json()) == (503, {"status": "database unreachable"})
    assert "hunter2" not in answer.text and "127.0.0.1" not in answer.text


def test_the_port_is_bound_at_once_and_refuses_connections_until_served():
    bound = bind_health_port(0)
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", bound.getsockname()[1]), timeout=5)
    finally:
        bound.close()
    with socket.create_server(("0.0.0.0", 0)) as serving:  # another server on the port
        port = serving.getsockname()[1]
        with pytest.raises(ConfigurationError, match=rf"cannot answer health probes on port {port} \(Address already"):
            bind_health_port(port)
