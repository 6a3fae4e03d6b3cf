"""Fixtures of the fault-injection suite: an S3 source on the test stack, set up for many small batches."""

from __future__ import annotations

import pytest

from aesq.core.config import Settings, get_settings


@pytest.fixture
def fault_settings(settings, monkeypatch) -> Settings:
    """Settings for many small batches, no embedder (not the point here) and no back-off before a retry."""
    monkeypatch.setenv("AESQ_BATCH_SIZE", "4")
    monkeypatch.setenv("AESQ_EMBEDDERS", "")
    monkeypatch.setenv("AESQ_RETRY_BACKOFF_SECONDS", "0")
    get_settings.cache_clear()
    return get_settings()


@pytest.fixture
def source(fault_settings, bucket) -> str:
    """The test bucket as an aesq source."""
    return f"s3://{bucket}/"
