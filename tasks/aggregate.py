"""Task that refreshes per-version statistics."""

from prefect import task

from aesq.analysis import aggregate
from aesq.core.config import Settings
from aesq.tasks import RETRY


@task(name="aggregate-versions", **RETRY)
def aggregate_versions(settings: Settings) -> int:
    """Recompute statistics per generator version and scorer.

    Returns:
        How many statistics rows changed.
    """
    return aggregate.aggregate_versions(settings)
