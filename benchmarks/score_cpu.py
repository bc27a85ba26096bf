"""CPU benchmark: VIGScorer.score (prefetch off and on) against naive batch-size-1 scoring, side by side.

A LLaVA-shaped random-weight checkpoint of a few tens of millions of parameters is built offline
(vig_udf.tiny), with a 32000-token BPE vocabulary trained on the synthetic corpus (benchmarks/corpus.py)
so that the output head costs what it costs in a real model. All procedures score the same samples
(blur counterfactual, float32, CPU) after a warm-up each: the scorer with its preparation in the calling
thread (``prep_workers=0``, prefetch off) and with one background preparation thread (``prep_workers=1``,
prefetch on), both with the same ``--prep-chunk`` so their batches are identical, and the naive procedure.
The script reports samples/s, tokens/s, the speed-up and the largest difference between sample VIGs,
prints a markdown table and appends a dated section to BENCHMARKS.md (``--no-write`` to skip).

    python benchmarks/score_cpu.py                       # about 4 minutes on 2 idle cores
    python benchmarks/score_cpu.py --samples 16 --batch-tokens 4096 --repeats 1 --no-write

Weights are random, so the VIG values mean nothing; the timings and the agreement are the point.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
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

from benchmarks.corpus import describe, make_corpus, tokenizer_training_text  # noqa: E402
from benchmarks.naive import naive_scores  # noqa: E402
from vig_udf.scoring.batching import plan_batches  # noqa: E402
from vig_udf.scoring.scorer import VIGScorer  # noqa: E402
from vig_udf.tiny import TinySize, build_tiny_checkpoint, build_tokenizer  # noqa: E402

CPU_SIZE = TinySize(hidden_size=512, num_layers=4, num_heads=8, intermediate_size=1376, vision_hidden_size=256,
                    vision_layers=4, image_size=224, patch_size=16)
VOCAB = 32000
WARMUP = 4


# -- helpers shared with score_gpu.py ------------------------------------------------------------------

def benchmark_tokenizer(vocab_size: int = VOCAB):
    """A byte-level BPE tokenizer with ``<image>``, trained on the benchmark corpus's word distribution."""
    return build_tokenizer(["<image>"], vocab_size=vocab_size, corpus=tokenizer_training_text())


def param_counts(model) -> dict[str, int]:
    """Parameters of the whole model and of its parts (language model, vision tower, projector, head)."""
    def count(module):
        return sum(p.numel() for p in module.parameters()) if module is not None else 0

    base = model.model
    lm = getattr(base, "language_model", None)
    embed = lm.get_input_embeddings() if lm is not None else None
    head = model.get_output_embeddings()
    return {
        "total": count(model),
        "language_model": count(lm),
        "embeddings": count(embed),
        "lm_head": count(head) if head is not None and head.weight is not getattr(embed, "weight", None) else 0,
        "vision_tower": count(getattr(base, "vision_tower", None)),
        "projector": count(getattr(base, "multi_modal_projector", None)),
    }


def token_stats(scorer: VIGScorer, samples: list[dict]) -> dict:
    """Tokens the scorer forwards for ``samples`` (both passes), answer tokens, padding, CPU prep time.

    Uses the scorer's private ``_prepare`` (the same preparation ``score`` does) once per sample; the time
    it takes is the single-threaded CPU share of scoring (chat template, masking, blur, processor).
    """
    t0 = time.perf_counter()
    prepared = []
    for i, sample in enumerate(samples):
        try:
            item = scorer._prepare(i, str(sample.get("id", i)), sample)
        except Exception:  # a sample the scorer rejects is not forwarded
            continue
        if hasattr(item, "seqs"):
            prepared.append(item)
    prep_s = time.perf_counter() - t0
    lengths = [len(item.seqs[0]) for item in prepared]
    extras = prepared[0].seqs[0].extras if prepared else {}
    image_tokens = 0
    if prepared:
        image_id = getattr(scorer.model.config, "image_token_id", None) or getattr(
            scorer.model.config, "image_token_index", None)
        image_tokens = int((prepared[0].seqs[0].input_ids == image_id).sum())
    return {
        "scored_samples": len(prepared),
        "tokens": 2 * sum(lengths),  # both passes
        "answer_tokens": 2 * sum(len(item.tokens) for item in prepared),
        "padded_tokens": padded_tokens(lengths, scorer.options.batch_tokens),
        "lengths": lengths,
        "image_tokens_per_image": image_tokens,
        "pixel_shape": tuple(extras["pixel_values"].shape) if "pixel_values" in extras else None,
        "prep_s": prep_s,
        "mean_len": float(np.mean(lengths)) if lengths else 0.0,
        "max_len": max(lengths, default=0),
    }


