"""The nightly quality report: gather its figures from the database, render, save, record; and the records' reads."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, select, text

from aesq.analysis.report import ReportData, Thumbnail, VersionLine, render_report
from aesq.analysis.versions import daily_means, defect_shares, version_statistics
from aesq.core.assets import NotFound
from aesq.core.config import Settings
from aesq.core.database import get_engine
from aesq.core.fetch import Unreadable, fetch_asset
from aesq.core.pipeline_status import failure_reasons
from aesq.core.storage import save_file
from aesq.core.tables import Report
from aesq.models.base import on_white

THUMBNAILS_PER_VERSION = 4
THUMBNAIL_SIZE = 192

_SCORES = text(
    """
    SELECT g.name || ':' || g.version AS version, ls.scorer, ls.value, ls.asset_id, a.storage, a.bucket, a.key,
           a.etag, a.sha256, a.scored_at
    FROM latest_scores ls
    JOIN assets a ON a.id = ls.asset_id AND a.status = 'scored'
    JOIN generators g ON g.id = a.generator_id
    ORDER BY version, ls.scorer, ls.value DESC, a.id
    """
)


def _thumbnail(row, settings: Settings) -> Thumbnail | None:
    """A small JPEG of one asset, or None when its image cannot be read any more."""
    image = fetch_asset(row, settings)
    if isinstance(image, Unreadable):
        return None
    image = on_white(image)
    image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return Thumbnail(row.asset_id, f"{row.key} · {row.scorer} {row.value:.2f}", buffer.getvalue())


def _previous_means(settings: Settings) -> dict[str, float]:
    """Means per "version|scorer" recorded by the previous report."""
    with get_engine(settings).connect() as connection:
        summary = connection.execute(select(Report.summary).order_by(Report.id.desc()).limit(1)).scalar()
    return (summary or {}).get("means", {})


def build_report(settings: Settings, now: datetime | None = None) -> tuple[ReportData, dict]:
    """The report's figures, and the summary the next report compares with.

    The leaderboard, the daily means and the defect counts are the stored figures the dashboard, the API and
    `aesq compare` show (`analysis.versions`); the scores themselves are read only for the histograms and thumbnails.
    """
    now = now or datetime.now(UTC)
    since = now - timedelta(days=settings.report_days)
    statistics = version_statistics(settings)
    with get_engine(settings).connect() as connection:
        rows = connection.execute(_SCORES).all()
    groups: dict[tuple[str, str], list] = {}
    for row in rows:
        groups.setdefault((row.version, row.scorer), []).append(row)
    previous = _previous_means(settings)
    leaderboard, means = [], {}
    for figures in statistics:
        version, scorer = f"{figures['generator']}:{figures['version']}", figures["scorer"]
        key = f"{version}|{scorer}"
        means[key] = figures["mean"]
        leaderboard.append(
            VersionLine(
                version,
                scorer,
                figures["count"],
                figures["mean"],
                figures["mean_low"],
                figures["mean_high"],
                figures["median"],
                figures["share_above"],
                figures["mean"] - previous[key] if key in previous else None,
            )
        )
    trends = {
        (version, scorer): points
        for scorer in sorted({figures["scorer"] for figures in statistics})
        for version, points in daily_means(settings, scorer, since=since.date()).items()
    }
    best: dict[str, list[Thumbnail]] = {}
    worst: dict[str, list[Thumbnail]] = {}
    for (version, _scorer), members in groups.items():
        if version not in best:  # thumbnails by the version's first scorer
            best[version] = [t for t in (_thumbnail(r, settings) for r in members[:THUMBNAILS_PER_VERSION]) if t]
            worst[version] = [t for t in (_thumbnail(r, settings) for r in members[::-1][:THUMBNAILS_PER_VERSION]) if t]
    defects: dict[str, dict[str, int]] = {}
    for share in defect_shares(settings):
        defects.setdefault(share["version"], {})[share["category"]] = share["assets"]
    changes = [f"new: {key.replace('|', ' under ')}" for key in means if key not in previous]
    changes += [
        f"{key.replace('|', ' under ')}: mean {means[key] - previous[key]:+.2f}"
        for key in means
        if key in previous and abs(means[key] - previous[key]) >= 1e-9
    ]
    changes += [f"gone: {key.replace('|', ' under ')}" for key in previous if key not in means]
    data = ReportData(
        title="aesq nightly quality report",
        generated_at=now,
        since=since,
        leaderboard=leaderboard,
        distributions={group: [row.value for row in members] for group, members in groups.items()},
        trends=trends,
        changes=changes,
        defects=defects,
        best=best,
        worst=worst,
        failures=failure_reasons(settings),
    )
    return data, {"means": means, "versions": len({line.version for line in leaderboard})}


def publish_report(settings: Settings, now: datetime | None = None) -> tuple[str, ReportData]:
    """Render the report, save it where `reports_uri` says, record it; returns its location and figures."""
    data, summary = build_report(settings, now)
    html = render_report(data).encode()
    name = f"aesq-report-{data.generated_at:%Y%m%dT%H%M%SZ}.html"
    location = save_file(settings.reports_uri or str(settings.data_dir / "reports"), name, html, "text/html", settings)
    with get_engine(settings).begin() as connection:
        connection.execute(insert(Report).values(location=location, summary=summary))
    return location, data


def recorded_reports(settings: Settings, limit: int = 30) -> list[dict]:
    """The latest reports: id, when, where."""
    with get_engine(settings).connect() as connection:
        rows = connection.execute(
            text("SELECT id, created_at, location FROM reports ORDER BY created_at DESC, id DESC LIMIT :limit"),
            {"limit": limit},
        )
        return [dict(row._mapping) for row in rows]


def report_location(settings: Settings, report_id: int) -> str:
    """Where report `report_id` was saved; NotFound when there is no such report."""
    with get_engine(settings).connect() as connection:
        location = connection.execute(
            text("SELECT location FROM reports WHERE id = :id"), {"id": report_id}
        ).scalar_one_or_none()
    if location is None:
        raise NotFound(f"no report {report_id}")
    return location
