"""Token-budget batch planning."""

import pytest

from vig_udf.batching import plan_batches


def test_sorted_longest_first_and_within_budget():
    groups = [(10, 2), (3, 2), (9, 2), (4, 2), (30, 2)]
    batches = plan_batches(groups, budget=40)
    assert batches == [[4], [0, 2], [3, 1]]
    for batch in batches[1:]:
        assert sum(groups[g][1] for g in batch) * max(groups[g][0] for g in batch) <= 40


def test_every_group_exactly_once_and_oversized_group_alone():
    groups = [(5, 1)] * 7 + [(100, 2)]
    batches = plan_batches(groups, budget=12)
    assert sorted(g for b in batches for g in b) == list(range(8))
    assert batches[0] == [7]


def test_budget_must_be_positive():
    with pytest.raises(ValueError):
        plan_batches([(1, 1)], budget=0)
