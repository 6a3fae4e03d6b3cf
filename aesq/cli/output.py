"""Tables and notices of the `aesq` command that read well in any terminal width, 80 columns included."""

from __future__ import annotations

import inspect
import os
import posixpath
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import typer
from rich.cells import cell_len
from rich.console import Console, Group, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

ELLIPSIS = "…"
# The first column (names) is abbreviated in its middle down to this many characters before the table is
# laid out vertically instead; both ends of a name stay readable at this width.
MIN_NAME_WIDTH = 20
# Free-text columns (prompts) wrap down to this width before names are abbreviated.
WRAP_WIDTH = 20
# From this width on names are never abbreviated: a table that does not fit is laid out vertically.
FULL_NAMES_WIDTH = 120


def abbreviate(text: str, width: int) -> str:
    """`text` cut in its middle to `width` characters, keeping both ends (`ERNIE-Ima…aes-v2`)."""
    if len(text) <= width:
        return text
    head = width // 2
    return f"{text[:head]}{ELLIPSIS}{text[len(text) - (width - 1 - head) :]}"


def abbreviate_key(key: str, width: int) -> str:
    """An object key cut in its middle to `width` characters, its last path component kept whole where it fits
    (`generated/demo-…/stereo_motorcycle.jpg`): that is what tells neighbouring keys apart."""
    if len(key) <= width:
        return key
    head, slash, name = key.rpartition("/")
    if slash and len(name) + 2 <= width:
        kept = width - len(name) - 2
        return f"{head[:kept] if kept >= 4 else ''}{ELLIPSIS}/{name}"  # no stub of a folder (`v2…/`)
    return abbreviate(key, width)


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """`1 object`, `2 objects` (`nouns` where the plural is not noun + s)."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def scientific(value: float | None, digits: int = 4) -> str:
    """A p-value: fixed-point while that shows it, scientific notation when small (`3.2e-07`, never `0.0000`)."""
    if value is None:
        return "—"
    if value == 0:  # below the smallest float: nothing more precise to show
        return "0"
    if abs(value) < 10 ** -(digits - 1):
        return f"{value:.1e}"
    return f"{value:.{digits}f}"


def _lines(text: str, width: int, style: str = "") -> list[Text]:
    """`text` wrapped at words to `width`, as lines without trailing spaces (rich keeps them where it wraps)."""
    return [Text(line, style=style) for line in textwrap.wrap(text, width, break_on_hyphens=False)]


@dataclass
class FittedTable:
    """A table whose first column names its rows; `render` fits it to a width (see `render`)."""

    headers: Sequence[str]
    title: str | None = None
    right: frozenset[int] = frozenset()  # indexes of right-aligned (numeric) columns
    whole_names: bool = True  # names are versions, kept whole from FULL_NAMES_WIDTH on; False: object keys
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # lines under the table
    wrap: frozenset[int] = frozenset()  # indexes of free-text columns that may wrap, down to WRAP_WIDTH
    shared: frozenset[int] = frozenset()  # indexes of columns said once above the table when equal on every row

    def add_row(self, *cells: str) -> None:
        """Append a row of as many cells as there are headers."""
        self.rows.append(list(cells))

    def _abbreviated(self, name: str, width: int) -> str:
        """A row's name cut to `width` as its kind reads best (see abbreviate and abbreviate_key)."""
        return abbreviate(name, width) if self.whole_names else abbreviate_key(name, width)

    def _constant_columns(self) -> list[int]:
        """The `shared` columns whose cell is the same on every row (of two or more)."""
        if len(self.rows) < 2:
            return []
        return [index for index in sorted(self.shared) if len({row[index] for row in self.rows}) == 1]

    def _common_folder(self) -> str:
        """The folder (ending in `/`) every object key lies under, or "" (for versions, or a single row)."""
        names = [row[0] for row in self.rows]
        if self.whole_names or len(names) < 2:
            return ""
        try:
            folder = posixpath.commonpath(names)
        except ValueError:  # absolute and relative keys
            return ""
        if folder in names:  # every row the same object
            folder = posixpath.dirname(folder)
        return f"{folder}/" if folder.strip("/") and all(name.startswith(f"{folder}/") for name in names) else ""

    def _table(self, columns: Sequence[int], name_width: int | None, folder: str = "") -> Table:
        """The rows' `columns` as a rich table, names without `folder` and abbreviated to `name_width` when
        given; only the `wrap` columns wrap."""
        table = Table()
        for index in columns:
            table.add_column(
                Text(self.headers[index]),
                justify="right" if index in self.right else "left",
                no_wrap=index not in self.wrap,
                min_width=WRAP_WIDTH if index in self.wrap else None,
            )
        for row in self.rows:
            name = row[0].removeprefix(folder)
            table.add_row(
                Text(name if name_width is None else self._abbreviated(name, name_width)),
                *(Text(row[index]) for index in columns[1:]),
            )
        return table

    def _vertical(self, columns: Sequence[int], width: int, folder: str) -> list[Text]:
        """One block per row: its name, then `header: value` pairs, each column as wide on every row and packed
        into the same lines of at most `width`, so that the blocks read as one grid."""
        items = {index: max(len(f"{self.headers[index]}: {row[index]}") for row in self.rows) for index in columns[1:]}
        lines: list[list[int]] = [[]]
        used = 0
        for index, item_width in items.items():
            if lines[-1] and used + 3 + item_width > width:
                lines.append([])
                used = 0
            used += (3 if lines[-1] else 2) + item_width
            lines[-1].append(index)
        texts: list[Text] = []
        for row in self.rows:
            texts.append(Text(self._abbreviated(row[0].removeprefix(folder), width), style="bold"))
            for line in lines:
                cells = [
                    abbreviate(f"{self.headers[index]}: {row[index]}", width - 2).ljust(items[index]) for index in line
                ]
                texts.append(Text(("  " + "   ".join(cells)).rstrip()))
        return texts

    def render(self, console: Console) -> RenderableType:
        """The table at the console's width, its title and notes as lines of their own (never padded): as it is
        where it fits; else without the `shared` columns that are the same on every row, and keys without the
        folder they all lie under (said above it);
        else, below FULL_NAMES_WIDTH (at any width for object keys), with names abbreviated in the middle (down to
        MIN_NAME_WIDTH); else one block of lines per row, aligned alike."""
        width = console.width
        above = [] if self.title is None else _lines(self.title, width, "bold")
        below = [line for note in self.notes for line in _lines(note, width)]
        every = list(range(len(self.headers)))
        table = self._table(every, None)
        if self._width(console, table) <= width:
            return Group(*above, table, *below)
        constant = self._constant_columns()
        columns = [index for index in every if index not in constant]
        folder = self._common_folder()
        if constant or folder:
            common = [f"{self.headers[0]} under {folder}"] if folder else []
            common += [f"{self.headers[index]}: {self.rows[0][index]}" for index in constant]
            line = "   ".join(common)
            above.extend(_lines(line, width) if len(line) <= width else [Text(item) for item in common])
            table = self._table(columns, None, folder)
        natural = self._width(console, table) - sum(
            max(0, max(cell_len(row[index]) for row in self.rows) - WRAP_WIDTH)
            for index in self.wrap
            if index in columns
        )  # wrapped columns at their narrowest
        if natural <= width:
            return Group(*above, table, *below)
        longest = max((len(row[0]) - len(folder) for row in self.rows), default=0)
        name_width = longest - (natural - width)
        if (width < FULL_NAMES_WIDTH or not self.whole_names) and name_width >= MIN_NAME_WIDTH:
            return Group(*above, self._table(columns, name_width, folder), *below)
        return Group(*above, *self._vertical(columns, width, folder), *below)

    @staticmethod
    def _width(console: Console, table: Table) -> int:
        """How wide `table` is when nothing limits it."""
        return Measurement.get(console, console.options.update_width(1_000_000), table).maximum


