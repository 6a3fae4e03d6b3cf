"""The JSON API behind the dashboard (read-only): versions, statistics, comparisons, assets, neighbours,
thumbnails and reports. Invalid parameters are answered 4xx with a message; its OpenAPI description at
/openapi.json is its contract (every status, one error shape, enums and bounds), checked by schemathesis."""

from __future__ import annotations

import copy
import re
from dataclasses import asdict
from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Response
from pydantic import BeforeValidator

from aesq.analysis import nightly_report
from aesq.analysis import versions as version_reads
from aesq.core import assets as asset_reads
from aesq.core.pipeline_status import failure_reasons
from aesq.core.storage import SourceError
from aesq.core.tables import EMBEDDING_DIMENSIONS
from aesq.web import thumbnails
from aesq.web.deps import SettingsDep, web_settings
from aesq.web.schemas import (
    AssetDetail,
    AssetPage,
    ComparisonOut,
    DailyPoint,
    ErrorOut,
    FailureReasonOut,
    Neighbour,
    ReportOut,
    VersionRow,
)

Responses = dict[int | str, dict[str, Any]]


def _error(description: str, **headers: str) -> dict[str, Any]:
    """An error answer as the OpenAPI description lists it: the one error shape, when it comes, and the headers it
    always carries (name: what it says)."""
    described = {name: {"description": meaning, "schema": {"type": "string"}} for name, meaning in headers.items()}
    return {"model": ErrorOut, "description": description, **({"headers": described} if headers else {})}


# Answers any route can give: the token check's, a parameter's, and the database's.
ANY_ROUTE: Responses = {
    400: _error("the Host header names no host this dashboard answers to (AESQ_ALLOWED_HOSTS)"),
    401: _error(
        "AESQ_API_TOKEN is set and the request does not carry it (Authorization: Bearer …)",
        **{"WWW-Authenticate": "the scheme to use: Bearer"},
    ),
    422: _error("a parameter is missing, of the wrong kind or out of bounds; the message names it"),
    500: _error("the database could not complete the request (statement timeout, cancelled, deadlock)"),
    429: _error(
        "too many wrong tokens from this client within a minute (AESQ_FAILED_TOKEN_LIMIT)",
        **{"Retry-After": "seconds until this client may try again"},
    ),
    503: _error("the database cannot be reached, or every pooled connection stays busy"),
}
NOT_FOUND: Responses = {
    404: _error(
        "no such asset, scorer, generator or version (or the version has no scores under the scorer); the message"
        " names the known values"
    )
}
BEARER = "bearer"

router = APIRouter(prefix="/api", tags=["api"], responses=ANY_ROUTE)


def _iso_date(value: object) -> object:
    """Only YYYY-MM-DD is a date here: pydantic alone reads `0` or `1700000000` as a Unix time."""
    if isinstance(value, str) and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError("a date is written YYYY-MM-DD")
    return value


IsoDate = Annotated[date, BeforeValidator(_iso_date)]
# Postgres text holds no NUL character, so no name has one; a source is what storage.parse_location reads: s3://
# with a bucket of 3 or more characters, or a folder (any text without "://").
TEXT = r"^[^\x00]*$"
FOLDER = r"(?:[^:\x00]|:+(?:/:+)*/?[^:/\x00])*(?::+(?:/:+)*/?)?"
SOURCE = rf"^(?:s3://[^/\x00]{{3,}}(?:/[^\x00]*)?|{FOLDER})$"
LABEL = r"^[^:\x00]+:[^\x00]+$"
EMBEDDER = f"^(?:{'|'.join(map(re.escape, EMBEDDING_DIMENSIONS))})$"
# What each pattern asks for, in words: a 422 says this instead of quoting the regex.
PATTERN_MEANINGS = {
    TEXT: "text without a NUL character",
    LABEL: "NAME:VERSION, e.g. demo-diffusion:v1.0-base (GET /api/options lists the versions)",
    SOURCE: "s3://bucket/prefix (a bucket of 3 or more characters) or a folder, without a NUL character",
    EMBEDDER: f"one of {', '.join(EMBEDDING_DIMENSIONS)}",
}
Generator = Annotated[
    str | None, Query(pattern=TEXT, description="a generator's NAME (GET /api/options lists them); unknown is 404")
]
Version = Annotated[str, Query(pattern=LABEL, description="NAME:VERSION (GET /api/options lists them)")]
VersionFilter = Annotated[
    str | None,
    Query(
        pattern=TEXT,
        description="the NAME:VERSION label (split at the first colon), or VERSION alone: of `generator` when that is"
        " given (taken whole, colons included), else of any generator; unknown is 404",
    ),
]
Scorer = Annotated[
    str,
    Query(min_length=1, pattern=TEXT, description="a scorer's name (GET /api/options lists them); unknown is 404"),
]
OptionalScorer = Annotated[
    str | None,
    Query(pattern=TEXT, description="a scorer's name (GET /api/options lists them); every scorer when unset"),
]
AssetId = Annotated[int, Path(ge=1, le=2**63 - 1)]
Embedder = Annotated[
    str | None,
    Query(
        pattern=EMBEDDER,
        description="an embedder with a vector index",
        json_schema_extra={"enum": list(EMBEDDING_DIMENSIONS)},
    ),
]


