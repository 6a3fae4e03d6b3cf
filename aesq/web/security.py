"""Who may use the dashboard and the API, and what every answer tells the browser: a Host allow-list (so a page on
another site cannot reach a loopback dashboard by DNS rebinding), the AESQ_API_TOKEN check (bearer header, or the
session cookie the /login form sets), a limit on wrong tokens per client, and the security headers (a CSP without
inline script, nosniff, no framing, no referrer) on every response."""

from __future__ import annotations

import base64
import hashlib
import hmac
import inspect
import ipaddress
import math
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection
from functools import lru_cache
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aesq.core.config import Settings
from aesq.core.tokens import bearer_token, token_matches
from aesq.web import pages
from aesq.web.deps import web_settings

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "[::]"})
SESSION_COOKIE = "aesq_session"
# The cookie holds this label's HMAC keyed by the token: never the token, and a new token ends every session.
SESSION_LABEL = b"aesq dashboard session"
FAILED_LOGIN_WINDOW_SECONDS = 60.0
LOGIN_BODY_LIMIT = 4096
# Paths anyone may read: the login form and the files it needs, all shipped with aesq.
PUBLIC_PATHS = ("/login", "/favicon.ico", "/healthz")
PUBLIC_PREFIXES = ("/static/",)
# The inline styles plotly.js inserts itself: its rule sheet, created empty (rules then go through the CSSOM, which
# CSP does not govern), and the stylesheet its bundled maplibre adds as text when it loads.
PLOTLY_STYLE_TEXT = re.compile(r"""createElement\("style"\);[^;]{0,200}?\.textContent='([^'\\]*)'""")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


