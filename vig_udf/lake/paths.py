"""Table locations: every table path is a URI (``file:``, ``s3a:``, ``abfss:``, ``gs:``, ``dbfs:/``, a Unity
Catalog volume); a path without a scheme is a local folder, made absolute against the working folder.

No ``os.path`` call ever touches a URI: a lake on object storage stays exactly as written.
"""

from __future__ import annotations

import os
import re

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
STAGING = "_staging"  # <lake>/_staging/<table>/<write id>: rows a job has computed but not yet merged


def has_scheme(path: str) -> bool:
    """Whether ``path`` names a file system (``s3a://b/x``, ``file:/x``, ``dbfs:/x``), not a bare local path."""
    return bool(_SCHEME.match(path)) and not re.match(r"^[A-Za-z]:[\\/]", path)  # not a Windows drive


def table_uri(path) -> str:
    """The location of a table or lake root as Spark and Delta take it (no trailing slash)."""
    text = os.fspath(path)
    if not has_scheme(text):
        text = os.path.abspath(text)
    return text.rstrip("/") or "/"


def lake_table(lake, name: str) -> str:
    """The location of the table ``name`` under the lake root ``lake``."""
    return f"{table_uri(lake)}/{name}"


def staging_folder(lake_or_table, table: str | None = None) -> str:
    """Where a job stages rows for ``table`` (default: the last path segment of ``lake_or_table``)."""
    uri = table_uri(lake_or_table)
    if table is None:
        root, _, table = uri.rpartition("/")
    else:
        root = uri
    return f"{root}/{STAGING}/{table}"
