"""What `aesq worker` serves: ingest on an interval, scoring when ingest found new assets, aggregation
and defect analysis when scoring finished, the report every night.

The links are Prefect events: the ingest and score flows emit `aesq.assets.ingested` and
`aesq.assets.scored` when they did something, and the next deployment has a trigger on that event.
"""

from __future__ import annotations

from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger

from aesq.config import Settings
from flows.followup import after_scoring_flow, report_flow
from flows.spine import INGESTED, SCORED, ingest_flow, score_flow


def deployments(settings: Settings) -> list[RunnerDeployment]:
    """The deployments of the whole chain for the configured sources and schedules."""
    ingests = [
        ingest_flow.to_deployment(
            name=f"ingest-{index}", parameters={"source": source}, interval=settings.poll_interval_seconds
        )
        for index, source in enumerate(settings.sources)
    ]
    return [
        *ingests,
        score_flow.to_deployment(name="score", triggers=[DeploymentEventTrigger(expect={INGESTED})]),
        after_scoring_flow.to_deployment(name="after-scoring", triggers=[DeploymentEventTrigger(expect={SCORED})]),
        report_flow.to_deployment(name="nightly", cron=settings.report_cron),
    ]