@lru_cache
def content_security_policy(plotly_js: Path) -> str:
    """Scripts and styles only from aesq's own files (the charts' data is in JSON blocks, which never run), plus the
    inline styles of this plotly.js by hash; images also as data: URIs; no plugins, no <base>, no framing, forms
    only to aesq."""
    styles = ["", *PLOTLY_STYLE_TEXT.findall(plotly_js.read_text())]
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()}'" for style in styles
    )
    return (
        f"default-src 'self'; script-src 'self'; style-src 'self' {hashes}; img-src 'self' data:; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


def host_name(value: str) -> str:
    """The name of a Host header or an address, lower-case, without its port or a final dot; IPv6 in brackets."""
    value = value.strip().lower()
    try:
        address = ipaddress.ip_address(value[1:-1] if value.startswith("[") and value.endswith("]") else value)
    except ValueError:
        name, colon, port = value.rpartition(":")
        if colon and port.isdigit() and not name.startswith("[") and ":" not in name:
            value = name
        elif value.startswith("[") and "]" in value:  # [v6]:port
            return value[: value.index("]") + 1]
        return value.rstrip(".")
    return f"[{address}]" if address.version == 6 else str(address)


def host_allowed(host: str, allowed: Collection[str]) -> bool:
    """Whether a request's Host names the loopback, or a name allowed (exactly, by `*.domain`, or `*`)."""
    name = host_name(host)
    patterns = {host_name(pattern) for pattern in allowed if pattern}
    return bool(name) and (
        "*" in patterns
        or name in LOOPBACK_HOSTS
        or name in patterns
        or any(pattern.startswith("*.") and name.endswith(pattern[1:]) for pattern in patterns)
    )


def session_value(token: str) -> str:
    """What the login cookie holds for this token: a keyed hash, so the cookie never discloses the token."""
    return hmac.new(token.encode(), SESSION_LABEL, hashlib.sha256).hexdigest()


class FailedLogins:
    """Wrong tokens per client (an address, or an IPv6 /64: `client_key`) within a sliding window, in memory; at
    most `max_clients` clients are kept (the quietest forgotten first). A limited client is refused before its token
    is checked, so no client guesses more than `limit` times."""

    def __init__(
        self,
        window_seconds: float = FAILED_LOGIN_WINDOW_SECONDS,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_seconds, self.max_clients, self.clock = window_seconds, max_clients, clock
        self.failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, client: str, limit: int) -> int | None:
        """Seconds until `client`, which may send `limit` wrong tokens in the window, may try again; None: now."""
        times = self.failures.get(client)
        if times is None:
            return None
        now = self.clock()
        while times and times[0] <= now - self.window_seconds:
            times.popleft()
        if not times:
            del self.failures[client]
            return None
        return max(1, math.ceil(times[0] + self.window_seconds - now)) if len(times) >= limit else None

    def record(self, client: str) -> None:
        """Count a wrong token from `client`."""
        self.failures.setdefault(client, deque()).append(self.clock())
        self.failures.move_to_end(client)
        while len(self.failures) > self.max_clients:
            self.failures.popitem(last=False)

    def forget(self, client: str) -> None:
        """A right token clears the client's count."""
        self.failures.pop(client, None)


def _is_api(path: str) -> bool:
    """The JSON API's paths answer errors as JSON; the rest are pages for people."""
    return path == "/api" or path.startswith("/api/")


def client_key(address: str) -> str:
    """Whom the wrong-token limit counts for an address: an IPv4 address alone, but an IPv6 client by its /64 (one
    network usually gets a whole /64, so counting single addresses would give it 2^64 times the limit)."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:  # ::ffff:192.0.2.1, an IPv4 client of a dual-stack socket
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)


def _client(request: Request) -> str:
    """The client the wrong-token limit counts (a trusted proxy's X-Forwarded-For already applied by uvicorn)."""
    return client_key(request.client.host) if request.client else "unknown"


def _login_page(request: Request, status: int, message: str = "", headers: dict[str, str] | None = None) -> Response:
    """The sign-in form, with what went wrong, if anything."""
    context = {"message": message, "page": "login"}
    return pages.templates.TemplateResponse(request, "login.html", context, status_code=status, headers=headers)


def _too_many(request: Request, seconds: int) -> Response:
    """429 for a client that sent too many wrong tokens, saying when to try again."""
    message = f"too many wrong tokens from {_client(request)}: try again in {seconds} s"
    headers = {"Retry-After": str(seconds)}
    if _is_api(request.url.path):
        return JSONResponse({"detail": message}, status_code=429, headers=headers)
    return _login_page(request, 429, message, headers)


class Guard:
    """ASGI middleware in front of the application: the security headers on every answer (refusals and errors too),
    then the Host allow-list, then the token check."""

    def __init__(self, app: ASGIApp, failed_logins: FailedLogins, policy: str) -> None:
        self.app, self.failed_logins = app, failed_logins
        self.headers = {"Content-Security-Policy": policy, **SECURITY_HEADERS}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_with_headers(message: Message) -> None:
            """Add the security headers a response does not set itself (a route may set a stricter CSP)."""
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    headers.setdefault(name, value)
            await send(message)

        request = Request(scope, receive)
        refusal = self.refusal(request, web_settings())
        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as error:
            if not started:  # answered here, so the headers are on it too; raised on for the server's log
                await (await self.server_error(request, error))(scope, receive, send_with_headers)
            raise

    def refusal(self, request: Request, settings: Settings) -> Response | None:
        """The answer for a request that may not go on: an unknown Host, or no right token; None to go on."""
        path = request.url.path
        listen_host = getattr(request.app.state, "listen_host", "")
        if not host_allowed(request.headers.get("host", ""), [*settings.allowed_hosts, listen_host]):
            message = (
                f"this dashboard does not answer to the host name {request.headers.get('host', '')!r}: add it to "
                "AESQ_ALLOWED_HOSTS (comma-separated; * for any) and restart aesq serve"
            )
            return (
                JSONResponse({"detail": message}, status_code=400)
                if _is_api(path)
                else pages.error_page(request, 400, message)
            )
        if settings.api_token is None or path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            return None
        token = settings.api_token.get_secret_value()
        offered = bearer_token(request.headers.get("authorization", ""))
        if offered is not None:
            if (seconds := self.failed_logins.retry_after(_client(request), settings.failed_token_limit)) is not None:
                return _too_many(request, seconds)
            if token_matches(offered, token):
                return None
            self.failed_logins.record(_client(request))
        elif token_matches(request.cookies.get(SESSION_COOKIE, "").encode(), session_value(token)):
            return None
        if _is_api(path):
            return JSONResponse(
                {"detail": "missing or wrong token: send the header Authorization: Bearer <AESQ_API_TOKEN>"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return _login_page(request, 401)  # the form's own text says the dashboard needs its token

    async def server_error(self, request: Request, error: Exception) -> Response:
        """A request that failed unexpectedly: the application's own 500 handler's answer, or a one-line 500."""
        handler = request.app.exception_handlers.get(Exception) or request.app.exception_handlers.get(500)
        if handler is not None:
            if inspect.iscoroutinefunction(handler):
                return await handler(request, error)
            return await run_in_threadpool(handler, request, error)
        message = "internal error: the aesq serve log has its traceback"
        if _is_api(request.url.path):
            return JSONResponse({"detail": message}, status_code=500)
        return pages.error_page(request, 500, message)


def listen_on(app: FastAPI, host: str) -> None:
    """Let browsers name the address `aesq serve --host` listens on, beside the loopback names (a wildcard address
    such as 0.0.0.0 names nothing a browser sends: those names go in AESQ_ALLOWED_HOSTS)."""
    name = host_name(host)
    app.state.listen_host = "" if name in WILDCARD_ADDRESSES else name


async def _login_form(request: Request) -> dict[str, list[str]] | Response:
    """The fields of a small urlencoded form (the login's one field needs no multipart parser), or the 4xx page."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        return _login_page(request, 415, "send the token as the form below does (application/x-www-form-urlencoded)")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > LOGIN_BODY_LIMIT:
            return _login_page(request, 413, f"the login form is at most {LOGIN_BODY_LIMIT} bytes")
    try:
        return parse_qs(body.decode(), keep_blank_values=True, max_num_fields=10, errors="strict")
    except (UnicodeDecodeError, ValueError):
        return _login_page(request, 400, "the login form was not valid UTF-8 form data: send it from the form below")


def install(app: FastAPI, plotly_js: Path) -> None:
    """Add the guard (headers, Host allow-list, token check) and the /login form to `app`, whose pages load
    `plotly_js`."""
    failed_logins = FailedLogins()
    app.add_middleware(Guard, failed_logins=failed_logins, policy=content_security_policy(plotly_js))
    app.state.listen_host = ""

    @app.get("/login", include_in_schema=False)
    def login_form(request: Request) -> Response:
        """The sign-in form; a token in the address is refused (it would stay in history and server logs)."""
        if web_settings().api_token is None:
            return RedirectResponse("/", status_code=303)
        if "token" in request.query_params:
            message = "the token is not taken from the address (it stays in history and logs): type it below"
            return _login_page(request, 400, message)
        return _login_page(request, 200)

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        """Check the form's token; a right one sets the session cookie and goes to the leaderboard."""
        settings = web_settings()
        configured = settings.api_token
        if configured is None:
            return RedirectResponse("/", status_code=303)
        form = await _login_form(request)
        if isinstance(form, Response):
            return form
        offered = form.get("token", [""])[0]
        if not offered:
            return _login_page(request, 400, "enter the token (AESQ_API_TOKEN of this aesq serve)")
        # Checked and counted with nothing awaited between, after the body: sign-ins sent together count one by one.
        client = _client(request)
        if (seconds := failed_logins.retry_after(client, settings.failed_token_limit)) is not None:
            return _too_many(request, seconds)
        if not token_matches(offered.encode(), configured.get_secret_value()):
            failed_logins.record(client)
            return _login_page(request, 401, "wrong token")
        failed_logins.forget(client)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            session_value(configured.get_secret_value()),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response
