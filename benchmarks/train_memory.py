"""Training memory per rank and training throughput (measured, not asserted; results in BENCHMARKS.md).

Three parts, each printed as a table:

1. ``arithmetic``: LLaVA-1.5-7B built from its configuration on the meta device (no weights, no memory), its
   parameters counted per part, and the memory per GPU of the configuration in conf/gpu-cluster.yaml
   (full fine-tuning, vision tower frozen, FSDP full sharding over N GPUs, bf16 autocast over fp32 master
   weights, AdamW): parameters, gradients and optimizer states divided by N, plus one layer gathered
   unsharded at a time and the activations of checkpointed layers.
2. ``measured``: the same sharding on a small LLaVA on CPU with 1 and 2 processes (gloo): the bytes of
   parameters and optimizer state each rank holds after training, against the arithmetic's share.
3. ``throughput``: supervised tokens per second of the Trainer-based training against the hand-written loop
   it replaced (that loop is run from git, commit ``OLD_LOOP_COMMIT``), on the demo model's architecture
   and the demo's generated data, same settings, one run each, end-of-turn supervision off so that both
   supervise the same tokens.

    python benchmarks/train_memory.py [arithmetic] [measured] [throughput]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OLD_LOOP_COMMIT = "de6f4d6"  # main before the Trainer: vig_udf/train/trainer.py was the hand-written loop
GIB = 1024 ** 3


def llava_7b_config():
    """llava-hf/llava-1.5-7b-hf's configuration, written out (no hub): CLIP ViT-L/14-336 + Vicuna-7B."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768)
    text = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=32000,
                       vision_feature_layer=-2, vision_feature_select_strategy="default",
                       projector_hidden_act="gelu")


def arithmetic(gpus: int = 8, seq_len: int = 2048, micro_batch: int = 4) -> dict:
    """Memory per GPU of full fine-tuning LLaVA-1.5-7B under FSDP full sharding (see the module docstring)."""
    from transformers import LlavaForConditionalGeneration

    from vig_udf.train.parts import parameter_parts

    with torch.device("meta"):
        model = LlavaForConditionalGeneration(llava_7b_config())
    params = dict(model.named_parameters())
    parts = {part: sum(params[n].numel() for n in names) for part, names in parameter_parts(model).items()}
    total = sum(parts.values())
    trainable = parts["projector"] + parts["language_model"]
    layer = max(sum(p.numel() for p in m.parameters()) for m in model.model.language_model.layers)
    hidden, layers, vocab = 4096, 32, 32064
    per_gpu = {
        "fp32 parameters (sharded)": total * 4 / gpus,
        "fp32 gradients of the trainable parts (sharded)": trainable * 4 / gpus,
        "AdamW moments, 2 x fp32 (sharded)": trainable * 8 / gpus,
        "one decoder layer gathered in bf16 (+ its prefetch)": 2 * layer * 2,
        # checkpointed layers keep their bf16 input; the layer being recomputed holds its full activations
        # (about 34 x hidden bytes per token in bf16 for a Llama layer with flash/SDPA attention)
        "checkpointed layer inputs, bf16": micro_batch * seq_len * hidden * 2 * layers,
        "one layer's activations during recompute": micro_batch * seq_len * hidden * 34,
        # the head runs only at the supervised positions (at most every position): fp32 logits of those
        "logits at supervised positions, fp32 (worst case: all)": micro_batch * seq_len * vocab * 4,
    }
    return {"parameters": parts, "total": total, "trainable": trainable, "largest_layer": layer, "gpus": gpus,
            "micro_batch": micro_batch, "seq_len": seq_len, "per_gpu_bytes": per_gpu,
            "per_gpu_total_gib": sum(per_gpu.values()) / GIB,
            "unsharded_ddp_states_gib": (total * 4 + trainable * 12) / GIB}


