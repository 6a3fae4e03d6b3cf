"""What `aesq worker` serves: ingest on an interval (and, for S3 sources, on bridge events), scoring when ingest found new assets, aggregation
and defect analysis when scoring finished, the report every night.

A bridge event (one per bucket per `notification_window_seconds`, aesq/servers/bridge.py) runs the source's ingest
with `listing=False`: it drains the objects the bridge queued, without listing the bucket. Runs that
overlap share the queue by claims, so an extra one costs a claim query; the interval runs list the bucket.

The links are Prefect events: the ingest and score flows emit `aesq.assets.ingested` and
`aesq.assets.scored` when they did something, and the next deployment has a trigger on that event.
"""

from __future__ import annotations

from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger, DeploymentTriggerTypes, TriggerTypes

from aesq.core.config import Settings
from aesq.core.storage import parse_location
from aesq.flows.events import INGESTED, OBJECT_CREATED, SCORED, bucket_resource
from aesq.flows.followup import after_scoring_flow, report_flow
from aesq.flows.spine import ingest_flow, score_flow


def _on_new_objects(source: str) -> list[DeploymentTriggerTypes | TriggerTypes]:
    """An S3 source's ingest also runs, draining the queue only, when the bridge queued objects in its bucket."""
    location = parse_location(source)
    if location.storage != "s3":
        return []
    return [
        DeploymentEventTrigger(
            expect={OBJECT_CREATED},
            match={"prefect.resource.id": bucket_resource(location.bucket)},
            parameters={"source": source, "listing": False},
        )
    ]


def deployments(settings: Settings) -> list[RunnerDeployment]:
    """The deployments of the whole chain for the configured sources and schedules."""
    ingests = [
        RunnerDeployment.from_flow(
            ingest_flow,
            name=f"ingest-{index}",
            parameters={"source": source},
            interval=settings.poll_interval_seconds,
            triggers=_on_new_objects(source),
        )
        for index, source in enumerate(settings.sources)
    ]
    return [
        *ingests,
        RunnerDeployment.from_flow(score_flow, name="score", triggers=[DeploymentEventTrigger(expect={INGESTED})]),
        RunnerDeployment.from_flow(
            after_scoring_flow, name="after-scoring", triggers=[DeploymentEventTrigger(expect={SCORED})]
        ),
        RunnerDeployment.from_flow(report_flow, name="nightly", cron=settings.report_cron),
    ]
