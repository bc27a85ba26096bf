"""Which parameters belong to the vision tower, the projector and the language model, per model family.

Parameter names of transformers' image-text-to-text models (5.x) start with these prefixes. A family whose
names match none of them makes :func:`parameter_parts` fail with the unmatched names, so adding a family
means adding its prefixes here (see README, "Adding a model family").
"""

from __future__ import annotations

import torch

VISION_TOWER, PROJECTOR, LANGUAGE_MODEL = "vision_tower", "projector", "language_model"

# Checked in order: the first matching prefix decides (Qwen's merger sits inside "visual").
PREFIXES: list[tuple[str, str]] = [
    ("model.multi_modal_projector.", PROJECTOR),  # LLaVA, LLaVA-NeXT
    ("model.image_newline", PROJECTOR),  # LLaVA-NeXT's learned row separator
    ("model.visual.merger.", PROJECTOR),  # Qwen2-VL, Qwen2.5-VL
    ("model.connector.", PROJECTOR),  # Idefics3
    ("model.vision_tower.", VISION_TOWER),
    ("model.visual.", VISION_TOWER),
    ("model.vision_model.", VISION_TOWER),
    ("model.language_model.", LANGUAGE_MODEL),
    ("model.text_model.", LANGUAGE_MODEL),
    ("lm_head.", LANGUAGE_MODEL),
]


def part_of(name: str) -> str | None:
    """The part a parameter name belongs to, or None when no prefix matches."""
    for prefix, part in PREFIXES:
        if name.startswith(prefix):
            return part
    return None


def parameter_parts(model: torch.nn.Module) -> dict[str, list[str]]:
    """Part -> parameter names; raises for parameters of no known part."""
    parts: dict[str, list[str]] = {VISION_TOWER: [], PROJECTOR: [], LANGUAGE_MODEL: []}
    unknown = []
    for name, _ in model.named_parameters():
        part = part_of(name)
        (parts[part] if part else unknown).append(name)
    if unknown:
        raise ValueError(f"{type(model).__name__}: parameters of no known part (add their prefixes to "
                         f"vig_udf.train.parts.PREFIXES): {unknown[:8]}{' ...' if len(unknown) > 8 else ''}")
    return parts


def set_trainable(model: torch.nn.Module, *, vision_tower: bool, projector: bool, language_model: bool) -> dict:
    """Freeze or unfreeze each part; returns trainable and total parameter counts per part."""
    wanted = {VISION_TOWER: vision_tower, PROJECTOR: projector, LANGUAGE_MODEL: language_model}
    params = dict(model.named_parameters())
    counts = {}
    for part, names in parameter_parts(model).items():
        for name in names:
            params[name].requires_grad_(wanted[part])
        counts[part] = sum(params[n].numel() for n in names)
    if not any(wanted[p] and counts[p] for p in counts):
        raise ValueError(f"nothing to train: parts {wanted} with parameter counts {counts}")
    return counts
