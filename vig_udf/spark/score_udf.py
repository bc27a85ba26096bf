"""The scoring function that Spark runs over Arrow batches of the corpus (``DataFrame.mapInArrow``).

What the driver pickles is a small :class:`ScorerSpec`. Inside a Python worker the scorer is loaded on
first use and kept for the life of the worker (Spark reuses Python workers across tasks); on a GPU executor
it is pinned to the GPU that Spark assigned to the task. A worker holds one scorer: a reused worker that is
handed another GPU (an executor with several) releases the model it holds before loading it there, so GPU
memory never holds two copies for one worker. Every load is recorded (:data:`LOADS`) and reported by the
task that made it.

The score job's tasks run :func:`score_to_part`: the task's rows are scored and written as one Parquet part
file (the scores rows) in the job's staging folder, and the task returns one small row that names it
(:data:`TASK_DDL`): the driver commits part files while later tasks still score.
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
import socket
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
from vig_udf.storage import Storage, model_folder

log = logging.getLogger(__name__)
_HELD: dict = {"key": None, "scorer": None}  # this worker's one scorer
LOADS: list[dict] = []  # this worker's model loads: scorer id, device, seconds, what was released first
PASSES: list[int] = []  # sequences forwarded by each partition this worker scored (real-image and counterfactual)
SCORABLE = (st.OK, st.TEXT_ONLY)
# one row per task of the score job: its part file and what the task's worker did
TASK_DDL = ("partition INT, attempt INT, part STRING, rows LONG, host STRING, pid INT, gpu STRING, device STRING, "
            "loads INT, load_seconds DOUBLE, released STRING, started DOUBLE, ended DOUBLE, passes LONG")
PART_ROW_GROUP_ROWS = 1024


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
    ``storage``: how the workers reach a model, an image root or images on object storage (the driver's
    session settings, :func:`vig_udf.storage.session_storage`).
    ``scorer_ids``: counterfactual -> scorer id when the spec scores several counterfactuals at once
    (``counterfactuals``; ``scorer_id`` then names the set); empty for one.
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
    storage: Storage = field(default_factory=Storage)
    scorer_ids: dict = field(default_factory=dict)

    def ids(self) -> dict[str, str]:
        """Counterfactual -> scorer id of every counterfactual this spec scores."""
        return dict(self.scorer_ids) or {self.kwargs.get("counterfactual", "blur"): self.scorer_id}


def task_gpu() -> str | None:
    """The address of the GPU that Spark assigned to this task (``spark.task.resource.gpu.amount`` or the stage's
    resource profile), or None."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    gpus = ctx.resources().get("gpu") if ctx is not None else None
    return gpus.addresses[0] if gpus is not None and gpus.addresses else None


def task_device() -> str | None:
    """``cuda:<n>`` for the GPU that Spark assigned to this task; without one (local mode), on a machine with
    several GPUs, the GPU this Python worker holds (:func:`vig_udf.spark.local_gpus.worker_gpu`); None
    leaves it to the scorer (``cuda`` when there is one, else the CPU), as for a GPU address that this worker's
    torch cannot see (a cluster whose executors advertise GPUs without CUDA: the scorer runs on the CPU)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    address = task_gpu()
    if address is not None:
        if count:
            return f"cuda:{address}"
        log.warning("Spark assigned GPU %s to this task, but torch sees no CUDA device: scoring on the CPU", address)
        return None
    index = worker_gpu(count) if count > 1 else None
    return None if index is None else f"cuda:{index}"


def worker_scorer(spec: ScorerSpec, device: str | None):
    """The worker's scorer for ``spec`` on ``device``, loaded on first use; the one it held before for another
    scorer or device is released first (see the module docstring)."""
    key = (spec.scorer_id, device or "default")
    if _HELD["key"] == key:
        return _HELD["scorer"]
    from vig_udf.scoring.scorer import VIGScorer

    released = _release_scorer()
    kwargs = dict(spec.kwargs)
    if device is not None:
        kwargs["device"] = device
    started = time.perf_counter()
    scorer = VIGScorer.from_pretrained(spec.model_path, storage=spec.storage, model_ref=verified_model(spec), **kwargs)
    if scorer.scorer_ids != spec.ids():
        raise RuntimeError(
            f"the scorer loaded on this executor has ids {scorer.scorer_ids}, the driver expected "
            f"{spec.ids()}: the model at {spec.model_path} differs between driver and executor"
        )
    _HELD.update(key=key, scorer=scorer)
    _check_versions(spec)
    seconds = time.perf_counter() - started
    LOADS.append({"scorer_id": spec.scorer_id, "device": str(scorer.device), "seconds": seconds,
                  "released": released})
    log.info("worker %s:%d loaded scorer %s on %s in %.1fs%s", socket.gethostname(), os.getpid(), spec.scorer_id,
             scorer.device, seconds, f" (released {released} first)" if released else "")
    if spec.load_log_dir:
        os.makedirs(spec.load_log_dir, exist_ok=True)
        marker = os.path.join(spec.load_log_dir, f"{os.getpid()}-{uuid.uuid4().hex}")
        open(marker, "w").close()
    return scorer


def worker_loads() -> list[dict]:
    """This worker's model loads so far (module state: a closure that named it would pickle the model)."""
    return LOADS


