"""How much the prompt format and the image padding move VIG, tau and the kept set (issue 21).

Two comparisons, each scored side by side in one run with one model and one counterfactual:

- **format**: ``prompt_format=template`` (the checkpoint's chat template) against ``llava_v1`` (LLaVA's
  ``conv_vicuna_v1``: system prompt, ``</s>`` after every answer, the text after the image tokenized on its
  own), images unpadded;
- **padding**: ``image_pad=none`` (the processor's resize and centre crop) against ``square`` (LLaVA's
  ``expand2square`` with the processor's mean colour), on non-square images, prompt ``template``.

Per comparison: the samples scored ``ok`` under both, the Spearman rank correlation of their sample VIG, the
mean VIG under each, tau at ``--p`` (the (100 - p)th percentile of the multimodal VIGs, as ``vig select``
computes it) under each, and the kept sets (VIG >= tau): their Jaccard overlap and the share of the first
condition's kept samples that the second keeps too.

Corpora:

- the demo world (``vig_udf.demo``): the demo's instruction corpus (``--demo-samples``, seed 7 as ``make demo``)
  scored by the aligned demo model (built into ``--workdir`` when missing). Its images are square, so the
  padding comparison uses the same scenes stretched to 4:3 (85 x 64), where the centre crop cuts into the
  left and right slots;
- an external-like corpus: ``benchmarks/corpus.py``'s LLaVA-665K-shaped records (multi-turn VQA, long
  answers, images 320-640 px a side, ``<image>`` before or after the question), scored by the same model.

The demo model was trained on its chat template, so on the demo world ``template`` is its own format and
``llava_v1`` a format it never saw (the reverse of LLaVA-1.5, trained on ``llava_v1`` and usually scored with
llava-hf's template). The external-like corpus is text the model never saw either way: its numbers show how
much the format and the padding move a model's scores on inputs of LLaVA-665K's shape, not what they do for
LLaVA-1.5-7B on LLaVA-665K (no such checkpoint or data here).

    python benchmarks/prompt_format.py [--workdir .demo] [--demo-samples 800] [--external-samples 300]
                                        [--counterfactuals drop blur] [--p 70] [--out prompt_format.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

COMPARISONS = {"format": ({"prompt_format": "template", "image_pad": "none"},
                          {"prompt_format": "llava_v1", "image_pad": "none"}),
               "padding": ({"prompt_format": "template", "image_pad": "none"},
                           {"prompt_format": "template", "image_pad": "square"})}


def wide(records: list[dict], size: tuple[int, int] = (85, 64)) -> list[dict]:
    """The records with their (square) images stretched to 4:3."""
    from PIL import Image

    return [{**r, "image": r["image"].resize(size, Image.NEAREST)} if r.get("image") is not None else r
            for r in records]


def compare(first: list, second: list, p: float) -> dict:
    """Rank correlation, mean VIG, tau and kept-set overlap of two scorings of the same records."""
    from scipy.stats import spearmanr

    from vig_udf.selection.policies import tau_for

    both = [(a.vig, b.vig, a.sample_id) for a, b in zip(first, second) if a.status == b.status == "ok"]
    a, b = np.array([x[0] for x in both]), np.array([x[1] for x in both])
    tau_a = tau_for([r.vig for r in first if r.status == "ok"], p)
    tau_b = tau_for([r.vig for r in second if r.status == "ok"], p)
    kept_a = {r.sample_id for r in first if r.status == "ok" and r.vig >= tau_a}
    kept_b = {r.sample_id for r in second if r.status == "ok" and r.vig >= tau_b}
    return {"ok_both": len(both), "ok_first": sum(r.status == "ok" for r in first),
            "ok_second": sum(r.status == "ok" for r in second),
            "spearman": float(spearmanr(a, b).statistic) if len(both) > 2 else None,
            "mean_vig_first": float(a.mean()), "mean_vig_second": float(b.mean()),
            "tau_first": tau_a, "tau_second": tau_b, "kept_first": len(kept_a), "kept_second": len(kept_b),
            "kept_jaccard": len(kept_a & kept_b) / max(len(kept_a | kept_b), 1),
            "kept_first_also_kept": len(kept_a & kept_b) / max(len(kept_a), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=".demo")
    parser.add_argument("--demo-samples", type=int, default=800)
    parser.add_argument("--external-samples", type=int, default=300)
    parser.add_argument("--counterfactuals", nargs="+", default=["drop", "blur"])
    parser.add_argument("--p", type=float, default=70.0)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = parser.parse_args()

    import torch

    from benchmarks.corpus import describe, make_corpus
    from vig_udf.demo import world
    from vig_udf.demo.model import build_demo_model
    from vig_udf.scoring.scorer import VIGScorer

    torch.set_num_threads(1)
    started = time.perf_counter()
    model = build_demo_model(Path(args.workdir) / "model")
    built = time.perf_counter() - started
    demo = world.generate(args.demo_samples, seed=7)
    external = make_corpus(args.external_samples, seed=0)
    corpora = {"demo world": {"format": demo, "padding": wide(demo)},
               "external-like": {"format": external, "padding": external}}
    print(f"model {model} (built or reused in {built:.0f} s); external-like corpus: {json.dumps(describe(external))}")
    results = []
    for counterfactual in args.counterfactuals:
        for corpus, by_comparison in corpora.items():
            for comparison, (first, second) in COMPARISONS.items():
                records = by_comparison[comparison]
                scored = []
                for options in (first, second):
                    scorer = VIGScorer.from_pretrained(model, device="cpu", dtype="float32", counterfactual=counterfactual,
                                                       max_length=args.max_length, **options)
                    t0 = time.perf_counter()
                    scored.append(scorer.score(records))
                    options_seconds = time.perf_counter() - t0
                    print(f"  {corpus} / {comparison} / {counterfactual} / {options}: {options_seconds:.0f} s")
                results.append({"corpus": corpus, "comparison": comparison, "counterfactual": counterfactual,
                                "first": first, "second": second, "records": len(records),
                                **compare(scored[0], scored[1], args.p)})
    print(f"\nmachine: {platform.node()}, {platform.processor() or platform.machine()}, torch threads 1; "
          f"p = {args.p:g}; {time.perf_counter() - started:.0f} s in all\n")
    print("| corpus | comparison | counterfactual | ok in both | Spearman of sample VIG | mean VIG | tau | kept "
          "| kept Jaccard | first's kept also kept |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        names = {"format": "template -> llava_v1", "padding": "none -> square"}[r["comparison"]]
        print(f"| {r['corpus']} | {names} | {r['counterfactual']} | {r['ok_both']} of {r['records']} | "
              f"{r['spearman']:.3f} | {r['mean_vig_first']:+.3f} -> {r['mean_vig_second']:+.3f} | "
              f"{r['tau_first']:+.3f} -> {r['tau_second']:+.3f} | {r['kept_first']} -> {r['kept_second']} | "
              f"{r['kept_jaccard']:.3f} | {r['kept_first_also_kept']:.3f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
