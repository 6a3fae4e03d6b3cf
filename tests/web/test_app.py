"""The application's error answers when the database is down: every page a readable 503 page, every API route a
503 JSON body; both name the host and port, neither the password."""

from __future__ import annotations

import re
import time

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from aesq.core.config import get_settings
from aesq.web import api, pages
from aesq.web.app import create_app
from tests.helpers import free_port

PASSWORD = "pw-never-shown"
# Values that pass each route's parameter validation, so the request reaches the database.
VALID_PARAMETERS = {"scorer": "technical", "a": "m:1", "b": "m:2"}


@pytest.fixture
def closed_port(tmp_path, monkeypatch) -> int:
    """Settings whose database URL names a loopback port nothing listens on."""
    port = free_port()
    monkeypatch.setenv("AESQ_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("AESQ_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("AESQ_DATABASE_URL", f"postgresql+psycopg://aesq:{PASSWORD}@127.0.0.1:{port}/aesq")
    get_settings.cache_clear()
    yield port
    get_settings.cache_clear()


def _every_route() -> list[str]:
    """A request for each page and API route, path parameters filled in and required query parameters given."""
    requests = []
    for route in [*pages.router.routes, *api.router.routes]:
        assert isinstance(route, APIRoute)
        required = {param.name for param in route.dependant.query_params if param.field_info.is_required()}
        for dependency in route.dependant.dependencies:
            required |= {param.name for param in dependency.query_params if param.field_info.is_required()}
        query = "&".join(f"{name}={VALID_PARAMETERS[name]}" for name in sorted(required))
        requests.append(re.sub(r"\{\w+\}", "1", route.path) + (f"?{query}" if query else ""))
    return requests


def test_every_route_answers_503_with_what_to_do_when_the_database_is_down(closed_port):
    client = TestClient(create_app())
    requests = _every_route()
    assert {"/", "/trends", "/failures", "/assets/1", "/api/versions", "/api/failures"} <= {
        path.partition("?")[0] for path in requests
    }
    for path in requests:
        started = time.monotonic()
        response = client.get(path)
        assert time.monotonic() - started < 10, path
        assert response.status_code == 503, (path, response.text)
        assert PASSWORD not in response.text
        if path.startswith("/api/"):
            body = response.json()
            assert body["detail"].startswith(f"the database at 127.0.0.1:{closed_port} is unreachable"), path
            assert "Connection refused" in body["cause"]
        else:
            assert response.headers["content-type"].startswith("text/html"), path
            assert f"the database at 127.0.0.1:{closed_port} is unreachable — is Postgres running?" in response.text
            assert "aesq db start" in response.text and "<nav>" in response.text
