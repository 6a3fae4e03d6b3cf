"""The bridge's bearer token on its real server follows the dashboard's rule: the scheme in any case, and the token
compared as the UTF-8 bytes HTTP carries, so a token beyond ASCII works."""

from __future__ import annotations

import json

import httpx
import pytest
from pydantic import SecretStr

from tests.helpers import bridge_settings, serving_bridge

pytestmark = pytest.mark.slow

# UTF-8 bytes beyond ASCII, and a last byte (0xa0 of "à") that is whitespace to str.strip() when read as latin-1.
TOKEN = "pässwort ✓ 密钥 voilà"


def test_a_unicode_bridge_token_lets_notifications_in(prefect_harness, settings, bucket):
    record = {"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": bucket}, "object": {"key": "a.jpg"}}}
    body = json.dumps({"Records": [record]}).encode()
    with serving_bridge(bridge_settings(settings, bucket, bridge_token=SecretStr(TOKEN))) as url:

        def status(authorization: bytes) -> int:
            """The bridge's answer to the notification sent with this Authorization header."""
            return httpx.post(
                url,
                content=body,
                headers={"Authorization": authorization, "Content-Type": "application/json"},
                timeout=30,
            ).status_code

        assert status(b"Bearer " + TOKEN.encode()) == 200
        assert status(b"bEaReR " + TOKEN.encode()) == 200
        assert status(b"Bearer " + TOKEN.encode()[:-3]) == 401
        assert status(b"") == 401