def output_console() -> Console:
    """The console of command output: the terminal's width (COLUMNS where set); piped, 160 columns, so tables
    stay readable in logs and CI. What it prints is literal: names and reasons come from users' data, where
    `[red]` is no markup and `:x:` no emoji."""
    wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(width=160 if wide else None, markup=False, emoji=False, highlight=False)


def notice(message: str) -> None:
    """Tell the user on stderr what aesq is doing before a wait (starting a server, migrating)."""
    Console(stderr=True, highlight=False, soft_wrap=True, emoji=False).print(
        f"aesq: {message}", style="dim", markup=False
    )


def print_problem(label: str, message: str, colour: str = "red") -> None:
    """One line on stderr, `aesq: <label> <message>` with the prefix in colour and the message literal: it may
    name a version such as `col:x:v` or `[red]`."""
    line = Text.assemble((f"aesq: {label}" if label else "aesq:", colour), " ", message)
    Console(stderr=True, soft_wrap=True, emoji=False, highlight=False).print(line)


def _one_paragraph_per_line(text: str | None) -> str | None:
    """Help text whose paragraphs are each one line: Typer's rich help keeps a docstring's line breaks, so a
    sentence would break where the source wraps it."""
    if text is None:
        return None
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in inspect.cleandoc(text).split("\n\n"))


def _tidy_parameters(params: list[Any]) -> list[Any]:
    """Flags (`--verbose`, `--help`) without a type, which would suggest they take a value; arguments named in
    capitals (`SOURCE`), as the help text names them."""
    for param in params:
        if getattr(param, "is_flag", False):
            param.metavar = ""
        elif param.param_type_name == "argument" and param.metavar is None:
            param.metavar = param.name.upper()
    return params


def _usage_pieces(command: typer.core.TyperCommand | typer.core.TyperGroup, ctx: Any) -> list[str]:
    """The usage line's pieces in Click's style: `[OPTIONS] SOURCE`, `[VERSIONS]...`."""
    pieces = [command.options_metavar] if command.options_metavar else []
    for param in command.get_params(ctx):
        if param.param_type_name == "argument":
            name = param.metavar or param.name.upper()
            pieces.append((name if param.required else f"[{name}]") + ("..." if param.nargs != 1 else ""))
    return pieces


class HelpCommand(typer.core.TyperCommand):
    """A command whose help reads well (see _tidy_parameters and _one_paragraph_per_line)."""

    def __init__(self, *args: Any, help: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, help=_one_paragraph_per_line(help), **kwargs)

    def get_params(self, ctx: Any) -> list[Any]:
        return _tidy_parameters(super().get_params(ctx))

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return _usage_pieces(self, ctx)


class HelpGroup(typer.core.TyperGroup):
    """A group of commands whose help reads well, like HelpCommand's."""

    def __init__(self, *args: Any, help: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, help=_one_paragraph_per_line(help), **kwargs)

    def get_params(self, ctx: Any) -> list[Any]:
        return _tidy_parameters(super().get_params(ctx))


class Typer(typer.Typer):
    """typer.Typer whose groups and commands render help as HelpGroup and HelpCommand do."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cls=HelpGroup, **kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Any:
        return super().command(*args, cls=HelpCommand, **kwargs)
