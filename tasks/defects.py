"""Tasks of defect analysis: find the low scorers, analyse them in batches."""

from prefect import task

from aesq import defect_analysis
from aesq.config import get_settings
from tasks import RETRY


@task(name="low-scorers", **RETRY)
def low_scorers() -> list[list[int]]:
    """Find assets that defect analysis should look at.

    Returns:
        Batches of asset ids.
    """
    return defect_analysis.low_scorer_batches(get_settings())


@task(name="analyse-defects", **RETRY)
def analyse_defects(asset_ids: list[int]) -> int:
    """Run the defect detectors on one batch and store their findings.

    Args:
        asset_ids: ids of one batch of low scorers.

    Returns:
        How many defect rows were written.
    """
    return defect_analysis.analyse_assets(asset_ids, get_settings())