def _measure_rank(rank: int, world: int, port: int, settings: dict, data: str, out: str, result: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import resource

    from vig_udf.train.trainer import train_selected

    summary = train_selected(settings, data, out)
    Path(f"{result}.{rank}").write_text(json.dumps({
        **summary["rank_memory"], "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def measured(work: Path) -> dict:
    """Bytes held per rank with 1 and 2 FSDP processes on a small LLaVA (CPU, gloo)."""
    import socket

    import torch.multiprocessing as mp

    from vig_udf.tiny import TinySize, build_tiny_checkpoint

    model = build_tiny_checkpoint("llava", work / "small", size=TinySize(hidden_size=256, num_layers=4, num_heads=4,
                                                                          intermediate_size=768), seed=0)
    data = _demo_train_set(work, model, 64)
    out = {}
    for world in (1, 2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        settings = dict(base_model=model, steps=3, batch_size=4, learning_rate=1e-4, checkpoint_every=0,
                        device="cpu", sharding="fsdp", seed=0)
        result = str(work / f"mem{world}")
        mp.spawn(_measure_rank, args=(world, port, settings, data, str(work / f"run{world}"), result), nprocs=world)
        out[world] = [json.loads(Path(f"{result}.{r}").read_text()) for r in range(world)]
    from transformers import AutoModelForImageTextToText

    m = AutoModelForImageTextToText.from_pretrained(model)
    total = sum(p.numel() for p in m.parameters())
    trainable = sum(p.numel() for n, p in m.named_parameters() if ".vision_tower." not in n)
    return {"parameters": total, "trainable": trainable, "ranks": out,
            "arithmetic_per_rank": {w: {"parameter_bytes": total * 4 / w, "optimizer_state_bytes": trainable * 8 / w}
                                    for w in (1, 2)}}


def _demo_train_set(work: Path, model_path: str, n: int) -> str:
    """The demo's generated instruction records (every answer token supervised) as a training-set file."""
    from vig_udf.demo.model import DemoModelConfig, write_records_parquet
    from vig_udf.demo.world import generate

    records = generate(n, seed=7, config=DemoModelConfig().world)
    return write_records_parquet(records, work / f"train-{n}.parquet")


def _old_loop(work: Path):
    """The replaced hand-written loop (trainer.py and loss.py at OLD_LOOP_COMMIT) as an importable module."""
    package = work / "old_loop"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("")
    for name in ("trainer", "loss"):
        source = subprocess.run(["git", "-C", str(ROOT), "show", f"{OLD_LOOP_COMMIT}:vig_udf/train/{name}.py"],
                                check=True, capture_output=True, text=True).stdout
        source = source.replace("from vig_udf.train.loss import", "from old_loop.loss import")
        (package / f"{name}.py").write_text(source)
    sys.path.insert(0, str(work))
    import old_loop.trainer

    return old_loop.trainer.train_selected


def throughput(work: Path, steps: int = 40, batch_size: int = 16) -> dict:
    """Supervised tokens per second, new Trainer vs the old loop, demo model architecture, same data."""
    from vig_udf.demo.model import DemoModelConfig
    from vig_udf.tiny import build_tiny_checkpoint, build_tokenizer
    from vig_udf.demo.world import vocabulary_text
    from vig_udf.train.trainer import train_selected

    tokenizer = build_tokenizer(["<image>"], vocab_size=400, corpus=vocabulary_text())
    model = build_tiny_checkpoint("llava", work / "demo-arch", size=DemoModelConfig().size, seed=0,
                                  tokenizer=tokenizer)
    data = _demo_train_set(work, model, 400)
    common = dict(base_model=model, steps=steps, batch_size=batch_size, learning_rate=1e-3, warmup_ratio=0.05,
                  seed=0, checkpoint_every=0, resume=False, max_length=None, device="cpu", cache_examples=True)
    old_train = _old_loop(work)
    runs = {}
    for name, fn, extra in (("old loop", old_train, {}),
                            ("Trainer", train_selected, {"supervise_end_of_turn": False})):
        started = time.perf_counter()
        result = fn({**common, **extra}, data, str(work / name.replace(" ", "_")))
        wall = time.perf_counter() - started
        runs[name] = {"supervised_tokens": result["supervised_tokens"], "train_seconds": result["seconds"],
                      "wall_seconds": wall, "tokens_per_second": result["supervised_tokens"] / result["seconds"],
                      "final_loss": result["losses"][-1]}
    return {"steps": steps, "batch_size": batch_size, "torch_threads": torch.get_num_threads(), "runs": runs}


def main(argv: list[str]) -> None:
    wanted = set(argv) or {"arithmetic", "measured", "throughput"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "arithmetic" in wanted:
            a = arithmetic()
            print(f"LLaVA-1.5-7B: {a['total'] / 1e9:.3f}B parameters {a['parameters']}, trainable "
                  f"{a['trainable'] / 1e9:.3f}B, largest layer {a['largest_layer'] / 1e6:.0f}M; unsharded (DDP) "
                  f"weights + grads + AdamW: {a['unsharded_ddp_states_gib']:.1f} GiB per GPU")
            print(f"per GPU, FSDP full shard over {a['gpus']} GPUs, micro-batch {a['micro_batch']} x {a['seq_len']} "
                  "tokens, gradient checkpointing:")
            for item, value in a["per_gpu_bytes"].items():
                print(f"  {item:<58} {value / GIB:6.2f} GiB")
            print(f"  {'total':<58} {a['per_gpu_total_gib']:6.2f} GiB")
        if "measured" in wanted:
            m = measured(work)
            print(f"small LLaVA: {m['parameters']} parameters, {m['trainable']} trainable (vision tower frozen)")
            for world, ranks in m["ranks"].items():
                expect = m["arithmetic_per_rank"][world]
                for r, held in enumerate(ranks):
                    print(f"  {world} process(es), rank {r}: parameters {held['parameter_bytes'] / 2**20:.2f} MiB "
                          f"(arithmetic {expect['parameter_bytes'] / 2**20:.2f}), optimizer state "
                          f"{held['optimizer_state_bytes'] / 2**20:.2f} MiB (arithmetic "
                          f"{expect['optimizer_state_bytes'] / 2**20:.2f}), peak RSS {held['peak_rss_bytes'] / GIB:.2f} GiB")
        if "throughput" in wanted:
            t = throughput(work)
            print(f"throughput, demo model architecture, {t['steps']} steps x {t['batch_size']} samples, "
                  f"{t['torch_threads']} torch threads:")
            for name, run in t["runs"].items():
                print(f"  {name:<9} {run['supervised_tokens']} supervised tokens in {run['train_seconds']:.1f}s "
                      f"= {run['tokens_per_second']:.0f} tokens/s (wall {run['wall_seconds']:.1f}s, final loss "
                      f"{run['final_loss']:.3f})")


if __name__ == "__main__":
    main(sys.argv[1:])