def held_device() -> str | None:
    """The device of the scorer this worker holds, or None."""
    return str(_HELD["scorer"].device) if _HELD["scorer"] is not None else None


def _release_scorer() -> str | None:
    """Free the scorer this worker holds (its weights on the GPU); returns what it was, e.g. ``<id>@cuda:0``."""
    if _HELD["scorer"] is None:
        return None
    scorer_id, device = _HELD["key"]
    _HELD.update(key=None, scorer=None)
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return f"{scorer_id}@{device}"


def verified_model(spec: ScorerSpec) -> dict | None:
    """The driver's model fingerprint, once this worker's files are checked against it (size, modification
    time and safetensors header; a full hash only for a file whose time differs); None when the spec carries
    none (the scorer then fingerprints the model itself). Raises ``ModelMismatchError`` on a mismatch."""
    if spec.fingerprint is None:
        return None
    from vig_udf.scoring.identity import verified_fingerprint

    return verified_fingerprint(model_folder(spec.model_path, spec.storage), spec.fingerprint, spec.weight_stamps)


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
    results: dict[str, list]  # counterfactual -> one result per row
    todo: list[int]
    started: float
    samples: list[dict] = field(default_factory=list)  # scorer records of the rows in ``todo``


def score_batches(spec: ScorerSpec):
    """The ``mapInArrow`` function: corpus record batches in, ``scores`` record batches out, row for row.

    The batches of a task go through one :meth:`~vig_udf.VIGScorer.score_stream_all`, so the scorer prepares
    the next batch's samples (images, templates, processor) while the model runs the current one. Output
    batches keep the input order; batches with nothing to score pass straight through in their place. With
    several counterfactuals an output batch holds each counterfactual's rows in turn (k rows per input row).
    """
    _finish = _finished_batch

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
            forwarded = scorer.forwarded
            for scored in scorer.score_stream_all(itertools.chain([first], lists)):
                while not pending[0].todo:
                    yield _finish(pending.popleft(), spec)
                entry = pending.popleft()
                for cf, results in scored.items():
                    for i, result in zip(entry.todo, results):
                        entry.results[cf][i] = result
                yield _finish(entry, spec)
            PASSES.append(scorer.forwarded - forwarded)
        while pending:
            yield _finish(pending.popleft(), spec)

    return score_partition


def _pending(batch: pa.RecordBatch, spec: ScorerSpec) -> _Pending:
    rows = batch.to_pylist()
    counterfactuals = list(spec.ids())
    entry = _Pending(rows, {cf: [None] * len(rows) for cf in counterfactuals}, [], time.perf_counter())
    for i, row in enumerate(rows):
        if row.get("status") in SCORABLE:
            try:
                entry.samples.append(corpus_record(row, spec.image_root))
            except SampleError as err:  # a path that leaves the image root (a corpus table not written by ingest)
                for cf in counterfactuals:
                    entry.results[cf][i] = ScoreResult.unscored(row["sample_id"], cf, err.status, err.message)
                continue
            entry.todo.append(i)
        else:  # ingest already knows why this row cannot be scored
            for cf in counterfactuals:
                entry.results[cf][i] = ScoreResult.unscored(row["sample_id"], cf,
                                                            row.get("status") or st.INVALID_CONVERSATION,
                                                            row.get("error"))
    return entry


