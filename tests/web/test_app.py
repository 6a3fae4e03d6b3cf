"""The application's error answers when the database is down: every page a readable 503 page, every API route a
503 JSON body; both name the host and port, neither the password. A query the running database cancels is a 500
that says so, not "unreachable"."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from aesq.core import database
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
    monkeypatch.setenv("AESQ_ALLOWED_HOSTS", "testserver")  # the Host TestClient sends
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


@pytest.fixture
def locked_tables(settings, monkeypatch) -> Iterator[None]:
    """The web application's database URL with a 0.3 s statement_timeout, while another transaction holds every
    table locked: each request's query waits for a lock and is cancelled by the server (the database is up)."""
    holder = database.engine(settings.database_url).connect()
    tables = holder.execute(sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars().all()
    holder.execute(sa.text(f"LOCK TABLE {', '.join(tables)} IN ACCESS EXCLUSIVE MODE"))
    url = make_url(settings.database_url).update_query_dict({"options": "-c statement_timeout=300"})
    monkeypatch.setenv("AESQ_DATABASE_URL", url.render_as_string(hide_password=False))
    get_settings.cache_clear()
    try:
        yield
    finally:
        holder.rollback()
        holder.close()


def test_every_route_answers_500_not_unreachable_when_the_database_cancels_the_query(locked_tables):
    client = TestClient(create_app())
    for path in _every_route():
        response = client.get(path)
        assert response.status_code == 500, (path, response.text)
        if path.startswith("/api/"):
            body = response.json()
            assert body["detail"].startswith("the database could not complete this request"), path
            assert body["cause"] == "canceling statement due to statement timeout", path
        else:
            assert response.headers["content-type"].startswith("text/html"), path
            assert "the database could not complete this request" in response.text and "<nav>" in response.text
            assert "canceling statement due to statement timeout" in response.text, path
        assert "unreachable" not in response.text and "aesq db start" not in response.text, path


def test_a_pool_whose_connections_all_stay_busy_answers_503_naming_the_setting(settings, monkeypatch):
    monkeypatch.setattr(database, "POOL_TIMEOUT_SECONDS", 0.5)  # the pool waits this long for a free connection
    url = make_url(settings.database_url).update_query_dict({"application_name": "aesq-busy-pool"})
    monkeypatch.setenv("AESQ_DATABASE_URL", url.render_as_string(hide_password=False))
    monkeypatch.setenv("AESQ_DATABASE_POOL_SIZE", "1")
    get_settings.cache_clear()
    pool = database.get_engine(get_settings())
    with pool.connect(), pool.connect():  # the pool's one connection and its one overflow
        client = TestClient(create_app())
        page, api_answer = client.get("/"), client.get("/api/versions")
    assert page.status_code == api_answer.status_code == 503, (page.text, api_answer.text)
    assert "AESQ_DATABASE_POOL_SIZE=1" in api_answer.json()["detail"] and "unreachable" not in api_answer.text
    assert "AESQ_DATABASE_POOL_SIZE=1" in page.text and "<nav>" in page.text
