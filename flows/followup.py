"""Follow-up flows on scored assets: defect analysis of low scorers and the nightly report.

Each flow reads the settings once when it starts (it is an entry point) and hands them to its tasks.
"""

from typing import Any, cast

from prefect import flow
from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from aesq.core.config import get_settings
from aesq.tasks.aggregate import aggregate_versions
from aesq.tasks.vectors import rebuild_vector_indexes


@flow(name="aesq-defects", task_runner=cast(TaskRunner[PrefectFuture[Any]], ThreadPoolTaskRunner(max_workers=2)))
def defects_flow() -> int:
    """Analyse the low scorers not analysed since they were scored, then have the VLM critic judge them; returns rows written."""
    # Imported here, not at the top: `aesq report` needs no detectors.
    from aesq.tasks.defects import analyse_defects, critique_low_scorers, low_scorers

    settings = get_settings()
    futures = []
    for ids in low_scorers(settings):
        analysed = analyse_defects.submit(ids, settings)
        futures += [analysed, critique_low_scorers.submit(ids, settings, return_state=False, wait_for=[analysed])]
    return sum(future.result() for future in futures)


@flow(name="aesq-report")
def report_flow(days: int | None = None) -> str:
    """Bring the per-version statistics up to date (deletions and moves queue versions without a scoring
    event), then render and save the quality report, its trend over `days` (default AESQ_REPORT_DAYS);
    returns where it went."""
    from aesq.tasks.report import publish_report  # here, not at the top: `aesq defects` needs no matplotlib

    settings = get_settings()
    aggregate_versions(settings)
    return publish_report(settings if days is None else settings.model_copy(update={"report_days": days}))


@flow(name="aesq-after-scoring")
def after_scoring_flow() -> int:
    """Refresh the per-version statistics, analyse new low scorers, then the vector indexes; returns defect rows
    written."""
    settings = get_settings()
    aggregate_versions(settings)
    written = defects_flow()
    # Index upkeep last, and its failure logged, not raised: searches still work meanwhile, only slower.
    rebuild_vector_indexes(settings, return_state=True)
    return written
