"""Training settings: what trains, how long, and how checkpoints work (part of ``vig train``'s config)."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TrainParts(BaseModel):
    """Which parts of the model train. The default is LLaVA-1.5's instruction-tuning stage: the vision
    tower stays frozen, the projector and the language model train."""

    model_config = ConfigDict(extra="forbid")

    vision_tower: bool = Field(False, description="train the vision encoder (frozen in LLaVA-1.5)")
    projector: bool = Field(True, description="train the vision-language projector")
    language_model: bool = Field(True, description="train the language model (with LoRA: its adapters)")


class LoraSettings(BaseModel):
    """LoRA adapters (peft) on the language model's linear layers; LLaVA-1.5's LoRA recipe used r=128,
    alpha=256 on a 7B model, smaller values suit small models."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(16, gt=0, description="adapter rank")
    alpha: int = Field(32, gt=0, description="adapter scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapter input")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="linear layer names inside the language model that get adapters")


class TrainSettings(BaseModel):
    """The training function's settings (the same on one CPU process and on every TorchDistributor rank)."""

    model_config = ConfigDict(extra="forbid")

    base_model: str | None = Field(None, description="checkpoint to fine-tune (local folder or HF id); None = the "
                                                     "scorer's model_path recorded in the scores table's commit")
    method: Literal["full", "lora"] = Field("full", description="full fine-tuning, or LoRA adapters (peft)")
    train: TrainParts = TrainParts()
    lora: LoraSettings = LoraSettings()
    steps: int = Field(100, gt=0, description="optimizer steps")
    batch_size: int = Field(8, gt=0, description="samples per step per process (global batch = x processes)")
    learning_rate: float = Field(2e-5, gt=0, description="peak learning rate (LLaVA-1.5 full fine-tuning: 2e-5)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="linear warm-up fraction, then cosine decay to 0")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    seed: int = Field(0, description="seed of the data order and of the model's random ops")
    max_length: int | None = Field(2048, description="longer samples are skipped and counted; None = no limit")
    precision: Literal["float32", "bfloat16"] | None = Field(
        None, description="float32, or bfloat16 autocast with float32 weights; None = bfloat16 on GPU, float32 on CPU")
    device: str | None = Field(None, description="cuda | cpu; None = cuda when available (ranks use LOCAL_RANK)")
    image_root: str | None = Field(None, description="folder that relative image paths resolve against")
    checkpoint_every: int = Field(50, ge=0, description="save a checkpoint every n steps (0 = none)")
    keep_checkpoints: int = Field(2, gt=0, description="how many recent checkpoints to keep")
    resume: bool = Field(True, description="continue from the newest checkpoint in the output folder, if any")
    log_every: int = Field(1, gt=0, description="send metrics to MLflow every n steps")
    cache_examples: bool = Field(False, description="keep built examples (processed images, labels) in memory "
                                                    "across epochs; for small training sets")

    def fingerprint(self) -> str:
        """Hash of everything that changes the trained weights (not checkpointing, logging or device)."""
        data = self.model_dump(mode="json", exclude={"checkpoint_every", "keep_checkpoints", "resume", "log_every",
                                                     "device", "image_root", "cache_examples"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
