"""The demo model: a small LLaVA-architecture checkpoint that the project builds and trains itself.

A CLIP-style vision tower, a projector and a Llama-style language model, with a byte-level BPE
tokenizer trained on the shapes world's text and the project's LLaVA chat template, saved in standard
Hugging Face layout. It is trained from random weights on generated shapes-world conversations with the
loss on answer tokens only (labels from the same masking code the scorer uses), so that it learns to
read colours, counts and positions from pixels and also absorbs the world's colour prior.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from vig_udf.conversation import parse_conversation
from vig_udf.demo.world import WorldConfig, generate, vocabulary_text
from vig_udf.forward import collate
from vig_udf.inputs import InputBuilder
from vig_udf.tiny import TinySize, build_tiny_checkpoint, build_tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoModelConfig:
    """How the demo model is built and trained (a change rebuilds it)."""

    size: TinySize = TinySize(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
                              vision_hidden_size=64, vision_layers=2, image_size=64, patch_size=8)
    train_samples: int = 2000
    steps: int = 400
    batch_size: int = 32
    learning_rate: float = 2e-3
    seed: int = 0
    world: WorldConfig = WorldConfig()

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def build_demo_model(out_dir: str | Path, config: DemoModelConfig = DemoModelConfig()) -> str:
    """Build and train the demo model into ``out_dir`` (reused when already built with this config)."""
    out = Path(out_dir)
    stamp = out / "vig_demo.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("fingerprint") == config.fingerprint():
        return str(out)
    tokenizer = build_tokenizer(["<image>"], vocab_size=400, corpus=vocabulary_text())
    build_tiny_checkpoint("llava", out, size=config.size, seed=config.seed, tokenizer=tokenizer)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(out)
    model = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32)
    records = generate(config.train_samples, seed=config.seed + 1000, config=config.world)
    losses = train_on_answers(model, processor, records, steps=config.steps, batch_size=config.batch_size,
                              learning_rate=config.learning_rate, seed=config.seed)
    model.save_pretrained(out)
    stamp.write_text(json.dumps({"fingerprint": config.fingerprint(), "config": asdict(config),
                                 "loss_first": losses[0], "loss_last": losses[-1]}, indent=2))
    return str(out)


def train_on_answers(model, processor, records: list[dict], *, steps: int, batch_size: int, learning_rate: float,
                     seed: int) -> list[float]:
    """Train every parameter with cross-entropy on the answer tokens; returns the loss per step."""
    builder = InputBuilder(processor)
    seqs = []
    for record in records:
        conv = parse_conversation(record["conversations"], has_image="image" in record)
        seqs.append(builder.build(conv, record.get("image"))[0])
    pad = builder.tokenizer.pad_token_id
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=steps, pct_start=0.1)
    losses = []
    started = time.perf_counter()
    for step in range(steps):
        # text-only and image sequences never share a batch (the vision inputs must cover every row)
        with_image = bool(rng.random() > 0.1)
        pool = [i for i, s in enumerate(seqs) if bool(s.extras) == with_image] or list(range(len(seqs)))
        batch_seqs = [seqs[i] for i in rng.choice(pool, size=min(batch_size, len(pool)), replace=False)]
        batch = collate(batch_seqs, pad)
        labels = torch.full_like(batch["input_ids"], -100)
        for row, seq in enumerate(batch_seqs):
            pos = torch.as_tensor(seq.positions)
            labels[row, pos] = seq.input_ids[pos]
        loss = model(**batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if step % 50 == 0 or step == steps - 1:
            log.info("demo model step %d/%d loss %.3f (%.0fs)", step + 1, steps, losses[-1],
                     time.perf_counter() - started)
    model.eval()
    return losses
