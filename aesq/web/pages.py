"""The dashboard's pages: leaderboard, comparison of two versions, trends and defects, galleries, one
asset, failures, reports, and the thumbnails they show. Server-rendered from the same reads as the JSON
API; charts are drawn by plotly.js. Unknown versions, scorers, generators and assets are 404 pages, malformed
parameters 400 pages."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import asdict
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from aesq.analysis import nightly_report
from aesq.analysis import versions as version_reads
from aesq.analysis.palette import version_colours
from aesq.core import assets as asset_reads
from aesq.core.config import Settings
from aesq.core.pipeline_status import FailureReason, failure_reasons
from aesq.core.storage import SourceError, load_file, parse_location
from aesq.web import thumbnails
from aesq.web.deps import SettingsDep

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
FAILURE_EXAMPLES = 5  # examples per reason on the failures page


def p_value(value: float | None) -> str:
    """A p-value as `aesq compare` prints it: four decimals while they show it, else scientific (`1.6e-04`)."""
    if value is None:
        return "—"
    if value == 0:  # below the smallest float: nothing more precise to show
        return "0"
    return f"{value:.1e}" if abs(value) < 1e-3 else f"{value:.4f}"


def version_label(generator: str | None, version: str | None) -> str:
    """`generator:version`, or "crawled" for an image no generator made."""
    return f"{generator}:{version}" if generator else "crawled"


templates.env.filters["p_value"] = p_value
templates.env.filters["version_label"] = version_label


def error_page(
    request: Request, status: int, message: str, headers: Mapping[str, str] | None = None, cause: str = ""
) -> HTMLResponse:
    """An error as a dashboard page: what went wrong in one line, with the navigation to go on from."""
    titles = {400: "Bad request", 404: "Not found", 503: "Database unavailable"}
    context = {"status": status, "title": titles.get(status, "Error"), "message": message, "cause": cause, "page": ""}
    return templates.TemplateResponse(request, "error.html", context, status_code=status, headers=dict(headers or {}))


def _known(value: str | None, allowed: Collection[str], what: str) -> None:
    """A 404 naming the value when a page is asked for a version, scorer or generator the database does not have."""
    if value is not None and value not in allowed:
        raise HTTPException(404, f"no {what} {value!r} (known: {', '.join(sorted(allowed)) or 'none yet'})")


def _blank_is_none(value: str | None) -> str | None:
    """HTML forms send an unset field as an empty string."""
    return value or None


def _date(value: str | None, name: str) -> date | None:
    """A form's date field, or a 400 naming the field."""
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise HTTPException(400, f"{name}: not a date (YYYY-MM-DD): {value!r}") from None


def _default_scorer(settings: Settings, options: dict[str, list[str]], scorer: str | None) -> str:
    """The scorer a page shows: the one asked for (404 when unknown), else the first with statistics, else the first
    enabled."""
    _known(scorer, {*options["scorers"], *settings.enabled_scorers}, "scorer")
    return scorer or (options["scorers"][0] if options["scorers"] else settings.enabled_scorers[0])


@router.get("/", response_class=HTMLResponse)
def leaderboard(
    request: Request,
    settings: SettingsDep,
    scorer: str | None = None,
    generator: str | None = None,
    source_kind: Literal["generated", "crawled", ""] | None = None,
    since: str | None = None,
    until: str | None = None,
) -> Response:
    """Versions ranked by mean with intervals, under the chosen filters."""
    options = asset_reads.filter_options(settings)
    scorer = _default_scorer(settings, options, _blank_is_none(scorer))
    _known(_blank_is_none(generator), options["generators"], "generator")
    first, last = _date(since, "since"), _date(until, "until")
    if first and last and first > last:
        raise HTTPException(400, f"the date range is empty: from {first} is after to {last}")
    rows = version_reads.leaderboard(
        settings, scorer, _blank_is_none(generator), _blank_is_none(source_kind), first, last
    )
    filters = {
        "scorer": scorer,
        "generator": generator or "",
        "source_kind": source_kind or "",
        "since": first,
        "until": last,
    }
    context = {"rows": rows, "colours": version_colours(options["versions"]), "options": options,
               "filters": filters, "page": "leaderboard"}  # fmt: skip
    return templates.TemplateResponse(request, "leaderboard.html", context)


