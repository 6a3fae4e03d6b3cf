"""The colours of generator versions, one definition for the dashboard's charts and the nightly report, so a
version is drawn in the same colour wherever it appears."""

from __future__ import annotations

from collections.abc import Iterable

# matplotlib's tab10, which is also plotly's default colour sequence.
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip


def version_colours(versions: Iterable[str]) -> dict[str, str]:
    """A colour per version by its place among the versions sorted by name: the same versions get the same colours
    on every page and in every report, whatever order each draws them in."""
    return {version: PALETTE[index % len(PALETTE)] for index, version in enumerate(sorted(set(versions)))}
