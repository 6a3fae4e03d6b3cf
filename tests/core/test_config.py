"""Settings: AESQ_* environment variables over an optional TOML file, validated, and cached by get_settings()."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from aesq.core.config import ConfigurationError, Settings, SettingsInvalid, get_settings, read_settings


@pytest.fixture(autouse=True)
def clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No AESQ_* variable or ./aesq.toml of the machine leaks in; the settings cache starts and ends empty."""
    for name in list(os.environ):
        if name.startswith("AESQ_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_defaults_without_file_or_environment():
    settings = Settings()
    assert settings.database_url is None
    assert settings.s3_endpoint == "localhost:9000"
    assert settings.sources == []
    assert settings.scorers == ["technical"]
    assert settings.thresholds == {"technical": 5.0}
    assert settings.batch_size == 32


def test_aesq_toml_in_working_directory_is_read(tmp_path):
    (tmp_path / "aesq.toml").write_text('batch_size = 7\nsources = ["s3://images/raw", "/data"]\n')
    settings = Settings()
    assert settings.batch_size == 7
    assert settings.sources == ["s3://images/raw", "/data"]


def test_aesq_config_names_the_file_instead_of_aesq_toml(tmp_path, monkeypatch):
    (tmp_path / "aesq.toml").write_text("batch_size = 7\n")
    named = tmp_path / "elsewhere" / "custom.toml"
    named.parent.mkdir()
    named.write_text('batch_size = 11\ndevice = "cuda:1"\n')
    monkeypatch.setenv("AESQ_CONFIG", str(named))
    settings = Settings()
    assert (settings.batch_size, settings.device) == (11, "cuda:1")


def test_environment_overrides_toml_field_by_field(tmp_path, monkeypatch):
    (tmp_path / "aesq.toml").write_text('batch_size = 7\ndevice = "cuda"\nscorers = ["technical", "aesthetic"]\n')
    monkeypatch.setenv("AESQ_BATCH_SIZE", "9")
    monkeypatch.setenv("AESQ_SCORERS", "aesthetic")
    settings = Settings()
    assert settings.batch_size == 9
    assert settings.scorers == ["aesthetic"]
    assert settings.device == "cuda"


@pytest.mark.parametrize("field", ["sources", "scorers"])
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("s3://b/p,/data", ["s3://b/p", "/data"]),
        (" s3://b/p , /data ,", ["s3://b/p", "/data"]),
        ('["s3://b/p,q", "/data"]', ["s3://b/p,q", "/data"]),
        ("", []),
    ],
    ids=["commas", "spaces-and-trailing-comma", "json-list-keeps-commas", "empty"],
)
def test_list_variables_accept_commas_and_json(monkeypatch, field, value, expected):
    monkeypatch.setenv(f"AESQ_{field.upper()}", value)
    assert getattr(Settings(), field) == expected


