"""Token loss weights as weighted character spans, and back onto another tokenizer's tokens."""

from __future__ import annotations

import numpy as np
import pytest

from vig_udf.selection.spans import keep_from_spans, weighted_char_spans, weights_from_spans


def test_weighted_spans_round_trip_for_the_same_tokens_and_average_by_characters_for_others():
    turn, start, end = np.array([0, 0, 0, 1, 1]), np.array([0, 3, 6, 0, 4]), np.array([3, 6, 9, 4, 8])
    keep = np.array([True, True, False, True, True])
    weights = np.array([0.5, 0.5, 0.0, 1.25, 1.75], dtype=np.float32)
    spans = weighted_char_spans(turn, start, end, keep, weights)
    assert spans == [(0, 0, 6, 0.5), (1, 0, 4, 1.25), (1, 4, 8, 1.75)]  # equal touching weights merged
    assert keep_from_spans(turn, start, end, [s[:3] for s in spans]).tolist() == keep.tolist()
    assert weights_from_spans(turn, start, end, spans).tolist() == [0.5, 0.5, 0.0, 1.25, 1.75]
    # another tokenizer: one token over turn 1's two spans (3 + 1 characters), one covering nothing kept
    other = weights_from_spans(np.array([1, 0]), np.array([1, 6]), np.array([5, 9]), spans)
    assert other.tolist() == [pytest.approx((3 * 1.25 + 1 * 1.75) / 4), 0.0]
