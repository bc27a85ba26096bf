"""The Spark scoring function without Spark: GPU pinning, row passthrough, Arrow output."""

import os

import pyarrow as pa
import pytest

from tests.conftest import random_image
from vig_udf.spark import score_udf
from vig_udf.spark.arrow import SCORES_SCHEMA
from vig_udf.spark.score_udf import ScorerSpec, score_batches, task_device, task_gpu


class _Resource:
    def __init__(self, addresses):
        self.addresses = addresses


class _Context:
    def __init__(self, resources):
        self._resources = resources

    def resources(self):
        return self._resources


def test_task_device_is_the_gpu_spark_assigned(monkeypatch):
    import torch
    from pyspark import TaskContext

    monkeypatch.setattr(TaskContext, "get", staticmethod(lambda: _Context({"gpu": _Resource(["3"])})))
    assert task_gpu() == "3"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert task_device() is None  # an executor that advertises GPUs torch cannot see: the CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert task_device() == "cuda:3"
    monkeypatch.setattr(TaskContext, "get", staticmethod(lambda: _Context({})))
    assert task_gpu() is None
    monkeypatch.setattr(TaskContext, "get", staticmethod(lambda: None))
    assert task_gpu() is None


def test_local_mode_runs_one_scoring_task_per_gpu():
    from vig_udf.spark.local_gpus import local_master

    assert local_master("local[*]", 2) == "local[2]"
    assert local_master("local[16, 3]", 4) == "local[4, 3]"
    assert local_master("local[1]", 2) == "local[1]" and local_master("local", 2) == "local"
    assert local_master("local[*]", 0) == "local[*]"  # no GPU: a task per core
    assert local_master("spark://host:7077", 2) == "spark://host:7077" and local_master(None, 2) is None


def test_the_score_jobs_local_session_gets_a_task_per_gpu(monkeypatch):
    import torch

    from vig_udf.spark.score_job import ScoreJobConfig, spark_config

    cfg = ScoreJobConfig()
    if not torch.cuda.is_available():
        assert spark_config(cfg).master == "local[*]"  # no GPU: a task per core
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    local = spark_config(cfg)
    assert local.master == "local[2]" and cfg.spark.master == "local[*]"
    assert local.conf["spark.default.parallelism"] == str(os.cpu_count())  # tasks as small as before
    from vig_udf.spark.score_job import local_gpu_count

    assert local_gpu_count("local[2]", 0.0) == 2  # the job's scorer runs in bf16 on those GPUs
    assert local_gpu_count("spark://head:7077", 0.0) == 0 and local_gpu_count("local[*]", 1.0) == 0


def test_concurrent_python_workers_take_different_gpus(tmp_path):
    """Each worker process holds its GPU's lock for its life; a third worker on two GPUs gets none."""
    import multiprocessing

    from vig_udf.spark.local_gpus import worker_gpu

    def take(queue, release):
        queue.put(worker_gpu(2, str(tmp_path)))
        release.wait(30)

    ctx = multiprocessing.get_context("fork")
    queue, release = ctx.Queue(), ctx.Event()
    workers = [ctx.Process(target=take, args=(queue, release)) for _ in range(3)]
    for worker in workers:
        worker.start()
    taken = sorted((queue.get(timeout=30) for _ in workers), key=lambda i: (i is None, i))
    release.set()
    for worker in workers:
        worker.join(30)
    assert taken == [0, 1, None]
    assert worker_gpu(2, str(tmp_path)) == 0  # the locks went with the processes
    assert worker_gpu(2, str(tmp_path)) == 0  # and this process keeps the one it took


def test_rows_in_equal_rows_out_and_invalid_rows_keep_their_ingest_status(tiny_checkpoints, tmp_path, monkeypatch):
    monkeypatch.setattr(score_udf, "task_device", lambda *_: None)
    random_image(40, 40, 0).save(tmp_path / "a.png")
    qa = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "Red"}]
    rows = [
        {"sample_id": "a", "image_path": "a.png", "image_bytes": None, "conversations": qa, "status": "ok", "error": None},
        {"sample_id": "b", "image_path": None, "image_bytes": (tmp_path / "a.png").read_bytes(), "conversations": qa,
         "status": "ok", "error": None},
        {"sample_id": "c", "image_path": None, "image_bytes": None, "conversations": None, "status": "invalid_record",
         "error": "not a LLaVA record"},
    ]
    from vig_udf.spark.score_job import ScoreJobConfig, resolve_spec

    path = tiny_checkpoints["llava"]
    spec = resolve_spec(ScoreJobConfig(scorer={"model_path": path, "dtype": "float32", "image_root": str(tmp_path)}),
                        gpu=False)
    scorer_id = spec.scorer_id
    out = list(score_batches(spec)(iter([pa.RecordBatch.from_pylist(rows)])))
    table = pa.Table.from_batches(out)
    assert table.schema == SCORES_SCHEMA
    got = table.to_pylist()
    assert [r["sample_id"] for r in got] == ["a", "b", "c"]
    assert [r["status"] for r in got] == ["ok", "ok", "invalid_record"]
    assert got[0]["token_vig"] == got[1]["token_vig"]  # the same image by path and by bytes
    assert got[2]["error"] == "not a LLaVA record" and got[2]["token_ids"] == []
    assert {r["scorer_id"] for r in got} == {scorer_id}

    # several batches through one stream: unscorable-only batches keep their place, rows keep their batch
    batches = [pa.RecordBatch.from_pylist(part) for part in ([rows[2]], rows[:2], [rows[2]], [rows[0]], [rows[2]])]
    streamed = list(score_batches(spec)(iter(batches)))
    assert [b.num_rows for b in streamed] == [1, 2, 1, 1, 1]
    flat = pa.Table.from_batches(streamed).to_pylist()
    assert [r["sample_id"] for r in flat] == ["c", "a", "b", "c", "a", "c"]
    assert [r["status"] for r in flat] == ["invalid_record", "ok", "ok", "invalid_record", "ok", "invalid_record"]
    # other batch compositions round differently in float32
    assert flat[1]["token_vig"] == pytest.approx(got[0]["token_vig"], abs=1e-5)
    assert flat[4]["token_vig"] == pytest.approx(got[0]["token_vig"], abs=1e-5)