def padded_tokens(lengths: list[int], batch_tokens: int) -> int:
    """Tokens forwarded including padding when both passes of each sample share a batch (as the scorer does)."""
    padded = 0
    for batch in plan_batches([(n, 2) for n in lengths], budget=batch_tokens):
        padded += 2 * len(batch) * max(lengths[b] for b in batch)
    return padded


def with_options(scorer: VIGScorer, **options) -> VIGScorer:
    """The same model and processor with other :class:`~vig_udf.scoring.options.ScorerOptions` (e.g. batch_tokens)."""
    return VIGScorer(scorer.model, scorer.processor, options=scorer.options.model_copy(update=options),
                     model_ref=dict(scorer._model_ref), device=scorer.device, dtype=scorer.dtype)


def with_batch_tokens(scorer: VIGScorer, batch_tokens: int) -> VIGScorer:
    """The same model and processor with another token budget."""
    return with_options(scorer, batch_tokens=batch_tokens)


class ForwardClock:
    """Seconds spent inside the scorer's forward passes (vig_udf.scoring.scorer.answer_logprobs), per procedure.

    Separates the two ways prefetch can change a time: overlap (the forwards take as long, the total
    shrinks) and interference (the forwards themselves get slower or faster).
    """

    def __init__(self):
        import vig_udf.scoring.scorer as scorer_module

        self._module = scorer_module
        self._real = scorer_module.answer_logprobs
        self.seconds = 0.0
        scorer_module.answer_logprobs = self._timed

    def _timed(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self._real(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0

    def close(self) -> None:
        """Put the real function back."""
        self._module.answer_logprobs = self._real


def timed(fn, *, cuda: bool = False):
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def vig_diff(a: list, b: list) -> float:
    """Largest |a_i - b_i| over samples that both scored (None/NaN skipped)."""
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None and np.isfinite(x) and np.isfinite(y)]
    return max((abs(x - y) for x, y in pairs), default=float("nan"))


def scorer_vigs(results) -> list:
    return [r.vig if r.status == "ok" else None for r in results]


def machine_lines() -> list[str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import transformers

    lines = [
        f"- machine: {platform.node() or 'unknown host'}, {os.cpu_count()} logical CPUs (nproc {len(os.sched_getaffinity(0))}), "
        f"CPU model `{cpu}`, torch threads {torch.get_num_threads()}",
        f"- python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}",
    ]
    if torch.cuda.is_available():
        lines.append(f"- GPU: {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})")
    return lines


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])


def markdown_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def append_benchmarks(title: str, body: str, path: Path = ROOT / "BENCHMARKS.md") -> None:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = "" if path.exists() else (
        "# Benchmarks\n\nMeasured numbers only; each section says the machine, the command and the versions.\n")
    with path.open("a") as f:
        f.write(f"{head}\n## {now}: {title}\n\n{body.rstrip()}\n")


# -- the CPU benchmark ---------------------------------------------------------------------------------

