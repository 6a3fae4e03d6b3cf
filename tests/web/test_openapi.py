"""The API's OpenAPI description is its contract: schemathesis generates requests from it (valid and invalid) and
checks every answer against it with all its checks, on a real uvicorn on loopback over the seeded demo database
(versions, scores, defects, a critique, thumbnails from the configured demo folder), with and without a token."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from xml.etree import ElementTree

import pytest
import sqlalchemy as sa
import uvicorn

from aesq.core.config import get_settings
from aesq.core.database import get_engine
from aesq.core.tables import Critique
from aesq.web.app import create_app
from tests.helpers import free_port, serving_in_thread

pytestmark = pytest.mark.slow

SCHEMATHESIS = Path(sys.executable).parent / "st"
TOKEN = "contract-token-15"
MAX_EXAMPLES = os.environ.get("AESQ_TEST_SCHEMATHESIS_EXAMPLES", "100")
SEED = os.environ.get("AESQ_TEST_SCHEMATHESIS_SEED", "15")
API_PATHS = [
    "/api/versions",
    "/api/options",
    "/api/trends",
    "/api/defects",
    "/api/compare",
    "/api/pairs",
    "/api/assets",
    "/api/assets/{asset_id}",
    "/api/assets/{asset_id}/neighbours",
    "/api/assets/{asset_id}/thumbnail",
    "/api/failures",
    "/api/reports",
]


@pytest.fixture
def seeded(demo_settings) -> None:
    """The demo data plus a critique, so every part of an asset's detail has a value to check."""
    with get_engine(demo_settings).begin() as connection:
        asset_id = connection.execute(sa.text("SELECT min(id) FROM assets WHERE status = 'scored'")).scalar_one()
        connection.execute(
            sa.insert(Critique).values(
                asset_id=asset_id, critic="ernie-aes", critic_score=70.0, aspects={"Overall Gestalt": "balanced"}
            )
        )


@contextmanager
def serving() -> Iterator[str]:
    """The dashboard's application on a loopback port in this process; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=free_port(), log_level="warning"))
    with serving_in_thread(server) as base:
        yield base


def run_schemathesis(base: str, tmp_path: Path, *headers: str) -> None:
    """`st run` with every check on every operation (a bounded, repeatable number of examples each, in every phase:
    examples, coverage, fuzzing, stateful); asserts it found nothing and tested all the API's operations."""
    junit = tmp_path / "junit.xml"
    command = [str(SCHEMATHESIS), "run", f"{base}/openapi.json", "--checks", "all", "--max-examples", MAX_EXAMPLES]
    command += ["--seed", SEED, "--workers", "2", "--request-timeout", "30", "--no-color", "--warnings", "off"]
    command += ["--report", "junit", "--report-junit-path", str(junit)]
    for header in headers:
        command += ["--header", header]
    env = {**os.environ, "HYPOTHESIS_STORAGE_DIRECTORY": str(tmp_path / "hypothesis")}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-4000:]
    tested = {case.get("name") for case in ElementTree.parse(junit).iter("testcase")}
    assert tested >= {f"GET {path}" for path in API_PATHS}, result.stdout[-4000:]


def test_every_answer_matches_the_openapi_description(seeded, tmp_path):
    with serving() as base:
        run_schemathesis(base, tmp_path)


def test_with_a_token_the_contract_holds_and_requests_without_it_are_refused(seeded, tmp_path, monkeypatch):
    monkeypatch.setenv("AESQ_API_TOKEN", TOKEN)
    # Schemathesis sends a wrong token to every operation to see it refused: more than a person mistyping would.
    monkeypatch.setenv("AESQ_FAILED_TOKEN_LIMIT", "1000")
    get_settings.cache_clear()
    with serving() as base:
        # The description requires the scheme, so schemathesis's ignored_auth check probes every operation without
        # the token and with a wrong one.
        request = urllib.request.Request(f"{base}/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request) as response:
            assert json.load(response)["security"] == [{"bearer": []}]
        run_schemathesis(base, tmp_path, f"Authorization: Bearer {TOKEN}")
