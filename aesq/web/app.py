"""The web server `aesq serve` runs: the dashboard pages, the JSON API, static files (plotly.js from the
installed plotly package, so no CDN is needed), and a token check when one is configured."""

from __future__ import annotations

import hmac
from pathlib import Path

import plotly
from fastapi import FastAPI, Request
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DataError

from aesq.web import api, pages
from aesq.web.deps import web_settings

TOKEN_COOKIE = "aesq_token"
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def _authorised(request: Request, token: str) -> bool:
    """True when the request carries the token as a bearer header or the login cookie."""
    offered = request.headers.get("authorization", "").removeprefix("Bearer ").strip() or request.cookies.get(
        TOKEN_COOKIE, ""
    )
    return hmac.compare_digest(offered.encode(), token.encode())


def create_app() -> FastAPI:
    """The dashboard and API application (settings come from `web_settings` per request, so tests can change them)."""
    app = FastAPI(
        title="aesq", summary="Aesthetic data quality: versions, scores, defects", docs_url=None, redoc_url=None
    )

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        """With AESQ_API_TOKEN set, every request but /login needs the token."""
        token = web_settings().api_token
        if token is None or request.url.path == "/login" or _authorised(request, token.get_secret_value()):
            return await call_next(request)
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": "missing or wrong token (Authorization: Bearer …)"}, status_code=401)
        return Response("missing or wrong token: open /login?token=… once", status_code=401, media_type="text/plain")

    @app.get("/login", include_in_schema=False)
    def login(token: str) -> Response:
        """Keep the token in a cookie so the browser can use the dashboard."""
        configured = web_settings().api_token
        if configured is None or not hmac.compare_digest(token.encode(), configured.get_secret_value().encode()):
            return Response("wrong token", status_code=401, media_type="text/plain")
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return response

    @app.exception_handler(DataError)
    async def bad_value(request: Request, error: DataError) -> JSONResponse:
        """A parameter the database cannot take (such as a NUL character) is the caller's error."""
        return JSONResponse({"detail": f"invalid parameter: {error.orig}"}, status_code=422)

    @app.get("/static/plotly.min.js", include_in_schema=False)
    def plotly_js() -> Response:
        """plotly.js as shipped inside the installed plotly package."""
        return FileResponse(
            PLOTLY_JS, media_type="text/javascript", headers={"Cache-Control": "public, max-age=604800"}
        )

    app.add_middleware(GZipMiddleware, minimum_size=2000)
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")
    app.include_router(api.router)
    app.include_router(pages.router)
    return app
