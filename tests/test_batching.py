"""Token-budget batch planning."""

import pytest

from vig_udf.scoring.batching import plan_batches


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


def test_chunk_ranges_cover_every_index_once():
    from vig_udf.scoring.batching import chunk_ranges

    assert [list(r) for r in chunk_ranges(7, 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert chunk_ranges(0, 3) == [range(0, 0)]  # an empty call still has one (empty, last) chunk
    with pytest.raises(ValueError):
        chunk_ranges(3, 0)


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_prefetched_keeps_order_and_uses_background_threads(workers):
    import threading

    from vig_udf.scoring.batching import prefetched

    def work(x):
        return x * 10, threading.current_thread().name

    out = prefetched(range(6), work, workers=workers)
    first = next(out)
    assert first[0] == 0
    assert first[1].startswith("vig-prep") == (workers > 0)
    rest = list(out)
    assert [v for v, _ in [first, *rest]] == [0, 10, 20, 30, 40, 50]


def test_prefetched_reraises_in_order_and_stops_on_close():
    import threading

    from vig_udf.scoring.batching import prefetched

    def work(x):
        if x == 2:
            raise KeyError("boom")
        return x

    out = prefetched(range(5), work, workers=2)
    assert [next(out), next(out)] == [0, 1]
    with pytest.raises(KeyError, match="boom"):
        next(out)
    assert not [t for t in threading.enumerate() if t.name.startswith("vig-prep")]
    with pytest.raises(ValueError):
        list(prefetched([1], work, workers=-1))
