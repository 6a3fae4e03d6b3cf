"""Splitting work into batches: tasks handle a batch of images, never one image per task run."""

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def in_batches(items: Sequence[T], size: int) -> list[list[T]]:
    """Consecutive slices of at most `size` items."""
    return [list(items[start : start + size]) for start in range(0, len(items), size)]
