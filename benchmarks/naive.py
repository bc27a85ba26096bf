"""The naive VIG procedure that public "with vs without image" scorers use, as the benchmark baseline.

For each sample on its own (batch size 1): two full forward passes (the real image, then its
counterfactual), the full ``[length, vocab]`` logits (``model(**inputs).logits``), a log-softmax over
the whole vocabulary at every position, and a gather of the answer tokens. The answer tokens are chosen
with the project's own masking (vig_udf.scoring.masking), so both procedures score exactly the same tokens and
their sample VIGs can be compared.
"""

from __future__ import annotations

import numpy as np
import torch

from vig_udf.scoring.conversation import parse_conversation
from vig_udf.scoring.images import DEFAULT_BLUR_SIGMA, load_image, make_counterfactual
from vig_udf.scoring.masking import answer_tokens, render_with_answer_spans


def naive_vig(model, processor, sample: dict, *, counterfactual: str = "blur", blur_sigma: float = DEFAULT_BLUR_SIGMA,
              device="cpu", dtype=torch.float32) -> float | None:
    """Sample VIG of one LLaVA-format record; None for a text-only record (nothing to compare)."""
    if sample.get("image") is None:
        return None
    tokenizer = getattr(processor, "tokenizer", processor)
    conv = parse_conversation(sample["conversations"], has_image=True)
    answers = [conv.turns[i].text for i in conv.answer_turns]
    text, spans = render_with_answer_spans(processor, conv.to_messages(with_image=True), answers)
    image = load_image(sample["image"])
    cf_image = make_counterfactual(image, counterfactual, blur_sigma=blur_sigma, seed_key=str(sample.get("id", "")))
    logps = []
    for img in (image, cf_image):
        inputs = processor(text=[text], images=[[img]], return_tensors="pt")
        ids = inputs["input_ids"][0]
        pos = torch.as_tensor(answer_tokens(tokenizer, text, spans, ids).positions)
        inputs = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else None) for k, v in inputs.items()}
        with torch.inference_mode():
            logits = model(**inputs).logits[0].float()  # [length, vocab]
            logp = torch.log_softmax(logits, dim=-1)
            rows, targets = (pos - 1).to(logp.device), ids[pos].to(logp.device)
            logps.append(logp[rows, targets].cpu().numpy().astype(np.float64))
    return float(np.mean(logps[0] - logps[1]))


def naive_scores(model, processor, samples: list[dict], **kwargs) -> list[float | None]:
    """:func:`naive_vig` for each sample in turn."""
    return [naive_vig(model, processor, s, **kwargs) for s in samples]
