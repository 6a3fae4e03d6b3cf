"""The dashboard's guard on real servers: signing in by the /login form with a Unicode token (the cookie holds a
derived value, Secure behind an HTTPS proxy aesq serve is told of), the bearer scheme in any case, the limit on
wrong tokens, the Host allow-list, the security headers on every kind of answer, and the sign-in and chart pages in
headless Chromium with no Content-Security-Policy violation."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from aesq.analysis.aggregate import aggregate_versions
from aesq.analysis.nightly_report import publish_report, recorded_reports
from aesq.core.config import get_settings
from aesq.web import security
from aesq.web.app import PLOTLY_JS, create_app
from tests.helpers import AESQ, add_scored_assets, free_port, serving_in_thread

# Not ASCII, with a space; only characters of the Basic Multilingual Plane, which ChromeDriver can type.
TOKEN = "pässwörd ✓ 密钥 voilà"  # its last UTF-8 byte, 0xa0, is whitespace to str.strip() when read as latin-1
HEADERS = {
    "content-security-policy": security.content_security_policy(PLOTLY_JS),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


@contextmanager
def _served(app: FastAPI, proxy: str | None = None) -> Iterator[str]:
    """`app` on a loopback port by uvicorn (believing X-Forwarded-* only from `proxy`; by default, as aesq serve,
    from nobody), in a thread of this process; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        proxy_headers=proxy is not None,
        forwarded_allow_ips=proxy,
    )
    with serving_in_thread(uvicorn.Server(config)) as base:
        yield base


def _use_token(monkeypatch: pytest.MonkeyPatch, token: str) -> None:
    monkeypatch.setenv("AESQ_API_TOKEN", token)
    get_settings.cache_clear()


@pytest.fixture
def guarded(settings, monkeypatch) -> Iterator[str]:
    """The dashboard on a real uvicorn with AESQ_API_TOKEN set to TOKEN; yields its base URL."""
    _use_token(monkeypatch, TOKEN)
    with _served(create_app()) as url:
        yield url


def _session_cookie(answer: httpx.Response) -> SimpleCookie:
    """The Set-Cookie of a sign-in, parsed."""
    cookie: SimpleCookie = SimpleCookie()
    cookie.load(answer.headers["set-cookie"])
    return cookie


def test_a_unicode_token_signs_in_by_the_form_and_the_cookie_holds_no_token(guarded):
    with httpx.Client(base_url=guarded) as client:
        assert client.get("/api/versions").status_code == 401
        form = client.get("/login")
        assert form.status_code == 200 and '<form id="login-form" method="post" action="/login">' in form.text
        answer = client.post("/login", data={"token": TOKEN})
        assert (answer.status_code, answer.headers["location"]) == (303, "/")
        morsel = _session_cookie(answer)[security.SESSION_COOKIE]
        assert morsel["httponly"] and morsel["samesite"].lower() == "strict" and not morsel["secure"]  # plain HTTP
        assert TOKEN not in morsel.value and TOKEN.encode().hex() not in morsel.value
        assert client.get("/api/versions").status_code == 200  # the cookie now signs every request
        assert client.get("/").status_code == 200
    raw = httpx.get(f"{guarded}/api/versions", cookies={security.SESSION_COOKIE: TOKEN.encode().hex()})
    assert raw.status_code == 401  # a cookie is only a session value, never the token itself


def test_changing_the_token_ends_every_session(guarded, monkeypatch):
    with httpx.Client(base_url=guarded) as client:
        assert client.post("/login", data={"token": TOKEN}).status_code == 303
        assert client.get("/api/versions").status_code == 200
        _use_token(monkeypatch, "a new token")
        assert client.get("/api/versions").status_code == 401


def test_a_token_in_the_address_does_not_sign_in(guarded):
    with httpx.Client(base_url=guarded) as client:
        answer = client.get("/login", params={"token": TOKEN})
        assert answer.status_code == 400 and "set-cookie" not in answer.headers
        assert "not taken from the address" in answer.text and 'action="/login"' in answer.text
        assert client.get("/api/versions").status_code == 401


def test_without_a_token_the_dashboard_is_open_and_login_leads_to_it(settings):
    client = TestClient(create_app())
    assert client.get("/api/versions").status_code == 200
    for answer in (client.get("/login", follow_redirects=False), client.post("/login", follow_redirects=False)):
        assert (answer.status_code, answer.headers["location"]) == (303, "/")


