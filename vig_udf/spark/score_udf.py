"""The scoring function that Spark runs over Arrow batches of the corpus (``DataFrame.mapInArrow``).

What the driver pickles is a small :class:`ScorerSpec`. Inside a Python worker the scorer is loaded on
first use and kept for the life of the worker (Spark reuses Python workers across tasks), keyed by the
scorer id and the device; on a GPU executor it is pinned to the GPU that Spark assigned to the task.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Iterator

import pyarrow as pa

from vig_udf import status as st
from vig_udf.results import ScoreResult
from vig_udf.spark.arrow import results_to_arrow

log = logging.getLogger(__name__)
_SCORERS: dict[tuple[str, str], object] = {}
SCORABLE = (st.OK, st.TEXT_ONLY)


@dataclass(frozen=True)
class ScorerSpec:
    """Everything a worker needs to build the scorer: cheap to pickle, made once on the driver.

    ``load_log_dir``: when set, every model load writes a marker file there (tests count loads per worker).
    ``kill_worker_once``: fault injection; the first task that sees no file at this path creates it and
    kills its Python worker in the middle of scoring (tests check that Spark's retry recovers).
    """

    model_path: str
    scorer_id: str
    kwargs: dict = field(default_factory=dict)
    image_root: str | None = None
    load_log_dir: str | None = None
    kill_worker_once: str | None = None


def task_device() -> str | None:
    """``cuda:<n>`` for the GPU that Spark assigned to this task, None when the task has no GPU."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    gpus = ctx.resources().get("gpu") if ctx is not None else None
    if gpus is None or not gpus.addresses:
        return None
    return f"cuda:{gpus.addresses[0]}"


def worker_scorer(spec: ScorerSpec, device: str | None):
    """The worker's scorer for ``spec`` on ``device``, loaded on first use."""
    key = (spec.scorer_id, device or "default")
    if key not in _SCORERS:
        from vig_udf.scorer import VIGScorer

        kwargs = dict(spec.kwargs)
        if device is not None:
            kwargs["device"] = device
        started = time.perf_counter()
        scorer = VIGScorer.from_pretrained(spec.model_path, **kwargs)
        if scorer.scorer_id != spec.scorer_id:
            raise RuntimeError(
                f"the scorer loaded on this executor has id {scorer.scorer_id}, the driver expected "
                f"{spec.scorer_id}: the model at {spec.model_path} differs between driver and executor"
            )
        _SCORERS[key] = scorer
        log.info("loaded scorer %s on %s in %.1fs", spec.scorer_id, scorer.device, time.perf_counter() - started)
        if spec.load_log_dir:
            os.makedirs(spec.load_log_dir, exist_ok=True)
            marker = os.path.join(spec.load_log_dir, f"{os.getpid()}-{uuid.uuid4().hex}")
            open(marker, "w").close()
    return _SCORERS[key]


def score_batches(spec: ScorerSpec):
    """The ``mapInArrow`` function: corpus record batches in, ``scores`` record batches out, row for row."""

    def score_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            rows = batch.to_pylist()
            started = time.perf_counter()
            results: list[ScoreResult | None] = [None] * len(rows)
            todo = []
            for i, row in enumerate(rows):
                if row.get("status") in SCORABLE:
                    todo.append(i)
                else:  # ingest already knows why this row cannot be scored
                    results[i] = ScoreResult.unscored(row["sample_id"], spec.kwargs.get("counterfactual", "blur"),
                                                      row.get("status") or st.INVALID_CONVERSATION, row.get("error"))
            if todo:
                scorer = worker_scorer(spec, task_device())
                _maybe_kill_worker(spec)
                for i, result in zip(todo, scorer.score([_sample(rows[i], spec.image_root) for i in todo])):
                    results[i] = result
            seconds = (time.perf_counter() - started) / max(1, len(rows))
            yield results_to_arrow(results, scorer_id=spec.scorer_id, seconds_per_row=seconds)

    return score_partition


def _sample(row: dict, image_root: str | None) -> dict:
    """A corpus row as a scorer record (image bytes win over the path when both are stored)."""
    image = row.get("image_bytes") or row.get("image_path")
    if isinstance(image, str) and image_root and not os.path.isabs(image):
        image = os.path.join(image_root, image)
    record = {"id": row["sample_id"], "conversations": row.get("conversations")}
    if image:
        record["image"] = image
    return record


def _maybe_kill_worker(spec: ScorerSpec) -> None:
    if spec.kill_worker_once and not os.path.exists(spec.kill_worker_once):
        open(spec.kill_worker_once, "w").close()
        log.warning("fault injection: killing Python worker %d mid-task", os.getpid())
        os._exit(137)
