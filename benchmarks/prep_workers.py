"""What the scorer's ``prep_workers`` (background preparation threads) give, and where they stop helping.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/prep_workers.py                 # about 6 minutes on 2 cores
    PYTHONPATH=$PWD .venv/bin/python benchmarks/prep_workers.py --samples 32 --workers 0,1 --no-write

The model is benchmarks/score_cpu.py's (48M parameters, 32000-token vocabulary, 224 px images: 196 image
tokens), the samples benchmarks/corpus.py's, with their images as PNG files under an image root (each sample's
preparation decodes its file, as in a Spark task). Every procedure scores the same samples as a Spark task
does: one ``score_stream`` over lists of ``--list-rows`` samples (the Arrow batches), ``prep_chunk``
``--prep-chunk``, and for each ``prep_workers`` in ``--workers``:

- preparation alone: the threads prepare every chunk and nothing else runs (what the threads can deliver:
  Python holds the GIL for part of the work; image decoding, blur and tokenisation release it);
- the CPU scorer: the real forward passes on this CPU, ``--torch-threads`` intra-op threads;
- a simulated device: each forward batch takes ``padded tokens / --device-tokens-per-s`` seconds
  (benchmarks/sim_accelerator.py's step around a forward that computes nothing and returns zeros: the
  timing is the point, not the scores), the situation of a GPU, whose forwards leave the CPUs to the
  preparation.

Each procedure runs after a warm-up on other samples; the best of ``--repeats`` rounds is kept.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks import sim_accelerator as sim  # noqa: E402
from benchmarks.score_cpu import CPU_SIZE, benchmark_tokenizer, machine_lines, with_options  # noqa: E402
from benchmarks.score_spark import write_corpus  # noqa: E402
from vig_udf.scoring.batching import chunk_ranges, prefetched  # noqa: E402
from vig_udf.scoring.scorer import VIGScorer  # noqa: E402
from vig_udf.tiny import build_tiny_checkpoint  # noqa: E402

WARMUP = 8


def lists_of(records: list[dict], rows: int) -> list[list[dict]]:
    return [records[i:i + rows] for i in range(0, len(records), rows)]


def prepare_only(scorer: VIGScorer, lists: list[list[dict]]) -> float:
    """Seconds to prepare every chunk with the scorer's prep_workers threads, nothing else running."""
    units = [(samples, part, part.stop == len(samples)) for samples in lists
             for part in chunk_ranges(len(samples), scorer.options.prep_chunk)]
    started = time.perf_counter()
    for _ in prefetched(units, scorer._prepare_chunk, workers=scorer.options.prep_workers):
        pass
    return time.perf_counter() - started


def no_forward(model, seqs, **kwargs):
    """A device step that computes nothing: zero log-probabilities of the right lengths."""
    return [np.zeros(len(seq.positions), dtype=np.float32) for seq in seqs]


def score_all(scorer: VIGScorer, lists: list[list[dict]]) -> float:
    started = time.perf_counter()
    for _ in scorer.score_stream(iter(lists)):
        pass
    return time.perf_counter() - started


def best(fn, repeats: int) -> float:
    return min(fn() for _ in range(repeats))


def measure(args, workers: list[int], work: Path) -> tuple[list[str], list[dict]]:
    """The table's rows for each prep_workers value, and the simulated device's steps of the last one."""
    tokenizer = benchmark_tokenizer()
    cpu_model = build_tiny_checkpoint("llava", work / "cpu", size=CPU_SIZE, tokenizer=tokenizer)
    records = write_corpus(work, args.samples + WARMUP, seed=0)
    warm, timed = lists_of(records[:WARMUP], args.list_rows), lists_of(records[WARMUP:], args.list_rows)
    options = {"image_root": str(work / "images"), "batch_tokens": args.batch_tokens, "prep_chunk": args.prep_chunk,
               "device": "cpu", "dtype": "float32"}
    cpu = VIGScorer.from_pretrained(cpu_model, **options)

    import vig_udf.scoring.scorer as scorer_module

    real_step = scorer_module.answer_logprobs
    rows = ["| prep_workers | preparation alone samples/s | CPU scorer samples/s | simulated device samples/s |",
            "|---|---|---|---|"]
    for n in workers:
        c = with_options(cpu, prep_workers=n)
        prepare_only(c, warm)
        prep = best(lambda: prepare_only(c, timed), args.repeats)
        score_all(c, warm)
        cpu_s = best(lambda: score_all(c, timed), args.repeats)
        try:
            scorer_module.answer_logprobs = sim.SimulatedStep(no_forward, args.device_tokens_per_s, work / "warm")
            score_all(c, warm)
            scorer_module.answer_logprobs = sim.SimulatedStep(no_forward, args.device_tokens_per_s, work / f"busy-{n}")
            device_s = best(lambda: score_all(c, timed), args.repeats)
        finally:
            scorer_module.answer_logprobs = real_step
        rows.append(f"| {n} | {args.samples / prep:.1f} | {args.samples / cpu_s:.2f} | {args.samples / device_s:.1f} |")
        print(rows[-1], flush=True)
    return rows, [e for e in sim.read_events(work / f"busy-{workers[-1]}") if e["event"] == "step"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--workers", default="0,1,2,3,4", help="prep_workers values, comma-separated")
    parser.add_argument("--list-rows", type=int, default=32, help="samples per list (an Arrow batch)")
    parser.add_argument("--prep-chunk", type=int, default=8, help="the scorer's prep_chunk")
    parser.add_argument("--batch-tokens", type=int, default=2048)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--device-tokens-per-s", type=float, default=100000.0,
                        help="the simulated device's rate (padded tokens per second)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="do not append to BENCHMARKS.md")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    torch.set_num_threads(args.torch_threads)
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="vig-prep-workers-") as tmp:
        rows, steps = measure(args, workers, Path(tmp))
    device_only = sum(e["end"] - e["start"] for e in steps) / args.repeats  # the same batches in every round
    table = "\n".join(rows) + (
        f"\n\nThe simulated device alone would take about {device_only:.1f} s for the {args.samples} samples "
        f"({args.samples / device_only:.1f} samples/s) at {args.device_tokens_per_s:.0f} padded tokens/s; "
        f"{sum(e['overrun_s'] > 0 for e in steps)} of {len(steps)} of its batches overran.\n")
    print(table)
    if not args.no_write:
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        with open(ROOT / "BENCHMARKS.md", "a") as f:
            f.write(f"\n## {now}: what prep_workers gives (benchmarks/prep_workers.py)\n\n" + "\n".join(machine_lines())
                    + f"\n- 1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after\n"
                    f"- command: `python benchmarks/prep_workers.py {shlex.join(sys.argv[1:])}`\n\n" + table)


if __name__ == "__main__":
    main()
