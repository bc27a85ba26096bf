"""The training set as a stream: each rank reads only its share of the Parquet row groups, one at a time.

The training set (a Parquet folder or file written by the train job) is cut into *units*, its row groups,
listed from the files' footers only. The units are dealt to the ranks by rows (:func:`rank_units`), so that
the ranks' shares differ by at most one row group, and a rank never opens the others' units; when there are
fewer units than ranks, every rank reads every unit and keeps the rows ``i`` with ``i mod n == r``. Memory per rank is one row group plus the batches in
flight, whatever the size of the training set (Spark's writer bounds the row group size).

Order. Epoch ``e`` visits the rank's units in a permutation seeded by (seed, e, rank) and the rows of each
unit in a permutation seeded by (seed, e, unit), then the next epoch; the stream never ends (the trainer
stops after ``steps``). Batch ``b`` is rows ``[b * batch_size, (b + 1) * batch_size)`` of that stream. The
order is a function of the seed only: a resumed run starts at batch ``start_batch`` (footers tell how many
rows each unit has, so skipped units are not read), and with DataLoader workers, worker ``w`` of ``W``
builds the batches ``b = w mod W`` that the DataLoader's round robin then yields in order, so the batches
are the same with any number of workers.

Each batch is built where it is read (in a worker, beside the training step): examples through
:func:`~vig_udf.train.examples.build_example`, padded by :func:`~vig_udf.scoring.forward.collate`, with labels.
A sample that cannot be built, or that keeps no label (after a cut at ``max_length`` too), is reported in
the batch (``skipped``), not trained on; a sample cut at ``max_length`` is reported with the supervised tokens
it lost (``truncated``), whether the rest of it trains or not; a batch whose samples
all fail carries one buildable example with no label, so that every rank still runs a forward and backward
(FSDP and DDP need every rank in every collective).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

import numpy as np
import torch

from vig_udf.scoring.forward import collate
from vig_udf.scoring.conversation import DEFAULT_IMAGE_PLACEMENT
from vig_udf.scoring.formats import TEMPLATE
from vig_udf.scoring.inputs import InputBuilder
from vig_udf.scoring.status import SampleError
from vig_udf.storage import Entry, Storage, canonical
from vig_udf.train.examples import IGNORE_INDEX, TrainExample, build_example


@dataclass(frozen=True)
class Unit:
    """One row group of one Parquet file."""

    path: str
    row_group: int
    rows: int


def parquet_files(train_set: str, storage: Storage | None = None) -> list[Entry]:
    """The Parquet files of a training set (one file, or a folder as Spark writes it; local or a URI), sorted."""
    files = [e for e in (storage or Storage()).files(train_set)
             if e.name.endswith(".parquet") and not e.name.startswith(("_", "."))]
    if not files:
        raise ValueError(f"the training set {train_set} has no Parquet file")
    return files


def list_units(train_set: str, storage: Storage | None = None) -> list[Unit]:
    """Every row group of the training set, from the files' footers (no data is read)."""
    import pyarrow.parquet as pq

    storage = storage or Storage()
    units = []
    for entry in parquet_files(train_set, storage):
        path = entry.uri
        with storage.open(path) as f:
            meta = pq.ParquetFile(f).metadata
        units += [Unit(path, i, meta.row_group(i).num_rows) for i in range(meta.num_row_groups)
                  if meta.row_group(i).num_rows]
    return units


def rank_units(units: list[Unit], world: int) -> list[list[int]]:
    """The unit indices each of ``world`` ranks owns, balanced by rows: the largest unit first, each to the rank
    with the fewest rows so far (the lower rank on a tie). Dealing them round robin would let a pattern in the
    files (a full row group, then a file's short last one) give one rank all the full ones."""
    shares, rows = [[] for _ in range(world)], [0] * world
    for i in sorted(range(len(units)), key=lambda i: (-units[i].rows, i)):
        rank = min(range(world), key=lambda r: (rows[r], r))
        shares[rank].append(i)
        rows[rank] += units[i].rows
    return [sorted(share) for share in shares]


