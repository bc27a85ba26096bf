"""Batched teacher-forced forward passes that compute logits only at answer positions.

A full ``[batch, length, vocab]`` logits tensor is never built: the base model returns hidden states,
the hidden states one position before each answer token are gathered, and only those go through the
output head. Log-softmax runs in float32 in chunks of ``chunk`` positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class Sequence:
    """One model input: token ids, the processor's other tensors (batch dim 1) and the target positions."""

    input_ids: torch.Tensor  # [L] int64
    extras: dict[str, torch.Tensor]
    positions: np.ndarray  # answer-token positions (each >= 1)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def collate(seqs: list[Sequence], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ids into a batch; concatenate every other processor tensor along dim 0.

    Processor tensors differ by family ([1, C, H, W] pixels, [1, crops, C, H, W], Qwen's flattened
    [patches, dim] with ``image_grid_thw``): concatenating along dim 0 and zero-padding the other dims
    to the largest is what each family's own processor does for a batch.
    """
    length = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for row, seq in enumerate(seqs):
        input_ids[row, : len(seq)] = seq.input_ids
        attention_mask[row, : len(seq)] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    keys = {k for s in seqs for k in s.extras}
    for key in sorted(keys):
        parts = [s.extras[key] for s in seqs if key in s.extras]
        batch[key] = _cat_padded(parts)
    return batch


def _cat_padded(parts: list[torch.Tensor]) -> torch.Tensor:
    if len(parts) == 1:
        return parts[0]
    shape = [max(p.shape[d] for p in parts) for d in range(1, parts[0].dim())]
    padded = []
    for p in parts:
        pad = []
        for d in reversed(range(1, p.dim())):
            pad += [0, shape[d - 1] - p.shape[d]]
        padded.append(F.pad(p, pad) if any(pad) else p)
    return torch.cat(padded, dim=0)


def answer_logprobs(model, seqs: list[Sequence], *, pad_token_id: int, device, dtype,
                    chunk: int = 4096) -> list[np.ndarray]:
    """Log-probability of each answer token of each sequence, in one forward pass over the batch."""
    batch = collate(seqs, pad_token_id)
    batch = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else None) for k, v in batch.items()}
    base = model.model
    with torch.inference_mode():
        hidden = base(**batch, use_cache=False, return_dict=True).last_hidden_state
        rows = torch.cat([torch.full((len(s.positions),), r, dtype=torch.long) for r, s in enumerate(seqs)])
        pos = torch.cat([torch.as_tensor(s.positions, dtype=torch.long) for s in seqs])
        rows, pos = rows.to(hidden.device), pos.to(hidden.device)
        targets = batch["input_ids"][rows, pos]
        selected = hidden[rows, pos - 1]  # the state before token t predicts token t
        del hidden
        head = model.get_output_embeddings()
        cap = getattr(_text_config(model), "final_logit_softcapping", None)
        out = []
        for start in range(0, selected.shape[0], chunk):
            logits = head(selected[start : start + chunk]).float()
            if cap:
                logits = torch.tanh(logits / cap) * cap
            logp = torch.log_softmax(logits, dim=-1)
            out.append(logp.gather(1, targets[start : start + chunk, None])[:, 0])
        flat = torch.cat(out).cpu().numpy() if out else np.zeros(0, dtype=np.float32)
    splits = np.cumsum([len(s.positions) for s in seqs])[:-1]
    return np.split(flat, splits)


def _text_config(model):
    config = model.config
    return getattr(config, "text_config", None) or config