FORM = "application/x-www-form-urlencoded"


@pytest.mark.parametrize(
    ("content_type", "body", "status", "message"),
    [
        ("application/json", b'{"token": "x"}', 415, "application/x-www-form-urlencoded"),
        (FORM, b"token=" + b"x" * 5000, 413, "at most 4096 bytes"),
        (FORM, b"token=%ff%fe", 400, "not valid UTF-8"),
        (FORM, b"token=", 400, "enter the token"),
        (FORM, b"other=1", 400, "enter the token"),
    ],
)
def test_a_malformed_login_form_is_a_4xx_saying_what_to_send(
    settings, monkeypatch, content_type, body, status, message
):
    _use_token(monkeypatch, TOKEN)
    answer = TestClient(create_app()).post("/login", content=body, headers={"Content-Type": content_type})
    assert answer.status_code == status and message in answer.text and "set-cookie" not in answer.headers


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_is_case_insensitive_and_the_token_compared_as_utf8(guarded, scheme):
    header = f"{scheme} ".encode() + TOKEN.encode()  # HTTP carries the token's UTF-8 bytes
    assert httpx.get(f"{guarded}/api/versions", headers={"Authorization": header}).status_code == 200


def test_the_health_check_needs_no_token_and_says_only_whether_the_database_answers(guarded, monkeypatch):
    """Probes send no token: /healthz answers them, 200 while the database answers, 503 when it is gone, naming
    neither its address nor its password; the Host allow-list still applies."""
    answer = httpx.get(f"{guarded}/healthz")
    assert (answer.status_code, answer.json()) == (200, {"status": "ok"})
    assert httpx.get(f"{guarded}/healthz", headers={"Host": "evil.example"}).status_code == 400
    monkeypatch.setenv("AESQ_DATABASE_URL", f"postgresql+psycopg://aesq:hunter2@127.0.0.1:{free_port()}/aesq")
    get_settings.cache_clear()
    gone = httpx.get(f"{guarded}/healthz", timeout=30)
    assert (gone.status_code, gone.json()) == (503, {"status": "database unreachable"})
    assert "hunter2" not in gone.text and "127.0.0.1" not in gone.text


def test_a_wrong_or_missing_token_is_a_one_line_401(guarded):
    for authorization in ("Bearer wrong", "Basic " + TOKEN.encode().hex(), ""):
        answer = httpx.get(f"{guarded}/api/versions", headers={"Authorization": authorization} if authorization else {})
        assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
        assert list(answer.json()) == ["detail"] and "Authorization: Bearer" in answer.json()["detail"]
    page = httpx.get(f"{guarded}/compare")
    assert page.status_code == 401 and "text/html" in page.headers["content-type"]
    assert "sign in" in page.text and '<form id="login-form" method="post" action="/login">' in page.text
    assert page.text.count("needs its token") == 1 and 'id="login-message"' not in page.text  # said once, no error


def test_wrong_tokens_are_limited_per_client_address(guarded, monkeypatch):
    with httpx.Client(base_url=guarded) as client:
        for _ in range(5):  # AESQ_FAILED_TOKEN_LIMIT's default
            assert client.post("/login", data={"token": "guess"}).status_code == 401
        limited = client.post("/login", data={"token": TOKEN})  # even the right token waits
        assert limited.status_code == 429 and "set-cookie" not in limited.headers
        assert 1 <= int(limited.headers["retry-after"]) <= security.FAILED_LOGIN_WINDOW_SECONDS
        assert "try again in" in limited.text
        bearer = client.get("/api/versions", headers={"Authorization": b"Bearer " + TOKEN.encode()})
        assert bearer.status_code == 429 and "try again in" in bearer.json()["detail"]
        # A client naming another address is not believed (no proxy is configured).
        other = client.post("/login", data={"token": TOKEN}, headers={"X-Forwarded-For": "203.0.113.7"})
        assert other.status_code == 429
        monkeypatch.setenv("AESQ_FAILED_TOKEN_LIMIT", "6")  # read per request: the limited client may try once more
        get_settings.cache_clear()
        assert client.post("/login", data={"token": TOKEN}).status_code == 303


