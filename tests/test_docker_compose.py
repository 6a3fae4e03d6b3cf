"""The compose stack is wired consistently, and its aesq environment is a valid `Settings`."""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy.engine import make_url

from aesq.core.config import Settings
from tests.helpers import COMPOSE_DOTENV, COMPOSE_GPU_DOTENV, COMPOSE_SERVICES, compose_env, resolve_compose

ROOT = Path(__file__).resolve().parent.parent
AESQ_SERVICES = ("aesq-migrate", "aesq-worker", "aesq-dashboard")
IMAGES = {
    "postgres": "pgvector/pgvector:pg17",
    "minio": "minio/minio",
    "minio-init": "minio/mc",
    "prefect-db": "postgres:17",
    "prefect-server": "prefecthq/prefect:3-latest",
}


@pytest.fixture(params=[{}, COMPOSE_DOTENV], ids=["defaults", "dotenv"])
def dotenv(request: pytest.FixtureRequest) -> dict[str, str]:
    """Resolve with the defaults alone, and with every variable overridden."""
    return request.param


def test_services_and_images() -> None:
    """Every expected service exists, with its image or the local build."""
    assert {name: COMPOSE_SERVICES[name].get("image") for name in IMAGES} == IMAGES
    assert all(COMPOSE_SERVICES[name]["build"] == "." for name in AESQ_SERVICES)


