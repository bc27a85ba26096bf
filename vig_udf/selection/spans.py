"""Token masks as character spans of the answer text, and back: how a selection moves between tokenizers.

The scores table stores, for every answer token, its answer turn and its ``[char_start, char_end)`` span
inside that turn's answer text (see :mod:`vig_udf.scoring.masking`). A token mask over one tokenizer's tokens is
therefore also a set of character spans, which any other tokenizer can be mapped onto:

* :func:`kept_char_spans` turns a mask into merged ``(turn, start, end)`` spans (the export sidecar);
* :func:`keep_from_spans` marks a token as kept when it shares at least one character with a kept span of
  the same turn (a token of another tokenizer that straddles a span boundary is kept).

For the tokenizer that made the spans, the round trip is exact for every token with a non-empty span.

Token loss weights (``token_weight=vig``) travel the same way: :func:`weighted_char_spans` gives the kept tokens'
``(turn, start, end, weight)`` spans (touching spans of equal weight merged), and :func:`weights_from_spans`
gives another tokenizer's token the character-weighted mean weight of the spans it overlaps.

>>> import numpy as np
>>> turn, start, end = np.array([0, 0, 0, 1]), np.array([0, 3, 9, 0]), np.array([3, 9, 12, 5])
>>> spans = kept_char_spans(turn, start, end, np.array([True, True, False, True]))
>>> spans
[(0, 0, 9), (1, 0, 5)]
>>> keep_from_spans(turn, start, end, spans).tolist()
[True, True, False, True]
"""

from __future__ import annotations

import numpy as np


def kept_char_spans(turn, char_start, char_end, keep) -> list[tuple[int, int, int]]:
    """Merged ``(turn, start, end)`` character spans of the kept tokens (touching spans are joined)."""
    turn, start, end = (np.asarray(a, dtype=np.int64) for a in (turn, char_start, char_end))
    keep = np.asarray(keep, dtype=bool)
    if not (turn.shape == start.shape == end.shape == keep.shape):
        raise ValueError(f"token arrays and mask differ in length: {turn.shape}, {start.shape}, {end.shape}, "
                         f"{keep.shape}")
    spans: list[list[int]] = []
    for i in np.lexsort((start, turn)):
        if not keep[i] or end[i] <= start[i]:
            continue
        t, s, e = int(turn[i]), int(start[i]), int(end[i])
        if spans and spans[-1][0] == t and s <= spans[-1][2]:
            spans[-1][2] = max(spans[-1][2], e)
        else:
            spans.append([t, s, e])
    return [tuple(span) for span in spans]


def keep_from_spans(turn, char_start, char_end, spans) -> np.ndarray:
    """Mask over tokens (given by turn and character span): kept when a token overlaps a kept span."""
    turn, start, end = (np.asarray(a, dtype=np.int64) for a in (turn, char_start, char_end))
    keep = np.zeros(turn.shape, dtype=bool)
    for t, s, e in spans:
        keep |= (turn == t) & (start < e) & (end > s)
    return keep


def weighted_char_spans(turn, char_start, char_end, keep, weights) -> list[tuple[int, int, int, float]]:
    """``(turn, start, end, weight)`` spans of the kept tokens with their loss weights; touching spans of the same
    weight are joined (a text-only answer, weight 1 throughout, is one span per turn)."""
    turn, start, end = (np.asarray(a, dtype=np.int64) for a in (turn, char_start, char_end))
    keep, weights = np.asarray(keep, dtype=bool), np.asarray(weights, dtype=np.float64)
    if not (turn.shape == start.shape == end.shape == keep.shape == weights.shape):
        raise ValueError(f"token arrays, mask and weights differ in length: {turn.shape}, {start.shape}, "
                         f"{end.shape}, {keep.shape}, {weights.shape}")
    spans: list[list] = []
    for i in np.lexsort((start, turn)):
        if not keep[i] or end[i] <= start[i]:
            continue
        t, s, e, w = int(turn[i]), int(start[i]), int(end[i]), float(weights[i])
        if spans and spans[-1][0] == t and s <= spans[-1][2] and spans[-1][3] == w:
            spans[-1][2] = max(spans[-1][2], e)
        else:
            spans.append([t, s, e, w])
    return [tuple(span) for span in spans]


def weights_from_spans(turn, char_start, char_end, spans) -> np.ndarray:
    """float32 weight per token (given by turn and character span): the mean weight of the weighted spans it
    overlaps, each counted by the characters shared; 0 for a token that overlaps none."""
    turn, start, end = (np.asarray(a, dtype=np.int64) for a in (turn, char_start, char_end))
    total, chars = np.zeros(turn.shape), np.zeros(turn.shape)
    for t, s, e, w in spans:
        shared = np.where(turn == t, np.clip(np.minimum(end, e) - np.maximum(start, s), 0, None), 0)
        total += shared * w
        chars += shared
    return np.divide(total, chars, out=np.zeros(turn.shape), where=chars > 0).astype(np.float32)