def document(app: FastAPI) -> None:
    """Make `app`'s OpenAPI description declare the bearer scheme, and require it while a token is configured (the
    token is read per request, so the description follows the configuration as the check does)."""
    generated = app.openapi

    def described() -> dict[str, Any]:
        """The generated description with the security scheme, and the requirement when a token is set."""
        document = copy.deepcopy(generated())
        schemes = document.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes[BEARER] = {
            "type": "http",
            "scheme": "bearer",
            "description": "AESQ_API_TOKEN; required only while one is configured",
        }
        if web_settings().api_token is not None:
            document["security"] = [{BEARER: []}]
        return document

    app.openapi = described  # type: ignore[method-assign]


# How many known values a 404 names before it says how many more there are.
KNOWN_SHOWN = 12


def _unknown(value: str, known: list[str], what: str) -> HTTPException:
    """A 404 naming the known values, for a filter naming a scorer, generator or version the database does not have:
    an empty, successful answer would read as "nothing matches"."""
    shown = ", ".join(known[:KNOWN_SHOWN]) + (
        f" and {len(known) - KNOWN_SHOWN} more" if len(known) > KNOWN_SHOWN else ""
    )
    return HTTPException(404, f"no {what} {value!r} (known: {shown or 'none yet'}; GET /api/options lists them)")


def known_filters(
    settings: SettingsDep, scorer: str | None, generator: str | None, version: str | None
) -> tuple[str | None, str | None]:
    """(generator, version) once the filters name what the database has (else a 404); a NAME:VERSION label given
    as `version` without `generator` is split at its first colon, as the pages and the CLI read it."""
    label = version if version is not None and generator is None and ":" in version else None
    if label is not None:
        try:
            generator, version = asset_reads.split_version(label)
        except ValueError as error:
            raise HTTPException(422, f"invalid parameter — version: {error}") from None
    if scorer is None and generator is None and version is None:
        return None, None
    options = asset_reads.filter_options(settings)
    versions = options["versions"]
    scorers = sorted({*options["scorers"], *settings.enabled_scorers})  # as the pages: enabled ones before aggregation
    if scorer is not None and scorer not in scorers:
        raise _unknown(scorer, scorers, "scorer")
    if label is not None and label not in versions:
        raise _unknown(label, versions, "version")
    if generator is not None and generator not in options["generators"]:
        raise _unknown(generator, options["generators"], "generator")
    if version is not None and generator is not None and f"{generator}:{version}" not in versions:
        raise _unknown(f"{generator}:{version}", versions, "version")
    if version is not None and generator is None and all(label.partition(":")[2] != version for label in versions):
        raise _unknown(version, versions, "version")
    return generator, version


def asset_filter(
    settings: SettingsDep,
    scorer: Scorer,
    generator: Generator = None,
    version: VersionFilter = None,
    source_kind: Literal["generated", "crawled"] | None = None,
    since: IsoDate | None = None,
    until: IsoDate | None = None,
    min_score: float | None = None,
    max_score: float | None = None,
    defect: Annotated[str | None, Query(pattern=TEXT, description="a defect category, or * for any")] = None,
) -> asset_reads.AssetFilter:
    """The filters shared by asset listings."""
    generator, version = known_filters(settings, scorer, generator, version)
    return asset_reads.AssetFilter(scorer, generator, version, source_kind, since, until, min_score, max_score, defect)


@router.get("/versions", response_model=list[VersionRow], responses=NOT_FOUND)
def versions(
    settings: SettingsDep,
    scorer: OptionalScorer = None,
    generator: Generator = None,
    source_kind: Literal["generated", "crawled"] | None = None,
    since: IsoDate | None = None,
    until: IsoDate | None = None,
) -> list[dict]:
    """The leaderboard: every version under every (or one) scorer, best mean first, with a 95 % interval (none for a
    date range that is empty, as every filter that matches nothing)."""
    known_filters(settings, scorer, generator, None)
    return version_reads.leaderboard(settings, scorer, generator, source_kind, since, until)


@router.get("/options")
def options(settings: SettingsDep) -> dict[str, list[str]]:
    """Values the filters accept: generators, versions, scorers, source kinds, defect categories."""
    return asset_reads.filter_options(settings)


