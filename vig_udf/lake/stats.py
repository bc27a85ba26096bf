"""Per-file column statistics for Delta ``add`` actions (``numRecords``, ``nullCount``, min and max).

Readers skip files with these numbers, so a wrong value silently drops rows from query results. This
module only records values that are exact under every reader's comparison rules: min and max of
integer, floating-point and short string columns; a float column that holds a NaN gets no min or max
(Spark orders NaN above every number, Arrow ignores it); a string column whose min or max is longer
than ``MAX_STRING_STAT`` characters gets neither (Delta truncates such values, with rules this writer
does not copy). ``nullCount``
covers every top-level column that is not nested.
"""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.types as pat

MAX_STRING_STAT = 32


def _kind(data_type: pa.DataType) -> str | None:
    """'minmax' for columns with exact min/max, 'nulls' for null counts only, None for nested columns."""
    if pat.is_integer(data_type) or pat.is_floating(data_type) or pat.is_string(data_type):
        return "minmax"
    if pat.is_nested(data_type):
        return None
    return "nulls"


class FileStats:
    """Accumulates the statistics of one Parquet file over the record batches written to it."""

    def __init__(self, schema: pa.Schema):
        self.num_records = 0
        self._kinds = {f.name: _kind(f.type) for f in schema if _kind(f.type) is not None}
        self._nulls = dict.fromkeys(self._kinds, 0)
        self._min: dict = {}
        self._max: dict = {}
        self._no_minmax: set[str] = set()

    def update(self, batch: pa.RecordBatch) -> None:
        """Add one batch (with the schema given to the constructor)."""
        self.num_records += batch.num_rows
        for name, kind in self._kinds.items():
            column = batch.column(name)
            self._nulls[name] += column.null_count
            if kind != "minmax" or name in self._no_minmax or column.null_count == len(column):
                continue
            if pat.is_floating(column.type) and pc.any(pc.is_nan(column)).as_py():
                self._no_minmax.add(name)
                continue
            low_high = pc.min_max(column)
            low, high = low_high["min"].as_py(), low_high["max"].as_py()
            self._min[name] = low if name not in self._min else min(low, self._min[name])
            self._max[name] = high if name not in self._max else max(high, self._max[name])

    def _exact(self, name: str) -> bool:
        if name in self._no_minmax or name not in self._min:
            return False
        low, high = self._min[name], self._max[name]
        if isinstance(low, str):
            return len(low) <= MAX_STRING_STAT and len(high) <= MAX_STRING_STAT
        if isinstance(low, float):
            return math.isfinite(low) and math.isfinite(high)
        return True

    def to_json(self) -> str:
        """The ``stats`` string of the file's add action."""
        exact = [name for name in self._min if self._exact(name)]
        return json.dumps(
            {
                "numRecords": self.num_records,
                "minValues": {name: self._min[name] for name in exact},
                "maxValues": {name: self._max[name] for name in exact},
                "nullCount": self._nulls,
            },
            allow_nan=False,
        )
