"""Why text-answerable demo answers get a large negative VIG under `drop`: image content vs prompt format.

Under ``drop`` the counterfactual prompt has no image at all, so a sample's VIG mixes two effects:

    VIG_drop = [logp(another image) - logp(no image)]  +  [logp(its image) - logp(another image)]
               \\___ format: any image in the prompt ___/    \\____ content: this image's pixels ____/

The script scores demo corpus samples under the real image, another sample's image and no image
(``vig_udf.check.score_conditions``) and reports both terms per answer kind (mean per answer token). An
answer that needs no image (definitions, text questions asked beside an image) should have a content term
near 0; what remains of its VIG is the format term.

    python benchmarks/demo_vig_decomposition.py [--workdir .demo] [--per-kind 40]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=".demo")
    parser.add_argument("--per-kind", type=int, default=40, help="samples per answer kind")
    args = parser.parse_args()

    import torch

    from vig_udf.check import score_conditions
    from vig_udf.config import DemoConfig
    from vig_udf.scoring.scorer import VIGScorer

    torch.set_num_threads(1)
    workdir = Path(args.workdir)
    records = json.loads((workdir / "corpus" / "records.json").read_text())
    meta = json.loads((workdir / "corpus" / "meta.json").read_text())
    by_kind: dict[str, list[dict]] = {}
    for record in records:
        kinds = set(meta[record["id"]]["kinds"])
        if "image" in record and len(kinds) == 1:  # one kind per sample keeps the attribution clean
            by_kind.setdefault(kinds.pop(), []).append(record)
    rng = random.Random(0)
    options = DemoConfig().scorer.options().model_copy(update={"image_root": str(workdir / "corpus" / "images")})
    scorer = VIGScorer.from_pretrained(str(workdir / "model"), options, device="cpu")
    print(f"model {workdir / 'model'}, counterfactual {options.counterfactual}; mean per answer token, nats")
    print("| answer kind | samples | VIG (drop) | format: another image vs none | content: its image vs another |")
    print("|---|---|---|---|---|")
    for kind in sorted(by_kind):
        chosen = rng.sample(by_kind[kind], min(args.per_kind, len(by_kind[kind])))
        samples, _ = score_conditions(scorer, chosen)
        tokens = {name: np.concatenate([s.logp[name] for s in samples]) for name in ("real", "mismatched", "none")}
        fmt = tokens["mismatched"] - tokens["none"]
        content = tokens["real"] - tokens["mismatched"]
        print(f"| {kind} | {len(samples)} | {np.mean(tokens['real'] - tokens['none']):+.3f} | {np.mean(fmt):+.3f} | "
              f"{np.mean(content):+.3f} |")


if __name__ == "__main__":
    main()
