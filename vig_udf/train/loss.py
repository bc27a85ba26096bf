"""The selective training loss: cross-entropy on the labelled (selected) answer tokens only.

Like the scorer's forward (:mod:`vig_udf.forward`), the output head runs only where there is a target: the
base model's hidden states one position before each labelled token go through the head, in float32. No
``[batch, length, vocab]`` logits tensor is built, which matters for 32K-150K vocabularies. The result is
the *sum* of token losses; the trainer divides by the number of supervised tokens in the global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vig_udf.train.examples import IGNORE_INDEX


def core_model(model):
    """The transformers model under a peft wrapper (LoRA layers stay injected in it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class SelectiveLoss(torch.nn.Module):
    """Wraps an image-text-to-text model; ``forward(batch, labels)`` is the summed token cross-entropy.

    A module (not a function) so that DistributedDataParallel can wrap it: DDP synchronises gradients
    only for work done inside the wrapped module's ``forward``.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        core = core_model(self.model)
        hidden = core.model(**batch, use_cache=False, return_dict=True).last_hidden_state
        rows, pos = torch.nonzero(labels != IGNORE_INDEX, as_tuple=True)
        if rows.numel() == 0:  # keeps every parameter in the graph (DDP needs a backward on every rank)
            return hidden.sum() * 0.0
        if bool((pos == 0).any()):
            raise ValueError("a labelled token at position 0 has no preceding state to predict it")
        logits = core.get_output_embeddings()(hidden[rows, pos - 1]).float()
        cap = getattr(getattr(core.config, "text_config", None) or core.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return F.cross_entropy(logits, labels[rows, pos], reduction="sum")
