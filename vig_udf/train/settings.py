"""Training settings: what trains, how long, and how checkpoints work (part of ``vig train``'s config)."""

from __future__ import annotations

import hashlib
import json
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from vig_udf.scoring import formats
from vig_udf.scoring.conversation import IMAGE_PLACEMENTS
from vig_udf.scoring.formats import ConversationFormat


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
    batch_size: int = Field(8, gt=0, description="samples per forward pass per process")
    gradient_accumulation_steps: int = Field(1, gt=0, description="forward passes per optimizer step (global batch "
                                                                   "= batch_size x this x processes)")
    learning_rate: float = Field(2e-5, gt=0, description="peak learning rate (LLaVA-1.5 full fine-tuning: 2e-5)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="linear warm-up fraction, then cosine decay to 0")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    seed: int = Field(0, description="seed of the data order and of the model's random ops")
    chat_template: str | None = Field(None, description="Jinja chat template to train with; None = the one the "
                                      "scores were made with when training the scorer's model (recorded in the "
                                      "scores table's commit), else the base model's own")
    image_placement: str | None = Field(None, description="first | inline; None = the placement the scores were "
                                        "made with (first for scores that predate the setting)")
    prompt_format: str | ConversationFormat | None = Field(
        None, description="template | llava_v1 | a format definition; None = the format the scores were made with "
        "when training the scorer's model (recorded in the scores table's commit), else the base model's default")
    image_pad: Literal["none", "square"] | None = Field(None, description="none | square; None = the scores' padding "
                                                                          "(as prompt_format), else the base model's")
    max_length: int | None = Field(None, gt=0, description="token limit of a training sequence (image tokens "
                                   "included); longer ones are cut there as LLaVA does (the answer tokens past it "
                                   "are not supervised; counted in the run). None = the scores' max_length")
    supervise_end_of_turn: bool = Field(True, description="also supervise the end-of-turn text after each answer that "
                                                          "keeps a token (</s> for llava_v1, <|im_end|>\\n for ChatML, "
                                                          "the template's stop token): the model learns to stop")
    require_end_of_turn: bool = Field(False, description="fail when the prompt writes no stop token after an answer "
                                                         "(e.g. llava-hf's LLaVA-1.5 template) instead of warning")
    precision: Literal["float32", "bfloat16"] | None = Field(
        None, description="float32, or bfloat16 autocast with float32 weights; None = bfloat16 on GPU, float32 on CPU")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass (memory for "
                                                            "compute; needed for 7B at 2048 tokens)")
    sharding: Literal["none", "fsdp"] = Field("none", description="none = every process holds the whole model and "
                                                                  "optimizer (DDP); fsdp = FSDP2 full sharding of "
                                                                  "parameters, gradients and optimizer state")
    fsdp_layers: list[str] | None = Field(None, description="module classes that become one FSDP unit each; None = "
                                                            "the model's _no_split_modules (its decoder layers)")
    device: str | None = Field(None, description="cuda | cpu; None = cuda when available (ranks use LOCAL_RANK)")
    image_root: str | None = Field(None, description="folder that relative image paths resolve against")
    dataloader_workers: int = Field(0, ge=0, description="DataLoader worker processes that decode images and run the "
                                                         "processor beside the training step (0 = in the step)")
    checkpoint_every: int = Field(50, ge=0, description="save a checkpoint every n steps (0 = none)")
    keep_checkpoints: int = Field(2, gt=0, description="how many recent checkpoints to keep")
    resume: bool = Field(True, description="continue from the newest checkpoint in the output folder, if any")
    log_every: int | None = Field(None, gt=0, description="log metrics every n steps; None = about 50 points per "
                                                          "run (a divisor of checkpoint_every)")
    cache_examples: bool = Field(False, description="keep built examples (processed images, labels) in memory "
                                                    "across epochs (with dataloader_workers=0); for small sets")

    # settings that do not change the trained weights (the data order does not depend on the workers)
    RUN_ONLY: ClassVar[frozenset[str]] = frozenset({"checkpoint_every", "keep_checkpoints", "resume", "log_every",
                                                    "device", "image_root", "cache_examples", "dataloader_workers",
                                                    "require_end_of_turn"})

    def weight_settings(self) -> dict:
        """Everything that changes the trained weights (not checkpointing, logging, device or workers)."""
        return self.model_dump(mode="json", exclude=set(self.RUN_ONLY))

    @field_validator("image_placement")
    @classmethod
    def _known_placement(cls, value):
        if value is not None and value not in IMAGE_PLACEMENTS:
            raise ValueError(f"image_placement={value!r}; choose one of {IMAGE_PLACEMENTS}")
        return value

    @field_validator("prompt_format")
    @classmethod
    def _known_format(cls, value):
        if isinstance(value, str):
            formats.resolve_format(value)  # an unknown name fails with the choices
        return value

    def fingerprint(self) -> str:
        """Hash of :meth:`weight_settings`."""
        data = self.weight_settings()
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
