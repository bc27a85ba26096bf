"""The training-set stream: each rank reads only its row groups, one at a time, in an order set by the seed."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.test_train_loss import alternate, records, scored_row


@pytest.fixture(scope="module")
def processor(tiny_checkpoints):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_checkpoints["llava"])


@pytest.fixture(scope="module")
def train_set(processor, tmp_path_factory) -> str:
    """30 rows in two files of row groups of 4 rows."""
    folder = tmp_path_factory.mktemp("stream") / "train_set"
    folder.mkdir()
    rows = [{**scored_row(processor, r, keep=alternate), "sample_id": f"{r['id']}{k:02d}"}
            for k in range(10) for r in records()]
    pq.write_table(pa.Table.from_pylist(rows[:16]), folder / "part-00000.parquet", row_group_size=4)
    pq.write_table(pa.Table.from_pylist(rows[16:]), folder / "part-00001.parquet", row_group_size=4)
    return str(folder)


def stream(train_set, processor, **kw):
    from vig_udf.train.data import TrainSetStream

    return TrainSetStream(train_set, processor, **{"batch_size": 3, "seed": 7, **kw})


def sample_order(s, n_samples):
    return [row["sample_id"] for _, (_, _, row) in zip(range(n_samples), s.samples(0))]


def test_ranks_read_disjoint_row_groups_that_cover_the_set_one_group_at_a_time(train_set, processor):
    from vig_udf.train.data import list_units

    units = list_units(train_set)
    assert len(units) == 8 and sum(u.rows for u in units) == 30
    parts = [stream(train_set, processor, rank=r, world=3) for r in range(3)]
    assert [p.own_units for p in parts] == [[0, 3, 6], [1, 4, 7], [2, 5]]
    epoch = [set(sample_order(p, sum(p._own_rows(u) for u in p.own_units))) for p in parts]
    assert not (epoch[0] & epoch[1]) and not (epoch[1] & epoch[2]) and not (epoch[0] & epoch[2])
    assert len(set().union(*epoch)) == 30
    # a whole epoch and more of rank 0 never held more than one row group (4 rows) of a 30-row set
    sample_order(parts[0], 40)
    assert parts[0].max_rows_held == 4
    # each epoch visits every own row once, in a new order
    first, second = sample_order(parts[0], 24)[:12], sample_order(parts[0], 24)[12:]
    assert sorted(first) == sorted(second) and first != second


def test_ranks_get_shares_of_rows_within_one_row_group_whatever_the_pattern_of_the_files():
    from vig_udf.train.data import Unit, rank_units

    # Spark's files of a full row group and a short last one: round robin gave rank 0 every full one
    units = [Unit(f"part-{i // 2}", i % 2, 18_000 if i % 2 == 0 else 11_000) for i in range(100)]
    for world in (2, 3, 8):
        shares = rank_units(units, world)
        assert sorted(i for share in shares for i in share) == list(range(100))  # each unit exactly once
        rows = [sum(units[i].rows for i in share) for share in shares]
        assert max(rows) - min(rows) <= 18_000, (world, rows)
    assert rank_units(units[:3], 3) == [[0], [2], [1]]  # every rank owns a unit when there are enough


def test_fewer_row_groups_than_ranks_strides_rows(processor, tmp_path):
    rows = [{**scored_row(processor, r), "sample_id": f"{r['id']}{k}"} for k in range(3) for r in records()]
    path = tmp_path / "one.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    parts = [stream(str(path), processor, rank=r, world=2) for r in range(2)]
    own = [set(sample_order(p, p._own_rows(0))) for p in parts]
    assert not (own[0] & own[1]) and len(own[0] | own[1]) == 9


def test_batches_do_not_depend_on_workers_and_a_resume_starts_where_it_stopped(train_set, processor):
    def batches(s, n, workers):
        loader = torch.utils.data.DataLoader(s, batch_size=None, num_workers=workers)
        out = []
        for batch in loader:
            out.append((batch["input_ids"].tolist(), batch["labels"].tolist()))
            if len(out) == n:
                break
        return out

    reference = batches(stream(train_set, processor), 12, 0)
    assert batches(stream(train_set, processor), 12, 2) == reference
    resumed = stream(train_set, processor)
    resumed.start_batch = 5
    assert batches(resumed, 7, 0) == reference[5:]
    assert batches(stream(train_set, processor, seed=8), 12, 0) != reference


def test_a_batch_reports_its_unbuildable_samples(processor, tmp_path):
    good = scored_row(processor, records()[1])
    bad = {**good, "sample_id": "broken", "image_bytes": b"not an image"}
    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist([bad, bad | {"sample_id": "broken2"}, good]), path)
    seen = [b for _, b in zip(range(3), stream(str(path), processor, batch_size=1))]
    skipped = [entry for b in seen for entry in b["skipped"]]
    assert sorted(e.split(":")[0] for e in skipped) == ["broken", "broken2"]
    assert all("image_unreadable" in e for e in skipped)
    # a batch of only failed samples carries a buildable example with no label
    empty = [b for b in seen if b["n_samples"] == 0]
    assert len(empty) == 2 and all((b["labels"] == -100).all() for b in empty)


def test_logging_rate_follows_the_run_length_and_closes_at_each_checkpoint():
    from vig_udf.train.settings import TrainSettings
    from vig_udf.train.trainer import logging_steps

    def rate(**kw):
        return logging_steps(TrainSettings(**kw))

    assert rate(steps=8, checkpoint_every=4) == 1
    assert rate(steps=5000, checkpoint_every=0) == 100
    assert rate(steps=5000, checkpoint_every=250) == 50  # 100 wanted; the largest divisor of 250 below it
    assert rate(steps=3640, checkpoint_every=250) == 50 and 250 % rate(steps=3640, checkpoint_every=250) == 0
    assert rate(steps=5000, checkpoint_every=250, log_every=7) == 7
