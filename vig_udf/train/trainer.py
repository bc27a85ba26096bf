"""The training function: fine-tune an image-text-to-text model on a training set with selected-token labels.

:func:`train_selected` is one function for every launch: called in-process (local CPU, one GPU) or on each
rank by pyspark's ``TorchDistributor`` (the environment's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` decide).
It reads the training set (a Parquet folder written by the train job), builds each step's examples on the
fly with :mod:`vig_udf.train.examples`, and minimises the mean cross-entropy over the selected tokens of the
global batch (:mod:`vig_udf.train.loss`).

Determinism and resume. The data order is a function of (seed, step) only: sample ``p`` of the run is
``permutation(seed, epoch)[p mod N]`` with ``p = step * global_batch + rank * batch_size + i``. A checkpoint
holds the trainable weights, the optimizer and scheduler states, the step and the supervised tokens so far
(random ops are seeded per step and rank, so there is no RNG state to keep), written to a
temporary folder and renamed, so a killed run never leaves a half checkpoint. Resuming loads the newest one
and continues at the next step: the final weights equal those of an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from vig_udf.forward import collate
from vig_udf.inputs import InputBuilder
from vig_udf.train import parts as model_parts
from vig_udf.train.examples import IGNORE_INDEX, build_example
from vig_udf.train.loss import SelectiveLoss, core_model
from vig_udf.train.settings import TrainSettings
from vig_udf.status import SampleError

log = logging.getLogger(__name__)
CHECKPOINTS = "checkpoints"
StepCallback = Callable[[int, dict], None]


def train_selected(settings: TrainSettings | dict, train_set: str, output_dir: str, *,
                   tracking: dict | None = None, on_step: StepCallback | None = None) -> dict:
    """Train ``settings.base_model`` on the rows of ``train_set``; the final model goes to ``<output_dir>/model``.

    tracking: ``{"tracking_uri": ..., "run_id": ...}`` to log step metrics to that MLflow run (rank 0).
    on_step: called on rank 0 after every step with (step, metrics), after the step's checkpoint is saved.
    Returns a summary (steps, losses, supervised tokens, skipped samples, model folder) on rank 0.
    """
    settings = TrainSettings.model_validate(settings)
    rank, world, local_rank = (int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1),
                                                                      ("LOCAL_RANK", 0)))
    device = _device(settings, local_rank)
    distributed = world > 1
    if distributed:
        import torch.distributed as dist

        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        return _train(settings, train_set, Path(output_dir), rank=rank, world=world, device=device,
                      tracking=tracking if rank == 0 else None, on_step=on_step if rank == 0 else None)
    finally:
        if distributed:
            torch.distributed.destroy_process_group()


def _train(settings: TrainSettings, train_set: str, out: Path, *, rank: int, world: int, device: torch.device,
           tracking: dict | None, on_step: StepCallback | None) -> dict:
    from transformers import AutoModelForImageTextToText, AutoProcessor, get_cosine_schedule_with_warmup

    rows = _read_rows(train_set)
    if not rows:
        raise ValueError(f"the training set {train_set} has no rows: nothing was selected")
    torch.manual_seed(settings.seed)
    processor = AutoProcessor.from_pretrained(settings.base_model)
    model = AutoModelForImageTextToText.from_pretrained(settings.base_model, dtype=torch.float32)
    counts = model_parts.set_trainable(model, **settings.train.model_dump())
    if settings.method == "lora":
        model = _with_lora(model, settings)
    model.to(device).train()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(trainable.values(), lr=settings.learning_rate,
                                  weight_decay=settings.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, round(settings.warmup_ratio * settings.steps),
                                                settings.steps)
    loss_module = SelectiveLoss(model)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        loss_module = DistributedDataParallel(loss_module, device_ids=[device.index] if device.type == "cuda" else None,
                                              find_unused_parameters=True)
    precision = _precision(settings, device)
    run_shape = {"world": world, "precision": precision}
    start, supervised_total = _resume(out, settings, run_shape, trainable, optimizer, scheduler) if settings.resume \
        else (0, 0)
    if rank == 0 and not settings.resume:
        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
    builder = InputBuilder(processor, max_length=settings.max_length)
    pad = builder.tokenizer.pad_token_id if builder.tokenizer.pad_token_id is not None else 0
    skipped: dict[str, str] = {}
    realigned: set[str] = set()
    cache: dict = {}
    client = _mlflow_client(tracking)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")
    if rank == 0:
        log.info("training %s (%s) on %d rows from step %d to %d, %d process(es); parameters %s, trainable %d",
                 settings.base_model, settings.method, len(rows), start + 1, settings.steps, world, counts,
                 sum(p.numel() for p in trainable.values()))
    losses: list[float] = []
    fallback = None  # a buildable example, run with no labels when a rank's whole share fails
    started = time.perf_counter()
    for step in range(start, settings.steps):
        # random ops (dropout) seeded per step and rank: a resumed run draws what an uninterrupted one would
        torch.manual_seed(_step_seed(settings.seed, step, rank))
        examples = []
        for index in _step_indices(step, rank, world, settings.batch_size, len(rows), settings.seed):
            row = rows[index]
            try:
                example = cache.get(index) or build_example(builder, row, image_root=settings.image_root)
            except SampleError as err:
                skipped[row["sample_id"]] = f"{err.status}: {err.message}"
                continue
            if settings.cache_examples:
                cache[index] = example
            examples.append(example)
            if example.realigned:
                realigned.add(example.sample_id)
        n_examples = len(examples)
        if examples:
            fallback = examples[-1]
        else:  # every sample of this rank's share failed: run one with no labels, so that DDP's forward and
            # gradient all-reduce still happen on this rank (a rank that skips them hangs the others)
            fallback = fallback or _first_buildable(builder, rows, settings)
            examples = [fallback]
        batch = collate([e.seq for e in examples], pad)
        labels = _labels(examples, batch) if n_examples else torch.full_like(batch["input_ids"], IGNORE_INDEX)
        n_local = torch.tensor([float((labels != IGNORE_INDEX).sum()), float(n_examples)])
        n_global, samples = (float(v) for v in _all_reduce(n_local.clone(), world))
        optimizer.zero_grad(set_to_none=True)
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast:
            loss_sum = loss_module(batch, labels.to(device))
        scale = world / max(n_global, 1.0)  # DDP averages over ranks: the result is sum / n_global
        (loss_sum * scale).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable.values(), settings.max_grad_norm)
        if n_global > 0:  # a step with nothing supervised must not move the weights (AdamW momentum, decay)
            optimizer.step()
        scheduler.step()
        loss = float(_all_reduce(loss_sum.detach().float().cpu(), world)) / max(n_global, 1.0)
        losses.append(loss)
        supervised_total += int(n_global)
        done = step + 1
        if settings.checkpoint_every and (done % settings.checkpoint_every == 0) and done < settings.steps and rank == 0:
            _save_checkpoint(out, done, settings, {**run_shape, "supervised_tokens": supervised_total}, trainable,
                             optimizer, scheduler)
        metrics = {"loss": loss, "supervised_tokens": n_global, "samples": samples,
                   "learning_rate": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                   "skipped_samples": float(len(skipped))}
        if client and (done % settings.log_every == 0 or done == settings.steps):
            _log_metrics(client, tracking["run_id"], metrics, done)
        if on_step:
            on_step(done, metrics)
        if rank == 0 and (done % 25 == 0 or done == settings.steps):
            log.info("step %d/%d loss %.4f (%.0fs)", done, settings.steps, loss, time.perf_counter() - started)
    model_dir = out / "model"
    if rank == 0:
        _save_model(model, processor, settings, model_dir)
    return {"steps": settings.steps, "resumed_from_step": start, "losses": losses,
            "supervised_tokens": supervised_total, "skipped": skipped, "realigned_samples": len(realigned),
            "rows": len(rows), "parameters": counts, "trainable_parameters": sum(p.numel() for p in trainable.values()),
            "model_dir": str(model_dir), "seconds": time.perf_counter() - started}


def _device(settings: TrainSettings, local_rank: int) -> torch.device:
    if settings.device:
        device = torch.device(settings.device)
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def _step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 1_009 + rank) % (2**63)


def _first_buildable(builder: InputBuilder, rows: list[dict], settings: TrainSettings):
    """The first row of the training set that builds (its labels are not used)."""
    for row in rows:
        try:
            return build_example(builder, row, image_root=settings.image_root)
        except SampleError:
            continue
    raise ValueError("no sample of the training set can be built (see the skipped samples' reasons)")


def _precision(settings: TrainSettings, device: torch.device) -> str:
    return settings.precision or ("bfloat16" if device.type == "cuda" else "float32")


def _read_rows(train_set: str) -> list[dict]:
    """The training set's rows sorted by sample_id (the data order must not depend on file order)."""
    import pyarrow.parquet as pq

    table = pq.read_table(train_set)
    return table.sort_by("sample_id").to_pylist()


