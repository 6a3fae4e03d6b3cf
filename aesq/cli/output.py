"""Tables and notices of the `aesq` command that read well in any terminal width, 80 columns included."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.console import Console, Group, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

ELLIPSIS = "…"
# The first column (names) is abbreviated in its middle down to this many characters before the table is
# laid out vertically instead; both ends of a name stay readable at this width.
MIN_NAME_WIDTH = 20
# From this width on names are never abbreviated: a table that does not fit is laid out vertically.
FULL_NAMES_WIDTH = 120


def abbreviate(text: str, width: int) -> str:
    """`text` cut in its middle to `width` characters, keeping both ends (`ERNIE-Ima…aes-v2`)."""
    if len(text) <= width:
        return text
    head = width // 2
    return f"{text[:head]}{ELLIPSIS}{text[len(text) - (width - 1 - head) :]}"


def scientific(value: float | None, digits: int = 4) -> str:
    """A p-value: fixed-point while that shows it, scientific notation when small (`3.2e-07`, never `0.0000`)."""
    if value is None:
        return "—"
    if value == 0:  # below the smallest float: nothing more precise to show
        return "0"
    if abs(value) < 10 ** -(digits - 1):
        return f"{value:.1e}"
    return f"{value:.{digits}f}"


@dataclass
class FittedTable:
    """A table whose first column names its rows; `render` fits it to a width (see `render`)."""

    headers: Sequence[str]
    title: str | None = None
    right: frozenset[int] = frozenset()  # indexes of right-aligned (numeric) columns
    whole_names: bool = True  # names are versions, kept whole from FULL_NAMES_WIDTH on; False: object keys
    rows: list[list[str]] = field(default_factory=list)

    def add_row(self, *cells: str) -> None:
        """Append a row of as many cells as there are headers."""
        self.rows.append(list(cells))

    def _table(self, name_width: int | None) -> Table:
        """The rows as a rich table, without wrapping, names abbreviated to `name_width` when given."""
        table = Table(title=self.title, title_justify="left")
        for index, header in enumerate(self.headers):
            table.add_column(header, justify="right" if index in self.right else "left", no_wrap=True)
        for name, *cells in self.rows:
            table.add_row(name if name_width is None else abbreviate(name, name_width), *cells)
        return table

    def _vertical(self, width: int) -> Group:
        """One block per row: its name, then `header: value` pairs packed into lines of at most `width`."""
        lines: list[Text] = [] if self.title is None else [Text(self.title, style="bold")]
        for name, *cells in self.rows:
            lines.append(Text(abbreviate(name, width), style="bold"))
            line = ""
            for header, cell in zip(self.headers[1:], cells):
                item = abbreviate(f"{header}: {cell}", width - 2)
                if line and len(line) + 3 + len(item) > width:
                    lines.append(Text(line))
                    line = ""
                line = f"{line}   {item}" if line else f"  {item}"
            if line:
                lines.append(Text(line))
        return Group(*lines)

    def render(self, console: Console) -> RenderableType:
        """The table at the console's width: as it is where it fits; else, below FULL_NAMES_WIDTH (at any width
        for object keys), with names abbreviated in the middle (down to MIN_NAME_WIDTH); else one block of lines
        per row."""
        width = console.width
        table = self._table(None)
        natural = Measurement.get(console, console.options.update_width(1_000_000), table).maximum
        if natural <= width:
            return table
        longest = max((len(row[0]) for row in self.rows), default=0)
        name_width = longest - (natural - width)
        if (width < FULL_NAMES_WIDTH or not self.whole_names) and name_width >= MIN_NAME_WIDTH:
            return self._table(name_width)
        return self._vertical(width)


def output_console() -> Console:
    """The console of command output: the terminal's width (COLUMNS where set); piped, 160 columns, so tables
    stay readable in logs and CI."""
    wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(width=160 if wide else None)


def notice(message: str) -> None:
    """Tell the user on stderr what aesq is doing before a wait (starting a server, migrating)."""
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"aesq: {message}", style="dim", markup=False)
