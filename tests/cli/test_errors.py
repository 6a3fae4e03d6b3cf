"""Infrastructure and configuration errors of the `aesq` command: each one line on stderr naming the cause and what to
do, exit status 1, and said at once (before Prefect starts), so an unreachable object store or database is known in
seconds."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import AESQ, free_port, web_service

FAST = 10  # seconds within which an unreachable endpoint must be reported (they answer in well under one)


def _aesq(*args: str, env: dict[str, str] | None = None) -> tuple[str, float]:
    """Run the installed `aesq` command; its one error line (asserted: exit status 1, nothing else on stderr or
    stdout) and how long it took."""
    started = time.monotonic()
    result = subprocess.run(
        [str(AESQ), *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aesq: error: "), result.stderr
    return lines[0].removeprefix("aesq: error: "), elapsed


def test_an_unreachable_object_store_is_named_with_its_setting_within_seconds(settings):
    endpoint = f"127.0.0.1:{free_port()}"
    error, elapsed = _aesq("run", "s3://images/", env={"AESQ_S3_ENDPOINT": endpoint})
    assert error.startswith(f"cannot reach the object store at {endpoint} (AESQ_S3_ENDPOINT): is it running? (")
    assert "Connection refused" in error
    assert elapsed < FAST


def test_an_endpoint_that_is_not_s3_names_the_setting_and_the_api_port(settings):
    with web_service(404, "application/json", b'{"detail":"Not Found"}') as endpoint:
        error, elapsed = _aesq("run", "s3://images/", env={"AESQ_S3_ENDPOINT": endpoint})
    assert error == (
        f"{endpoint} (AESQ_S3_ENDPOINT) answered, but not as an S3 server (HTTP 404, application/json): "
        "is this the S3 API port? MinIO's API is usually :9000, its console :9001"
    )
    assert elapsed < FAST


def test_refused_credentials_name_the_key_settings(settings, bucket, s3_checks_credentials):
    error, _ = _aesq("run", f"s3://{bucket}/")
    assert error.startswith(f"{settings.s3_endpoint} refused access to s3://{bucket}/ (InvalidAccessKeyId: ")
    assert error.endswith("check AESQ_S3_ACCESS_KEY and AESQ_S3_SECRET_KEY")
    assert settings.s3_secret_key.get_secret_value() not in error


def test_a_missing_bucket_names_the_bucket_the_source_and_the_endpoint(settings):
    name = f"absent-{uuid.uuid4().hex[:10]}"
    error, _ = _aesq("run", f"s3://{name}/images/")
    assert error == (
        f"s3://{name}/: no such bucket {name!r} at {settings.s3_endpoint} (AESQ_S3_ENDPOINT): "
        "create it, or fix the name"
    )


def test_an_unreachable_database_is_named_without_its_password_within_seconds(settings):
    port = free_port()
    error, elapsed = _aesq("status", env={"AESQ_DATABASE_URL": f"postgresql://aesq:hunter2@127.0.0.1:{port}/aesq"})
    assert error.startswith(
        f"cannot reach the database at 127.0.0.1:{port} (AESQ_DATABASE_URL): is Postgres running? ("
    )
    assert "Connection refused" in error and "hunter2" not in error
    assert elapsed < FAST


def test_a_database_that_refuses_the_login_says_so(settings):
    from sqlalchemy.engine import make_url

    url = make_url(settings.database_url).set(database=f"absent_{uuid.uuid4().hex[:8]}")
    error, _ = _aesq("status", env={"AESQ_DATABASE_URL": url.render_as_string(hide_password=False)})
    where = f"{url.host or url.query['host']}:{url.port or 5432}"  # the test server listens on a socket folder
    assert error.startswith(f"the database at {where} (AESQ_DATABASE_URL) refused the connection: ")
    assert f'database "{url.database}" does not exist' in error


def _device_torch_lacks() -> tuple[str, str]:
    """A CUDA device this machine's torch cannot use, and what aesq says about it."""
    import torch

    if not torch.backends.cuda.is_built():
        return "cuda", "torch here has no CUDA (CPU-only build); set {named}=cpu or install a CUDA build"
    count = torch.cuda.device_count()
    if count == 0:
        return "cuda", "torch sees no CUDA device (driver, CUDA_VISIBLE_DEVICES?)"
    return f"cuda:{count}", f"there are only {count} CUDA devices (cuda:0 to cuda:{count - 1})"


