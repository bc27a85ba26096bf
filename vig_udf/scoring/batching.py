"""Length-sorted batches under a token budget.

A group is the set of sequences that should share a batch (a sample's real and counterfactual passes
when their token layout is identical). Groups are sorted by length, longest first (an out-of-memory
shows up on the first batch, not the last), and packed greedily while ``rows * longest <= budget``,
where rows counts every sequence and ``longest`` is the padded length. Sorting keeps padding small.

>>> plan_batches([(10, 2), (3, 2), (9, 2)], budget=40)
[[0, 2], [1]]

The scorer prepares samples (template, mask, images, processor) in chunks, each chunk in a background
thread while the model runs the batches of the previous one (:func:`prefetched`); batches are planned
within a chunk (:func:`chunk_ranges`).
"""

from __future__ import annotations

import itertools
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def plan_batches(groups: list[tuple[int, int]], *, budget: int) -> list[list[int]]:
    """Pack groups given as ``(length, rows)`` into batches; returns lists of group indices.

    A single group larger than the budget still gets a batch of its own.
    """
    if budget <= 0:
        raise ValueError(f"batch token budget must be positive, got {budget}")
    order = sorted(range(len(groups)), key=lambda i: (-groups[i][0], i))
    batches: list[list[int]] = []
    current: list[int] = []
    rows = 0
    longest = 0
    for i in order:
        length, n = groups[i]
        new_longest = max(longest, length)
        if current and (rows + n) * new_longest > budget:
            batches.append(current)
            current, rows, new_longest = [], 0, length
        current.append(i)
        rows += n
        longest = new_longest
    if current:
        batches.append(current)
    return batches


def chunk_ranges(n: int, size: int) -> list[range]:
    """Consecutive index ranges of at most ``size`` covering ``range(n)``; one empty range when n == 0.

    >>> chunk_ranges(5, 2)
    [range(0, 2), range(2, 4), range(4, 5)]
    """
    if size <= 0:
        raise ValueError(f"chunk size must be positive, got {size}")
    return [range(start, min(start + size, n)) for start in range(0, n, size)] or [range(0, 0)]


def prefetched(items: Iterable[T], fn: Callable[[T], R], *, workers: int) -> Iterator[R]:
    """``map(fn, items)`` in order, with ``fn`` running up to ``workers`` items ahead in background threads.

    While the consumer works on one result (for the scorer: the model's forward passes), the next
    ``workers`` items are already being prepared. ``workers=0`` runs ``fn`` inline, in the calling thread.
    An exception raised by ``fn`` is re-raised here, when its result is consumed; closing the iterator (or
    an exception in the consumer) cancels the work not yet started and waits for the running one.

    >>> list(prefetched(range(4), lambda x: x * x, workers=2))
    [0, 1, 4, 9]
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if workers == 0:
        for item in items:
            yield fn(item)
        return
    source = iter(items)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vig-prep")
    pending: deque[Future] = deque()
    try:
        for item in itertools.islice(source, workers):
            pending.append(pool.submit(fn, item))
        while pending:
            future = pending.popleft()
            for item in itertools.islice(source, 1):  # keep ``workers`` items in flight
                pending.append(pool.submit(fn, item))
            yield future.result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
