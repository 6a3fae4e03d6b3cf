"""One source of truth for a version's figures: on the same demo data in the real database, the nightly report,
the JSON API, `aesq compare` and the Grafana leaderboard show the same count, mean and 95 % interval, and those
are the figures of the score rows (latest score per asset, scored assets, bootstrap of the scores in asset order)."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from aesq.analysis.nightly_report import build_report
from aesq.analysis.statistics import mean_interval
from aesq.cli.main import app
from aesq.core.database import get_engine
from aesq.web.app import create_app

GRAFANA_DASHBOARD = Path(__file__).resolve().parents[2] / "grafana" / "dashboards" / "aesq.json"
VERSIONS = ("demo-diffusion:v1.0-base", "demo-diffusion:v1.1-lora", "demo-diffusion:v2.0-sft", "other-model:v1")


def _scores_from_rows(settings) -> dict[str, list[float]]:
    """Each version's technical scores recomputed from the score rows: per asset the newest row, in asset order."""
    query = """
        SELECT g.name || ':' || g.version AS version, s.asset_id, s.value, s.created_at, s.id
        FROM scores s JOIN assets a ON a.id = s.asset_id AND a.status = 'scored'
        JOIN generators g ON g.id = a.generator_id
        WHERE s.scorer = 'technical'
    """
    newest: dict[int, tuple] = {}
    with get_engine(settings).connect() as connection:
        for row in connection.execute(sa.text(query)):
            if row.asset_id not in newest or (row.created_at, row.id) > newest[row.asset_id][2:]:
                newest[row.asset_id] = (row.version, row.value, row.created_at, row.id)
    scores: dict[str, list[float]] = {}
    for _, (version, value, _, _) in sorted(newest.items()):
        scores.setdefault(version, []).append(value)
    return scores


def _grafana_leaderboard(settings) -> dict[str, tuple]:
    """(count, mean, low, high) per version from the Grafana dashboard's leaderboard panel, run as Grafana would."""
    panels = json.loads(GRAFANA_DASHBOARD.read_text())["panels"]
    [sql] = [t["rawSql"] for p in panels for t in p.get("targets", []) if "FROM version_summary" in t["rawSql"]]
    with get_engine(settings).connect() as connection:
        rows = connection.execute(sa.text(sql.replace("$scorer", "technical"))).all()
    return {f"{r.generator}:{r.version}": (r.count, r.mean, r.mean_low, r.mean_high) for r in rows}


def _cli_rows(output: str) -> dict[str, list[str]]:
    """The cells of `aesq compare`'s table, by version."""
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in output.splitlines() if line.startswith("│")]
    return {row[0]: row for row in rows if row[0] in VERSIONS}


def test_report_api_and_cli_give_the_same_count_mean_and_interval(demo_settings):
    scores = _scores_from_rows(demo_settings)
    assert sorted(scores) == sorted(VERSIONS) and [len(scores[v]) for v in VERSIONS] == [8, 8, 8, 2]

    report = {line.version: line for line in build_report(demo_settings)[0].leaderboard if line.scorer == "technical"}
    listed = TestClient(create_app()).get("/api/versions", params={"scorer": "technical"}).json()
    api = {f"{row['generator']}:{row['version']}": row for row in listed}
    compared = CliRunner().invoke(app, ["compare", "--scorer", "technical"], catch_exceptions=False)
    assert compared.exit_code == 0, compared.output
    cli = _cli_rows(compared.output)
    grafana = _grafana_leaderboard(demo_settings)
    assert set(report) == set(api) == set(cli) == set(grafana) == set(VERSIONS)

    for version, values in scores.items():
        count, mean, interval = len(values), sum(values) / len(values), mean_interval(values)
        line, row, cells = report[version], api[version], cli[version]
        assert line.count == row["count"] == count and cells[3] == str(count)
        assert line.mean == row["mean"] == pytest.approx(mean) and cells[4] == f"{mean:.2f}"
        assert (line.low, line.high) == (row["mean_low"], row["mean_high"])
        assert grafana[version] == (line.count, line.mean, line.low, line.high)
        if interval is None:  # other-model:v1 has 2 scores, below the bootstrap's minimum
            assert line.low is None and cells[5] == "—"
        else:
            assert (line.low, line.high) == pytest.approx((interval.low, interval.high))
            assert cells[5] == f"[{interval.low:.2f}, {interval.high:.2f}]"
    # The demo's known ranking: the clean photographs score best, the soft and noisy base worst.
    assert [row["version"] for row in listed if row["generator"] == "demo-diffusion"] == [
        "v2.0-sft",
        "v1.1-lora",
        "v1.0-base",
    ]


def test_live_figures_under_a_filter_are_the_stored_figures_of_the_assets_it_keeps(demo_settings):
    client = TestClient(create_app())
    stored = client.get("/api/versions", params={"scorer": "technical"}).json()
    every_generated = client.get("/api/versions", params={"scorer": "technical", "source_kind": "generated"}).json()
    assert {row["interval"] for row in stored} == {"bootstrap"}
    assert {row["interval"] for row in every_generated} == {"normal"}
    by_version = {(row["generator"], row["version"]): row for row in stored}
    assert len(every_generated) == len(stored) == 4  # every demo version is generated: the same assets
    for row in every_generated:
        same = by_version[(row["generator"], row["version"])]
        for figure in ("count", "mean", "std", "median", "p10", "p90"):
            assert row[figure] == pytest.approx(same[figure]), figure
        assert row["mean_low"] < row["mean"] < row["mean_high"]
    crawled = client.get("/api/versions", params={"scorer": "technical", "source_kind": "crawled"}).json()
    assert crawled == []  # crawled images have no version
    today = date.today()
    around_today = {"scorer": "technical", "since": str(today - timedelta(days=1)), "until": str(today + timedelta(1))}
    dated = client.get("/api/versions", params=around_today).json()
    assert [(row["version"], row["count"]) for row in dated] == [(row["version"], row["count"]) for row in stored]
    later = {"scorer": "technical", "since": str(today + timedelta(days=2))}
    assert client.get("/api/versions", params=later).json() == []  # nothing was scored after tomorrow