def test_a_task_with_nothing_to_score_loads_no_model(monkeypatch):
    def no_load(*_):
        raise AssertionError("the model was loaded for a task with nothing to score")

    monkeypatch.setattr(score_udf, "worker_scorer", no_load)
    row = {"sample_id": "c", "image_path": None, "image_bytes": None, "conversations": None,
           "status": "invalid_record", "error": "not a LLaVA record"}
    spec = ScorerSpec(model_path="unused", scorer_id="s", kwargs={})
    out = list(score_batches(spec)(iter([pa.RecordBatch.from_pylist([row])] * 2)))
    assert [b.num_rows for b in out] == [1, 1] and out[0].column("status").to_pylist() == ["invalid_record"]


def test_vig_respects_the_users_hub_offline_setting(monkeypatch):
    from vig_udf import cli

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    cli._logging(False)
    assert "HF_HUB_OFFLINE" not in os.environ


def test_a_worker_loads_the_drivers_model_without_hashing_it_and_refuses_another(tiny_checkpoints, tmp_path,
                                                                                monkeypatch):
    """The spec carries the driver's digests and stamps: an unchanged checkpoint loads with no weight hashed on
    the worker; a weight file changed on the worker's side is refused before any model is loaded."""
    import hashlib
    import shutil

    from vig_udf.scoring.identity import ModelMismatchError
    from vig_udf.spark.score_job import ScoreJobConfig, resolve_spec

    path = tmp_path / "model"
    shutil.copytree(tiny_checkpoints["llava"], path)
    spec = resolve_spec(ScoreJobConfig(scorer={"model_path": str(path), "dtype": "float32"}), gpu=False)
    assert spec.fingerprint["files"]["model.safetensors"] and spec.weight_stamps["model.safetensors"]["size"] > 0
    monkeypatch.setenv("VIG_DIGEST_CACHE", str(tmp_path / "worker-digests.json"))  # the worker's node: cold
    hashed = []
    real = hashlib.file_digest
    monkeypatch.setattr(hashlib, "file_digest", lambda f, name: hashed.append(f.name) or real(f, name))
    monkeypatch.setattr(score_udf, "_HELD", {"key": None, "scorer": None})
    scorer = score_udf.worker_scorer(spec, None)
    assert scorer.scorer_id == spec.scorer_id and hashed == []

    weight = path / "model.safetensors"
    data = bytearray(weight.read_bytes())
    data[-4] ^= 0x01  # one weight's last byte: same size, same header, a later modification time
    weight.write_bytes(bytes(data))
    os.utime(weight, ns=(0, spec.weight_stamps["model.safetensors"]["mtime_ns"] + 10**9))
    monkeypatch.setattr(score_udf, "_HELD", {"key": None, "scorer": None})
    loaded = []
    monkeypatch.setattr("vig_udf.scoring.scorer.VIGScorer.from_pretrained", lambda *a, **k: loaded.append(a))
    with pytest.raises(ModelMismatchError, match="model.safetensors: other content"):
        score_udf.worker_scorer(spec, None)
    assert loaded == [] and score_udf._HELD["scorer"] is None


def test_a_worker_handed_another_gpu_releases_the_model_it_holds(monkeypatch):
    """An executor with several GPUs hands a reused Python worker any of them: the worker holds one scorer,
    releasing the one on the old GPU before loading on the new one, and reports each load."""
    loaded = []

    class FakeScorer:
        def __init__(self, device):
            self.device, self.scorer_ids = device, {"blur": "s"}
            loaded.append(device)

    monkeypatch.setattr("vig_udf.scoring.scorer.VIGScorer.from_pretrained",
                        classmethod(lambda cls, path, **kw: FakeScorer(kw["device"])))
    monkeypatch.setattr(score_udf, "_HELD", {"key": None, "scorer": None})
    monkeypatch.setattr(score_udf, "LOADS", [])
    spec = ScorerSpec(model_path="m", scorer_id="s", kwargs={})
    first = score_udf.worker_scorer(spec, "cuda:0")
    assert score_udf.worker_scorer(spec, "cuda:0") is first  # the same GPU again: no load
    second = score_udf.worker_scorer(spec, "cuda:1")
    assert second is not first and loaded == ["cuda:0", "cuda:1"]
    assert score_udf.held_device() == "cuda:1"
    assert [load["released"] for load in score_udf.worker_loads()] == [None, "s@cuda:0"]
