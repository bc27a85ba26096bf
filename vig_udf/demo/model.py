"""The demo model: a small LLaVA-architecture checkpoint that the project builds and aligns itself.

A CLIP-style vision tower, a two-layer projector and a Llama-style language model, with a byte-level BPE
tokenizer trained on the shapes world's text and the project's LLaVA chat template, saved in standard
Hugging Face layout and loaded like any checkpoint.

Two stages, both with the project's own training function (:func:`vig_udf.train.trainer.train_selected`,
every answer token supervised):

1. Language pretraining, the stand-in for LLaVA's pretrained LLM: the language model alone learns the
   conversation format, the world's words and its language prior from text-only records
   (:func:`~vig_udf.demo.world.generate_text_pretraining`).
2. Alignment (LLaVA's stage 1): brief captions of shapes-world images. The projector trains and, because
   this vision tower starts from random weights where LLaVA's CLIP is pretrained, so does the vision tower.
   LLaVA freezes its 7B language model here; this one is tiny and briefly pretrained, and a frozen one did
   not learn to read colours into answers (measured: docs/demo_benchmark.md), so by default it is tuned
   too, with text-pretraining records replayed among the captions to keep the conversation format.

The aligned model is the scorer, as in the paper, and the starting point of every instruction-tuning run of
the demo benchmark.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from vig_udf.demo import world
from vig_udf.demo.world import WorldConfig, generate_captions, generate_text_pretraining, vocabulary_text
from vig_udf.spark.ingest_job import CONVERSATIONS
from vig_udf.tiny import TinySize, build_tiny_checkpoint, build_tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoModelConfig:
    """How the demo model is built and aligned (a change rebuilds it)."""

    size: TinySize = TinySize(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
                              vision_hidden_size=64, vision_layers=2, image_size=64, patch_size=8)
    text_samples: int = 3000
    text_steps: int = 300
    align_samples: int = 3000
    align_steps: int = 300
    align_language_model: bool = True  # also tune the (small, briefly pretrained) language model in alignment
    align_text_replay: int = 1000  # text-pretraining records mixed into alignment so the format is kept
    batch_size: int = 32
    learning_rate: float = 2e-3
    seed: int = 0
    world: WorldConfig = WorldConfig()

    def fingerprint(self) -> str:
        """The config and the source of the world and of this recipe: a change to either rebuilds the model."""
        sources = [Path(module.__file__).read_text(encoding="utf-8") for module in (world, sys.modules[__name__])]
        return hashlib.sha256(json.dumps([asdict(self), sources], sort_keys=True).encode()).hexdigest()[:12]


def build_demo_model(out_dir: str | Path, config: DemoModelConfig = DemoModelConfig()) -> str:
    """Build and align the demo model into ``out_dir`` (reused when already built with this config)."""
    from vig_udf.train.settings import TrainSettings
    from vig_udf.train.trainer import train_selected

    out = Path(out_dir)
    stamp = out / "vig_demo.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("fingerprint") == config.fingerprint():
        return str(out)
    work = out.with_name(out.name + ".build")
    shutil.rmtree(work, ignore_errors=True)
    tokenizer = build_tokenizer(["<image>"], vocab_size=400, corpus=vocabulary_text())
    build_tiny_checkpoint("llava", work / "init", size=config.size, seed=config.seed, tokenizer=tokenizer)
    # the demo model's conversation format is its own chat template (the project's LLaVA-style template), not
    # LLaVA-1.5's llava_v1, which the checkpoint default would pick for a LLaVA-architecture model with it
    common = dict(batch_size=config.batch_size, learning_rate=config.learning_rate, warmup_ratio=0.05,
                  seed=config.seed, checkpoint_every=0, resume=False, max_length=None, device="cpu",
                  cache_examples=True, prompt_format="template", image_pad="none")
    text = generate_text_pretraining(config.text_samples, seed=config.seed + 500, config=config.world)
    language = train_selected(TrainSettings(
        base_model=str(work / "init"), train={"vision_tower": False, "projector": False, "language_model": True},
        steps=config.text_steps, **common), write_records_parquet(text, work / "text.parquet"), str(work / "text"))
    captions = generate_captions(config.align_samples, seed=config.seed + 1000, config=config.world)
    captions += generate_text_pretraining(config.align_text_replay, seed=config.seed + 1500, config=config.world)
    result = train_selected(TrainSettings(
        base_model=language["model_dir"],
        train={"vision_tower": True, "projector": True, "language_model": config.align_language_model},
        steps=config.align_steps, **common), write_records_parquet(captions, work / "align.parquet"),
        str(work / "align"))
    shutil.rmtree(out, ignore_errors=True)
    shutil.move(result["model_dir"], out)
    (out / "vig_demo.json").write_text(json.dumps({
        "fingerprint": config.fingerprint(), "config": asdict(config),
        "language_pretraining": {"loss_first": language["losses"][0], "loss_last": language["losses"][-1],
                                 "seconds": language["seconds"]},
        "alignment": {"loss_first": result["losses"][0], "loss_last": result["losses"][-1],
                      "seconds": result["seconds"]}}, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    log.info("demo model: language pretraining %.0fs (loss %.3f -> %.3f), alignment %.0fs (loss %.3f -> %.3f)",
             language["seconds"], language["losses"][0], language["losses"][-1], result["seconds"],
             result["losses"][0], result["losses"][-1])
    return str(out)


def write_records_parquet(records: list[dict], path: Path) -> str:
    """Records with PIL images as a training-set Parquet file that supervises every answer token."""
    rows = []
    for rec in records:
        data = None
        if "image" in rec:
            buf = io.BytesIO()
            rec["image"].save(buf, format="PNG")
            data = buf.getvalue()
        rows.append({"sample_id": rec["id"], "image_path": None, "image_bytes": data,
                     "conversations": rec["conversations"], "token_keep": None})
    schema = pa.schema([("sample_id", pa.string()), ("image_path", pa.string()), ("image_bytes", pa.binary()),
                        ("conversations", CONVERSATIONS),
                        ("token_keep", pa.list_(pa.bool_()))])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return str(path)
