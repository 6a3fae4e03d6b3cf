"""Tables of the `aesq` command fitted to a terminal's width: no cell cut to a stub, names kept readable."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from aesq.cli.output import MIN_NAME_WIDTH, FittedTable, abbreviate, scientific

NAMES = ["ERNIE-Image-aesthetics-large:v2.0-sft-2026-11", "demo-diffusion:v1.0-base", "other-model:v1"]
STUB = re.compile(r"(^|[\s│┃])\S{1,3}…($|[\s│┃])")  # a cell cut to its first characters, as rich does


def _rendered(table: FittedTable, width: int) -> list[str]:
    """The table as a terminal of `width` columns shows it."""
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(table.render(console))
    return console.export_text().splitlines()


def _version_table(headers: int) -> FittedTable:
    """A comparison-like table of NAMES with `headers` - 1 figure columns."""
    table = FittedTable(
        ["generator:version", *(f"figure {index}" for index in range(1, headers))],
        "Versions",
        frozenset(range(1, headers)),
    )
    for name in NAMES:
        table.add_row(name, *(f"[{index}.25, {index}.75]" for index in range(1, headers)))
    return table


def test_abbreviate_keeps_both_ends():
    assert abbreviate("ERNIE-Image-aes-v2", 13) == "ERNIE-…aes-v2"
    assert abbreviate("short", 13) == "short"
    assert len(abbreviate(NAMES[0], MIN_NAME_WIDTH)) == MIN_NAME_WIDTH


@pytest.mark.parametrize(
    ("value", "shown"), [(3.2e-07, "3.2e-07"), (0.0004, "4.0e-04"), (0.04, "0.0400"), (0.5, "0.5000"), (None, "—")]
)
def test_small_p_values_are_in_scientific_notation(value, shown):
    assert scientific(value) == shown


@pytest.mark.parametrize("headers", [3, 5, 11])
@pytest.mark.parametrize("width", [80, 120])
def test_a_table_fits_the_terminal_without_stubs(headers, width):
    lines = _rendered(_version_table(headers), width)
    text = "\n".join(lines)
    assert all(len(line) <= width for line in lines), text
    assert not any(STUB.search(line) for line in lines), text
    for name in NAMES:
        shown = name if name in text else abbreviate(name, MIN_NAME_WIDTH)
        head, _, tail = shown.partition("…")
        assert head and (not tail or (name.startswith(head) and name.endswith(tail))), text
    for index in range(1, headers):
        assert f"[{index}.25, {index}.75]" in text, text  # every figure whole


def test_at_120_columns_names_are_never_cut():
    assert "…" not in "\n".join(_rendered(_version_table(11), 120))


def test_a_narrow_table_is_a_table_and_a_wide_one_lines_per_row():
    narrow = _rendered(_version_table(3), 80)
    assert any(line.startswith("┃ generator:version") for line in narrow), narrow
    wide = _rendered(_version_table(11), 80)
    assert NAMES[1] in wide and "  figure 1: [1.25, 1.75]" in "\n".join(wide), wide


def test_object_keys_are_abbreviated_at_any_width_to_stay_a_table():
    key = "/data/generated/" + "x" * 150 + "/astronaut.jpg"
    table = FittedTable(("object", "id", "score"), "Top", frozenset({1, 2}), whole_names=False)
    table.add_row(key, "19", "9.95")
    lines = _rendered(table, 160)
    row = next(line for line in lines if line.startswith("│"))
    assert len(row) <= 160 and "│ 19 │" in row and "/data/generated/" in row and "/astronaut.jpg" in row, lines