def train_set_identity(train_set: str, storage: Storage | None = None) -> dict:
    """What identifies a training set for resume: its files (names relative to it), sizes and row counts."""
    storage = storage or Storage()
    root = canonical(train_set)
    units = list_units(train_set, storage)
    return {"rows": sum(u.rows for u in units), "units": len(units),
            "files": {(posixpath.relpath(e.uri, root) if e.uri != root else e.name): e.size
                      for e in parquet_files(train_set, storage)}}


class TrainSetStream(torch.utils.data.IterableDataset):
    """Batches of one rank's share of the training set, ready for the model (see the module docstring).

    Each item is ``{"input_ids", "attention_mask", <processor tensors>, "labels", "n_samples", "skipped",
    "truncated", "realigned", "end_of_turn", "label_weights"}`` (``label_weights``: float32, the shape of
    ``labels``, the loss weight of each label, 1 unless the selection carries token loss weights, 0 off the
    labels): ``skipped`` lists ``"sample_id: status: message"`` of the
    batch's samples that could not be built or keep no label, ``truncated`` ``(sample_id, supervised tokens
    cut)`` of its samples cut at ``max_length``, ``realigned`` counts the samples whose mask moved through
    character spans. ``prompt_format``, ``image_pad`` and ``image_placement`` are the scores' (see
    :class:`~vig_udf.scoring.inputs.InputBuilder`).
    """

    def __init__(self, train_set: str, processor, *, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 image_root: str | None = None, max_length: int | None = None,
                 supervise_end_of_turn: bool = True, cache_examples: bool = False,
                 image_placement: str = DEFAULT_IMAGE_PLACEMENT, prompt_format=TEMPLATE, image_pad: str = "none",
                 storage: Storage | None = None):
        self.storage = storage or Storage()
        self.units = list_units(train_set, self.storage)
        if not self.units:
            raise ValueError(f"the training set {train_set} has no rows: nothing was selected")
        self.train_set = train_set
        self.rows = sum(u.rows for u in self.units)
        self.processor = processor
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.image_root, self.max_length = image_root, max_length
        self.image_placement = image_placement  # the scores' (train_job.training_conventions)
        self.prompt_format, self.image_pad = prompt_format, image_pad
        self.supervise_end_of_turn = supervise_end_of_turn
        self.cache = {} if cache_examples else None
        self.start_batch = 0  # set by a resume: the first batch this stream yields
        self.max_rows_held = 0  # the most rows this process held at once (for the memory test)
        if len(self.units) >= world:
            self.own_units = rank_units(self.units, world)[rank]
            self.row_stride = 1
        else:  # fewer row groups than ranks: every rank reads them all and keeps every world-th row
            self.own_units = list(range(len(self.units)))
            self.row_stride = world
        if not sum(self._own_rows(u) for u in self.own_units):
            raise ValueError(f"rank {rank} of {world} has no row of {train_set} ({len(self.units)} row groups)")

    def _own_rows(self, unit: int) -> int:
        """How many rows of ``unit`` belong to this rank (all of them unless rows are strided)."""
        n = self.units[unit].rows
        return n if self.row_stride == 1 else len(range(self.rank, n, self.row_stride))

    def _positions(self):
        """(epoch, unit, row indices in visiting order, stream position of the first) for ever."""
        epoch, position = 0, 0
        while True:
            order = np.random.default_rng([self.seed, epoch, self.rank]).permutation(len(self.own_units))
            for k in order:
                unit = self.own_units[k]
                n = self._own_rows(unit)
                yield epoch, unit, n, position
                position += n
            epoch += 1

    def _rows(self, unit: int, epoch: int) -> list[dict]:
        import pyarrow.parquet as pq

        with self.storage.open(self.units[unit].path) as f:
            table = pq.ParquetFile(f).read_row_group(self.units[unit].row_group)
        rows = table.to_pylist()
        del table
        self.max_rows_held = max(self.max_rows_held, len(rows))
        if self.row_stride > 1:
            rows = rows[self.rank::self.row_stride]
        order = np.random.default_rng([self.seed, epoch, unit]).permutation(len(rows))
        return [rows[i] for i in order]

    def samples(self, first: int):
        """(stream position, unit, row) from stream position ``first`` on; units before it are not read."""
        for epoch, unit, n, position in self._positions():
            if position + n <= first:
                continue
            rows = self._rows(unit, epoch)
            for i in range(max(0, first - position), n):
                yield position + i, unit, rows[i]
            del rows

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        builder = InputBuilder(self.processor, image_placement=self.image_placement, prompt_format=self.prompt_format,
                               image_pad=self.image_pad)
        pad = builder.tokenizer.pad_token_id if builder.tokenizer.pad_token_id is not None else 0
        pending, fallback = [], None
        for position, unit, row in self.samples(self.start_batch * self.batch_size):
            if (position // self.batch_size) % workers != worker:
                continue
            pending.append(self._example(builder, unit, position, row))
            if len(pending) < self.batch_size:
                continue
            good = [e for e in pending if _trainable(e)]
            fallback = good[-1] if good else fallback
            yield self._batch(pending, pad, fallback or self._first_buildable(builder))
            pending = []

    def _example(self, builder: InputBuilder, unit: int, position: int, row: dict):
        """The built example, or ``"sample_id: status: message"`` when the sample cannot be built."""
        key = (unit, row["sample_id"])
        if self.cache is not None and key in self.cache:
            return self.cache[key]
        try:
            example = build_example(builder, row, image_root=self.image_root, max_length=self.max_length,
                                    supervise_end_of_turn=self.supervise_end_of_turn, storage=self.storage)
        except SampleError as err:
            example = f"{row['sample_id']}: {err.status}: {err.message}"
        if self.cache is not None:
            self.cache[key] = example
        return example

    def _first_buildable(self, builder: InputBuilder) -> TrainExample:
        for _, unit, row in self.samples(0):
            example = self._example(builder, unit, 0, row)
            if _trainable(example):
                return example
        raise ValueError("no sample of the training set can be built (see the skipped samples' reasons)")

    @staticmethod
    def _batch(pending: list, pad: int, fallback: TrainExample) -> dict:
        good = [e for e in pending if _trainable(e)]
        skipped = [e if isinstance(e, str) else f"{e.sample_id}: {e.skip_reason()}" for e in pending
                   if not _trainable(e)]
        examples = good or [fallback]
        batch = collate([e.seq for e in examples], pad)
        labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
        for i, example in enumerate(good):  # the fallback keeps no label
            labels[i, : len(example.labels)] = torch.as_tensor(example.labels)
        batch["labels"] = labels
        # every batch carries the loss weights (1 at each label without token_weight), so that every rank and
        # accumulation step counts the same way (the trainer's divisor is their sum)
        weights = torch.zeros(labels.shape, dtype=torch.float32)
        for i, example in enumerate(good):
            weights[i, : len(example.labels)] = torch.as_tensor(
                example.weights if example.weights is not None else (example.labels != IGNORE_INDEX),
                dtype=torch.float32)
        batch["label_weights"] = weights
        batch["n_samples"] = torch.tensor(len(good))
        batch["end_of_turn"] = torch.tensor(sum(e.n_end_of_turn for e in good))
        batch["realigned"] = torch.tensor(sum(e.realigned for e in good))
        batch["skipped"] = skipped
        batch["truncated"] = [(e.sample_id, e.cut_tokens) for e in pending
                              if isinstance(e, TrainExample) and e.cut_tokens]
        return batch


def _trainable(example) -> bool:
    """Whether a built example has a label to train on (else it is skipped and reported)."""
    return isinstance(example, TrainExample) and example.n_supervised > 0
