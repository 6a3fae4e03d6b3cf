"""Tables of the `aesq` command fitted to a terminal's width: no cell cut to a stub, names kept readable."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from aesq.cli.output import (
    MIN_NAME_WIDTH,
    FittedTable,
    abbreviate,
    abbreviate_key,
    notice,
    plural,
    print_problem,
    scientific,
)

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


def test_the_blocks_of_a_wide_table_break_alike_and_align():
    table = FittedTable(("version", "n", "mean", "interval", "p"), right=frozenset({1, 2, 3, 4}))
    table.add_row("demo:v1", "8", "9.43", "[8.79, 9.70]", "1.6e-04")
    table.add_row("demo:v22", "12", "10.1", "—", "0.5000")
    lines = _rendered(table, 40)
    first, second = lines[1 : lines.index("demo:v22")], lines[lines.index("demo:v22") + 1 :]
    assert len(first) == len(second) > 1, lines
    for mine, theirs in zip(first, second):
        starts = [match.start() for match in re.finditer(r"\w[\w ]*: ", mine)]
        assert starts == [match.start() for match in re.finditer(r"\w[\w ]*: ", theirs)], lines


def test_titles_and_notes_are_not_padded_to_the_width():
    table = _version_table(3)
    table.notes = ["a note"]
    lines = _rendered(table, 120)
    assert lines[0] == "Versions" and lines[-1] == "a note", lines


def test_shared_columns_equal_on_every_row_are_said_once_above_a_table_that_then_fits():
    table = FittedTable(
        ("generator:version", "scorer", "mean", "interval"), "Versions", frozenset({2}), shared=frozenset({1})
    )
    for name in NAMES[1:]:
        table.add_row(name, "technical-aesthetics-scorer", "9.43", "[8.79, 9.70]")
    wide = _rendered(table, 120)
    assert all(line.startswith("│") for line in wide if "technical-aesthetics-scorer" in line), wide  # a column
    lines = _rendered(table, 60)
    assert lines[1] == "scorer: technical-aesthetics-scorer", lines
    assert any(line.startswith("┃ generator:version") for line in lines) and all(len(line) <= 60 for line in lines)
    assert "demo-diffusion:v1.0-base" in "\n".join(lines), lines


def test_object_keys_keep_their_last_component_and_lose_the_folder_they_share():
    key = "generated/demo-diffusion/v1.0-base/stereo_motorcycle.jpg"
    assert abbreviate_key(key, 34) == "generated/d…/stereo_motorcycle.jpg"
    assert abbreviate_key(key, 12) == abbreviate(key, 12)  # the name alone is longer
    assert abbreviate_key(key, 25) == "…/stereo_motorcycle.jpg"  # no stub of a folder like `gen…/`
    table = FittedTable(("key", "id", "version"), "Nearest", frozenset({1}), whole_names=False)
    for version in ("v1.0-base", "v2.0-sft"):
        table.add_row(f"/data/images/generated/demo-diffusion/{version}/stereo_motorcycle.jpg", "1", version)
    lines = _rendered(table, 60)
    assert lines[1] == "key under /data/images/generated/demo-diffusion/", lines
    rows = [line.split("│")[1].strip() for line in lines if line.startswith("│")]
    assert rows == ["v1.0-base/stereo_motorcycle.jpg", "v2.0-sft/stereo_motorcycle.jpg"], lines


def test_plural():
    assert [plural(count, "object") for count in (0, 1, 2)] == ["0 objects", "1 object", "2 objects"]


def test_object_keys_are_abbreviated_at_any_width_to_stay_a_table():
    key = "/data/generated/" + "x" * 150 + "/astronaut.jpg"
    table = FittedTable(("object", "id", "score"), "Top", frozenset({1, 2}), whole_names=False)
    table.add_row(key, "19", "9.95")
    lines = _rendered(table, 160)
    row = next(line for line in lines if line.startswith("│"))
    assert len(row) <= 160 and "│ 19 │" in row and "/data/generated/" in row and "/astronaut.jpg" in row, lines


def test_cells_are_literal_whatever_the_console():
    """Rich would read `[red]` as markup and `:smile:` as an emoji in a plain string cell."""
    table = FittedTable(["generator:version", "n"], "Versions", frozenset({1}))
    table.add_row("[red]g::smile:[/red]", "[bold]1")
    assert "│ [red]g::smile:[/red] │ [bold]1 │" in _rendered(table, 80)


def test_the_command_prints_names_literally_at_80_columns(settings):
    """Versions named with markup and emoji codes, through the installed `aesq` in an 80-column terminal: tables,
    titles and error lines show them as they are stored."""
    import os
    import subprocess

    from aesq.analysis.aggregate import aggregate_versions
    from tests.helpers import AESQ, add_scored_assets

    add_scored_assets(settings, ":x:1.0+lora", [4.0, 5.0, 6.0], name="[red]g")
    add_scored_assets(settings, ":smile:[/red]", [6.0, 7.0, 8.0], name="[red]g")
    aggregate_versions(settings)

    def aesq(*args: str) -> subprocess.CompletedProcess:
        environment = {**os.environ, "COLUMNS": "80"}
        return subprocess.run([AESQ, *args], capture_output=True, text=True, env=environment, timeout=120)

    table = aesq("compare")
    assert table.returncode == 0, table.stderr
    assert "[red]g::x:1.0+lora" in table.stdout and "[red]g::smile:[/red]" in table.stdout, table.stdout
    assert all(len(line) <= 80 for line in table.stdout.splitlines()), table.stdout
    against = aesq("compare", "[red]g::x:1.0+lora", "[red]g::smile:[/red]")
    assert against.returncode == 0, against.stderr
    assert "each version against [red]g::x:1.0+lora" in " ".join(against.stdout.split()), against.stdout
    assert "[red]g::smile:[/red]" in against.stdout, against.stdout
    top = aesq("top", "-g", "[red]g::smile:[/red]")
    assert top.returncode == 0 and "Top 10 of [red]g::smile:[/red]" in top.stdout, top.stdout + top.stderr
    assert "object under bkt/[red]g/:smile:[/red]/   version: :smile:[/red]" in top.stdout, top.stdout
    unknown = aesq("compare", "[red]g::x:1.0+lora", "[bold]g::smile:")
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert unknown.stderr.startswith("aesq: error: no technical scores for version '[bold]g::smile:'"), unknown.stderr


def test_notices_and_problems_print_paths_and_names_as_they_are(capsys):
    notice("migrating /data/:smile:/[red]x")
    print_problem("error:", "no version 'm::x:[/red]'")
    assert capsys.readouterr().err == "aesq: migrating /data/:smile:/[red]x\naesq: error: no version 'm::x:[/red]'\n"
