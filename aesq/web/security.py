"""Who may use the dashboard and the API: the AESQ_API_TOKEN check on every request but /login, and the login that
keeps the token in a cookie for browsers."""

from __future__ import annotations

import hmac

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from aesq.web.deps import web_settings

TOKEN_COOKIE = "aesq_token"


def _authorised(request: Request, token: str) -> bool:
    """True when the request carries the token as a bearer header or the login cookie."""
    offered = request.headers.get("authorization", "").removeprefix("Bearer ").strip() or request.cookies.get(
        TOKEN_COOKIE, ""
    )
    return hmac.compare_digest(offered.encode(), token.encode())


def install(app: FastAPI) -> None:
    """Add the token check and the login route to `app`."""

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