def _finished_batch(entry: _Pending, spec: ScorerSpec) -> pa.RecordBatch:
    seconds = (time.perf_counter() - entry.started) / max(1, len(entry.rows))
    batches = [results_to_arrow(entry.results[cf], scorer_id=scorer_id, seconds_per_row=seconds)
               for cf, scorer_id in spec.ids().items()]
    return batches[0] if len(batches) == 1 else pa.concat_batches(batches)


def corpus_record(row: dict, image_root: str | None) -> dict:
    """A corpus row as a scorer record (image bytes win over the path when both are stored); a row with
    ``more_images`` gives the list of its images, the first (``image_path`` / ``image_bytes``) first; a row that the
    score job joined its mismatched partner onto (:func:`vig_udf.spark.partners.with_partner_images`) carries the
    partner's id and image as ``counterfactual_partner`` and ``counterfactual_image``.

    A path is resolved under ``image_root`` by the rule ingest applies (:func:`vig_udf.scoring.images.resolve_image`):
    one that leaves the root raises :class:`SampleError`.
    """
    record = {"id": row["sample_id"], "conversations": row.get("conversations")}
    image = _row_image(row.get("image_bytes"), row.get("image_path"), image_root)
    more = row.get("more_images") or []  # images 2..n ({path, bytes}); null in a corpus written before them
    if more:
        record["image"] = [image] + [_row_image(m.get("bytes"), m.get("path"), image_root) for m in more]
    elif image:
        record["image"] = image
    if row.get("counterfactual_partner") is not None:
        record["counterfactual_partner"] = row["counterfactual_partner"]
        record["counterfactual_image"] = _row_image(row.get("partner_image_bytes"), row.get("partner_image_path"),
                                                    image_root)
    return record


def _row_image(data, path, image_root: str | None):
    image = data or path
    if isinstance(image, str) and image_root:
        image = resolve_image(image, image_root)
    return image


def score_to_part(spec: ScorerSpec, parts_dir: str):
    """The score job's ``mapInArrow`` function: a task's corpus rows -> their scores rows as one Parquet part file
    ``parts_dir/part-<partition>-a<attempt>-<id>.parquet`` (written whole, through the storage layer; a task
    with no rows writes an empty one) -> one :data:`TASK_DDL` row naming it, with the GPU the task got and the
    model loads its worker made meanwhile."""
    import pyarrow.parquet as pq

    from pyspark import TaskContext
    from pyspark.sql.pandas.types import to_arrow_schema
    from pyspark.sql.types import _parse_datatype_string

    from vig_udf.spark.arrow import SCORES_SCHEMA

    schema = to_arrow_schema(_parse_datatype_string(TASK_DDL))
    score = score_batches(spec)

    def task(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        ctx = TaskContext.get()
        partition, attempt = ctx.partitionId(), ctx.attemptNumber()
        started, loads_before, passes_before, rows = time.time(), len(worker_loads()), len(PASSES), 0
        part = f"{parts_dir}/part-{partition:05d}-a{attempt}-{uuid.uuid4().hex[:8]}.parquet"
        with spec.storage.write(part) as f, pq.ParquetWriter(f, SCORES_SCHEMA) as writer:
            held: list[pa.RecordBatch] = []
            for batch in score(batches):
                held.append(batch)
                rows += batch.num_rows
                if sum(b.num_rows for b in held) >= PART_ROW_GROUP_ROWS:
                    writer.write_table(pa.Table.from_batches(held, SCORES_SCHEMA))
                    held = []
            if held or not rows:
                writer.write_table(pa.Table.from_batches(held, SCORES_SCHEMA))
        new = worker_loads()[loads_before:]
        yield pa.RecordBatch.from_pylist([{
            "partition": partition, "attempt": attempt, "part": part, "rows": rows, "host": socket.gethostname(),
            "pid": os.getpid(), "gpu": task_gpu(), "device": held_device(), "loads": len(new),
            "load_seconds": sum(load["seconds"] for load in new),
            "released": ", ".join(load["released"] for load in new if load["released"]) or None,
            "started": started, "ended": time.time(), "passes": sum(PASSES[passes_before:])}], schema=schema)

    return task


def _maybe_kill_worker(spec: ScorerSpec) -> None:
    if spec.kill_worker_once and not os.path.exists(spec.kill_worker_once):
        open(spec.kill_worker_once, "w").close()
        log.warning("fault injection: killing Python worker %d mid-task", os.getpid())
        os._exit(137)
