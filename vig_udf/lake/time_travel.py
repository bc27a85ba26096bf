"""Time travel in ``vig sql``: ``<table>@v<version>`` in a statement names that table at that version, on
either engine (Delta's own ``@v`` notation).

``SELECT count(*) FROM scores@v3`` reads version 3 of ``scores``; ``scores`` alone is its latest version, so one
statement can compare two versions: ``SELECT count(*) FROM corpus EXCEPT SELECT count(*) FROM corpus@v0``.
The reference is rewritten into a quoted view name (``"scores@v3"`` for DuckDB, ```scores@v3``` for Spark),
which the engine registers at that version. Text inside string literals, quoted identifiers and comments is
left as it is.
"""

from __future__ import annotations

import re

from vig_udf.lake.readonly import _NOT_CODE

_PINNED = re.compile(r"(?<![\w.@$])([A-Za-z_][A-Za-z0-9_]*)@v(\d+)(?![\w@$])")


def pinned_view(name: str, version: int) -> str:
    """The view name of ``name`` at ``version``: ``scores@v3``."""
    return f"{name}@v{version}"


def pinned_tables(statement: str, *, quote: str) -> tuple[str, dict[str, tuple[str, int]]]:
    """``statement`` with every ``<table>@v<n>`` outside literals and comments replaced by the view name quoted
    with ``quote`` (``"`` or a backtick), and the views it needs: view name -> (table, version).

    >>> pinned_tables("SELECT * FROM scores@v3 WHERE x = 'a@v1'", quote='"')
    ('SELECT * FROM "scores@v3" WHERE x = \\'a@v1\\'', {'scores@v3': ('scores', 3)})
    """
    views: dict[str, tuple[str, int]] = {}

    def pin(match: re.Match) -> str:
        name, version = match.group(1), int(match.group(2))
        view = pinned_view(name, version)
        views[view] = (name, version)
        return f"{quote}{view}{quote}"

    pieces, position = [], 0
    for literal in _NOT_CODE.finditer(statement):
        pieces.append(_PINNED.sub(pin, statement[position:literal.start()]))
        pieces.append(literal.group(0))
        position = literal.end()
    pieces.append(_PINNED.sub(pin, statement[position:]))
    return "".join(pieces), views
