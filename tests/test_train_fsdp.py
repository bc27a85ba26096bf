"""FSDP2 full sharding on two CPU processes (gloo) against one process: same losses, half the memory each."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.test_train_loss import alternate, records, scored_row

pytestmark = pytest.mark.slow


def _rank(rank: int, world: int, port: int, settings: dict, data: str, out: str, result: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from vig_udf.train.trainer import train_selected

    summary = train_selected(settings, data, out)
    with open(f"{result}.{rank}", "w") as f:
        json.dump({k: summary[k] for k in ("losses", "supervised_tokens", "samples", "rank_memory")}, f)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fsdp_on_two_processes_matches_one_process_with_half_the_memory_each(tiny_checkpoints, tmp_path):
    """Two row groups of 4 rows: one process with 2 accumulated batches of 4 and two FSDP ranks with one batch
    of 4 each see the same 8 samples every step, so the loss trajectories must agree (the FSDP run also
    recomputes activations, as the 7B configuration does; that changes no number)."""
    import torch.multiprocessing as mp
    from transformers import AutoProcessor

    from vig_udf.train.trainer import train_selected

    path = tiny_checkpoints["llava"]
    processor = AutoProcessor.from_pretrained(path)
    rows = [{**scored_row(processor, r, keep=alternate), "sample_id": f"{r['id']}{k}"}
            for k in range(3) for r in records()][:8]
    data = str(tmp_path / "train.parquet")
    pq.write_table(pa.Table.from_pylist(rows), data, row_group_size=4)
    base = dict(base_model=path, steps=3, batch_size=4, learning_rate=3e-3, warmup_ratio=0.0, checkpoint_every=0,
                seed=3, device="cpu")
    one = train_selected({**base, "gradient_accumulation_steps": 2}, data, str(tmp_path / "one"))
    sharded = str(tmp_path / "sharded")
    mp.spawn(_rank, args=(2, _free_port(), {**base, "sharding": "fsdp", "gradient_checkpointing": True}, data, str(tmp_path / "two"), sharded),
             nprocs=2)
    ranks = [json.loads(open(f"{sharded}.{r}").read()) for r in (0, 1)]
    assert one["samples"] == ranks[0]["samples"] == 3 * 8
    assert one["supervised_tokens"] == ranks[0]["supervised_tokens"] > 0
    assert ranks[0]["losses"] == ranks[1]["losses"]
    assert ranks[0]["losses"] == pytest.approx(one["losses"], rel=2e-4)
    assert one["losses"][-1] < one["losses"][0]
    for kind in ("parameter_bytes", "optimizer_state_bytes"):
        whole = one["rank_memory"][kind]
        held = [r["rank_memory"][kind] for r in ranks]
        assert sum(held) == pytest.approx(whole, rel=0.01)  # the shards add up to the whole
        assert all(h == pytest.approx(whole / 2, rel=0.1) for h in held)  # about half each
