"""The JSON API behind the dashboard (read-only): versions, statistics, comparisons, assets, neighbours,
thumbnails and reports. Invalid parameters are answered 4xx with a message; its OpenAPI description is
at /openapi.json."""

from __future__ import annotations

from dataclasses import asdict
from datetime import date
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Response

from aesq.analysis import nightly_report
from aesq.analysis import versions as version_reads
from aesq.core import assets as asset_reads
from aesq.core.pipeline_status import failure_reasons
from aesq.core.storage import SourceError
from aesq.web import thumbnails
from aesq.web.deps import SettingsDep
from aesq.web.schemas import (
    AssetDetail,
    AssetPage,
    ComparisonOut,
    DailyPoint,
    FailureReasonOut,
    Neighbour,
    ReportOut,
    VersionRow,
)

router = APIRouter(prefix="/api", tags=["api"])
Version = Annotated[str, Query(pattern=r"^[^:]+:.+$", description="NAME:VERSION")]


def asset_filter(
    scorer: str,
    generator: str | None = None,
    version: str | None = None,
    source_kind: Literal["generated", "crawled"] | None = None,
    since: date | None = None,
    until: date | None = None,
    min_score: float | None = None,
    max_score: float | None = None,
    defect: Annotated[str | None, Query(description="a defect category, or * for any")] = None,
) -> asset_reads.AssetFilter:
    """The filters shared by asset listings."""
    return asset_reads.AssetFilter(scorer, generator, version, source_kind, since, until, min_score, max_score, defect)


@router.get("/versions", response_model=list[VersionRow])
def versions(
    settings: SettingsDep,
    scorer: str | None = None,
    generator: str | None = None,
    source_kind: Literal["generated", "crawled"] | None = None,
    since: date | None = None,
    until: date | None = None,
) -> list[dict]:
    """The leaderboard: every version under every (or one) scorer, best mean first, with a 95 % interval."""
    if since and until and since > until:
        raise HTTPException(422, "since is after until")
    return version_reads.leaderboard(settings, scorer, generator, source_kind, since, until)


@router.get("/options")
def options(settings: SettingsDep) -> dict[str, list[str]]:
    """Values the filters accept: generators, versions, scorers, source kinds, defect categories."""
    return asset_reads.filter_options(settings)


@router.get("/trends", response_model=dict[str, list[DailyPoint]])
def trends(settings: SettingsDep, scorer: str, generator: str | None = None) -> dict[str, list[dict]]:
    """Daily mean per version under one scorer."""
    series = version_reads.daily_means(settings, scorer, generator)
    return {version: [{"day": d, "mean": m, "count": c} for d, m, c in points] for version, points in series.items()}


@router.get("/defects")
def defects(settings: SettingsDep) -> list[dict]:
    """Per version and defect category: assets with it, scored assets, share."""
    return version_reads.defect_shares(settings)


@router.get("/compare", response_model=ComparisonOut)
def compare(settings: SettingsDep, a: Version, b: Version, scorer: str) -> dict:
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
    settings: SettingsDep, a: Version, b: Version, scorer: str, limit: Annotated[int, Query(ge=1, le=100)] = 12
) -> list[dict]:
    """Assets of A and B made from the same prompt and seed, largest score difference first."""
    return version_reads.paired_assets(settings, a, b, scorer, limit)


@router.get("/assets", response_model=AssetPage)
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


@router.get("/assets/{asset_id}", response_model=AssetDetail)
def asset(settings: SettingsDep, asset_id: int) -> dict:
    """One asset: provenance, every scorer's score, defects, critique and the embedders it has."""
    try:
        return asset_reads.asset_detail(settings, asset_id)
    except asset_reads.NotFound as error:
        raise HTTPException(404, str(error)) from None


@router.get("/assets/{asset_id}/neighbours", response_model=list[Neighbour])
def asset_neighbours(
    settings: SettingsDep, asset_id: int, embedder: str | None = None, limit: Annotated[int, Query(ge=1, le=100)] = 8
) -> list[dict]:
    """The nearest assets by embedding (pgvector cosine distance)."""
    try:
        return asset_reads.neighbours(settings, asset_id, embedder, limit)
    except asset_reads.NotFound as error:
        raise HTTPException(404, str(error)) from None
    except ValueError as error:
        raise HTTPException(422, str(error)) from None


@router.get("/assets/{asset_id}/thumbnail", responses={200: {"content": {"image/jpeg": {}}}})
def asset_thumbnail(settings: SettingsDep, asset_id: int, size: int = 256) -> Response:
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
    source: Annotated[str | None, Query(description="s3://bucket/prefix or a folder; every source when unset")] = None,
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
