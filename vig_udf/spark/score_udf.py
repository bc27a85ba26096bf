"""The scoring function that Spark runs over Arrow batches of the corpus (``DataFrame.mapInArrow``).

What the driver pickles is a small :class:`ScorerSpec`. Inside a Python worker the scorer is loaded on
first use and kept for the life of the worker (Spark reuses Python workers across tasks), keyed by the
scorer id and the device; on a GPU executor it is pinned to the GPU that Spark assigned to the task.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator

import pyarrow as pa

from vig_udf.scoring import status as st
from vig_udf.scoring.images import resolve_image
from vig_udf.scoring.results import ScoreResult
from vig_udf.spark.arrow import results_to_arrow
from vig_udf.spark.local_gpus import worker_gpu
from vig_udf.scoring.status import SampleError

log = logging.getLogger(__name__)
_SCORERS: dict[tuple[str, str], object] = {}
SCORABLE = (st.OK, st.TEXT_ONLY)


@dataclass(frozen=True)
class ScorerSpec:
    """Everything a worker needs to build the scorer: cheap to pickle, made once on the driver.

    ``record``: the unhashed identity, chat template, image placement and library versions of the driver
    (recorded with the score commits; a worker with other library versions logs a warning).
    ``fingerprint``, ``weight_stamps``: the driver's model fingerprint (every file's SHA-256) and its weight
    files' size, modification time and safetensors header
    (:func:`vig_udf.scoring.identity.weight_stamps`): a worker checks its files against them before loading
    (:func:`~vig_udf.scoring.identity.verified_fingerprint`) instead of hashing the weights again.
    ``load_log_dir``: when set, every model load writes a marker file there (tests count loads per worker).
    ``kill_worker_once``: fault injection; the first task that sees no file at this path creates it and
    kills its Python worker in the middle of scoring (tests check that Spark's retry recovers).
    """

    model_path: str
    scorer_id: str
    kwargs: dict = field(default_factory=dict)
    image_root: str | None = None
    record: dict = field(default_factory=dict)
    fingerprint: dict | None = None
    weight_stamps: dict | None = None
    load_log_dir: str | None = None
    kill_worker_once: str | None = None


def task_device() -> str | None:
    """``cuda:<n>`` for the GPU that Spark assigned to this task; without one (local mode), on a machine with
    several GPUs, the GPU this Python worker holds (:func:`vig_udf.spark.local_gpus.worker_gpu`); None
    leaves it to the scorer (``cuda`` when there is one, else the CPU)."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    gpus = ctx.resources().get("gpu") if ctx is not None else None
    if gpus is not None and gpus.addresses:
        return f"cuda:{gpus.addresses[0]}"
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = worker_gpu(count) if count > 1 else None
    return None if index is None else f"cuda:{index}"


def worker_scorer(spec: ScorerSpec, device: str | None):
    """The worker's scorer for ``spec`` on ``device``, loaded on first use."""
    key = (spec.scorer_id, device or "default")
    if key not in _SCORERS:
        from vig_udf.scoring.scorer import VIGScorer

        kwargs = dict(spec.kwargs)
        if device is not None:
            kwargs["device"] = device
        started = time.perf_counter()
        scorer = VIGScorer.from_pretrained(spec.model_path, model_ref=verified_model(spec), **kwargs)
        if scorer.scorer_id != spec.scorer_id:
            raise RuntimeError(
                f"the scorer loaded on this executor has id {scorer.scorer_id}, the driver expected "
                f"{spec.scorer_id}: the model at {spec.model_path} differs between driver and executor"
            )
        _SCORERS[key] = scorer
        _check_versions(spec)
        log.info("loaded scorer %s on %s in %.1fs", spec.scorer_id, scorer.device, time.perf_counter() - started)
        if spec.load_log_dir:
            os.makedirs(spec.load_log_dir, exist_ok=True)
            marker = os.path.join(spec.load_log_dir, f"{os.getpid()}-{uuid.uuid4().hex}")
            open(marker, "w").close()
    return _SCORERS[key]


def verified_model(spec: ScorerSpec) -> dict | None:
    """The driver's model fingerprint, once this worker's files are checked against it (size, modification
    time and safetensors header; a full hash only for a file whose time differs); None when the spec carries
    none (the scorer then fingerprints the model itself). Raises ``ModelMismatchError`` on a mismatch."""
    if spec.fingerprint is None:
        return None
    from vig_udf.scoring.identity import verified_fingerprint

    return verified_fingerprint(spec.model_path, spec.fingerprint, spec.weight_stamps)


def _check_versions(spec: ScorerSpec) -> None:
    from vig_udf.scoring.identity import library_versions

    expected = spec.record.get("library_versions")
    if expected and library_versions() != expected:
        log.warning("this worker's library versions %s differ from the driver's %s, which the score commit "
                    "records; scores may differ by float tolerance", library_versions(), expected)


@dataclass
class _Pending:
    """One Arrow batch on its way through the scorer: its rows, results so far, and the rows to score."""

    rows: list[dict]
    results: list
    todo: list[int]
    started: float
    samples: list[dict] = field(default_factory=list)  # scorer records of the rows in ``todo``


def score_batches(spec: ScorerSpec, progress=None):
    """The ``mapInArrow`` function: corpus record batches in, ``scores`` record batches out, row for row.

    The batches of a task go through one :meth:`~vig_udf.VIGScorer.score_stream`, so the scorer prepares
    the next batch's samples (images, templates, processor) while the model runs the current one. Output
    batches keep the input order; batches with nothing to score pass straight through in their place.
    ``progress``: a Spark accumulator that counts the rows done (:mod:`vig_udf.spark.progress`).
    """

    def _finish(entry: _Pending, spec: ScorerSpec) -> pa.RecordBatch:
        if progress is not None:
            progress.add(len(entry.rows))
        return _finished_batch(entry, spec)

    def score_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        pending: deque[_Pending] = deque()

        def to_score() -> Iterator[list[dict]]:
            for batch in batches:
                entry = _pending(batch, spec)
                pending.append(entry)
                if entry.todo:
                    yield entry.samples

        lists = to_score()
        first = next(lists, None)
        if first is not None:  # load the model only for a task that has something to score
            scorer = worker_scorer(spec, task_device())
            _maybe_kill_worker(spec)
            for scored in scorer.score_stream(itertools.chain([first], lists)):
                while not pending[0].todo:
                    yield _finish(pending.popleft(), spec)
                entry = pending.popleft()
                for i, result in zip(entry.todo, scored):
                    entry.results[i] = result
                yield _finish(entry, spec)
        while pending:
            yield _finish(pending.popleft(), spec)

    return score_partition


def _pending(batch: pa.RecordBatch, spec: ScorerSpec) -> _Pending:
    rows = batch.to_pylist()
    entry = _Pending(rows, [None] * len(rows), [], time.perf_counter())
    counterfactual = spec.kwargs.get("counterfactual", "blur")
    for i, row in enumerate(rows):
        if row.get("status") in SCORABLE:
            try:
                entry.samples.append(corpus_record(row, spec.image_root))
            except SampleError as err:  # a path that leaves the image root (a corpus table not written by ingest)
                entry.results[i] = ScoreResult.unscored(row["sample_id"], counterfactual, err.status, err.message)
                continue
            entry.todo.append(i)
        else:  # ingest already knows why this row cannot be scored
            entry.results[i] = ScoreResult.unscored(row["sample_id"], counterfactual,
                                                    row.get("status") or st.INVALID_CONVERSATION, row.get("error"))
    return entry


def _finished_batch(entry: _Pending, spec: ScorerSpec) -> pa.RecordBatch:
    seconds = (time.perf_counter() - entry.started) / max(1, len(entry.rows))
    return results_to_arrow(entry.results, scorer_id=spec.scorer_id, seconds_per_row=seconds)


def corpus_record(row: dict, image_root: str | None) -> dict:
    """A corpus row as a scorer record (image bytes win over the path when both are stored).

    A path is resolved under ``image_root`` by the rule ingest applies (:func:`vig_udf.scoring.images.resolve_image`):
    one that leaves the root raises :class:`SampleError`.
    """
    image = row.get("image_bytes") or row.get("image_path")
    if isinstance(image, str) and image_root:
        image = resolve_image(image, image_root)
    record = {"id": row["sample_id"], "conversations": row.get("conversations")}
    if image:
        record["image"] = image
    return record


def _maybe_kill_worker(spec: ScorerSpec) -> None:
    if spec.kill_worker_once and not os.path.exists(spec.kill_worker_once):
        open(spec.kill_worker_once, "w").close()
        log.warning("fault injection: killing Python worker %d mid-task", os.getpid())
        os._exit(137)
