"""Arrow schema of the ``scores`` table and conversion of scorer results to record batches."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from vig_udf.scoring.results import ScoreResult

SCORES_SCHEMA = pa.schema([
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("scorer_id", pa.string(), nullable=False),
    pa.field("counterfactual", pa.string()),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string()),
    pa.field("vig", pa.float64()),
    pa.field("nll_with", pa.float64()),
    pa.field("nll_without", pa.float64()),
    pa.field("n_tokens", pa.int32()),
    pa.field("token_ids", pa.list_(pa.int32())),
    pa.field("token_vig", pa.list_(pa.float32())),
    pa.field("logp_with", pa.list_(pa.float32())),
    pa.field("logp_without", pa.list_(pa.float32())),
    pa.field("token_turn", pa.list_(pa.int16())),
    pa.field("token_char_start", pa.list_(pa.int32())),
    pa.field("token_char_end", pa.list_(pa.int32())),
    pa.field("score_seconds", pa.float64()),
    pa.field("scored_at", pa.timestamp("us", tz="UTC")),
    pa.field("counterfactual_partner", pa.string()),  # last: added to tables made before it (NEW_SCORES_COLUMNS)
    # the sample VIG with each image alone replaced by the counterfactual (scorer option image_attribution)
    pa.field("image_vig", pa.list_(pa.float32())),
])

# columns a scores table written before they existed lacks: the score job's merge adds them (null in its rows)
NEW_SCORES_COLUMNS = ("counterfactual_partner", "image_vig")

_ARRAYS = {"token_ids": np.int32, "token_vig": np.float32, "logp_with": np.float32, "logp_without": np.float32,
           "token_turn": np.int16, "token_char_start": np.int32, "token_char_end": np.int32}


def results_to_arrow(results: list[ScoreResult], *, scorer_id: str, seconds_per_row: float) -> pa.RecordBatch:
    """One record batch in :data:`SCORES_SCHEMA`; token arrays are empty lists when there are none, ``image_vig``
    null unless the result has it."""
    now = dt.datetime.now(dt.timezone.utc)
    columns: dict[str, list] = {name: [] for name in SCORES_SCHEMA.names}
    for result in results:
        row = result.to_dict()
        for name in SCORES_SCHEMA.names:
            if name == "scorer_id":
                value = scorer_id
            elif name == "score_seconds":
                value = seconds_per_row
            elif name == "scored_at":
                value = now
            elif name in _ARRAYS:
                value = np.asarray(row[name], dtype=_ARRAYS[name])
            elif name == "image_vig":  # None unless the scorer ran with image_attribution
                attribution = getattr(result, "image_vig", None)
                value = None if attribution is None else np.asarray(attribution, dtype=np.float32).tolist()
            else:
                value = row[name]
            columns[name].append(value)
    arrays = []
    for field in SCORES_SCHEMA:
        values = columns[field.name]
        if field.name in _ARRAYS:
            arrays.append(_list_array(values, field.type))
        else:
            arrays.append(pa.array(values, type=field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=SCORES_SCHEMA)


def _list_array(values: list[np.ndarray], list_type: pa.ListType) -> pa.Array:
    """A list array from numpy arrays without a Python loop over elements."""
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    offsets[1:] = np.cumsum([len(v) for v in values])
    flat = np.concatenate(values) if values else np.zeros(0)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=list_type.value_type))
