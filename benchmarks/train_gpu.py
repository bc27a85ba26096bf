"""A few training steps of a LLaVA-1.5-7B-shaped model with random weights, with the training settings of
conf/gpu-cluster.yaml (``train.training``: full fine-tuning, vision tower frozen, FSDP full sharding, bf16
autocast over float32 weights, gradient checkpointing, micro-batch 4 x 4 accumulation steps), through the
product's training function on one process and one GPU: samples/s, tokens/s and peak memory per GPU.

    python3 benchmarks/train_gpu.py                                  # one GPU: 8 steps, about 2 minutes
    python3 benchmarks/train_gpu.py --set method=lora --set sharding=none   # the LoRA setting (DDP)
    python3 benchmarks/train_gpu.py --small --steps 3                # a dry run on the CPU, tiny shape

What runs is :func:`vig_udf.train.trainer.train_selected` as ``vig train`` runs it on each rank, with two
things replaced for a benchmark: the weights are random, built from the configuration on the GPU instead of
read from a checkpoint (``from_pretrained`` builds the model from the folder's ``config.json``: a 7B
checkpoint is 28 GB to write and read), and the final model is not saved. The model is benchmarks/score_gpu.py's
LLaVA-1.5-7B configuration (CLIP ViT-L/14-336, 576 image tokens; Llama-2-7B, 32000-token vocabulary) or its
small one (``--small``). The training set is ``--samples`` records of benchmarks/corpus.py (LLaVA-665K-shaped
lengths; every answer token supervised), written as a training-set Parquet file. ``--set key=value`` changes
a training setting (``vig train``'s ``training.*`` keys: ``--set batch_size=8 --set gradient_checkpointing=false``).

Reported: seconds per optimizer step after ``--warmup`` steps (the first builds the optimizer state and
warms the kernels), samples/s and tokens/s over those steps (input tokens without padding, image tokens
included; supervised tokens too), the peak GPU memory allocated and reserved by this process (its one GPU),
and the parameter and optimizer-state bytes this rank holds. A run that runs out of GPU memory is reported
as such, with the memory at that point.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CONF = ROOT / "conf" / "gpu-cluster.yaml"
GIB = 2 ** 30


def configured_settings(overrides: list[str]):
    """conf/gpu-cluster.yaml's ``train.training`` settings with ``key=value`` overrides (``vig train``'s parser)."""
    from vig_udf.config import load_config
    from vig_udf.spark.train_job import TrainJobConfig

    return load_config(TrainJobConfig, CONF, [f"training.{item}" for item in overrides], section="train").training


def build_folder(folder: Path, *, small: bool) -> dict:
    """The model's config.json and its processor in ``folder`` (no weights); returns the parameter counts."""
    import torch

    from benchmarks.score_gpu import FULL, SMALL, build_model_and_processor

    model, processor = build_model_and_processor(SMALL if small else FULL, device="meta", dtype=torch.float32)
    model.config.save_pretrained(folder)
    processor.save_pretrained(folder)
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for p in model.model.vision_tower.parameters())
    return {"parameters": total, "vision_tower": vision}


def write_train_set(path: Path, samples: int, seed: int) -> str:
    """``samples`` records of benchmarks/corpus.py as a training set that supervises every answer token."""
    from benchmarks.corpus import make_corpus
    from vig_udf.demo.model import write_records_parquet

    records = []
    for record in make_corpus(samples, seed=seed):
        if record["image"] is None:
            record = {k: v for k, v in record.items() if k != "image"}
        records.append(record)
    return write_records_parquet(records, path)


class StepClock:
    """Times and counts per optimizer step: the training function's ``on_step`` (rank 0, every logged step)
    and a count of the input tokens of every forward pass (wrapping the trainer's loss)."""

    def __init__(self):
        self.steps: list[dict] = []
        self.tokens = 0
        self.padded = 0
        self.started = time.perf_counter()

    def on_step(self, step: int, metrics: dict) -> None:
        self.steps.append({"step": step, "time": time.perf_counter(), "tokens": self.tokens, "padded": self.padded,
                           "samples": metrics.get("samples", 0.0),
                           "supervised_tokens": metrics.get("supervised_tokens", 0.0), "loss": metrics.get("loss")})

    def count(self, inputs: dict) -> None:
        mask = inputs.get("attention_mask")
        if mask is not None:
            self.tokens += int(mask.sum())
            self.padded += int(mask.numel())


def steady_state(clock: StepClock, warmup: int) -> dict:
    """Throughput over the steps after the first ``warmup`` ones."""
    steps = clock.steps
    if len(steps) <= warmup:
        raise RuntimeError(f"{len(steps)} steps logged: need more than --warmup {warmup}")
    first, last = steps[warmup - 1] if warmup else None, steps[-1]
    timed = steps[warmup:]
    seconds = last["time"] - (first["time"] if first else clock.started)
    tokens = last["tokens"] - (first["tokens"] if first else 0)
    padded = last["padded"] - (first["padded"] if first else 0)
    samples = sum(s["samples"] for s in timed)
    supervised = sum(s["supervised_tokens"] for s in timed)
    return {"timed_steps": len(timed), "seconds": seconds, "seconds_per_step": seconds / len(timed),
            "samples_per_s": samples / seconds, "tokens_per_s": tokens / seconds,
            "padded_tokens_per_s": padded / seconds, "supervised_tokens_per_s": supervised / seconds,
            "samples": samples, "losses": [s["loss"] for s in steps]}


