"""How errors reach people and programs: readable HTML pages for the dashboard, JSON for /api/; a database that
cannot be reached is a 503 that says where it was looked for, a parameter of the wrong kind a 4xx naming it."""

from __future__ import annotations

import psycopg
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException

from aesq.core.config import Settings
from aesq.core.database import DatabaseError
from aesq.web import pages
from aesq.web.api import PATTERN_MEANINGS
from aesq.web.deps import web_settings


def _is_api(request: Request) -> bool:
    """True for the JSON API's paths, which answer errors as JSON; everything else is a page for people."""
    return request.url.path == "/api" or request.url.path.startswith("/api/")


# SQLSTATEs of a server that is going down or not yet up: no request can use it, like a refused connection.
SERVER_NOT_ACCEPTING = {"57P01", "57P02", "57P03"}


def _connection_failed(error: Exception) -> bool:
    """Whether no connection to the database could be made or kept: the driver's error carries no SQLSTATE (the
    server never answered), a connection-exception one (class 08) or a shutdown's; not a query the running server
    cancelled, timed out or aborted on a deadlock."""
    if isinstance(error, DatabaseError):
        return True
    if getattr(error, "connection_invalidated", False):  # SQLAlchemy saw the connection drop mid-request
        return True
    sqlstate = getattr(getattr(error, "orig", error), "sqlstate", None)
    return sqlstate is None or sqlstate.startswith("08") or sqlstate in SERVER_NOT_ACCEPTING


def _driver_cause(settings: Settings, error: Exception) -> str:
    """The first line of the driver's message, without the password."""
    text = str(getattr(error, "orig", None) or error).strip()
    cause = text.splitlines()[0] if text else ""
    secret = make_url(settings.database_url).password if settings.database_url else None
    return cause.replace(secret, "***") if secret else cause


def _database_down(settings: Settings, error: Exception) -> tuple[str, str]:
    """What to tell a person when the database cannot be reached, and the driver's cause; neither shows a password."""
    if settings.database_url is None:
        headline = f"the embedded database in {settings.data_dir} is not running or cannot start — `aesq db start`"
    else:
        url = make_url(settings.database_url)
        headline = (
            f"the database at {url.host or 'localhost'}:{url.port or 5432} is unreachable — is Postgres running?"
            " (`aesq db start` starts the embedded one)"
        )
    return headline, _driver_cause(settings, error)


def _one_line(message: str) -> str:
    """`message` on one line, as every API error's detail is (a driver's or validator's may span several)."""
    return " ".join(message.split())


def _problem(problem: dict) -> str:
    """What a validator found wrong, in words: a pattern the API knows is said as what it asks for, not as a regex."""
    meaning = PATTERN_MEANINGS.get(problem.get("ctx", {}).get("pattern", ""))
    return f"must be {meaning}" if problem["type"] == "string_pattern_mismatch" and meaning else problem["msg"]


def install(app: FastAPI) -> None:
    """Add the error handlers to `app`."""

    @app.exception_handler(DataError)
    async def bad_value(request: Request, error: DataError) -> Response:
        """A parameter the database cannot take (such as a NUL character) is the caller's error."""
        if _is_api(request):
            return JSONResponse({"detail": _one_line(f"invalid parameter: {error.orig}")}, status_code=422)
        return pages.error_page(request, 400, f"invalid parameter: {error.orig}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        """4xx answers of pages (and unknown paths) as a readable page; the API's stay JSON."""
        if _is_api(request) or error.status_code < 400:
            return await http_exception_handler(request, error)
        return pages.error_page(request, error.status_code, str(error.detail), error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_parameters(request: Request, error: RequestValidationError) -> Response:
        """A parameter of the wrong kind is named in one line: a 400 page for people, a 422 for the API."""
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc'][1:])}: {_problem(problem)}" for problem in error.errors()
        )
        if _is_api(request):
            return JSONResponse({"detail": _one_line(f"invalid parameter — {problems}")}, status_code=422)
        return pages.error_page(request, 400, f"invalid parameter — {problems}")

    @app.exception_handler(OperationalError)
    @app.exception_handler(psycopg.OperationalError)
    @app.exception_handler(DatabaseError)
    @app.exception_handler(PoolTimeout)
    async def database_failed(request: Request, error: Exception) -> Response:
        """A stopped or unreachable database is a 503 that says where it was looked for and what to do, as is a
        pool whose connections all stay busy; a query the running database cancelled or aborted (statement
        timeout, cancel, deadlock) is a 500 with the server's reason."""
        settings = web_settings()
        if isinstance(error, PoolTimeout):
            status, headline, cause = 503, str(error), ""
        elif _connection_failed(error):
            status, (headline, cause) = 503, _database_down(settings, error)
        else:
            status, cause = 500, _driver_cause(settings, error)
            headline = (
                "the database could not complete this request — try again; if it keeps happening, check the"
                " database's load and its statement_timeout"
            )
        if _is_api(request):
            return JSONResponse({"detail": headline, "cause": cause}, status_code=status)
        return pages.error_page(request, status, headline, cause=cause)
