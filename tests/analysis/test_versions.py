"""Comparisons of generator versions and their paired assets, on the scored demo data in the real database."""

from __future__ import annotations

import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from aesq.analysis import aggregate, versions
from aesq.analysis.statistics import compare_family
from aesq.core.database import get_engine

BASE, LORA, SFT = "demo-diffusion:v1.0-base", "demo-diffusion:v1.1-lora", "demo-diffusion:v2.0-sft"


def _change(settings, statement: str, **params) -> None:
    """Run one write in its own transaction, as the pipeline's writers do."""
    with get_engine(settings).begin() as connection:
        connection.execute(sa.text(statement), params)


def _key(settings) -> tuple:
    """The kept-comparison key of BASE against SFT under the technical scorer."""
    return versions.comparison_key(settings, [BASE, SFT], "technical", "holm")


_SFT_ASSET = """(SELECT min(a.id) FROM assets a JOIN generators g ON g.id = a.generator_id
                  WHERE a.status = 'scored' AND g.name || ':' || g.version = 'demo-diffusion:v2.0-sft')"""


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
    assert comparison.widest_pairs[SFT] == pairs[: versions.WIDEST_PAIRS_SHOWN]
    with get_engine(demo_settings).connect() as connection:
        rows = connection.execute(
            sa.text("SELECT id, prompt, seed FROM assets WHERE id = ANY(:ids)"),
            {"ids": [pair["a_id"] for pair in pairs] + [pair["b_id"] for pair in pairs]},
        ).all()
    made_from = {row.id: (row.prompt, row.seed) for row in rows}
    assert all(made_from[pair["a_id"]] == made_from[pair["b_id"]] == (pair["prompt"], pair["seed"]) for pair in pairs)
    with pytest.raises(ValueError, match="NAME:VERSION"):
        versions.paired_assets(demo_settings, "no-colon", SFT, "technical")


def test_the_key_moves_with_every_change_a_comparison_reads_and_only_then(demo_settings):
    seen = [_key(demo_settings)]
    assert _key(demo_settings) == seen[-1]  # nothing changed, nothing moves
    changes = [
        # a new score (a newer scorer version's) of one asset
        f"""INSERT INTO scores (asset_id, scorer, scorer_version, value) SELECT {_SFT_ASSET}, 'technical', 'next', 1""",
        # a rescore in place
        f"UPDATE scores SET value = value + 1 WHERE scorer = 'technical' AND asset_id = {_SFT_ASSET}",
        # the aggregate taking the queue and rewriting the statistics
        None,
        # an asset moved to another version
        f"UPDATE assets SET generator_id = (SELECT id FROM generators WHERE version = 'v1.1-lora') WHERE id = {_SFT_ASSET}",
        # a prompt rewritten by the ingest's upsert (which stamps updated_at), queueing nothing
        f"UPDATE assets SET prompt = prompt || ' again', updated_at = clock_timestamp() WHERE id = {_SFT_ASSET}",
    ]
    for change in changes:
        if change is None:
            assert aggregate.aggregate_versions(demo_settings) > 0
        else:
            _change(demo_settings, change)
        seen.append(_key(demo_settings))
        assert seen[-1] not in seen[:-1], change


def test_a_comparison_is_right_without_stored_statistics_and_after_each_change(demo_settings):
    def fresh() -> float:
        """The mean difference computed from the scores as they are now, bypassing every kept comparison."""
        found = versions.version_scores(demo_settings, [BASE, SFT], "technical")
        result = compare_family(found[BASE].values, {SFT: found[SFT].values})[SFT]
        return result.mean_difference

    versions.compare_versions(demo_settings, [BASE, SFT], "technical")
    _change(demo_settings, "DELETE FROM version_stats")
    _change(demo_settings, "DELETE FROM stale_versions")  # as if the statistics had never been computed
    assert versions.compare_versions(demo_settings, [BASE, SFT], "technical").results[SFT].mean_difference == (
        pytest.approx(fresh())
    )
    _change(demo_settings, f"UPDATE scores SET value = value - 2 WHERE asset_id = {_SFT_ASSET}")
    assert versions.compare_versions(demo_settings, [BASE, SFT], "technical").results[SFT].mean_difference == (
        pytest.approx(fresh())
    )
    _change(demo_settings, f"UPDATE assets SET status = 'deleted' WHERE id = {_SFT_ASSET}")
    after = versions.compare_versions(demo_settings, [BASE, SFT], "technical").results[SFT]
    assert after.count_b == 7 and after.mean_difference == pytest.approx(fresh())


def test_concurrent_requests_for_one_comparison_compute_it_once(demo_settings, monkeypatch):
    computed = []
    compute = versions._compute_comparison

    def counted(*args):
        computed.append(args)
        time.sleep(0.3)  # long enough that every request arrives while the first computes
        return compute(*args)

    monkeypatch.setattr(versions, "_compute_comparison", counted)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: versions.compare_versions(demo_settings, [SFT, BASE], "technical"), range(8)))
    assert len(computed) == 1
    assert all(answer is answers[0] for answer in answers)