def test_dependencies_can_be_met() -> None:
    """Each dependency exists, and one waited on as healthy has a healthcheck."""
    for service in COMPOSE_SERVICES.values():
        for target, spec in service.get("depends_on", {}).items():
            assert target in COMPOSE_SERVICES
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in COMPOSE_SERVICES[target], target
    worker = {target: spec["condition"] for target, spec in COMPOSE_SERVICES["aesq-worker"]["depends_on"].items()}
    assert worker["aesq-migrate"] == worker["minio-init"] == "service_completed_successfully"
    assert "prefect-server" in worker
    assert COMPOSE_SERVICES["aesq-migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_aesq_variables_are_settings_fields() -> None:
    """No service sets an `AESQ_*` variable that `Settings` would silently ignore."""
    for service in COMPOSE_SERVICES.values():
        for key in service.get("environment", {}):
            if key.startswith("AESQ_"):
                assert key.removeprefix("AESQ_").lower() in Settings.model_fields, key


def test_aesq_services_share_one_env(dotenv: dict[str, str]) -> None:
    """Migration and worker see the same environment."""
    assert compose_env("aesq-migrate", dotenv) == compose_env("aesq-worker", dotenv)


def test_aesq_env_validates(dotenv: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The aesq environment parses into the intended `Settings`."""
    aesq = compose_env("aesq-worker", dotenv)
    for key in list(os.environ):
        if key.startswith("AESQ_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AESQ_CONFIG", str(tmp_path / "absent.toml"))
    for key, value in aesq.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.database_url == aesq["AESQ_DATABASE_URL"]
    assert settings.s3_endpoint == "minio:9000"
    assert settings.s3_access_key == aesq["AESQ_S3_ACCESS_KEY"]
    assert settings.s3_secret_key.get_secret_value() == aesq["AESQ_S3_SECRET_KEY"]
    assert settings.s3_secure is False
    assert settings.sources and all(source.startswith("s3://") for source in settings.sources)
    assert f"aesq-data:{settings.data_dir}" in COMPOSE_SERVICES["aesq-worker"]["volumes"]


def test_database_url_points_at_postgres(dotenv: dict[str, str]) -> None:
    """AESQ_DATABASE_URL reaches the `postgres` service with the credentials it is given."""
    url = make_url(compose_env("aesq-worker", dotenv)["AESQ_DATABASE_URL"])
    postgres = compose_env("postgres", dotenv)
    assert (url.drivername, url.host, url.port) == ("postgresql+psycopg", "postgres", 5432)
    assert (url.username, url.password, url.database) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
        postgres["POSTGRES_DB"],
    )


def test_s3_points_at_minio_and_its_bucket(dotenv: dict[str, str]) -> None:
    """The S3 settings reach `minio` as root, and the sources name the bucket `minio-init` creates."""
    aesq, minio, init = (
        compose_env("aesq-worker", dotenv),
        compose_env("minio", dotenv),
        compose_env("minio-init", dotenv),
    )
    assert aesq["AESQ_S3_ENDPOINT"] == "minio:9000"
    assert (aesq["AESQ_S3_ACCESS_KEY"], aesq["AESQ_S3_SECRET_KEY"]) == (
        minio["MINIO_ROOT_USER"],
        minio["MINIO_ROOT_PASSWORD"],
    )
    assert {key: init[key] for key in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD")} == minio
    script = " ".join(COMPOSE_SERVICES["minio-init"]["command"])
    assert re.search(r"mc alias set local http://minio:9000 ", script)
    bucket = re.search(r"mc mb --ignore-existing local/([\w.-]+)", script).group(1)
    assert {urlsplit(source).netloc for source in aesq["AESQ_SOURCES"].split(",")} == {bucket}


def test_prefect_wiring(dotenv: dict[str, str]) -> None:
    """aesq reaches `prefect-server`, which reaches `prefect-db` with that service's credentials."""
    api = urlsplit(compose_env("aesq-worker", dotenv)["PREFECT_API_URL"])
    assert (api.hostname, api.port, api.path) == ("prefect-server", 4200, "/api")
    server, db = compose_env("prefect-server", dotenv), compose_env("prefect-db", dotenv)
    url = make_url(server["PREFECT_API_DATABASE_CONNECTION_URL"])
    assert (url.drivername, url.host, url.port) == ("postgresql+asyncpg", "prefect-db", 5432)
    assert (url.username, url.password, url.database) == (
        db["POSTGRES_USER"],
        db["POSTGRES_PASSWORD"],
        db["POSTGRES_DB"],
    )
    assert server["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"


def test_dockerfile_installs_aesq() -> None:
    """The image installs the project and runs the `aesq` console script."""
    lines = (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    instructions = [tuple(line.split(maxsplit=1)) for line in lines if line.strip() and not line.startswith("#")]
    assert ("FROM", "python:3.11-slim") in instructions
    assert any(word == "RUN" and re.search(r"pip install .*\s\.$", rest) for word, rest in instructions)
    assert [json.loads(rest) for word, rest in instructions if word == "ENTRYPOINT"] == [["aesq"]]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "aesq" in scripts
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv/", ".git/", ".env", "aesq.toml", "weights/"} <= set(ignored)


def test_dashboard_serves_beyond_loopback_only_with_a_token(dotenv: dict[str, str]) -> None:
    """The dashboard shares the aesq environment plus its token; unset, the token is absent and `aesq serve` refuses."""
    dashboard = compose_env("aesq-dashboard", dotenv)
    assert {k: v for k, v in dashboard.items() if k != "AESQ_API_TOKEN"} == compose_env("aesq-worker", dotenv)
    assert COMPOSE_SERVICES["aesq-dashboard"]["command"].split()[:3] == ["serve", "--host", "0.0.0.0"]
    token = Settings(api_token=dashboard["AESQ_API_TOKEN"]).api_token
    assert (token is None) == (dotenv == {})


GPU_SERVICES = [name for name, service in COMPOSE_SERVICES.items() if "gpu" in service.get("profiles", [])]


def test_cpu_stack_is_the_default() -> None:
    """Without a profile nothing reserves a GPU, and the flows worker runs every model itself (no pools)."""
    assert GPU_SERVICES, "the gpu profile has its workers"
    for name, service in COMPOSE_SERVICES.items():
        if not service.get("profiles"):
            assert "deploy" not in service, name
    assert compose_env("aesq-worker", {})["AESQ_POOLS"] == ""
    assert Settings(pools=compose_env("aesq-worker", {})["AESQ_POOLS"]).pools == {}


@pytest.mark.parametrize("dotenv", [COMPOSE_GPU_DOTENV, COMPOSE_DOTENV], ids=["documented", "dotenv"])
def test_gpu_profile_wires_one_pool_worker_per_gpu(dotenv: dict[str, str]) -> None:
    """Each `gpu` service serves a pool the flows worker hands batches to, on the one GPU it reserves, with the
    CUDA build of torch, the shared environment plus read-only weights, and the flows worker's dependencies."""
    pools = Settings(pools=compose_env("aesq-worker", dotenv)["AESQ_POOLS"]).pools
    devices = []
    for name in GPU_SERVICES:
        service = COMPOSE_SERVICES[name]
        (reservation,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert (reservation["driver"], reservation["capabilities"]) == ("nvidia", ["gpu"])
        (device,) = reservation["device_ids"]
        devices.append(device)
        command = resolve_compose(service["command"], dotenv).split()
        assert command[:2] == ["worker", "--pool"] and command[2] in pools, (name, command, pools)
        assert command[3:] == ["--device", f"cuda:{device}", "--name", name]
        index = resolve_compose(service["build"]["args"]["PIP_EXTRA_INDEX_URL"], dotenv)
        assert service["build"]["context"] == "." and index.startswith("https://download.pytorch.org/whl/")
        assert index != "https://download.pytorch.org/whl/cpu"
        environment = compose_env(name, dotenv)
        assert environment.pop("AESQ_WEIGHTS_DIR") == "/weights"
        assert environment == compose_env("aesq-worker", dotenv)
        volumes = [resolve_compose(volume, dotenv) for volume in service["volumes"]]
        assert "aesq-data:/data" in volumes and any(volume.endswith(":/weights:ro") for volume in volumes)
        assert service["depends_on"] == COMPOSE_SERVICES["aesq-worker"]["depends_on"]
    assert len(set(devices)) == len(devices), "one worker per GPU"
    assert COMPOSE_GPU_DOTENV["COMPOSE_PROFILES"] == "gpu"


def test_pool_workers_and_the_flows_worker_share_a_result_storage_minio_init_creates() -> None:
    """The containers share no Prefect home: what the flows worker hands a pool worker goes through a bucket."""
    location = Settings(result_storage=compose_env("aesq-worker", {})["AESQ_RESULT_STORAGE"]).result_storage
    assert location is not None and location.startswith("s3://")
    made = re.findall(r"local/([\w.-]+)", resolve_compose(COMPOSE_SERVICES["minio-init"]["command"], {}))
    assert location.removeprefix("s3://").partition("/")[0] in made


def test_dockerfile_selects_the_torch_build_by_a_build_argument() -> None:
    """CPU wheels unless the build argument names a CUDA index, as the gpu services do."""
    arguments = re.findall(r"^ARG (\w+)=(\S+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert ("PIP_EXTRA_INDEX_URL", "https://download.pytorch.org/whl/cpu") in arguments
