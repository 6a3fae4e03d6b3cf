"""Task that renders, saves and records the nightly report, and publishes its summary as Prefect artifacts."""

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from aesq.analysis import nightly_report
from aesq.core.config import Settings
from aesq.tasks import RETRY


@task(name="publish-report", **RETRY)
def publish_report(settings: Settings) -> str:
    """Build the report from the database, save it, and publish its leaderboard (stable artifact keys).

    Args:
        settings: the flow run's settings; `report_days` is the trend window.

    Returns:
        Where the HTML report was saved.
    """
    location, data = nightly_report.publish_report(settings)
    rows = [
        {
            "version": line.version,
            "scorer": line.scorer,
            "n": line.count,
            "mean": round(line.mean, 3),
            "change": None if line.change is None else round(line.change, 3),
        }
        for line in data.leaderboard
    ]
    create_table_artifact(rows, key="aesq-leaderboard", description="Versions by mean score")
    changes = "\n".join(f"- {change}" for change in data.changes) or "- nothing changed"
    create_markdown_artifact(
        f"# aesq nightly report\n\nSaved to `{location}`.\n\n## What changed\n{changes}\n", key="aesq-report"
    )
    return location