@router.get("/compare", response_class=HTMLResponse)
def compare(
    request: Request,
    settings: SettingsDep,
    a: Annotated[str | None, Query()] = None,
    b: Annotated[str | None, Query()] = None,
    scorer: str | None = None,
    version: Annotated[list[str] | None, Query(description="two versions picked on the leaderboard: A, then B")] = None,
) -> Response:
    """Two versions side by side: distributions, the comparison's statistics, paired image strips."""
    options = asset_reads.filter_options(settings)
    scorer = _default_scorer(settings, options, _blank_is_none(scorer))
    versions = options["versions"]
    if version is not None:
        if len(version) != 2:
            raise HTTPException(400, f"pick exactly two versions to compare ({len(version)} picked)")
        a, b = version
    a = _blank_is_none(a) or (versions[0] if versions else None)
    b = _blank_is_none(b) or (versions[1] if len(versions) > 1 else None)
    _known(a, versions, "version")
    _known(b, versions, "version")
    context: dict[str, Any] = {
        "options": options,
        "a": a,
        "b": b,
        "scorer": scorer,
        "page": "compare",
        "result": None,
        "error": None,
    }
    if a and b:
        try:
            comparison = version_reads.compare_versions(settings, [a, b], scorer)
            context["result"] = asdict(comparison.results[b])
            context["pairs"] = comparison.widest_pairs[b]
            context["distributions"] = comparison.histograms
        except (ValueError, asset_reads.NotFound) as error:
            context["error"] = str(error)
    return templates.TemplateResponse(request, "compare.html", context)


@router.get("/trends", response_class=HTMLResponse)
def trends(
    request: Request, settings: SettingsDep, scorer: str | None = None, generator: str | None = None
) -> Response:
    """Daily mean per version, and the defect breakdown per version."""
    options = asset_reads.filter_options(settings)
    scorer = _default_scorer(settings, options, _blank_is_none(scorer))
    _known(_blank_is_none(generator), options["generators"], "generator")
    colours = version_colours(options["versions"])
    series = {
        version: {
            "days": [d.isoformat() for d, _, _ in points],
            "means": [m for _, m, _ in points],
            "colour": colours.get(version),
        }
        for version, points in version_reads.daily_means(settings, scorer, generator or None).items()
    }
    context = {"options": options, "scorer": scorer, "generator": generator or "", "series": series,
               "defects": version_reads.defect_shares(settings), "page": "trends"}  # fmt: skip
    return templates.TemplateResponse(request, "trends.html", context)


