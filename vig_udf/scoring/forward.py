"""Batched teacher-forced forward passes that compute logits only at answer positions.

A full ``[batch, length, vocab]`` logits tensor is never built: the base model returns hidden states,
the hidden states one position before each answer token are gathered, and only those go through the
output head. The head itself runs in float32 at those positions only (its weight upcast for the call), so
a bf16 model's logits are not rounded to bf16 before the float32 log-softmax: at logit 20 bf16 steps by
0.125, more than the VIG of a one-token answer. Log-softmax runs in chunks of ``chunk`` positions.
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


def collate(seqs: list[Sequence], pad_token_id: int, *, pin_memory: bool = False) -> dict[str, torch.Tensor]:
    """Right-pad ids into a batch; concatenate every other processor tensor along dim 0.

    Processor tensors differ by family ([1, C, H, W] pixels, [1, crops, C, H, W], Qwen's flattened
    [patches, dim] with ``image_grid_thw``): concatenating along dim 0 and zero-padding the other dims
    to the largest is what each family's own processor does for a batch.

    ``pin_memory``: build every tensor in page-locked host memory (written once, no extra copy), so that
    the copy to the GPU can be asynchronous (``non_blocking=True``) and overlap the host's next steps.
    """
    length = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), length), pad_token_id, dtype=torch.long, pin_memory=pin_memory)
    attention_mask = torch.zeros((len(seqs), length), dtype=torch.long, pin_memory=pin_memory)
    for row, seq in enumerate(seqs):
        input_ids[row, : len(seq)] = seq.input_ids
        attention_mask[row, : len(seq)] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    keys = {k for s in seqs for k in s.extras}
    for key in sorted(keys):
        parts = [s.extras[key] for s in seqs if key in s.extras]
        batch[key] = _cat_padded(parts, pin_memory=pin_memory)
    return batch


def _cat_padded(parts: list[torch.Tensor], *, pin_memory: bool = False) -> torch.Tensor:
    if len(parts) == 1:
        return parts[0].pin_memory() if pin_memory else parts[0]
    shape = [max(p.shape[d] for p in parts) for d in range(1, parts[0].dim())]
    padded = []
    for p in parts:
        pad = []
        for d in reversed(range(1, p.dim())):
            pad += [0, shape[d - 1] - p.shape[d]]
        padded.append(F.pad(p, pad) if any(pad) else p)
    if not pin_memory:
        return torch.cat(padded, dim=0)
    out = torch.empty((sum(p.shape[0] for p in padded), *shape), dtype=padded[0].dtype, pin_memory=True)
    return torch.cat(padded, dim=0, out=out)


def answer_logprobs(model, seqs: list[Sequence], *, pad_token_id: int, device, dtype,
                    chunk: int = 4096) -> list[np.ndarray]:
    """Log-probability of each answer token of each sequence, in one forward pass over the batch.

    On CUDA the batch is collated in pinned host memory and copied with ``non_blocking=True``.
    """
    async_copy = torch.device(device).type == "cuda" and torch.cuda.is_available()
    batch = collate(seqs, pad_token_id, pin_memory=async_copy)
    rows = torch.cat([torch.full((len(s.positions),), r, dtype=torch.long) for r, s in enumerate(seqs)])
    pos = torch.cat([torch.as_tensor(s.positions, dtype=torch.long) for s in seqs])
    if async_copy:
        rows, pos = rows.pin_memory(), pos.pin_memory()
    batch = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else None, non_blocking=async_copy)
             for k, v in batch.items()}
    rows = rows.to(device, non_blocking=async_copy)
    pos = pos.to(device, non_blocking=async_copy)
    base = model.model
    with torch.inference_mode():
        hidden = base(**batch, use_cache=False, return_dict=True).last_hidden_state
        rows, pos = rows.to(hidden.device), pos.to(hidden.device)  # no-op unless the model spans devices
        targets = batch["input_ids"][rows, pos]
        selected = hidden[rows, pos - 1]  # the state before token t predicts token t
        del hidden
        head = float32_head(model.get_output_embeddings())
        cap = getattr(_text_config(model), "final_logit_softcapping", None)
        out = []
        for start in range(0, selected.shape[0], chunk):
            logits = head(selected[start : start + chunk])
            if cap:
                logits = torch.tanh(logits / cap) * cap
            logp = torch.log_softmax(logits, dim=-1)
            out.append(logp.gather(1, targets[start : start + chunk, None])[:, 0])
        flat = torch.cat(out).cpu().numpy() if out else np.zeros(0, dtype=np.float32)
    splits = np.cumsum([len(s.positions) for s in seqs])[:-1]
    return np.split(flat, splits)


def float32_head(head):
    """A function computing ``head``'s logits in float32 (a low-precision weight upcast once per call, its
    input upcast; a float32 head is called as it is).

    Heads that are not plain linear layers fall back to the module's own dtype, upcast afterwards.
    """
    weight = getattr(head, "weight", None)
    if not isinstance(head, torch.nn.Linear) or weight is None or weight.dtype == torch.float32:
        return lambda hidden: head(hidden).float()
    weight = weight.float()
    bias = head.bias.float() if head.bias is not None else None
    return lambda hidden: F.linear(hidden.to(weight.device, torch.float32), weight, bias)


def _text_config(model):
    config = model.config
    return getattr(config, "text_config", None) or config
