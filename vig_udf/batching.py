"""Length-sorted batches under a token budget.

A group is the set of sequences that should share a batch (a sample's real and counterfactual passes
when their token layout is identical). Groups are sorted by length, longest first (an out-of-memory
shows up on the first batch, not the last), and packed greedily while ``rows * longest <= budget``,
where rows counts every sequence and ``longest`` is the padded length. Sorting keeps padding small.

>>> plan_batches([(10, 2), (3, 2), (9, 2)], budget=40)
[[0, 2], [1]]
"""

from __future__ import annotations


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
