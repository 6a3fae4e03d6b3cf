"""Follow-up flows on scored assets: defect analysis of low scorers and the nightly report."""

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from aesq.tasks.aggregate import aggregate_versions
from aesq.tasks.defects import analyse_defects, critique_low_scorers, low_scorers
from aesq.tasks.report import publish_report


@flow(name="aesq-defects", task_runner=ThreadPoolTaskRunner(max_workers=2))
def defects_flow() -> int:
    """Analyse the low scorers not analysed since they were scored, then have the VLM critic judge them; returns rows written."""
    futures = []
    for ids in low_scorers():
        analysed = analyse_defects.submit(ids)
        futures += [analysed, critique_low_scorers.submit(ids, wait_for=[analysed])]
    return sum(future.result() for future in futures)


@flow(name="aesq-report")
def report_flow(days: int | None = None) -> str:
    """Render and save the quality report, its trend over `days` (default AESQ_REPORT_DAYS); returns where it went."""
    return publish_report(days)


@flow(name="aesq-after-scoring")
def after_scoring_flow() -> int:
    """Refresh the per-version statistics, then analyse new low scorers; returns defect rows written."""
    aggregate_versions()
    return defects_flow()