def procedure_name(key) -> str:
    """Table label of a procedure key: ``(batch_tokens, prep_workers)`` or ``"naive"``."""
    if key == "naive":
        return "naive"
    return f"VIGScorer.score, prefetch {'on' if key[1] else 'off'}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-tokens", type=int, nargs="+", default=[2048])
    ap.add_argument("--repeats", type=int, default=3, help="rounds; the best time of each (procedure, chunk) is kept")
    ap.add_argument("--chunk", type=int, default=24, help="rows per score() call and per timed unit")
    ap.add_argument("--prep-chunk", type=int, default=6,
                    help="the scorer's prep_chunk (rows prepared as one unit), prefetch off and on alike")
    ap.add_argument("--no-write", action="store_true", help="do not append to BENCHMARKS.md")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive procedure (prefetch off is the reference)")
    ap.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    torch.manual_seed(args.seed)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_checkpoint("llava", Path(tmp) / "llava-bench", size=CPU_SIZE, seed=args.seed,
                                     tokenizer=benchmark_tokenizer())
        # the chat template on unpadded images, as the naive procedure (benchmarks/naive.py) renders them
        base = VIGScorer.from_pretrained(path, counterfactual="blur", device="cpu", dtype=torch.float32,
                                         batch_tokens=args.batch_tokens[0], prompt_format="template", image_pad="none")
    model, processor = base.model, base.processor
    params = param_counts(model)
    samples = make_corpus(args.samples, seed=args.seed)
    warm = make_corpus(WARMUP, seed=args.seed + 1000)
    stats = token_stats(base, samples)
    print(f"model: {params['total'] / 1e6:.1f}M parameters {params}; corpus {describe(samples)}")
    print(f"tokens: { {k: v for k, v in stats.items() if k != 'lengths'} }", flush=True)

    # Other processes may share the CPUs. To keep their load from favouring one procedure, the samples are
    # cut into chunks, every procedure runs on a chunk back to back, and each (procedure, chunk) time is
    # the best of --repeats rounds; a procedure's time is the sum over chunks. score() is called per chunk,
    # so one batch holds at most a chunk's sequences.
    chunks = [samples[i:i + args.chunk] for i in range(0, len(samples), args.chunk)]
    scorers = {(bt, workers): with_options(base, batch_tokens=bt, prep_workers=workers, prep_chunk=args.prep_chunk)
               for bt in args.batch_tokens for workers in (0, 1)}
    procs = {key: (lambda c, s=s: scorer_vigs(s.score(c))) for key, s in scorers.items()}
    if not args.no_naive:
        procs["naive"] = lambda c: naive_scores(model, processor, c)
    ref = "naive" if not args.no_naive else (args.batch_tokens[0], 0)
    for fn in procs.values():
        fn(warm)
    chunk_best = {name: [float("inf")] * len(chunks) for name in procs}
    forward_s = {name: [float("inf")] * len(chunks) for name in procs}  # forwards of the best run of each chunk
    clock = ForwardClock()
    vigs: dict = {name: [] for name in procs}
    loads = [os.getloadavg()[0]]
    for rnd in range(args.repeats):
        order = list(procs) if rnd % 2 == 0 else list(reversed(procs))  # no procedure always runs first
        for ci, chunk in enumerate(chunks):
            for name in order:
                fn = procs[name]
                before = clock.seconds
                out, secs = timed(lambda: fn(chunk))
                if secs < chunk_best[name][ci]:
                    chunk_best[name][ci] = secs
                    forward_s[name][ci] = clock.seconds - before
                if rnd == 0:
                    vigs[name] += out
        loads.append(os.getloadavg()[0])
        print(f"round {rnd}: " + ", ".join(f"{procedure_name(k)}: {sum(v):.1f}s" for k, v in chunk_best.items())
              + f" (best so far); load average {loads[-1]:.1f}", flush=True)
    clock.close()
    best = {name: sum(v) for name, v in chunk_best.items()}
    reference = vigs[ref]
    n = len(samples)
    ref_s = best[ref]
    table_rows = []
    for key in scorers:
        secs = best[key]
        table_rows.append([procedure_name(key), key[0], f"{secs:.1f}", f"{sum(forward_s[key]):.1f}", f"{n / secs:.2f}",
                           f"{stats['tokens'] / secs:.0f}", f"{ref_s / secs:.2f}x",
                           "0 (reference)" if key == ref else f"{vig_diff(vigs[key], reference):.2e}"])
    prefetch_lines = [
        f"- batch_tokens {bt}: prefetch on / off time ratio {best[(bt, 1)] / best[(bt, 0)]:.3f}; max abs VIG "
        f"difference on vs off {vig_diff(vigs[(bt, 1)], vigs[(bt, 0)]):.1e}" for bt in args.batch_tokens]
    if ref == "naive":
        table_rows.append(["naive (batch 1, full logits)", "-", f"{ref_s:.1f}", "-", f"{n / ref_s:.2f}",
                           f"{stats['tokens'] / ref_s:.0f}", "1.00x", "0 (reference)"])
    ref_name = "naive" if ref == "naive" else "prefetch off"
    table = markdown_table(["procedure", "batch_tokens", "time (s)", "of which forwards (s)", "samples/s", "tokens/s",
                            f"speed-up vs {ref_name}", f"max abs VIG diff vs {ref_name}"], table_rows)
    scored = np.array([v for v in reference if v is not None])
    total_s = time.perf_counter() - t_start
    kinds = describe(samples)
    body = "\n".join([
        *machine_lines(),
        f"- command: `{command_line()}`",
        f"- model: random-weight LLaVA-shaped checkpoint (vig_udf.tiny, {CPU_SIZE}), "
        f"{params['total'] / 1e6:.1f}M parameters (language model {params['language_model'] / 1e6:.1f}M "
        f"including input embeddings {params['embeddings'] / 1e6:.1f}M, output head {params['lm_head'] / 1e6:.1f}M, "
        f"vision tower {params['vision_tower'] / 1e6:.1f}M, projector {params['projector'] / 1e6:.2f}M), "
        f"vocab {len(processor.tokenizer)}, {stats['image_tokens_per_image']} image tokens per image, float32",
        f"- samples: {n} from benchmarks/corpus.py seed {args.seed} ({kinds['kinds']}; "
        f"{stats['scored_samples']} with an image are scored, text-only rows are counted in samples/s but not forwarded); "
        f"{stats['tokens']} tokens forwarded over both passes (mean {stats['mean_len']:.0f}, "
        f"max {stats['max_len']} per sequence), {stats['answer_tokens']} answer tokens",
        f"- counterfactual: blur, sigma {base.options.blur_sigma} of the shorter side; "
        f"after a warm-up on {WARMUP} other rows, the rows are timed in chunks of {args.chunk} (one score() call "
        f"each), every procedure back to back on a chunk (the order reversed every other round), best of "
        f"{args.repeats} rounds per (procedure, chunk), summed; samples/s counts all {n} rows",
        f"- prefetch: the scorer prepares rows in units of prep_chunk={args.prep_chunk} (so a {args.chunk}-row call "
        f"has {-(-args.chunk // args.prep_chunk)}); off = prep_workers 0 (prepare, then forward, in turn), on = "
        f"prep_workers 1 (the next unit is prepared in a background thread during the forwards); same batches",
        f"- 1-minute load average at the start and after each round: {', '.join(f'{x:.1f}' for x in loads)} "
        f"(this process alone accounts for about 2; more means other processes shared the {os.cpu_count()} CPUs)",
        f"- sample VIG ({ref_name} procedure; random weights, so only a sanity check that they are not trivial): "
        f"mean {scored.mean():.4f}, min {scored.min():.4f}, max {scored.max():.4f}",
        f"- CPU preparation alone (chat template, masking, blur, processor; single thread): {stats['prep_s']:.1f}s "
        f"for the {n} rows",
        f"- the script ran {total_s:.0f}s in all",
        "",
        table,
        "",
        *prefetch_lines,
    ])
    print()
    print(body)
    if not args.no_write:
        versus = "prefetch off vs on" + ("" if args.no_naive else " vs naive batch-size-1 scoring")
        append_benchmarks(f"CPU, VIGScorer {versus} (benchmarks/score_cpu.py)", body)
        print(f"\nappended to {ROOT / 'BENCHMARKS.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
