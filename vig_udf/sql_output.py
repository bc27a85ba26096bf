"""How ``vig sql`` prints a result: the same text for either engine, from the result's Arrow batches.

- ``table`` (default): Spark's ``show(truncate=False)`` layout (``+---+`` borders, left-aligned cells, ``NULL``,
  arrays as ``[a, b]``, structs as ``{a, b}``, maps as ``{k -> v}``, binary as hex bytes, floating point in
  Java's notation: ``1.0``, ``1.0E-5``, ``NaN``), then ``only showing top N rows`` when there were more;
- ``csv``: a header row and one row per result row (RFC 4180 quoting); NULL is an empty field; arrays,
  structs and maps are JSON text; binary is base64; timestamps are ISO 8601 in UTC;
- ``json``: one JSON array of objects, one per row, written as the rows come; the same values as ``csv``
  with nesting kept; NaN and infinities are the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``.

Floating point numbers are written with the fewest digits that read back to the same value (a ``float``
column's as a 32-bit float), so ``csv`` and ``json`` parse back to the rows the engine returned. A decimal
with no fractional digits (DuckDB's ``sum`` of integers) is written as the integer it is, as Spark's ``bigint``.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import decimal
import json
import math
from typing import Callable, Iterable, TextIO

FORMATS = ("table", "csv", "json")


def write_result(schema, batches: Iterable, fmt: str, out: TextIO, *, limit: int,
                 note: Callable[[str], None]) -> int:
    """Write the first ``limit`` rows of ``batches`` (Arrow record batches of ``schema``) to ``out`` in ``fmt``;
    returns the rows written. Where the result had more rows, ``table`` says so under the table and the other
    formats call ``note`` with the message (for stderr), so their output stays parseable."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    rows, more = _first_rows(batches, limit)
    names = list(schema.names)
    types = [field.type for field in schema]
    if fmt == "table":
        out.write(_table(names, [[_shown(v, t) for v, t in zip(row, types)] for row in rows]))
        if more:
            out.write(f"only showing top {limit} row{'s' if limit != 1 else ''}\n")
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(names)
        for row in rows:
            writer.writerow(["" if v is None else _csv_cell(_plain(v, t)) for v, t in zip(row, types)])
    else:
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"json output needs distinct column names; alias the columns {duplicates}")
        out.write("[")
        for i, row in enumerate(rows):
            record = {name: _plain(v, t) for name, v, t in zip(names, row, types)}
            out.write(("," if i else "") + "\n" + json.dumps(record, ensure_ascii=False, allow_nan=False))
        out.write("\n]\n" if rows else "]\n")
    if more and fmt != "table":
        note(f"only the first {limit} rows are shown; raise --limit for more")
    return len(rows)


def _first_rows(batches: Iterable, limit: int) -> tuple[list[list], bool]:
    """Up to ``limit`` rows as lists of Python values, and whether the batches held more (reads one row past
    the limit at most, batch by batch)."""
    rows: list[list] = []
    for batch in batches:
        columns = [column.to_pylist() for column in batch.slice(0, limit + 1 - len(rows)).columns]
        rows.extend([list(row) for row in zip(*columns)] if columns else [[] for _ in range(min(batch.num_rows,
                                                                                          limit + 1 - len(rows)))])
        if len(rows) > limit:
            return rows[:limit], True
    return rows, False


def _table(names: list[str], cells: list[list[str]]) -> str:
    widths = [max([3, len(name), *(len(row[i]) for row in cells)]) for i, name in enumerate(names)]
    border = "+" + "+".join("-" * w for w in widths) + "+\n"

    def line(values: list[str]) -> str:
        return "|" + "|".join(value.ljust(w) for value, w in zip(values, widths)) + "|\n"

    return border + line(names) + border + "".join(line(row) for row in cells) + border


def _shown(value, arrow_type) -> str:
    """A value as Spark's ``show`` prints it."""
    import pyarrow.types as t

    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _java_float(value, single=t.is_float32(arrow_type) or t.is_float16(arrow_type))
    if isinstance(value, decimal.Decimal):
        return str(_integral(value))
    if isinstance(value, (bytes, bytearray)):
        return "[" + " ".join(f"{b:02X}" for b in value) + "]"
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone().replace(tzinfo=None)  # the local time zone, Spark's default session one
        text = value.isoformat(sep=" ")
        return text.rstrip("0").rstrip(".") if "." in text else text
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if t.is_map(arrow_type):
        return "{" + ", ".join(f"{_shown(k, arrow_type.key_type)} -> {_shown(v, arrow_type.item_type)}"
                               for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_shown(v, arrow_type.value_type) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(_shown(value[f.name], f.type) for f in arrow_type) + "}"
    return str(value)


def _plain(value, arrow_type):
    """A value as JSON holds it (also the text of a CSV cell, for nested values as JSON)."""
    import pyarrow.types as t

    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        # a float column's value as the double nearest its shortest 32-bit digits: 0.1, not 0.10000000149011612
        return float(_shortest(value, True)) if t.is_float32(arrow_type) or t.is_float16(arrow_type) else value
    if isinstance(value, decimal.Decimal):
        integral = _integral(value)
        return integral if isinstance(integral, int) else float(value)
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dt.datetime):
        return (value.astimezone(dt.timezone.utc) if value.tzinfo else value).isoformat()
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if t.is_map(arrow_type):
        return {str(_plain(k, arrow_type.key_type)): _plain(v, arrow_type.item_type) for k, v in value}
    if isinstance(value, list):
        return [_plain(v, arrow_type.value_type) for v in value]
    if isinstance(value, dict):
        return {f.name: _plain(value[f.name], f.type) for f in arrow_type}
    return str(value)


def _csv_cell(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    return str(value)


def _shortest(value: float, single: bool) -> str:
    if single:
        import numpy as np

        return str(np.float32(value))
    return repr(value)


def _java_float(value: float, *, single: bool) -> str:
    """``value`` in Java's ``Double.toString`` / ``Float.toString`` notation with the shortest digits."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0.0" if math.copysign(1, value) < 0 else "0.0"
    sign, digits, exponent = decimal.Decimal(_shortest(value, single)).normalize().as_tuple()
    text = "".join(map(str, digits))
    point = len(text) + exponent  # digits before the decimal point
    if 1e-3 <= abs(value) < 1e7:
        if point <= 0:
            body = "0." + "0" * -point + text
        elif point >= len(text):
            body = text + "0" * (point - len(text)) + ".0"
        else:
            body = text[:point] + "." + text[point:]
    else:
        body = f"{text[0]}.{text[1:] or '0'}E{point - 1}"
    return ("-" if sign else "") + body


def _integral(value: decimal.Decimal):
    return int(value) if value == value.to_integral_value() and value.as_tuple().exponent >= 0 else value
