"""A scoring pool's worker: a Prefect task worker that keeps its models loaded and scores batches."""

from __future__ import annotations

import logging
from typing import Any

from prefect import Task, get_client
from prefect.task_worker import serve

from aesq.analysis import critique
from aesq.core import scoring
from aesq.core.config import Settings
from aesq.servers.health import bind_health_port, serve_health
from aesq.tasks.defects import critique_pool_task
from aesq.tasks.result_storage import result_storage_block
from aesq.tasks.score import PoolWorker, gpu_slot_name, pool_task


def serve_scoring_pool(
    settings: Settings,
    pool: str,
    worker: str,
    device: str | None = None,
    prefetch: int = 2,
    health_port: int | None = None,
) -> None:
    """Load pool `pool`'s models once, claim one scoring slot for `worker`, then score (and, when its VLM is the
    critic, critique) batches until stopped, with the settings read at start-up.

    Up to `prefetch` batches are in progress at once: one holds the slot and runs the models while
    the others are fetched, decoded and preprocessed. With `health_port`, GET /healthz is answered there
    once the models are loaded (`aesq.servers.health`).
    """
    logging.getLogger("aesq").setLevel(logging.INFO)  # model loads and the slot show in the worker's log
    health = None if health_port is None else bind_health_port(health_port)
    serving = PoolWorker(settings.for_pool(pool, device), worker)
    scoring.load_models(serving.settings)
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(gpu_slot_name(worker), limit=1)
    logging.getLogger("aesq").info("worker %s serving pool %s with slot %s", worker, pool, gpu_slot_name(worker))
    result_storage = result_storage_block(settings)
    tasks: list[Task[[list[int]], Any]] = [pool_task(pool, serving, result_storage)]
    if critique.critic_name(settings) in serving.settings.scorers:
        tasks.append(critique_pool_task(pool, serving, result_storage))
    if health is not None:
        serve_health(settings, health)
    serve(*tasks, limit=prefetch)
