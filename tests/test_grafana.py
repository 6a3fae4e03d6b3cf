"""The Grafana provisioning parses, reaches the compose postgres, and every panel's SQL runs on the real views."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

from aesq.core import database
from aesq.core.config import Settings
from tests.helpers import COMPOSE_DOTENV, COMPOSE_SERVICES, compose_env, seed_sql_examples

ROOT = Path(__file__).resolve().parent.parent
DATASOURCES = yaml.safe_load((ROOT / "grafana/provisioning/datasources/aesq.yaml").read_text())["datasources"]
PROVIDERS = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/aesq.yaml").read_text())["providers"]
DASHBOARD = json.loads((ROOT / "grafana/dashboards/aesq.json").read_text())
GRAFANA = COMPOSE_SERVICES["grafana"]
TARGETS = [(panel["title"], target) for panel in DASHBOARD["panels"] for target in panel["targets"]]
# Grafana expands $VAR and ${VAR} from its environment in provisioning files.
ENV_REFERENCE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
# The dashboard's time range in the tests: the last 30 days.
RANGE = "now() - interval '30 days' AND now()"
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def mounts() -> dict[str, str]:
    """Container path → host path of the grafana service's bind mounts."""
    pairs = (volume.split(":")[:2] for volume in GRAFANA["volumes"])
    return {container: host for host, container in pairs}


def expand_env(value: str, environment: dict[str, str]) -> str:
    """A provisioning value with its environment references expanded; each must be set."""

    def substitute(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        assert name in environment, f"${name} is not set on the grafana service"
        return environment[name]

    return ENV_REFERENCE.sub(substitute, str(value))


def time_group(match: re.Match[str]) -> str:
    """$__timeGroup(col, '1d') as Grafana's Postgres macro computes it; the Alias form names it "time"."""
    alias, column, count, unit = match.groups()
    seconds = int(count) * SECONDS[unit]
    group = f"to_timestamp(floor(extract(epoch from {column.strip()}) / {seconds}) * {seconds})"
    return group + (' AS "time"' if alias else "")


def expand_sql(sql: str, variables: dict[str, str]) -> str:
    """A panel's rawSql with Grafana's macros and the dashboard variables expanded; anything else is an error."""
    sql = re.sub(r"\$__timeFilter\(([^)]*)\)", lambda m: f"{m[1].strip()} BETWEEN {RANGE}", sql)
    sql = re.sub(r"\$__timeGroup(Alias)?\(([^,)]+),\s*'?(\d+)([smhd])'?\)", time_group, sql)
    sql = sql.replace("$__timeFrom()", "(now() - interval '30 days')").replace("$__timeTo()", "now()")
    assert "$__" not in sql, f"unsupported macro in {sql}"
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables[m[1] or m[2]], sql)


def test_compose_service() -> None:
    """grafana is an opt-in profile that mounts the provisioning and the folder the provider reads."""
    assert GRAFANA["image"] == "grafana/grafana-oss"
    assert GRAFANA["profiles"] == ["grafana"]
    assert "3000:3000" in GRAFANA["ports"]
    assert GRAFANA["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert mounts()["/etc/grafana/provisioning"] == "./grafana/provisioning"
    [provider] = PROVIDERS
    assert provider["type"] == "file"
    assert (ROOT / mounts()[provider["options"]["path"]] / "aesq.json").is_file()


@pytest.mark.parametrize("dotenv", [{}, COMPOSE_DOTENV], ids=["defaults", "dotenv"])
def test_datasource_reaches_the_aesq_database(dotenv: dict[str, str]) -> None:
    """The provisioned datasource logs into the same database, as the same user, as aesq itself."""
    [datasource] = DATASOURCES
    grafana = compose_env("grafana", dotenv)
    aesq = make_url(compose_env("aesq-worker", dotenv)["AESQ_DATABASE_URL"])
    assert datasource["type"] == "grafana-postgresql-datasource" and datasource["isDefault"] is True
    assert expand_env(datasource["url"], grafana) == f"{aesq.host}:{aesq.port}"
    assert expand_env(datasource["user"], grafana) == aesq.username
    assert expand_env(datasource["secureJsonData"]["password"], grafana) == aesq.password
    assert expand_env(datasource["jsonData"]["database"], grafana) == aesq.database
    postgres = compose_env("postgres", dotenv)
    assert {key: grafana[key] for key in postgres} == postgres


def test_dashboard_uses_the_provisioned_datasource() -> None:
    """Every panel, target and variable names the provisioned datasource and is raw SQL."""
    [datasource] = DATASOURCES
    expected = {"type": datasource["type"], "uid": datasource["uid"]}
    assert len(DASHBOARD["panels"]) >= 3
    assert {title for title, _ in TARGETS} == {panel["title"] for panel in DASHBOARD["panels"]}
    for panel in DASHBOARD["panels"]:
        assert panel["datasource"] == expected, panel["title"]
    for title, target in TARGETS:
        assert target["datasource"] == expected, title
        assert target["rawQuery"] is True and target["format"] in ("table", "time_series"), title
    for variable in DASHBOARD["templating"]["list"]:
        assert variable["datasource"] == expected


def test_panel_queries_run_on_the_views(settings: Settings) -> None:
    """Each panel's SQL, macros expanded, runs on the migrated and seeded database and finds rows."""
    seed_sql_examples(settings)
    with database.get_engine(settings).connect() as connection:
        variables = {}
        for variable in DASHBOARD["templating"]["list"]:
            options = connection.exec_driver_sql(variable["query"]).scalars().all()
            assert variable["current"]["value"] in options, variable["name"]
            variables[variable["name"]] = variable["current"]["value"]
        uses = set()
        for title, target in TARGETS:
            uses |= set(re.findall(r"\$__\w+", target["rawSql"]))
            result = connection.exec_driver_sql(expand_sql(target["rawSql"], variables))
            rows = result.all()
            assert rows, title
            if target["format"] == "time_series":
                assert next(iter(result.keys())) == "time", title
                assert all(isinstance(row[0], datetime) for row in rows), title
    assert {"$__timeFilter", "$__timeGroupAlias"} <= uses