@router.get("/gallery", response_class=HTMLResponse)
def gallery(
    request: Request,
    settings: SettingsDep,
    scorer: str | None = None,
    version: str | None = None,
    show: Literal["top", "bottom", "defective"] = "top",
    defect: str | None = None,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Response:
    """Thumbnails of the best, worst or defective assets of one version (or all)."""
    options = asset_reads.filter_options(settings)
    scorer = _default_scorer(settings, options, _blank_is_none(scorer))
    try:
        name, version_name = asset_reads.split_version(version) if version else (None, None)
    except ValueError as error:
        raise HTTPException(400, str(error)) from None
    _known(_blank_is_none(version), options["versions"], "version")
    filters = asset_reads.AssetFilter(
        scorer, name, version_name, defect=(defect or "*") if show == "defective" else None
    )
    order = "score_asc" if show in ("bottom", "defective") else "score_desc"
    items, total = asset_reads.list_assets(settings, filters, order, 48, offset)
    context = {"options": options, "scorer": scorer, "version": version or "", "show": show, "defect": defect or "",
               "items": items, "total": total, "offset": offset, "page": "gallery"}  # fmt: skip
    return templates.TemplateResponse(request, "gallery.html", context)


@router.get("/assets/{asset_id}", response_class=HTMLResponse)
def asset(request: Request, settings: SettingsDep, asset_id: int) -> Response:
    """One asset: image, provenance, scores, defects, critique and nearest neighbours."""
    try:
        detail = asset_reads.asset_detail(settings, asset_id)
    except asset_reads.NotFound as error:
        raise HTTPException(404, str(error)) from None
    context = {"asset": detail, "neighbours": asset_reads.neighbours(settings, asset_id), "page": "asset"}
    return templates.TemplateResponse(request, "asset.html", context)


@router.get("/failures", response_class=HTMLResponse)
def failures(request: Request, settings: SettingsDep, source: str | None = None) -> Response:
    """Failed assets by reason, most frequent first, with a few examples linking to their asset pages."""
    source = _blank_is_none(source)
    try:
        reasons = failure_reasons(settings, source, examples=FAILURE_EXAMPLES)
    except SourceError as error:
        raise HTTPException(400, str(error)) from None
    context = {"reasons": [(reason, _retry_sources(reason, source, settings.sources)) for reason in reasons],
               "source": source or "", "sources": settings.sources, "page": "failures"}  # fmt: skip
    return templates.TemplateResponse(request, "failures.html", context)


def _retry_sources(reason: FailureReason, chosen: str | None, sources: list[str]) -> list[str]:
    """The sources to name in `aesq retry --source …` for a reason: the one shown, else the configured sources its
    examples lie in; none when they lie in none (then `aesq retry` alone, which retries every source)."""
    if chosen is not None:
        return [chosen]
    return [source for source in sources if any(_contains(source, e.location) for e in reason.examples)]


def _contains(source: str, location: str) -> bool:
    """Whether a failure's location (`bucket/key`, or a folder path and key) lies in the source."""
    place = parse_location(source)
    root = place.bucket.rstrip("/") + "/"
    return location.startswith(root + place.prefix) if place.storage == "s3" else location.startswith(root)


@router.get("/thumbnails/{asset_id}")
def thumbnail(settings: SettingsDep, asset_id: int, size: int = 256) -> Response:
    """An asset's thumbnail for the pages' images: the API's JPEG, or for an asset outside the configured storage
    an image saying which folder to add to AESQ_SOURCES (a broken image would say nothing)."""
    try:
        data = thumbnails.thumbnail(settings, asset_id, size)
    except ValueError as error:
        raise HTTPException(400, str(error)) from None
    except asset_reads.NotFound as error:
        raise HTTPException(404, str(error)) from None
    except thumbnails.OutsideStorage as outside:
        headers = {"Cache-Control": "no-store", "Content-Security-Policy": "default-src 'none'"}
        return Response(thumbnails.placeholder(outside.where, size), media_type="image/svg+xml", headers=headers)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})


@router.get("/reports", response_class=HTMLResponse)
def reports(request: Request, settings: SettingsDep) -> Response:
    """Links to the latest nightly reports."""
    return templates.TemplateResponse(
        request, "reports.html", {"reports": nightly_report.recorded_reports(settings), "page": "reports"}
    )


# A saved report is one self-contained file: its own inline styles and data: images, and no script at all.
SAVED_REPORT_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


@router.get("/reports/{report_id}", response_class=HTMLResponse)
def report(settings: SettingsDep, report_id: int) -> Response:
    """One saved report, read back from where it was saved."""
    try:
        html = load_file(nightly_report.report_location(settings, report_id), settings)
        return HTMLResponse(html, headers={"Content-Security-Policy": SAVED_REPORT_POLICY})
    except asset_reads.NotFound as error:
        raise HTTPException(404, str(error)) from None