def test_thresholds_from_json(monkeypatch):
    monkeypatch.setenv("AESQ_THRESHOLDS", '{"technical": 6.5, "aesthetic": 5}')
    assert Settings().thresholds == {"technical": 6.5, "aesthetic": 5.0}


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AESQ_BATCH_SIZE", "0"),
        ("AESQ_MAX_PIXELS", "-1"),
        ("AESQ_FETCH_THREADS", "many"),
        ("AESQ_POLL_INTERVAL_SECONDS", "0"),
        ("AESQ_SOURCES", "[1]"),
        ("AESQ_SOURCES", "[not json"),
        ("AESQ_THRESHOLDS", '{"technical": "high"}'),
    ],
)
def test_invalid_environment_value_names_the_field(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as raised:
        Settings()
    assert {error["loc"][0] for error in raised.value.errors()} == {variable.removeprefix("AESQ_").lower()}


def test_invalid_toml_value_is_a_validation_error(tmp_path):
    (tmp_path / "aesq.toml").write_text("batch_size = 0\n")
    with pytest.raises(ValidationError, match="batch_size"):
        Settings()


def test_secret_key_is_hidden_from_repr(monkeypatch):
    monkeypatch.setenv("AESQ_S3_SECRET_KEY", "hunter2-secret")
    settings = Settings()
    assert settings.s3_secret_key.get_secret_value() == "hunter2-secret"
    assert "hunter2-secret" not in repr(settings)


def test_get_settings_is_cached_until_cache_clear(monkeypatch):
    monkeypatch.setenv("AESQ_BATCH_SIZE", "5")
    first = get_settings()
    monkeypatch.setenv("AESQ_BATCH_SIZE", "6")
    assert get_settings() is first
    assert get_settings().batch_size == 5
    get_settings.cache_clear()
    assert get_settings().batch_size == 6


def test_a_pool_worker_and_a_run_with_its_own_scorers_see_only_their_models(monkeypatch):
    monkeypatch.setenv(
        "AESQ_POOLS",
        '{"gpu": {"scorers": ["laion-aesthetic-v2"], "embedders": ["efficientnet-lite0"], "device": "cuda:1"}}',
    )
    settings = Settings()
    assert (settings.enabled_scorers, settings.enabled_embedders) == (["laion-aesthetic-v2"], ["efficientnet-lite0"])
    worker = settings.for_pool("gpu")
    assert (worker.scorers, worker.embedders, worker.device, worker.pools) == (
        ["laion-aesthetic-v2"],
        ["efficientnet-lite0"],
        "cuda:1",
        {},
    )
    run = settings.for_run(["technical"])  # scored here, not handed to the pool's workers
    assert (run.enabled_scorers, run.pools) == (["technical"], {})
    assert settings.enabled_scorers == ["laion-aesthetic-v2"]  # the settings themselves are left as they were


def test_empty_pools_and_result_storage_variables_mean_none(monkeypatch):
    """The compose stack passes AESQ_POOLS and AESQ_RESULT_STORAGE through, empty unless the gpu setup sets them."""
    monkeypatch.setenv("AESQ_POOLS", "")
    monkeypatch.setenv("AESQ_RESULT_STORAGE", "")
    assert (Settings().pools, Settings().result_storage) == ({}, None)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("AESQ_BATCH_SIZE", "0", "AESQ_BATCH_SIZE: must be greater than 0"),
        (
            "AESQ_THRESHOLDS",
            '{"technical": "high"}',
            "AESQ_THRESHOLDS (technical): must be a valid number, unable to parse string as a number; "
            'expected an object of scorer → number, e.g. {"technical": 5}',
        ),
        (
            "AESQ_THRESHOLDS",
            "{bad",
            "AESQ_THRESHOLDS is not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 "
            '(char 1)): expected an object of scorer → number, e.g. {"technical": 5}',
        ),
        (
            "AESQ_POOLS",
            '{"gpu": ',
            "AESQ_POOLS is not valid JSON (Expecting value: line 1 column 9 (char 8)): expected an object of pool → "
            'models and device, e.g. {"gpu0": {"scorers": ["ernie-aes"], "device": "cuda:0"}}',
        ),
        (
            "AESQ_RESULT_STORAGE",
            "results/prefect",
            "AESQ_RESULT_STORAGE: must be s3://bucket/folder or an absolute folder path shared by every host",
        ),
        (
            "AESQ_SCORERS",
            '["technical"',
            "AESQ_SCORERS is not valid JSON (Expecting ',' delimiter: line 1 column 13 (char 12)): expected names "
            "separated by commas or a JSON list, e.g. technical,ernie-aes",
        ),
    ],
)
def test_get_settings_names_the_variable_what_is_wrong_and_what_it_takes(monkeypatch, variable, value, message):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsInvalid) as raised:
        get_settings()
    assert str(raised.value) == message


def test_a_toml_value_is_named_by_its_key_and_file_and_every_problem_is_said(tmp_path):
    (tmp_path / "aesq.toml").write_text("batch_size = 0\nthresholds = 3\n")
    with pytest.raises(SettingsInvalid) as raised:
        read_settings()
    assert str(raised.value) == (
        'thresholds in aesq.toml: must be a valid dictionary; expected an object of scorer → number, e.g. {"technical": 5}; '
        "batch_size in aesq.toml: must be greater than 0"
    )


def test_a_malformed_toml_file_is_a_configuration_error_naming_it(tmp_path, monkeypatch):
    config = tmp_path / "custom.toml"
    config.write_text("batch_size = = 3\n")
    monkeypatch.setenv("AESQ_CONFIG", str(config))
    with pytest.raises(
        ConfigurationError, match=rf"^{config} is not valid TOML \(Invalid value \(at line 1, column 14\)\)"
    ):
        read_settings()
