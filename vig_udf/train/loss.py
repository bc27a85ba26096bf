"""The selective training loss: cross-entropy on the labelled (selected) tokens only, head at those only.

Like the scorer's forward (:mod:`vig_udf.scoring.forward`), the output head runs only where there is a target: a
forward pre-hook on the model's output head (:class:`LabelledPositionsHead`) replaces its input, the hidden
states ``[batch, length, hidden]``, by the states one position before each labelled token ``[n, hidden]``.
The model is still called through its own ``forward`` (so DDP's and FSDP's hooks run as they must), but no
``[batch, length, vocab]`` logits tensor is built, which matters for 32K-150K vocabularies. The model's
logits are then ``[n, vocab]`` (final-logit soft-capping, where the family has it, is applied by the model).

:func:`selected_token_loss` is the *sum* of token losses in float32, each times its loss weight where the
selection has them (``token_weight=vig``); the trainer divides it by the number of supervised tokens of the
global batch (every rank, every accumulated forward pass), or with weights by their sum over it, so that a
step minimises ``sum(w_i * nll_i) / sum(w_i)`` over its supervised tokens (the plain mean when every w_i is 1).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from vig_udf.train.examples import IGNORE_INDEX


def core_model(model):
    """The transformers model under a peft wrapper (LoRA layers stay injected in it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class LabelledPositionsHead:
    """Pre-hook on the output head: inside :meth:`positions`, the head sees only the gathered states."""

    def __init__(self, model):
        self.index: tuple[torch.Tensor, torch.Tensor] | None = None
        self.handle = core_model(model).get_output_embeddings().register_forward_pre_hook(self._gather)

    def _gather(self, module, args):
        if self.index is None:
            return None
        rows, pos = self.index
        return (args[0][rows.to(args[0].device), pos.to(args[0].device) - 1],)

    @contextmanager
    def positions(self, rows: torch.Tensor, pos: torch.Tensor):
        """Within the block, the head computes logits only at ``hidden[rows, pos - 1]``."""
        self.index = (rows, pos)
        try:
            yield
        finally:
            self.index = None


def selected_token_loss(model, head: LabelledPositionsHead, inputs: dict, labels: torch.Tensor,
                        weights: torch.Tensor | None = None) -> torch.Tensor:
    """Summed cross-entropy of ``model`` (possibly wrapped by DDP/FSDP) on the labelled tokens of ``labels``;
    with ``weights`` (the shape of ``labels``), each token's cross-entropy times its weight."""
    rows, pos = torch.nonzero(labels != IGNORE_INDEX, as_tuple=True)
    if rows.numel() and bool((pos == 0).any()):
        raise ValueError("a labelled token at position 0 has no preceding state to predict it")
    if rows.numel() == 0:  # no target: one state through the head, times 0 (every rank runs forward and backward)
        rows, pos, targets, weight = rows.new_zeros(1), pos.new_ones(1), labels.new_zeros(1), 0.0
    else:
        targets, weight = labels[rows, pos], 1.0
    with head.positions(rows, pos):
        logits = model(**inputs, use_cache=False, return_dict=True).logits
    losses = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.to(logits.device),
                             reduction="none")
    if weights is not None and weight:
        losses = losses * weights[rows, pos].to(device=losses.device, dtype=losses.dtype)
    return losses.sum() * weight
