"""How much bfloat16 scoring changes VIG against float32, on every tiny family and a mid-size model.

The GPU default dtype is bfloat16; this measures what that costs in agreement. For each model the same
samples (benchmarks/corpus.py) are scored twice with ``VIGScorer`` (blur counterfactual), once in float32
and once in bfloat16, on the same device, and the script reports over the samples that are ``ok`` in both:

- the largest absolute token-VIG difference (and the largest sample-VIG difference);
- the Spearman rank correlation of sample VIG between the two precisions (scipy.stats.spearmanr);
- tau_p at p (default 70, vig_udf.selection.policies.tau_for) in each precision, and the fraction of samples whose
  keep decision (sample VIG >= tau_p, each precision against its own tau) flips; the same for tokens.

Models: the tiny random-weight checkpoint of each family (vig_udf.tiny.FAMILIES, default sizes) and the
48M-parameter LLaVA-shaped model of benchmarks/score_cpu.py (32000-token vocabulary). Random weights give
tiny VIGs (about 1e-4 for the tiny checkpoints, 1e-2 for the 48M model), so the bf16 rounding is large
relative to them: the rank correlation and the flip fraction here are a pessimistic bound, not what a
trained scorer (VIGs around 0.1 to 1) would show.

    python benchmarks/bf16_agreement.py                      # CPU, about 3 minutes on 2 cores
    python benchmarks/bf16_agreement.py --device cuda --samples 256 --write
    python benchmarks/bf16_agreement.py --samples 16 --no-mid # a quick look
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from benchmarks.corpus import make_corpus  # noqa: E402
from benchmarks.score_cpu import (CPU_SIZE, append_benchmarks, benchmark_tokenizer, command_line,  # noqa: E402
                                  machine_lines, markdown_table)
from vig_udf.scoring.scorer import VIGScorer  # noqa: E402
from vig_udf.selection.policies import tau_for  # noqa: E402
from vig_udf.tiny import FAMILIES, build_tiny_checkpoint  # noqa: E402

CAVEAT = ("random weights give tiny VIGs, so bf16 rounding is large relative to them; read the rank "
          "correlation and flip fractions as a pessimistic bound for a trained scorer")


def agreement(fp32: list, bf16: list, *, p: float) -> dict:
    """Agreement of two score lists of the same samples (ScoreResult each), over samples ok in both."""
    pairs = [(a, b) for a, b in zip(fp32, bf16) if a.status == "ok" and b.status == "ok"]
    status_mismatch = sum(a.status != b.status for a, b in zip(fp32, bf16))
    if not pairs:
        return {"ok": 0, "status_mismatch": status_mismatch}
    v32 = np.array([a.vig for a, _ in pairs])
    v16 = np.array([b.vig for _, b in pairs])
    t32 = np.concatenate([a.token_vig for a, _ in pairs])
    t16 = np.concatenate([b.token_vig for _, b in pairs])
    tau32, tau16 = tau_for(v32, p), tau_for(v16, p)
    rho = spearmanr(v32, v16).statistic if len(pairs) > 2 else float("nan")
    return {
        "ok": len(pairs),
        "status_mismatch": status_mismatch,
        "max_token_diff": float(np.max(np.abs(t32 - t16))),
        "max_sample_diff": float(np.max(np.abs(v32 - v16))),
        "vig_range": (float(v32.min()), float(v32.max())),
        "spearman": float(rho),
        "tau32": tau32,
        "tau16": tau16,
        "sample_flips": float(np.mean((v32 >= tau32) != (v16 >= tau16))),
        "token_flips": float(np.mean((t32 >= tau32) != (t16 >= tau16))),
        "tokens": int(t32.size),
    }


def score_both(path: str, samples: list, *, device: str, batch_tokens: int | None) -> tuple[list, list, float]:
    """Score ``samples`` with the checkpoint at ``path`` in float32 and in bfloat16; (fp32, bf16, seconds)."""
    started = time.perf_counter()
    out = []
    for dtype in (torch.float32, torch.bfloat16):
        scorer = VIGScorer.from_pretrained(path, device=device, dtype=dtype, batch_tokens=batch_tokens)
        out.append(scorer.score(samples))
        del scorer
    return out[0], out[1], time.perf_counter() - started


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--p", type=float, default=70.0, help="percentage of samples kept (tau_p)")
    ap.add_argument("--device", default=None, help="default cuda when available, else cpu")
    ap.add_argument("--batch-tokens", type=int, default=None, help="default: the scorer's per-device default")
    ap.add_argument("--families", nargs="+", default=list(FAMILIES))
    ap.add_argument("--no-mid", action="store_true", help="skip the 48M-parameter model")
    ap.add_argument("--write", action="store_true", help="append the results to BENCHMARKS.md")
    args = ap.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    t_start = time.perf_counter()
    samples = make_corpus(args.samples, seed=args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = [(f"tiny {family}", lambda f=family: build_tiny_checkpoint(f, Path(tmp) / f, seed=1))
                  for family in args.families]
        if not args.no_mid:
            models.append(("llava 48M (score_cpu.py)", lambda: build_tiny_checkpoint(
                "llava", Path(tmp) / "mid", size=CPU_SIZE, seed=args.seed, tokenizer=benchmark_tokenizer())))
        for name, build in models:
            fp32, bf16, secs = score_both(build(), samples, device=device, batch_tokens=args.batch_tokens)
            a = agreement(fp32, bf16, p=args.p)
            print(f"{name}: {a} ({secs:.0f}s)", flush=True)
            if not a["ok"]:
                rows.append([name, 0, a["status_mismatch"], *["-"] * 7])
                continue
            rows.append([name, a["ok"], a["status_mismatch"], f"{a['vig_range'][0]:.4f} to {a['vig_range'][1]:.4f}",
                         f"{a['max_token_diff']:.2e}", f"{a['max_sample_diff']:.2e}", f"{a['spearman']:.4f}",
                         f"{a['tau32']:.5f} / {a['tau16']:.5f}", f"{100 * a['sample_flips']:.1f}%",
                         f"{100 * a['token_flips']:.1f}% of {a['tokens']}"])
    table = markdown_table(["model", "samples ok in both", "status differs", "sample VIG range (fp32)",
                            "max abs token-VIG diff", "max abs sample-VIG diff", "Spearman (sample VIG)",
                            f"tau_{args.p:g} fp32 / bf16", "sample keep flips", "token keep flips"], rows)
    body = "\n".join([
        *machine_lines(),
        f"- command: `{command_line()}`",
        f"- device {device}; {args.samples} samples from benchmarks/corpus.py seed {args.seed}, blur counterfactual, "
        f"each model scored in float32 and in bfloat16 by VIGScorer (same batches); keep = VIG >= tau_p with each "
        f"precision's own tau (p = {args.p:g}); token flips use the same tau on token VIG",
        f"- caveat: {CAVEAT}",
        f"- the script ran {time.perf_counter() - t_start:.0f}s in all",
        "",
        table,
    ])
    print()
    print(body)
    if args.write:
        append_benchmarks(f"bf16 vs float32 VIG agreement, {device} (benchmarks/bf16_agreement.py)", body)
        print(f"\nappended to {ROOT / 'BENCHMARKS.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