@router.get("/trends", response_model=dict[str, list[DailyPoint]], responses=NOT_FOUND)
def trends(settings: SettingsDep, scorer: Scorer, generator: Generator = None) -> dict[str, list[dict]]:
    """Daily mean per version under one scorer."""
    known_filters(settings, scorer, generator, None)
    series = version_reads.daily_means(settings, scorer, generator)
    return {version: [{"day": d, "mean": m, "count": c} for d, m, c in points] for version, points in series.items()}


@router.get("/defects")
def defects(settings: SettingsDep) -> list[dict]:
    """Per version and defect category: assets with it, scored assets, share."""
    return version_reads.defect_shares(settings)


@router.get("/compare", response_model=ComparisonOut, responses=NOT_FOUND)
def compare(settings: SettingsDep, a: Version, b: Version, scorer: Scorer) -> dict:
    """B against A under one scorer: unpaired, and paired on matching prompt + seed."""
    try:
        results = version_reads.compare_versions(settings, [a, b], scorer).results
    except asset_reads.NotFound as error:
        raise HTTPException(404, str(error)) from None
    except ValueError as error:
        raise HTTPException(422, str(error)) from None
    return {"a": a, "b": b, "scorer": scorer, **asdict(results[b])}


@router.get("/pairs")
def pairs(
    settings: SettingsDep, a: Version, b: Version, scorer: Scorer, limit: Annotated[int, Query(ge=1, le=100)] = 12
) -> list[dict]:
    """Assets of A and B made from the same prompt and seed, largest score difference first."""
    return version_reads.paired_assets(settings, a, b, scorer, limit)


@router.get("/assets", response_model=AssetPage, responses=NOT_FOUND)
def assets(
    settings: SettingsDep,
    filters: Annotated[asset_reads.AssetFilter, Depends(asset_filter)],
    order: Literal["score_desc", "score_asc", "newest"] = "score_desc",
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> dict:
    """Scored assets with their score under `scorer`, filtered and paginated."""
    items, total = asset_reads.list_assets(settings, filters, order, limit, offset)
    return {"total": total, "limit": limit, "offset": offset, "items": items}


@router.get("/assets/{asset_id}", response_model=AssetDetail, responses=NOT_FOUND)
def asset(settings: SettingsDep, asset_id: AssetId) -> dict:
    """One asset: provenance, every scorer's score, defects, critique and the embedders it has."""
    try:
        return asset_reads.asset_detail(settings, asset_id)
    except asset_reads.NotFound as error:
        raise HTTPException(404, str(error)) from None


@router.get("/assets/{asset_id}/neighbours", response_model=list[Neighbour], responses=NOT_FOUND)
def asset_neighbours(
    settings: SettingsDep, asset_id: AssetId, embedder: Embedder = None, limit: Annotated[int, Query(ge=1, le=100)] = 8
) -> list[dict]:
    """The nearest assets by embedding (pgvector cosine distance)."""
    try:
        return asset_reads.neighbours(settings, asset_id, embedder, limit)
    except asset_reads.NotFound as error:
        raise HTTPException(404, str(error)) from None
    except ValueError as error:
        raise HTTPException(422, str(error)) from None


@router.get(
    "/assets/{asset_id}/thumbnail",
    response_class=Response,
    responses={
        200: {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}, "description": "JPEG"},
        403: _error("the asset lies outside the configured storage (AESQ_SOURCES), so it is not read"),
        **NOT_FOUND,
    },
)
def asset_thumbnail(
    settings: SettingsDep,
    asset_id: AssetId,
    size: Annotated[int, Query(json_schema_extra={"enum": list(thumbnails.SIZES)})] = 256,
) -> Response:
    """A JPEG thumbnail (size 128, 256 or 512), read through aesq's own storage access and cached."""
    try:
        data = thumbnails.thumbnail(settings, asset_id, size)
    except ValueError as error:
        raise HTTPException(422, str(error)) from None
    except asset_reads.NotFound as error:
        raise HTTPException(404, str(error)) from None
    except thumbnails.OutsideStorage as error:
        raise HTTPException(403, str(error)) from None
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})


@router.get("/failures", response_model=list[FailureReasonOut])
def failures(
    settings: SettingsDep,
    source: Annotated[
        str | None, Query(pattern=SOURCE, description="s3://bucket/prefix or a folder; every source when unset")
    ] = None,
    examples: Annotated[int, Query(ge=0, le=50)] = 3,
) -> list[dict]:
    """Failed assets grouped by reason, most frequent first, with the latest few of each."""
    try:
        return [asdict(reason) for reason in failure_reasons(settings, source, examples)]
    except SourceError as error:
        raise HTTPException(422, str(error)) from None


@router.get("/reports", response_model=list[ReportOut])
def reports(settings: SettingsDep, limit: Annotated[int, Query(ge=1, le=500)] = 30) -> list[dict]:
    """The latest nightly reports."""
    return nightly_report.recorded_reports(settings, limit)