def run(args) -> dict:
    import torch
    import transformers

    import vig_udf.train.trainer as trainer_module

    settings = configured_settings(args.set)
    work = Path(args.workdir)
    folder = work / "model"
    params = build_folder(folder, small=args.small)
    per_step = settings.batch_size * settings.gradient_accumulation_steps
    train_set = write_train_set(work / "train.parquet", args.samples or per_step * (args.steps + 1), args.seed)
    cuda = torch.cuda.is_available() and not args.cpu
    settings = settings.model_copy(update={
        "base_model": str(folder), "steps": args.steps, "checkpoint_every": 0, "resume": False, "log_every": 1,
        "image_root": None, "device": "cuda" if cuda else "cpu",
        **({"dataloader_workers": args.dataloader_workers} if args.dataloader_workers is not None else {})})
    settings = type(settings).model_validate(settings.model_dump())
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}.items():
        os.environ.setdefault(key, value)

    clock = StepClock()
    auto = transformers.AutoModelForImageTextToText
    real_from_pretrained, real_save, real_loss = auto.from_pretrained, trainer_module._save_final, \
        trainer_module.SelectiveTrainer.compute_loss

    def random_weights(path, *unused, dtype=None, **kwargs):
        config = transformers.AutoConfig.from_pretrained(path)
        with torch.device("cuda" if cuda else "cpu"):
            return auto.from_config(config, dtype=dtype)

    def counted_loss(self, model, inputs, *a, **kw):
        clock.count(inputs)
        return real_loss(self, model, inputs, *a, **kw)

    auto.from_pretrained = random_weights
    trainer_module._save_final = lambda *a, **k: None
    trainer_module.SelectiveTrainer.compute_loss = counted_loss
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    result = {"settings": settings.model_dump(mode="json"), "model": params, "small": args.small,
              "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
              "transformers": transformers.__version__}
    try:
        summary = trainer_module.train_selected(settings, train_set, str(work / "run"), on_step=clock.on_step)
        result.update(steady_state(clock, args.warmup))
        result.update({"rank_memory": summary["rank_memory"], "trainable_parameters": summary["trainable_parameters"],
                       "train_seconds": summary["seconds"], "status": "ok"})
    except torch.OutOfMemoryError as err:
        result.update({"status": "out of memory", "error": str(err).splitlines()[0], "steps_done": len(clock.steps)})
    finally:
        auto.from_pretrained, trainer_module._save_final = real_from_pretrained, real_save
        trainer_module.SelectiveTrainer.compute_loss = real_loss
    if cuda:
        result.update({"gpu_peak_allocated": torch.cuda.max_memory_allocated(),
                       "gpu_peak_reserved": torch.cuda.max_memory_reserved(),
                       "gpu_total": torch.cuda.get_device_properties(0).total_memory})
    result["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return result


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def markdown(r: dict) -> str:
    s = r["settings"]
    head = (f"{'small' if r['small'] else 'LLaVA-1.5-7B'}-shaped model, {r['model']['parameters'] / 1e9:.2f}B "
            f"parameters (random), {r['device']}, torch {r['torch']}, transformers {r['transformers']}; "
            f"method {s['method']}, sharding {s['sharding']} on 1 process, precision {s['precision']}, gradient "
            f"checkpointing {s['gradient_checkpointing']}, micro-batch {s['batch_size']} x "
            f"{s['gradient_accumulation_steps']} accumulation steps, max_length {s['max_length']}, "
            f"{s['dataloader_workers']} dataloader workers, {s['steps']} steps")
    memory = (f"peak GPU memory allocated {r['gpu_peak_allocated'] / GIB:.1f} GiB, reserved "
              f"{r['gpu_peak_reserved'] / GIB:.1f} GiB of {r['gpu_total'] / GIB:.0f}" if "gpu_peak_allocated" in r
              else "no GPU") + f"; peak host RSS {r['peak_rss'] / GIB:.1f} GiB"
    if r["status"] != "ok":
        return f"{head}\n\n**{r['status']}** after {r['steps_done']} steps: {r['error']}; {memory}\n"
    held = r["rank_memory"]
    return (f"{head}\n\n| steps timed | s/step | samples/s | tokens/s (no padding) | supervised tokens/s | "
            "peak GPU allocated GiB | peak GPU reserved GiB | parameters + optimizer state held GiB |\n"
            "|---|---|---|---|---|---|---|---|\n"
            f"| {r['timed_steps']} | {r['seconds_per_step']:.2f} | {r['samples_per_s']:.2f} | {r['tokens_per_s']:.0f} | "
            f"{r['supervised_tokens_per_s']:.0f} | "
            + (f"{r['gpu_peak_allocated'] / GIB:.1f} | {r['gpu_peak_reserved'] / GIB:.1f} | " if "gpu_peak_allocated"
               in r else "- | - | ")
            + f"{(held['parameter_bytes'] + held['optimizer_state_bytes']) / GIB:.1f} |\n\n{memory}; losses "
            f"{[round(x, 3) for x in r['losses'] if x is not None]}\n")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the throughput")
    parser.add_argument("--samples", type=int, default=None, help="training-set records (default: enough for "
                        "every step)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a training setting over conf/gpu-cluster.yaml's (repeatable)")
    parser.add_argument("--dataloader-workers", type=int, default=None, help="override the configured workers")
    parser.add_argument("--small", action="store_true", help="the small model shape (a CPU dry run)")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is there")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="keep the model folder, training set and run here "
                        "(default: a temporary folder, removed afterwards)")
    parser.add_argument("--json", default=None, help="also write the result as JSON to this file")
    args = parser.parse_args(argv)
    if args.steps <= args.warmup or args.warmup < 0:
        parser.error(f"--steps ({args.steps}) must be more than --warmup ({args.warmup}) >= 0")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vig-train-gpu-") as tmp:
        args.workdir = args.workdir or tmp
        result = run(args)
    print(markdown(result))
    print(json.dumps(result, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    return result


if __name__ == "__main__":
    main()