def _step_indices(step: int, rank: int, world: int, batch_size: int, n: int, seed: int) -> list[int]:
    """Row indices of this rank's share of ``step``: a fresh seeded permutation of the rows every epoch."""
    first = step * batch_size * world + rank * batch_size
    out, cache = [], {}
    for p in range(first, first + batch_size):
        epoch = p // n
        if epoch not in cache:
            cache[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
        out.append(int(cache[epoch][p % n]))
    return out


def _labels(examples, batch) -> torch.Tensor:
    if not examples:
        return torch.zeros((0, 0), dtype=torch.long)
    labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
    for row, example in enumerate(examples):
        labels[row, : len(example.labels)] = torch.as_tensor(example.labels)
    return labels


def _all_reduce(value: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        import torch.distributed as dist

        backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        value = value.to(backend_device)
        dist.all_reduce(value)
        value = value.cpu()
    return value


def _with_lora(model, settings: TrainSettings):
    """LoRA adapters on the language model's linear layers; the projector (and vision tower) keep their
    requires_grad from :func:`~vig_udf.train.parts.set_trainable`."""
    from peft import LoraConfig, get_peft_model

    names = "|".join(settings.lora.target_modules)
    lm_prefixes = "|".join(p.rstrip(".").replace(".", r"\.") for p, part in model_parts.PREFIXES
                           if part == model_parts.LANGUAGE_MODEL and p != "lm_head.")
    wanted = {n for n, p in model.named_parameters() if p.requires_grad and
              model_parts.part_of(n) != model_parts.LANGUAGE_MODEL}
    config = LoraConfig(r=settings.lora.r, lora_alpha=settings.lora.alpha, lora_dropout=settings.lora.dropout,
                        target_modules=rf"({lm_prefixes})\..*\.({names})", bias="none")
    peft_model = get_peft_model(model, config)
    base = peft_model.get_base_model()
    for name, param in base.named_parameters():
        if name in wanted:
            param.requires_grad_(True)
    if not settings.train.language_model:  # adapters only train the language model
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.requires_grad_(False)
    return peft_model


def _checkpoints(out: Path) -> list[Path]:
    folder = out / CHECKPOINTS
    found = [p for p in folder.glob("step-*") if re.fullmatch(r"step-\d+", p.name) and (p / "state.json").exists()] \
        if folder.exists() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _save_checkpoint(out: Path, step: int, settings: TrainSettings, extra: dict, trainable: dict, optimizer,
                     scheduler) -> None:
    folder = out / CHECKPOINTS / f"step-{step:07d}"
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({n: p.detach().cpu() for n, p in trainable.items()}, tmp / "trainable.pt")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "fingerprint": settings.fingerprint(), **extra}))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    for old in _checkpoints(out)[:-settings.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)


