"""Comparisons of generator versions and their paired assets, on the scored demo data in the real database."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from aesq.analysis import versions
from aesq.core.database import get_engine

BASE, SFT = "demo-diffusion:v1.0-base", "demo-diffusion:v2.0-sft"


def test_a_kept_comparison_is_recomputed_once_a_score_is_rewritten_in_place(demo_settings):
    before = versions.compare_versions(demo_settings, [BASE, SFT], "technical")
    assert versions.compare_versions(demo_settings, [BASE, SFT], "technical") is before  # kept while scores stay
    # A re-score upserts the same row: neither the number of scores nor the largest id changes.
    with get_engine(demo_settings).begin() as connection:
        connection.execute(sa.text(
            """
            UPDATE scores SET value = value + 3
            WHERE scorer = 'technical' AND asset_id IN (
                SELECT a.id FROM assets a JOIN generators g ON g.id = a.generator_id
                WHERE g.name || ':' || g.version = :version)
            """
        ), {"version": SFT})  # fmt: skip
    after = versions.compare_versions(demo_settings, [BASE, SFT], "technical")
    assert after.results[SFT].mean_difference == pytest.approx(before.results[SFT].mean_difference + 3)
    assert after.results[SFT].paired.mean_difference == pytest.approx(before.results[SFT].paired.mean_difference + 3)
    assert sum(after.histograms["counts"][SFT]) == after.results[SFT].count_b == 8


def test_paired_assets_share_prompt_and_seed_and_come_widest_difference_first(demo_settings):
    pairs = versions.paired_assets(demo_settings, BASE, SFT, "technical", limit=100)
    comparison = versions.compare_versions(demo_settings, [BASE, SFT], "technical")
    assert len(pairs) == comparison.pair_counts[SFT] == 8
    gaps = [abs(pair["b_value"] - pair["a_value"]) for pair in pairs]
    assert gaps == sorted(gaps, reverse=True)
    assert comparison.widest_pairs[SFT] == pairs[: versions.WIDEST_PAIRS_KEPT]
    with get_engine(demo_settings).connect() as connection:
        rows = connection.execute(
            sa.text("SELECT id, prompt, seed FROM assets WHERE id = ANY(:ids)"),
            {"ids": [pair["a_id"] for pair in pairs] + [pair["b_id"] for pair in pairs]},
        ).all()
    made_from = {row.id: (row.prompt, row.seed) for row in rows}
    assert all(made_from[pair["a_id"]] == made_from[pair["b_id"]] == (pair["prompt"], pair["seed"]) for pair in pairs)
    with pytest.raises(ValueError, match="NAME:VERSION"):
        versions.paired_assets(demo_settings, "no-colon", SFT, "technical")
