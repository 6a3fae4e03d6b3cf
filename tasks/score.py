"""Tasks that score assets with the enabled models."""

from prefect import task

from aesq import scoring
from aesq.config import get_settings
from tasks import RETRY


@task(name="pending-assets", **RETRY)
def pending_assets() -> list[list[int]]:
    """Find assets waiting for scores.

    Returns:
        Batches of asset ids.
    """
    return scoring.pending_batches(get_settings())


@task(name="score-assets", **RETRY)
def score_assets(asset_ids: list[int]) -> scoring.BatchOutcome:
    """Score one batch with every enabled scorer and embedder and store the results.

    Args:
        asset_ids: ids of one batch; ids that are not pending any more are skipped.

    Returns:
        How many assets were scored and how many failed.
    """
    return scoring.score_assets(asset_ids, get_settings())
