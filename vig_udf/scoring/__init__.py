"""The scorer: one Hugging Face vision-language model and its processor in one process, no Spark.

Layers inside, lowest first: :mod:`metric` (token and sample VIG from log-probabilities), :mod:`status`
(named per-sample outcomes), :mod:`conversation` and :mod:`masking` (LLaVA records to chat messages; the
one answer-token masking function that scoring and training share), :mod:`inputs` (processor inputs),
:mod:`images` (loading and counterfactual images), :mod:`partners` (the mismatched counterfactual's partner
rule), :mod:`batching` and :mod:`forward` (token-budget
batches, the answer-position forward pass), :mod:`options` and :mod:`identity` (what a scorer is), and
:mod:`scorer` (:class:`~vig_udf.scoring.scorer.VIGScorer`).
"""