def test_wrong_tokens_are_counted_per_ipv4_address_and_per_ipv6_64(settings, monkeypatch):
    _use_token(monkeypatch, TOKEN)
    with _served(create_app(), proxy="127.0.0.1") as url:

        def status(client: str, token: str) -> httpx.Response:
            """An API request with `token`, sent by the proxy on behalf of `client`."""
            headers = {"Authorization": b"Bearer " + token.encode(), "X-Forwarded-For": client}
            return httpx.get(f"{url}/api/versions", headers=headers)

        for i in range(1, 6):  # AESQ_FAILED_TOKEN_LIMIT's default, each guess from another address of one /64
            assert status(f"2001:db8:0:1::{i:x}", "guess").status_code == 401
        limited = status("2001:db8:0:1:ffff:ffff:ffff:ffff", TOKEN)
        assert limited.status_code == 429 and "from 2001:db8:0:1::/64:" in limited.json()["detail"]
        assert status("2001:db8:0:2::1", TOKEN).status_code == 200  # the next /64 is another client
        for i in range(1, 6):
            assert status(f"192.0.2.{i}", "guess").status_code == 401
        assert status("192.0.2.6", TOKEN).status_code == 200  # IPv4 addresses are counted one by one
        for _ in range(4):  # an IPv4 client reaching a dual-stack socket is still its IPv4 address
            assert status("::ffff:192.0.2.5", "guess").status_code == 401
        assert status("192.0.2.5", TOKEN).status_code == 429


