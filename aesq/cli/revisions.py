"""The database schema's revisions as the CLI shows them, and a start-up check that needs no Alembic."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import text

from aesq.core import database
from aesq.core.config import Settings

_REVISION = re.compile(r'^revision(?:: *[\w |]+)? *= *"(\w+)"', re.MULTILINE)
_DOWN_REVISION = re.compile(r'^down_revision(?:: *[\w |]+)? *= *(?:"(\w+)"|None)', re.MULTILINE)


def head_revision() -> str | None:
    """The newest revision of the migrations aesq ships, read from their files' text (no Alembic import).

    Only a shortcut: where it disagrees with the database's revision, Alembic itself decides.
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (database.MIGRATIONS_DIR / "versions").glob("*.py"):
        source = path.read_text()
        if (revision := _REVISION.search(source)) is not None:
            revisions.add(revision[1])
        if (parent := _DOWN_REVISION.search(source)) is not None and parent[1]:
            parents.add(parent[1])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def stored_revision(settings: Settings) -> str | None:
    """The revision the database records (None when it was never migrated), read with one plain query."""
    with database.connect(settings) as connection:
        if connection.execute(text("SELECT to_regclass('alembic_version')")).scalar_one() is None:
            return None
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one_or_none()


@dataclass(frozen=True)
class Revision:
    """One migration, as `aesq db history` lists it."""

    revision: str
    down_revision: str | None
    message: str
    is_head: bool

    def line(self, current: str | None, width: int | None = None) -> str:
        """Alembic's history line, `0010 -> 0011 (head) (current), message`, its message cut after a word to
        fit `width` (one line per revision, like `git log --oneline`)."""
        marks = (" (head)" if self.is_head else "") + (" (current)" if self.revision == current else "")
        line = f"{self.down_revision or '<base>'} -> {self.revision}{marks}, {self.message}"
        if width is None or len(line) <= width:
            return line
        return line[: width - 1].rsplit(" ", 1)[0].rstrip(",:;") + "…"


def history() -> list[Revision]:
    """Every migration, newest first, with the first sentence of its docstring as its message."""
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory(str(database.MIGRATIONS_DIR))
    return [
        Revision(
            revision=script.revision,
            down_revision=script.down_revision if isinstance(script.down_revision, str) else None,
            message=" ".join((script.doc or "").split()).split(". ")[0].rstrip("."),
            is_head=script.is_head,
        )
        for script in scripts.walk_revisions()
    ]
