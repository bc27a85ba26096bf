"""The statements ``vig sql`` runs: queries and inspection only, never a write.

A statement is allowed when its first keyword is one of ``READ_ONLY`` and no keyword that writes
(``INSERT``, ...) appears outside string literals, quoted identifiers and comments (Spark SQL accepts
``WITH ... INSERT INTO`` and ``FROM t INSERT ...``). One statement per call.
"""

from __future__ import annotations

import re

READ_ONLY = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "VALUES", "TABLE", "FROM")
# the words with which a statement that starts like a query can still write (WITH ... INSERT INTO t ...)
WRITING = ("INSERT", "OVERWRITE", "MERGE", "UPDATE", "DELETE", "DROP", "CREATE", "ALTER", "TRUNCATE")
HOW_TO_WRITE = ("vig sql runs read-only statements ({allowed}). To change tables on purpose, use the jobs "
                "(vig ingest / score / select), `vig lake optimize` / `vig lake vacuum`, or Spark with Delta "
                "Lake directly (DeltaTable.forPath(spark, path) or SQL on delta.`<path>`).")
# literals, quoted identifiers and comments, whose words are not keywords
_NOT_CODE = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|`(?:[^`]|``)*`|--[^\n]*|/\*.*?\*/", re.DOTALL)
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ReadOnlyError(ValueError):
    """A statement that would change tables or the session."""


def check_read_only(statement: str) -> None:
    """Raise :class:`ReadOnlyError` unless ``statement`` is one read-only statement."""
    code = _NOT_CODE.sub(" ", statement).strip().rstrip(";").strip()
    message = HOW_TO_WRITE.format(allowed=", ".join(READ_ONLY[:6]))
    if ";" in code:
        raise ReadOnlyError(f"One statement per call, please. {message}")
    words = [word.upper() for word in _WORD.findall(code)]
    if not words or words[0] not in READ_ONLY:
        raise ReadOnlyError(f"Refused {words[0] if words else 'an empty statement'!s}: {message}")
    if words[0] in ("SHOW", "DESCRIBE", "DESC", "EXPLAIN"):
        return  # these only look (EXPLAIN plans a statement without running it)
    writes = sorted(set(words) & set(WRITING))
    if writes:
        raise ReadOnlyError(f"Refused a statement that contains {', '.join(writes)}: {message}")
