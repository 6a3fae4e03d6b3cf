"""What the fault scenarios share: images in several generator versions, with copies, and `aesq run` as a real
process pointed at the test stack."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from aesq.core.database import get_engine
from tests.helpers import jpeg_bytes, noise_image, put

AESQ = shutil.which("aesq", path=str(Path(sys.executable).parent))


def generated_images(versions: int, per_version: int, copies_per_version: int) -> dict[str, bytes]:
    """Keys under `generated/model/v<n>/` holding distinct 48x48 noise JPEGs (seeds from 0), plus in each version
    `copies_per_version` keys holding the same bytes as another key of that version."""
    objects: dict[str, bytes] = {}
    seed = 0
    for version in range(1, versions + 1):
        originals = []
        for index in range(per_version):
            key = f"generated/model/v{version}/{index:04d}.jpg"
            objects[key] = jpeg_bytes(noise_image(seed, 48))
            originals.append(key)
            seed += 1
        for index in range(copies_per_version):
            objects[f"generated/model/v{version}/copy-{index:04d}.jpg"] = objects[originals[index * 3 % per_version]]
    return objects


def upload(client, bucket: str, objects: dict[str, bytes]) -> None:
    """Put every object into the bucket."""
    for key, payload in objects.items():
        put(client, bucket, key, payload)


def contents_per_version(objects: dict[str, bytes]) -> dict[str, int]:
    """How many distinct contents each `generated/model/<version>/` holds: what its statistics must count."""
    contents: dict[str, set[bytes]] = {}
    for key, payload in objects.items():
        contents.setdefault(key.split("/")[2], set()).add(payload)
    return {version: len(payloads) for version, payloads in contents.items()}


def counted_per_version(settings) -> dict[str, int]:
    """The technical scorer's stored count per version of `model`."""
    query = sa.text(
        "SELECT g.version, s.count FROM version_stats s JOIN generators g ON g.id = s.generator_id "
        "WHERE s.scorer = 'technical'"
    )
    with get_engine(settings).connect() as connection:
        return dict(connection.execute(query).all())


def scored_count(settings) -> int:
    """Assets scored so far."""
    with get_engine(settings).connect() as connection:
        return connection.execute(sa.text("SELECT count(*) FROM assets WHERE status = 'scored'")).scalar_one()


def harness_environment() -> dict[str, str]:
    """This process's environment (the AESQ_* of the test), pointed at the test harness's Prefect API."""
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}


def start_aesq_run(source: str) -> subprocess.Popen:
    """`aesq run SOURCE` as a separate process, in its own process group (so everything it started can be ended)."""
    return subprocess.Popen(
        [AESQ, "run", source],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=harness_environment(),
        start_new_session=True,
    )


def aesq_run(source: str) -> subprocess.CompletedProcess:
    """`aesq run SOURCE` to its end."""
    process = start_aesq_run(source)
    try:
        stdout, stderr = process.communicate(timeout=240)
    finally:
        end_process_group(process)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def end_process_group(process: subprocess.Popen) -> None:
    """Kill whatever is left of the process group a test started (a killed run's helper processes)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    if process.returncode is None:
        process.communicate()


def wait_until(condition: Callable[[], bool], seconds: float, process: subprocess.Popen) -> None:
    """Poll `condition` until it holds; fails when `process` ends first or time runs out."""
    deadline = time.monotonic() + seconds
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended first: {process.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{condition.__doc__ or condition} did not happen within {seconds} s")
        time.sleep(0.1)
