"""The one typed settings object: `AESQ_*` environment variables over an optional TOML file.

The TOML file is `$AESQ_CONFIG` if set, else `./aesq.toml` if it exists; environment variables win.
Only entry points (the CLI, the web app's dependency, flow entry, Alembic's environment) call `get_settings()`;
everything below them takes the settings as a parameter (tests override them with `get_settings.cache_clear()`).
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Annotated

import platformdirs
from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)


def _toml_path() -> Path:
    """Where the optional TOML file is looked for."""
    return Path(os.environ.get("AESQ_CONFIG", "aesq.toml"))


class ScoringPool(BaseModel):
    """A named group of scoring workers (typically one per GPU) and the models they run."""

    scorers: list[str] = Field(default_factory=list, description="Scorer names the pool's workers run.")
    embedders: list[str] = Field(default_factory=list, description="Embedder names the pool's workers run.")
    device: str = Field(default="cuda", description="torch device of a worker unless `aesq worker --device` says.")


class DefectRule(BaseModel):
    """When an asset counts as a low scorer under one scorer and goes to defect analysis."""

    below: float | None = Field(default=None, description="Scores under this absolute value.")
    bottom_share: float | None = Field(
        default=None, gt=0, le=1, description="Or the lowest share of its generator version (0.1 = bottom 10 %)."
    )


class ConfigurationError(ValueError):
    """Settings or arguments a retry cannot fix (tasks never retry it); the message says what to change."""


class SettingsInvalid(ConfigurationError):
    """A setting whose value cannot be read; the message names the variable (or TOML key) and what it takes."""


class UnknownPool(ConfigurationError):
    """A scoring pool name that the settings do not define."""


class Settings(BaseSettings):
    """Everything aesq reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="AESQ_", extra="ignore")

    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of a Postgres with pgvector; empty starts the embedded Postgres in data_dir.",
    )
    data_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_data_dir("aesq")),
        description="Holds the embedded Postgres, the demo sample and reports.",
    )
    s3_endpoint: str = Field(default="localhost:9000", description="host:port of the S3/MinIO server.")
    s3_access_key: str = Field(default="minioadmin", description="S3 access key.")
    s3_secret_key: SecretStr = Field(default=SecretStr("minioadmin"), description="S3 secret key.")
    s3_secure: bool = Field(default=False, description="Use HTTPS to reach the S3 server.")
    s3_region: str | None = Field(default=None, description="S3 region; None lets the server say.")
    sources: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="What `aesq run` and the worker ingest: s3://bucket/prefix URIs or local folders.",
    )
    scorers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["technical"], description="Enabled scorer names."
    )
    embedders: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["efficientnet-lite0"], description="Enabled embedders."
    )
    weights_dir: Path | None = Field(default=None, description="Folder of model checkpoints.")
    device: str = Field(default="cpu", description="torch device the models run on.")
    thresholds: dict[str, float] = Field(
        default_factory=lambda: {"technical": 5.0},
        description="Per scorer: a score at or above this counts as good in the statistics.",
    )
    defect_rules: dict[str, DefectRule] = Field(
        default_factory=lambda: {"technical": DefectRule(below=5.0, bottom_share=0.1)},
        description="Per scorer: which assets defect analysis looks at.",
    )
    critique: bool = Field(
        default=True,
        description="Have a VLM scorer, when one is enabled, write a critique per aspect of each low scorer.",
    )
    critic: str | None = Field(
        default=None, description="The scorer that writes critiques; default the first enabled scorer that can."
    )
    critique_aspects: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Aspects the critic judges; default its published ones (ArtiMuse's)."
    )
    critique_max_new_tokens: int = Field(
        default=8192,  # ArtiMuse's evaluation's own cap; its answers end long before it
        gt=0,
        description="Longest critique of one aspect, in tokens; a longer answer is cut off and marked so.",
    )
    near_duplicate_distance: float = Field(
        default=0.02, ge=0, le=2, description="Cosine distance under which two assets' embeddings are near-duplicates."
    )
    reports_uri: str | None = Field(
        default=None, description="Where reports are saved: s3://bucket/prefix or a folder; default data_dir/reports."
    )
    report_cron: str = Field(
        default="0 3 * * *", description="When `aesq worker` renders the nightly report (cron, UTC)."
    )
    report_days: int = Field(default=14, gt=0, description="Days of daily means in the report's trend.")
    max_pixels: int = Field(default=64_000_000, gt=0, description="Images with more pixels are refused as bombs.")
    decode_pixel_budget: int = Field(
        default=64_000_000,
        gt=0,
        description="Pixels one process decodes at once, validating and decoding images (up to about 9 bytes each "
        "while decoding); an image larger than this decodes alone.",
    )
    batch_size: int = Field(default=32, gt=0, description="Images per task run.")
    fetch_threads: int = Field(default=8, gt=0, description="Parallel object downloads inside one batch.")
    retry_attempts: int = Field(
        default=5, gt=0, description="Tries before an image missing or unreadable at scoring time is failed."
    )
    retry_backoff_seconds: float = Field(
        default=60, ge=0, description="Wait before the second try of such an image; doubled for each further try."
    )
    pools: Annotated[dict[str, ScoringPool], NoDecode] = Field(
        default_factory=dict,
        description="Scoring pools; when any is set, flows hand score batches to the pools' workers "
        "(`aesq worker --pool NAME`) instead of scoring in-process, and `scorers`/`embedders` are unused.",
    )
    result_storage: str | None = Field(
        default=None,
        description="s3://bucket/folder (on the AESQ_S3_* object store) or a shared absolute folder where Prefect "
        "keeps what flows hand to the scoring pools (each batch's ids, the workers' results); needed when pool "
        "workers run on other hosts or in other containers than the flows. Unset: Prefect's local storage.",
    )
    api_token: SecretStr | None = Field(
        default=None,
        description="Token `aesq serve` requires (bearer header, or the session cookie of the /login form); needed "
        "beyond loopback.",
    )
    bridge_token: SecretStr | None = Field(
        default=None, description="Bearer token `aesq bridge` requires (MinIO webhook auth_token)."
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names the dashboard answers besides the loopback ones and `aesq serve --host` (a guard "
        "against DNS rebinding): names, `*.example.com`, or `*` for any.",
    )
    forwarded_allow_ips: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Addresses of reverse proxies whose X-Forwarded-Proto and X-Forwarded-For `aesq serve` believes "
        "(HTTPS at the proxy makes the login cookie Secure; the client's address counts its failed logins); `*` any. "
        "Empty: none, so no client can name its own address to escape the failed-login limit.",
    )
    failed_token_limit: int = Field(
        default=5,
        ge=1,
        description="Wrong tokens one client address may send `aesq serve` within a minute; beyond them it is "
        "refused (429) until the minute has passed, right token or not.",
    )
    pool_wait_seconds: float = Field(
        default=3600, gt=0, description="How long a flow waits for the scoring pools to score one batch."
    )
    poll_interval_seconds: int = Field(default=300, gt=0, description="How often the worker looks for new objects.")
    lease_seconds: float = Field(
        default=600,
        gt=0,
        description="How long a worker's claim on a batch lasts; the batch of a worker killed meanwhile goes to another then.",
    )
    ordered_sources: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Sources whose new keys always sort after the existing ones (e.g. time-stamped names): "
        "a poll lists only the keys after the last one seen.",
    )
    full_listing_seconds: int = Field(
        default=86_400,
        gt=0,
        description="How often an ordered source is listed whole anyway, to find deletions and overwrites.",
    )
    notification_window_seconds: float = Field(
        default=2.0,
        ge=0,
        description="`aesq bridge` starts one ingest for all the objects notified within this window.",
    )
    bridge_max_body_bytes: int = Field(
        default=1024 * 1024,
        gt=0,
        description="Largest notification body `aesq bridge` takes (413 beyond); MinIO sends one record per body.",
    )
    bridge_max_records: int = Field(
        default=1_000, gt=0, description="Most records one notification to `aesq bridge` may hold (413 beyond)."
    )
    bridge_read_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="`aesq bridge` drops a connection whose request headers, or body, take longer than this.",
    )
    bridge_max_connections: int = Field(
        default=64, gt=0, description="Connections `aesq bridge` holds at once; more are answered 503 and closed."
    )
    database_pool_size: int = Field(
        default=10, gt=0, description="Database connections one process keeps (plus as many again at peaks)."
    )

    @field_validator("api_token", "bridge_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        """An empty token (e.g. an unset compose variable) means no token, never an empty password."""
        return None if value == "" else value

    @field_validator("result_storage", mode="before")
    @classmethod
    def _result_storage_location(cls, value: object) -> object:
        """An S3 location or an absolute folder, which every host names alike; empty means none."""
        if value == "":
            return None
        if isinstance(value, str) and not (value.startswith("s3://") or Path(value).is_absolute()):
            raise ValueError("must be s3://bucket/folder or an absolute folder path shared by every host")
        return value

    @field_validator("pools", mode="before")
    @classmethod
    def _pools_from_json(cls, value: object) -> object:
        """A JSON object in the environment; empty (e.g. an unset compose variable) means no pools."""
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    @field_validator(
        "sources",
        "ordered_sources",
        "scorers",
        "embedders",
        "critique_aspects",
        "allowed_hosts",
        "forwarded_allow_ips",
        mode="before",
    )
    @classmethod
    def _split_commas(cls, value: object) -> object:
        """Accept `a,b` as well as a JSON list in environment variables."""
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def enabled_scorers(self) -> list[str]:
        """Every scorer that runs somewhere: the pools' when pools are set, else `scorers`."""
        if not self.pools:
            return self.scorers
        return list(dict.fromkeys(name for pool in self.pools.values() for name in pool.scorers))

    @property
    def enabled_embedders(self) -> list[str]:
        """Every embedder that runs somewhere: the pools' when pools are set, else `embedders`."""
        if not self.pools:
            return self.embedders
        return list(dict.fromkeys(name for pool in self.pools.values() for name in pool.embedders))

    def for_pool(self, name: str, device: str | None = None) -> Settings:
        """These settings as a worker of pool `name` sees them: its models, on its (or the given) device."""
        if name not in self.pools:
            configured = ", ".join(sorted(self.pools)) or "none"
            raise UnknownPool(f"no scoring pool {name!r} in the settings (configured: {configured})")
        pool = self.pools[name]
        return self.model_copy(
            update={"scorers": pool.scorers, "embedders": pool.embedders, "device": device or pool.device, "pools": {}}
        )

    def for_run(self, scorers: list[str]) -> Settings:
        """These settings for a run that names its own scorers (`aesq bench labels`): it scores with exactly
        those, in this process, whatever the pools (whose workers run only their configured models)."""
        return self.model_copy(update={"scorers": scorers, "pools": {}})

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment variables override the TOML file."""
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=_toml_path())


_LIST = "names separated by commas or a JSON list"
# What each setting with structure takes, with an example, for the message about a value that cannot be read.
_EXPECTED = {
    "thresholds": 'an object of scorer → number, e.g. {"technical": 5}',
    "defect_rules": 'an object of scorer → rule, e.g. {"technical": {"below": 5, "bottom_share": 0.1}}',
    "pools": 'an object of pool → models and device, e.g. {"gpu0": {"scorers": ["ernie-aes"], "device": "cuda:0"}}',
    "sources": f"{_LIST}, e.g. s3://images/raw,/data/images",
    "ordered_sources": f"{_LIST}, e.g. s3://images/raw,/data/images",
    "scorers": f"{_LIST}, e.g. technical,ernie-aes",
    "embedders": f"{_LIST}, e.g. efficientnet-lite0,clip-vit-l-14",
    "critique_aspects": f"{_LIST}, e.g. composition,lighting",
}


def _setting_name(field: str) -> str:
    """How the user set `field`: its environment variable when one is set, else its key in the TOML file."""
    variable = f"AESQ_{field}".upper()
    if any(name.upper() == variable for name in os.environ):
        return variable
    return f"{field} in {_toml_path()}"


def _expected(field: str, separator: str) -> str:
    """What the setting takes, as the end of an error message after `separator`; empty for plain values."""
    return f"{separator}expected {_EXPECTED[field]}" if field in _EXPECTED else ""


def _problem(error: ErrorDetails, field: str) -> str:
    """One validation problem of a setting, phrased for the user (` is not valid JSON (…)`, `: must be …`)."""
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, json.JSONDecodeError):
        return f" is not valid JSON ({cause}){_expected(field, ': ')}"
    message = str(error["msg"]).removeprefix("Value error, ")
    if message.startswith("Input should be "):
        message = "must be " + message.removeprefix("Input should be ")
    return f": {message}{_expected(field, '; ')}"


def _invalid_values(error: ValidationError) -> str:
    """Every invalid setting of a validation error, on one line: the variable, what is wrong, what it takes."""
    lines = []
    for problem in error.errors(include_url=False):
        field, *inner = map(str, problem["loc"])
        where = f" ({'.'.join(inner)})" if inner else ""
        lines.append(f"{_setting_name(field)}{where}{_problem(problem, field)}")
    return "; ".join(lines)


def _unparsable_value(error: SettingsError) -> str:
    """A value pydantic-settings could not decode (JSON of a structured setting): the variable, why, what it takes."""
    named = re.search(r'field "(\w+)"', str(error))
    if named is None:
        return " ".join(str(error).split())
    field = named.group(1)
    return f"{_setting_name(field)} is not valid JSON ({error.__cause__}){_expected(field, ': ')}"


def read_settings() -> Settings:
    """The settings from the environment and the TOML file; SettingsInvalid names what cannot be read and why."""
    try:
        return Settings()
    except ValidationError as error:
        raise SettingsInvalid(_invalid_values(error)) from error
    except SettingsError as error:
        raise SettingsInvalid(_unparsable_value(error)) from error
    except tomllib.TOMLDecodeError as error:
        raise SettingsInvalid(
            f"{_toml_path()} is not valid TOML ({error}): fix it, or set AESQ_CONFIG to another file"
        ) from error


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return read_settings()