def _resume(out: Path, settings: TrainSettings, run_shape: dict, trainable: dict, optimizer,
            scheduler) -> tuple[int, int]:
    """Load the newest checkpoint in ``out``; returns its step and the supervised tokens so far (0, 0 without)."""
    found = _checkpoints(out)
    if not found:
        return 0, 0
    folder = found[-1]
    state = json.loads((folder / "state.json").read_text())
    if state["fingerprint"] != settings.fingerprint():
        raise ValueError(f"{folder} was written with other training settings (fingerprint {state['fingerprint']}, "
                         f"now {settings.fingerprint()}): use another output folder, or resume=false to start over")
    changed = {k: (state.get(k), v) for k, v in run_shape.items() if state.get(k) != v}
    if changed:
        raise ValueError(f"{folder} was written by a run with other {sorted(changed)} (checkpoint, now): {changed}; "
                         "the data order and numerics would differ. Resume with the same, or resume=false")
    weights = torch.load(folder / "trainable.pt", map_location="cpu")
    missing = set(trainable) ^ set(weights)
    if missing:
        raise ValueError(f"{folder} does not match the model's trainable parameters: {sorted(missing)[:5]}")
    with torch.no_grad():
        for name, param in trainable.items():
            param.copy_(weights[name])
    opt = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)  # tensors and numbers only: a planted pickle cannot run
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    log.info("resuming from %s (step %d)", folder, state["step"])
    return int(state["step"]), int(state.get("supervised_tokens", 0))


def _save_model(model, processor, settings: TrainSettings, model_dir: Path) -> None:
    """The final model in Hugging Face layout (LoRA merged into the weights, the adapter saved beside it)."""
    tmp = model_dir.with_name(model_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if settings.method == "lora":
        model.save_pretrained(model_dir.with_name("adapter"))
        model = model.merge_and_unload()
    core_model(model).eval().to("cpu").save_pretrained(tmp)
    processor.save_pretrained(tmp)
    shutil.rmtree(model_dir, ignore_errors=True)
    os.replace(tmp, model_dir)


def _mlflow_client(tracking: dict | None):
    if not tracking:
        return None
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking["tracking_uri"])


def _log_metrics(client, run_id: str, metrics: dict, step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])