def test_at_most_two_comparisons_are_computed_at_once_and_a_failure_reaches_every_waiter(demo_settings, monkeypatch):
    running, most = [0], [0]
    lock = threading.Lock()
    compute = versions._compute_comparison

    def tracked(*args):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.2)
        try:
            return compute(*args)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(versions, "_compute_comparison", tracked)
    questions = [
        (a, b, correction)
        for a in (BASE, LORA, SFT)
        for b in (BASE, LORA, SFT)
        if a != b
        for correction in ("holm", "bh")
    ]
    with ThreadPoolExecutor(len(questions)) as pool:
        answers = list(
            pool.map(lambda q: versions.compare_versions(demo_settings, [q[0], q[1]], "technical", q[2]), questions)
        )
    assert len(answers) == 12 and most[0] == versions.COMPARISONS_AT_ONCE
    failed = []

    def failing(*args):
        failed.append(args)
        time.sleep(0.3)  # every other request arrives while this one computes, and waits for it
        raise versions.NotFound("no no-such-scorer scores, as the computation found")

    monkeypatch.setattr(versions, "_compute_comparison", failing)
    with ThreadPoolExecutor(4) as pool:
        failures = [
            pool.submit(versions.compare_versions, demo_settings, [BASE, SFT], "no-such-scorer") for _ in range(4)
        ]
        for failure in failures:
            with pytest.raises(versions.NotFound, match="as the computation found"):
                failure.result()
    assert len(failed) == 1  # three waiters were given the one computation's failure
    assert not versions._IN_FLIGHT


def test_pairs_need_no_comparison_and_agree_with_the_kept_one(demo_settings, monkeypatch):
    """/api/pairs pairs the kept scores without the comparison's bootstraps, and answers what the comparison keeps."""
    computed = []
    compute = versions._compute_comparison

    def counted(*args):
        computed.append(args)
        return compute(*args)

    monkeypatch.setattr(versions, "_compute_comparison", counted)
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda n: versions.paired_assets(demo_settings, LORA, SFT, "technical", n), range(1, 9))
        )
    assert computed == []  # paired from the versions' scores: no comparison computed for them
    assert [len(answer) for answer in answers] == list(range(1, 9))
    assert all(answer == answers[-1][: len(answer)] for answer in answers)
    assert versions.compare_versions(demo_settings, [LORA, SFT], "technical").widest_pairs[SFT] == answers[-1]
    assert len(computed) == 1
    kept = versions.paired_assets(demo_settings, LORA, SFT, "technical", versions.PAIRS_KEPT)
    assert len(computed) == 1 and kept[: len(answers[-1])] == answers[-1]  # from the kept comparison
    assert versions.paired_assets(demo_settings, LORA, SFT, "no-such-scorer") == []


def test_change_markers_come_in_the_order_asked_whatever_order_the_rows_lie_in(demo_settings):
    for rewritten in (BASE, SFT, BASE, LORA, SFT):
        # An updated row moves to the end of the heap, as a rewrite by the ingest's upsert does.
        _change(demo_settings, "UPDATE generators SET kind = kind WHERE name || ':' || version = :v", v=rewritten)
        _change(demo_settings, "ANALYZE generators")
        for asked in ([BASE, SFT, LORA], [SFT, LORA, BASE], [LORA, BASE, SFT]):
            markers = versions.comparison_key(demo_settings, asked, "technical", "holm")[-1]
            assert [marker[0] for marker in markers] == asked


def test_change_markers_read_indexes_only_not_every_asset_or_queue_row(demo_settings):
    with get_engine(demo_settings).connect() as connection:
        connection.execute(sa.text("SET enable_seqscan = off"))  # the demo's tables are small enough to scan
        plan = "\n".join(
            connection.execute(
                sa.text("EXPLAIN " + versions._CHANGE_MARKERS.text),
                {"versions": [BASE, SFT], "scorer": "technical"},
            ).scalars()
        )
    assert "ix_assets_generator_id_updated_at" in plan and "ix_stale_versions_generator_id_id" in plan, plan
    assert "Seq Scan on assets" not in plan and "Seq Scan on stale_versions" not in plan, plan


def test_a_version_s_scores_take_no_more_memory_for_longer_prompts(demo_settings):
    def peak() -> int:
        """The most memory `version_scores` held at once while reading BASE and SFT."""
        versions.version_scores(demo_settings, [BASE, SFT], "technical")  # compiled statement, pooled connection
        tracemalloc.start()
        try:
            versions.version_scores(demo_settings, [BASE, SFT], "technical")
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    short = peak()
    _change(demo_settings, "UPDATE assets SET prompt = prompt || repeat('x', 200000)")  # 16 prompts: 3.2 MB in all
    assert peak() < short + 200_000
    pairs = versions.paired_assets(demo_settings, BASE, SFT, "technical", versions.PAIRS_KEPT)
    assert len(pairs) == 8 and all(len(pair["prompt"]) > 200_000 for pair in pairs)  # still paired, prompts named


def test_comparisons_waiting_for_a_slot_get_it_in_the_order_they_asked():
    """A freed slot goes to the longest waiter, never to a newcomer (a plain semaphore lets newcomers overtake)."""
    turns = versions._TurnsInOrder(1)
    admitted: list[int] = []

    def wait_for_turn(number: int) -> None:
        with turns:
            admitted.append(number)

    turns.__enter__()
    waiters = []
    for number in range(5):
        waiter = threading.Thread(target=wait_for_turn, args=(number,))
        waiter.start()
        waiters.append(waiter)
        while len(turns._waiting) < number + 1:
            time.sleep(0.001)
    turns.__exit__(None, None, None)
    wait_for_turn(99)  # a newcomer as the slot is handed on: it must queue behind the five
    for waiter in waiters:
        waiter.join(5)
    assert admitted == [0, 1, 2, 3, 4, 99]
