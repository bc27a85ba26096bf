"""Choose the demo's blur sigma by measurement: VIG of colour words in captions against sigma.

The aligned demo model scores alignment-style captions of fresh shapes-world images with the blur
counterfactual at several sigmas (a fraction of the image's shorter side). A blur that leaves colours
readable gives colour words little VIG (VIG.md's caution); the demo uses the smallest sigma whose mean
colour-word VIG reaches 90% of the largest measured. This involves no training run of the benchmark.

    python benchmarks/demo_blur_sigma.py [--model .demo/model] [--samples 64]
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform

import numpy as np

from vig_udf import VIGScorer
from vig_udf.demo.model import build_demo_model
from vig_udf.demo.world import COLOURS, SHAPES, SIZES, SLOTS, generate_captions

SIGMAS = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5)
CLASSES = {"colour": set(COLOURS), "shape": set(SHAPES), "position": set(SLOTS), "size": set(SIZES)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="aligned model folder (default: build/reuse .demo/model)")
    parser.add_argument("--samples", type=int, default=64)
    args = parser.parse_args()
    model = args.model or build_demo_model(".demo/model")
    records = [r for r in generate_captions(args.samples, seed=424242) if "image" in r]
    rows = []
    for sigma in SIGMAS:
        scorer = VIGScorer.from_pretrained(model, counterfactual="blur", blur_sigma=sigma, device="cpu")
        by_class: dict[str, list[float]] = {name: [] for name in [*CLASSES, "other"]}
        for record, result in zip(records, scorer.score(records)):
            answer = record["conversations"][1]["value"].strip()
            for vig, start, end in zip(result.token_vig, result.token_char_start, result.token_char_end):
                word = answer[start:end].strip(" .,").lower()
                name = next((c for c, words in CLASSES.items() if word in words), "other")
                by_class[name].append(float(vig))
        rows.append((sigma, {k: float(np.mean(v)) if v else float("nan") for k, v in by_class.items()}))
    best = max(r[1]["colour"] for r in rows)
    chosen = next(sigma for sigma, m in rows if m["colour"] >= 0.9 * best)
    print(f"## Demo blur sigma ({dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()})\n")
    print(f"command: `python benchmarks/demo_blur_sigma.py --samples {args.samples}`; model {model}; "
          f"{len(records)} captions\n")
    print("| sigma | colour | shape | position | size | other |")
    print("|---|---|---|---|---|---|")
    for sigma, m in rows:
        print(f"| {sigma} | " + " | ".join(f"{m[k]:+.3f}" for k in ["colour", "shape", "position", "size", "other"])
              + " |")
    print(f"\nmean token VIG (nats) by word class; chosen sigma: **{chosen}** (smallest reaching 90% of the "
          f"largest colour VIG, {best:+.3f})")


if __name__ == "__main__":
    main()