def test_sign_ins_sent_at_once_are_limited_one_by_one(guarded):
    body = b"token=wrong"
    head = (
        b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    address = urlsplit(guarded)
    with ExitStack() as stack:
        connections = [
            stack.enter_context(socket.create_connection((address.hostname, address.port), timeout=30))
            for _ in range(12)
        ]
        for connection in connections:
            connection.sendall(head)
        time.sleep(1)  # every request is in the application, waiting for its body
        for connection in connections:
            connection.sendall(body)
        statuses = [connection.makefile("rb").readline().split()[1] for connection in connections]
    assert sorted(statuses) == [b"401"] * 5 + [b"429"] * 7  # AESQ_FAILED_TOKEN_LIMIT's default


def test_the_failure_window_slides_and_forgets_the_quietest_clients():
    now = [0.0]
    failures = security.FailedLogins(window_seconds=60, max_clients=2, clock=lambda: now[0])
    for second in (0, 10, 20):
        now[0] = second
        failures.record("a")
    now[0] = 30
    assert failures.retry_after("a", limit=3) == 30  # until the failure at 0 leaves the window
    assert failures.retry_after("a", limit=4) is None
    now[0] = 60
    assert failures.retry_after("a", limit=3) is None  # two left in the window
    failures.record("a")
    failures.record("b")
    failures.record("c")
    assert list(failures.failures) == ["b", "c"]  # "a" was the quietest


@pytest.mark.parametrize(
    ("allowed", "host", "answers"),
    [
        ("", "localhost:8000", True),
        ("", "127.0.0.1", True),
        ("", "[::1]:8000", True),
        ("", "LocalHost.", True),
        ("", "evil.example", False),
        ("", "localhost.evil.example:8000", False),
        ("", "127.0.0.1.nip.io", False),
        ("dash.example.com,*.corp.example", "dash.example.com:443", True),
        ("dash.example.com,*.corp.example", "aesq.corp.example", True),
        ("dash.example.com,*.corp.example", "corp.example", False),
        ("*", "anything.example", True),
    ],
)
def test_the_host_allow_list(settings, monkeypatch, allowed, host, answers):
    monkeypatch.setenv("AESQ_ALLOWED_HOSTS", allowed)
    get_settings.cache_clear()
    client = TestClient(create_app())
    api = client.get("/api/versions", headers={"Host": host})
    page = client.get("/", headers={"Host": host})
    if answers:
        assert (api.status_code, page.status_code) == (200, 200)
        return
    assert (api.status_code, page.status_code) == (400, 400)
    assert "AESQ_ALLOWED_HOSTS" in api.json()["detail"] and list(api.json()) == ["detail"]
    assert "AESQ_ALLOWED_HOSTS" in page.text and "text/html" in page.headers["content-type"]


@pytest.mark.parametrize(
    ("listen", "host", "answers"), [("10.1.2.3", "10.1.2.3:8000", True), ("0.0.0.0", "0.0.0.0", False)]
)
def test_the_address_aesq_serve_listens_on_is_allowed(settings, monkeypatch, listen, host, answers):
    monkeypatch.setenv("AESQ_ALLOWED_HOSTS", "")
    get_settings.cache_clear()
    app = create_app()
    security.listen_on(app, listen)
    assert (TestClient(app).get("/static/aesq.css", headers={"Host": host}).status_code == 200) is answers


def test_every_kind_of_answer_carries_the_security_headers(settings, monkeypatch):
    monkeypatch.setenv("AESQ_FAILED_TOKEN_LIMIT", "2")
    _use_token(monkeypatch, TOKEN)
    client = TestClient(create_app())
    bearer = {"Authorization": b"Bearer " + TOKEN.encode()}
    answers = [
        client.get("/", headers=bearer),  # a page
        client.get("/api/versions", headers=bearer),  # the API
        client.get("/static/aesq.css"),  # static files, with no token
        client.get("/static/plotly.min.js"),
        client.get("/favicon.ico"),
        client.get("/login"),
        client.get("/no-such-page", headers=bearer),  # 404 page
        client.get("/api/assets/99", headers=bearer),  # 404 JSON
        client.get("/api/assets/x", headers=bearer),  # 422
        client.get("/api/versions"),  # 401 JSON
        client.get("/trends"),  # 401 page
        client.get("/api/versions", headers={**bearer, "Host": "evil.example"}),  # 400
    ]
    answers += [client.post("/login", data={"token": "guess"}) for _ in range(3)]
    assert [answer.status_code for answer in answers] == [200] * 6 + [404, 404, 422, 401, 401, 400] + [401, 401, 429]
    for answer in answers:
        assert {name: answer.headers.get(name) for name in HEADERS} == HEADERS, answer.request.url


def test_an_unexpected_error_still_carries_the_security_headers(settings, empty_database_url, monkeypatch):
    monkeypatch.setenv("AESQ_DATABASE_URL", empty_database_url)  # no tables: every query fails
    get_settings.cache_clear()
    client = TestClient(create_app(), raise_server_exceptions=False)
    api, page = client.get("/api/versions"), client.get("/")
    assert (api.status_code, page.status_code) == (500, 500)
    assert list(api.json()) == ["detail"] and "text/html" in page.headers["content-type"]
    for answer in (api, page):
        assert {name: answer.headers.get(name) for name in HEADERS} == HEADERS


@contextmanager
def _aesq_serve(host: str, log: Path, **variables: str) -> Iterator[str]:
    """`aesq serve --host HOST` in a process of its own with these AESQ_* variables, its output in `log`; yields its
    base URL (on 127.0.0.1 for the wildcard address)."""
    port = free_port()
    command = [AESQ, "serve", "--host", host, "--port", str(port)]
    with log.open("w") as output:
        process = subprocess.Popen(command, env={**os.environ, **variables}, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            try:
                httpx.get(f"{url}/favicon.ico", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(30)


@pytest.mark.parametrize(("proxies", "trusted"), [("127.0.0.0/8", True), ("192.0.2.1", False), (None, False)])
def test_aesq_serve_believes_forwarded_headers_only_from_a_proxy_it_is_told_of(settings, tmp_path, proxies, trusted):
    log = tmp_path / "serve.log"
    variables = {"AESQ_API_TOKEN": TOKEN} | ({"AESQ_FORWARDED_ALLOW_IPS": proxies} if proxies else {})
    with _aesq_serve("127.0.0.2", log, **variables) as url:
        # 127.0.0.2 is neither a loopback name nor in AESQ_ALLOWED_HOSTS: the --host address is what lets it in.
        answer = httpx.post(f"{url}/login", data={"token": TOKEN}, headers={"X-Forwarded-Proto": "https"})
        assert answer.status_code == 303
        assert bool(_session_cookie(answer)[security.SESSION_COOKIE]["secure"]) is trusted
        refused = httpx.get(f"{url}/api/versions", headers={"Host": "evil.example"})
        assert refused.status_code == 400 and "AESQ_ALLOWED_HOSTS" in refused.json()["detail"]
        # Wrong tokens, each naming another client: counted apart only when a trusted proxy names them.
        statuses = [
            httpx.get(
                f"{url}/api/versions", headers={"Authorization": "Bearer wrong", "X-Forwarded-For": f"192.0.2.{i}"}
            )
            for i in range(6)
        ] + [
            httpx.post(f"{url}/login", data={"token": "wrong"}, headers={"X-Forwarded-For": f"198.51.100.{i}"})
            for i in range(6)
        ]
        expected = [401] * 12 if trusted else [401] * 5 + [429] * 7
        assert [answer.status_code for answer in statuses] == expected


def test_aesq_serve_on_every_address_answers_to_loopback_names_and_says_which_setting_adds_more(settings, tmp_path):
    log = tmp_path / "serve.log"
    with _aesq_serve("0.0.0.0", log, AESQ_API_TOKEN=TOKEN, AESQ_ALLOWED_HOSTS="") as url:
        assert httpx.get(f"{url}/login").status_code == 200
        for host in ("0.0.0.0", "aesq.example"):
            assert httpx.get(f"{url}/login", headers={"Host": host}).status_code == 400
    assert "browsers reach it by a name only once AESQ_ALLOWED_HOSTS lists it" in log.read_text()


def _record_violations(browser) -> None:
    """Collect every Content-Security-Policy violation of the pages the browser opens next, in window.violations
    (a script the browser runs before each page's own, exempt from the page's policy)."""
    source = (
        "window.violations = []; document.addEventListener('securitypolicyviolation',"
        " e => window.violations.push(e.violatedDirective + ' ' + e.blockedURI + ' ' + e.sample + ' ' + e.sourceFile + ':' + e.lineNumber));"
    )
    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": source})


def test_signing_in_with_the_form_in_chromium(guarded, browser):
    _record_violations(browser)
    browser.get(guarded + "/trends")
    assert "needs its token" in browser.find_element(By.ID, "login").text
    field = browser.find_element(By.NAME, "token")
    field.send_keys("wrong")
    field.submit()
    WebDriverWait(browser, 30).until(expected_conditions.presence_of_element_located((By.ID, "login-message")))
    assert browser.find_element(By.ID, "login-message").text == "wrong token"
    field = browser.find_element(By.NAME, "token")
    field.send_keys(TOKEN)
    field.submit()
    WebDriverWait(browser, 30).until(expected_conditions.url_to_be(guarded + "/"))
    assert browser.find_element(By.CSS_SELECTOR, "nav a.current").text == "leaderboard"
    assert browser.execute_script("return document.cookie") == ""  # HttpOnly: no script can read the session
    assert browser.execute_script("return window.violations") == []


def test_chart_pages_draw_with_no_content_security_policy_violation(settings, browser):
    for version, values in (("v1", [3.0, 4.5, 5.5, 6.0]), ("v2", [4.0, 5.0, 6.5, 7.5])):
        add_scored_assets(settings, version, values)
    aggregate_versions(settings)
    _record_violations(browser)
    with _served(create_app()) as url:
        for path, chart in (
            ("/", "means"),
            ("/compare?a=m:v1&b=m:v2&scorer=technical", "distributions"),
            ("/trends", "trend"),
        ):
            browser.get(url + path)
            WebDriverWait(browser, 30).until(
                expected_conditions.presence_of_element_located((By.CSS_SELECTOR, f"#{chart} .main-svg"))
            )
            assert browser.execute_script("return window.violations") == [], path
        # The policy is enforced and the recorder sees it: an inline script is refused and reported.
        browser.execute_script(
            "const s = document.createElement('script'); s.textContent = 'window.ran = true'; document.body.append(s)"
        )
        WebDriverWait(browser, 10).until(lambda b: b.execute_script("return window.violations.length") > 0)
        assert browser.execute_script("return window.ran") is None


def test_a_saved_report_keeps_its_inline_styles_and_runs_no_script(settings, s3_client, browser):
    if not s3_client.bucket_exists("bkt"):
        s3_client.make_bucket("bkt")  # where the assets lie (their images absent: the report goes without them)
    add_scored_assets(settings, "v1", [3.0, 4.5, 5.5, 6.0])
    aggregate_versions(settings)
    publish_report(settings)
    saved = recorded_reports(settings)[0]  # the latest
    _record_violations(browser)
    with _served(create_app()) as url:
        answer = httpx.get(f"{url}/reports/{saved['id']}")
        assert answer.headers["content-security-policy"].startswith("default-src 'none'; style-src 'unsafe-inline'")
        assert "script-src" not in answer.headers["content-security-policy"]  # default-src 'none': no script runs
        browser.get(f"{url}/reports/{saved['id']}")
        h2 = browser.find_element(By.TAG_NAME, "h2")
        assert browser.execute_script("return getComputedStyle(arguments[0]).borderBottomStyle", h2) == "solid"
        assert browser.execute_script("return window.violations") == []