def test_a_device_torch_does_not_have_is_configuration_said_before_the_run(settings, tmp_path):
    device, message = _device_torch_lacks()
    error, _ = _aesq("run", str(tmp_path), env={"AESQ_DEVICE": device})
    assert error == f"AESQ_DEVICE={device}: " + message.format(named="AESQ_DEVICE")


def test_a_pool_workers_device_is_named_where_it_is_set(settings):
    device, message = _device_torch_lacks()
    pools = f'{{"gpu": {{"scorers": ["technical"], "device": "{device}"}}}}'
    error, _ = _aesq("worker", "--pool", "gpu", env={"AESQ_POOLS": pools})
    assert error == f"AESQ_POOLS.gpu.device={device}: " + message.format(named="AESQ_POOLS.gpu.device")


def test_a_health_port_without_a_pool_says_where_the_flows_workers_health_is(settings):
    error, elapsed = _aesq("worker", "--health-port", "8081", env={"AESQ_SOURCES": "s3://images/"})
    assert error.startswith("--health-port is a pool worker's (--pool); the flows worker's health is Prefect's runner")
    assert elapsed < FAST


def test_a_device_name_torch_does_not_know_is_refused(settings, tmp_path):
    error, _ = _aesq("run", str(tmp_path), env={"AESQ_DEVICE": "gpu"})
    assert error == "AESQ_DEVICE=gpu is not a torch device: use cpu, cuda, cuda:N or mps"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "AESQ_THRESHOLDS",
            "{bad",
            "AESQ_THRESHOLDS is not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 "
            '(char 1)): expected an object of scorer → number, e.g. {"technical": 5}',
        ),
        (
            "AESQ_POOLS",
            "gpu0",
            "AESQ_POOLS is not valid JSON (Expecting value: line 1 column 1 (char 0)): expected an object of pool → "
            'models and device, e.g. {"gpu0": {"scorers": ["ernie-aes"], "device": "cuda:0"}}',
        ),
        (
            "AESQ_SOURCES",
            "[s3://images/",
            "AESQ_SOURCES is not valid JSON (Expecting value: line 1 column 2 (char 1)): expected names separated by "
            "commas or a JSON list, e.g. s3://images/raw,/data/images",
        ),
        (
            "AESQ_DEFECT_RULES",
            '{"technical": {"bottom_share": 2}}',
            "AESQ_DEFECT_RULES (technical.bottom_share): must be less than or equal to 1; expected an object of "
            'scorer → rule, e.g. {"technical": {"below": 5, "bottom_share": 0.1}}',
        ),
        ("AESQ_BATCH_SIZE", "0", "AESQ_BATCH_SIZE: must be greater than 0"),
        (
            "AESQ_FETCH_THREADS",
            "many",
            "AESQ_FETCH_THREADS: must be a valid integer, unable to parse string as an integer",
        ),
    ],
)
def test_a_malformed_setting_names_the_variable_and_what_it_takes(variable, value, message, tmp_path):
    error, _ = _aesq("status", env={variable: value, "AESQ_CONFIG": str(tmp_path / "absent.toml")})
    assert error == message


def test_a_malformed_toml_file_is_named_with_where_it_breaks(tmp_path: Path):
    config = tmp_path / "aesq.toml"
    config.write_text('batch_size = 8\nsources = = ["s3://images/"]\n')
    error, _ = _aesq("status", env={"AESQ_CONFIG": str(config)})
    assert error.startswith(f"{config} is not valid TOML (")
    assert "line 2" in error and error.endswith("fix it, or set AESQ_CONFIG to another file")


def test_a_value_in_the_toml_file_is_named_by_its_key_and_file(tmp_path: Path):
    config = tmp_path / "aesq.toml"
    config.write_text("batch_size = 0\n")
    environment = {name: value for name, value in os.environ.items() if not name.startswith("AESQ_")}
    started = subprocess.run(
        [str(AESQ), "status"], capture_output=True, text=True, env={**environment, "AESQ_CONFIG": str(config)}
    )
    assert started.returncode == 1
    assert started.stderr == f"aesq: error: batch_size in {config}: must be greater than 0\n"
