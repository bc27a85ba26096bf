"""The score job's commits, made while its scoring stage runs.

The scoring stage is one Spark job for the whole run: each task scores its rows and writes them as one part
file into the job's staging folder (:func:`vig_udf.spark.score_udf.score_to_part`). While that job runs, the
driver looks at the folder every few seconds (:class:`PartCommitter`) and, whenever the parts not yet committed
hold ``rows_per_commit`` rows (or the last parts have arrived), merges them into the scores table in one Delta
commit (``MERGE ... WHEN NOT MATCHED THEN INSERT`` on the key, :func:`commit_parts`). So the GPUs never wait
for a commit, the Python workers keep their model for the whole job, and a kill loses at most the parts not yet
committed, which a rerun scores again.

Retried or speculative attempts of a task may each write a part: a partition's rows are the same in every
attempt (the pending rows are hash-partitioned on ``sample_id``), so the first complete part of a partition
is taken and later ones are ignored; within one commit no key appears twice, and the merge never writes a key
the table holds.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)
_PART = re.compile(r"^part-(\d{5,})-a(\d+)-[0-9a-f]+\.parquet$")


@dataclass
class PartCommitter:
    """Commits the part files under ``parts_dir`` as they appear (see the module docstring).

    ``commit(uris, completes)`` makes one commit of those parts (``completes``: they include the last
    partition's) and returns the Delta commit or None; ``rows_per_commit`` 0 commits once, at the end."""

    storage: object
    parts_dir: str
    tasks: int
    rows_per_commit: int
    commit: object
    seen: dict[int, tuple[str, int]] = field(default_factory=dict)  # partition -> (part URI, rows)
    uncommitted: list[int] = field(default_factory=list)
    commits: list = field(default_factory=list)

    @property
    def scored_rows(self) -> int:
        """Rows in the parts seen so far."""
        return sum(rows for _, rows in self.seen.values())

    @property
    def committed_rows(self) -> int:
        """Rows in the parts committed so far."""
        return self.scored_rows - sum(self.seen[p][1] for p in self.uncommitted)

    def look(self) -> None:
        """Take the parts that appeared since the last look (the first complete part of each partition)."""
        import pyarrow.parquet as pq

        for entry in self.storage.list(self.parts_dir):
            match = _PART.match(entry.name)
            if entry.is_dir or match is None or int(match.group(1)) in self.seen:
                continue
            with self.storage.open(entry.uri) as f:
                rows = pq.ParquetFile(f).metadata.num_rows
            partition = int(match.group(1))
            self.seen[partition] = (entry.uri, rows)
            self.uncommitted.append(partition)

    def commit_ready(self) -> None:
        """Commit the uncommitted parts if they hold ``rows_per_commit`` rows or include the last partitions."""
        if not self.uncommitted:
            return
        last = len(self.seen) == self.tasks
        rows = sum(self.seen[p][1] for p in self.uncommitted)
        if not last and not (self.rows_per_commit and rows >= self.rows_per_commit):
            return
        batch = sorted(self.uncommitted)
        uris = [self.seen[p][0] for p in batch if self.seen[p][1]]
        commit = self.commit(uris, last) if uris else None
        self.uncommitted = [p for p in self.uncommitted if p not in batch]
        self.commits.append((commit, rows))

    def missing(self) -> list[int]:
        """Partitions with no part file (after the scoring job ended: none, or rows were lost)."""
        return sorted(set(range(self.tasks)) - set(self.seen))


def run_while_committing(spark, scoring, committer: PartCommitter, *, poll_s: float, on_poll=None) -> list:
    """Run ``scoring()`` (the scoring Spark job; returns its task rows) in a thread while this thread commits
    parts as they come; returns the task rows after the last commit. A failed scoring job raises here, after
    the commits of the parts that were complete; a failure here (a commit, an interrupt) cancels the scoring
    job (its tag) before it is raised."""
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    tag = f"vig-scoring-{uuid.uuid4().hex}"
    with ThreadPoolExecutor(1, thread_name_prefix="vig-scoring") as pool:
        future = pool.submit(_tagged, spark, tag, scoring)
        _set_pool(spark, "vig-commits")
        try:
            while not future.done():
                committer.look()
                committer.commit_ready()
                if on_poll:
                    on_poll()
                _wait(future, poll_s)
            tasks = future.result()
            committer.look()
            committer.commit_ready()
            return tasks
        except BaseException:
            if not future.done():
                spark.interruptTag(tag)
            raise
        finally:
            _set_pool(spark, None)


def _wait(future, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not future.done() and time.monotonic() < deadline:
        time.sleep(min(0.2, seconds))


def _tagged(spark, tag: str, work):
    """``work()`` in this thread's pool ``vig-scoring``, its Spark jobs tagged ``tag`` (to cancel them)."""
    _set_pool(spark, "vig-scoring")
    spark.addTag(tag)
    try:
        return work()
    finally:
        spark.removeTag(tag)


def _set_pool(spark, pool: str | None) -> None:
    """Put this thread's Spark jobs into a fair-scheduler pool (classic sessions with spark.scheduler.mode=FAIR):
    commits then get task slots as soon as scoring tasks end, instead of after every scoring task started. Spark
    Connect has no per-thread pools: there commits take the slots that scoring tasks leave free."""
    from vig_udf.lake.session_conf import is_connect

    if not is_connect(spark):
        spark.sparkContext.setLocalProperty("spark.scheduler.pool", pool)
