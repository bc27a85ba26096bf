"""GPU benchmark: VIGScorer throughput on a LLaVA-1.5-7B-shaped model, with the naive batch-size-1 baseline.

The model has LLaVA-1.5-7B's configuration (CLIP ViT-L/14-336 vision tower: hidden 1024, 24 layers, 16
heads, intermediate 4096, patch 14, 336 px, so 576 image tokens; 2-layer GELU projector; Llama-2-7B
language model: hidden 4096, 32 layers, 32 heads, intermediate 11008, vocab 32000) with random weights,
built from its config directly on the device in bfloat16: nothing is downloaded. The processor is built
locally (a 32000-token BPE tokenizer trained on the synthetic corpus, LLaVA chat template, CLIP image
processor at 336 px). The samples come from benchmarks/corpus.py.

For each ``--batch-tokens`` value, after a warm-up, it times ``VIGScorer.score`` over all samples (blur
counterfactual, both passes) and reports samples/s, tokens/s, model FLOPs utilisation and peak GPU memory;
then the levers of the GPU throughput work at the best budget, each against the scorer's defaults on the
same rows (``--levers``, default on):
- prefetch: preparation in the calling thread (``prep_workers=0``) vs one and two background threads
  that prepare the next ``--prep-chunk`` rows while the GPU runs the current ones;
- stacking: both passes of a sample in one batch (default) vs the real-image and the counterfactual passes
  in separate batches (``stack_passes=False``);
- answer-position logits vs full logits: the naive procedure (benchmarks/naive.py: batch size 1, full
  logits) on a subset, as a ratio.
Pinned host memory with asynchronous copies is always on for CUDA (vig_udf.scoring.forward), not a lever here.

Model FLOPs (the standard 2 x parameters x tokens forward estimate, attention's quadratic term left out):
    2 * (language-model parameters without the input embeddings) * (tokens of both passes)
  + 2 * (output head parameters) * (answer tokens of both passes)      [the head is only needed there]
  + 2 * (vision tower parameters) * (patches + 1 class token) * (images of both passes)
  + 2 * (projector parameters) * (image tokens) * (images of both passes)
MFU = model FLOPs / wall time / peak; the naive procedure's extra head FLOPs at every position are waste
and are not counted for it either. Peak dense bf16: 989 TFLOP/s for H100 SXM and H200, 756 for H100 PCIe
(835 for H100 NVL; --peak-tflops to override). The wall time includes the CPU preparation (chat template, masking, blur,
image processor), which ``score`` overlaps with the forward passes when prefetching; it is reported
separately too (one thread, not overlapped).

    python benchmarks/score_gpu.py --write                           # H100/H200, a few minutes
    python benchmarks/score_gpu.py --small --samples 8               # CPU smoke test, small config

The Spark job against the bare scorer loop on the same GPU machine: ``benchmarks/score_spark.py`` (local
mode; with one visible GPU both the bare loop and the Spark task score on ``cuda``), see its docstring.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.corpus import describe, make_corpus  # noqa: E402
from benchmarks.naive import naive_scores  # noqa: E402
from benchmarks.score_cpu import (append_benchmarks, benchmark_tokenizer, command_line,  # noqa: E402
                                  machine_lines, markdown_table, padded_tokens, param_counts, scorer_vigs, timed,
                                  token_stats, vig_diff)
from vig_udf.scoring.options import ScorerOptions  # noqa: E402
from vig_udf.scoring.scorer import VIGScorer  # noqa: E402
from vig_udf.tiny import LLAVA_TEMPLATE  # noqa: E402

VOCAB = 32000
FULL = dict(vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                        image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu"),
            text=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5))
SMALL = dict(vision=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         image_size=112, patch_size=14, projection_dim=64, hidden_act="quick_gelu"),
             text=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=4, max_position_embeddings=4096, rms_norm_eps=1e-5))
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200": 989.0}  # dense bf16, first match wins
WARMUP = 8


def build_model_and_processor(dims: dict, *, device, dtype, pil_image_processor: bool = False):
    """Random-weight LLaVA model built on ``device`` in ``dtype``, and a processor built locally."""
    from transformers import (CLIPImageProcessor, CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig,
                              LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor)

    tok = benchmark_tokenizer(VOCAB)
    tok.chat_template = LLAVA_TEMPLATE
    if len(tok) > VOCAB:  # every id the tokenizer can produce must be a row of the embedding
        raise RuntimeError(f"tokenizer has {len(tok)} tokens, more than the model vocabulary {VOCAB}")
    vision = CLIPVisionConfig(**dims["vision"])
    text = LlamaConfig(vocab_size=VOCAB, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id, **dims["text"])
    side, patch = vision.image_size, vision.patch_size
    image_seq = (side // patch) ** 2
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                         image_seq_length=image_seq, vision_feature_layer=-2,
                         vision_feature_select_strategy="default", projector_hidden_act="gelu")
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.eval()
    image_cls = CLIPImageProcessorPil if pil_image_processor else CLIPImageProcessor
    image_processor = image_cls(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=LLAVA_TEMPLATE)
    return model, processor


def fmt_params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


def model_flops(params: dict, stats: dict, config) -> float:
    """Forward FLOPs of the useful work, both passes (see the module docstring)."""
    vision = config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    images = 2 * stats["scored_samples"]
    lm_body = params["language_model"] - params["embeddings"]
    return 2.0 * (lm_body * stats["tokens"] + params["lm_head"] * stats["answer_tokens"]
                  + params["vision_tower"] * (patches + 1) * images + params["projector"] * patches * images)


def _finite(vigs: dict) -> np.ndarray:
    values = np.array([v for vs in vigs.values() for v in vs if v is not None], dtype=float)
    values = values[np.isfinite(values)]
    return values if values.size else np.array([np.nan])


def peak_flops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    if override:
        return override * 1e12, f"{override:g} TFLOP/s (--peak-tflops)"
    if device.type != "cuda":
        return None, "n/a (not a GPU)"
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_TFLOPS.items():
        if all(part in name for part in key.split()):
            return tflops * 1e12, f"{tflops:g} TFLOP/s dense bf16 ({name})"
    return None, f"unknown for {name} (pass --peak-tflops)"


LEVERS = {  # label -> ScorerOptions overrides; the first is the reference
    "defaults (prefetch 1 thread, passes stacked)": {},
    "prefetch off (prepare in the calling thread)": {"prep_workers": 0},
    "prefetch 2 threads": {"prep_workers": 2},
    "passes in separate batches (stack_passes=False)": {"stack_passes": False},
}


def measure_levers(make_scorer, bt: int, samples: list, warm: list, stats: dict, *, cuda: bool) -> str:
    """Time ``score`` over ``samples`` with each lever of :data:`LEVERS`; a markdown table.

    The levers are measured twice in alternating order and the best time of each is kept, so a slow
    moment of the machine does not land on one lever only.
    """
    scorers = {label: make_scorer(bt, **overrides) for label, overrides in LEVERS.items()}
    times, vigs = {label: float("inf") for label in LEVERS}, {}
    for rnd in range(2):
        for label in (list(LEVERS) if rnd == 0 else list(reversed(LEVERS))):
            s = scorers[label]
            s.score(warm)
            results, secs = timed(lambda: s.score(samples), cuda=cuda)
            times[label] = min(times[label], secs)
            vigs[label] = scorer_vigs(results)
            print(f"lever {label}: {secs:.1f}s", flush=True)
    ref = next(iter(LEVERS))
    n = len(samples)
    rows = [[label, f"{secs:.1f}", f"{n / secs:.2f}", f"{stats['tokens'] / secs:,.0f}",
             f"{times[ref] / secs:.3f}x",
             "0 (reference)" if label == ref else f"{vig_diff(vigs[label], vigs[ref]):.1e}"]
            for label, secs in times.items()]
    return markdown_table(["procedure", "time (s)", "samples/s", "tokens/s", "speed vs defaults",
                           "max abs VIG diff vs defaults"], rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="small config (CPU smoke test)")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-tokens", type=int, nargs="+", default=None,
                    help="token budgets to measure (default 8192 16384 32768 65536 on GPU, 1024 4096 on CPU)")
    ap.add_argument("--naive-samples", type=int, default=32, help="rows of the corpus the naive baseline scores")
    ap.add_argument("--device", default=None, help="default cuda when available, else cpu")
    ap.add_argument("--dtype", default=None, help="default bfloat16 on cuda, float32 on cpu")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--pil-image-processor", action="store_true",
                    help="CLIPImageProcessorPil (as vig_udf.tiny) instead of the torchvision CLIPImageProcessor")
    ap.add_argument("--prep-chunk", type=int, default=64,
                    help="rows prepared as one unit in every measurement (the scorer's prep_chunk)")
    ap.add_argument("--no-levers", action="store_true", help="skip the prefetch and stacking measurements")
    ap.add_argument("--write", action="store_true", help="append the results to BENCHMARKS.md")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if cuda else torch.float32)
    budgets = args.batch_tokens or ([8192, 16384, 32768, 65536] if cuda else [1024, 4096])
    torch.manual_seed(args.seed)

    dims = SMALL if args.small else FULL
    t0 = time.perf_counter()
    model, processor = build_model_and_processor(dims, device=device, dtype=dtype,
                                                 pil_image_processor=args.pil_image_processor)
    build_s = time.perf_counter() - t0
    params = param_counts(model)
    weights_gib = torch.cuda.memory_allocated(device) / 2**30 if cuda else None
    print(f"model built in {build_s:.0f}s: {fmt_params(params['total'])} parameters {params}", flush=True)

    samples = make_corpus(args.samples, seed=args.seed)
    warm = make_corpus(WARMUP, seed=args.seed + 1000)
    naive_set = samples[: args.naive_samples]

    def scorer(bt: int, **levers) -> VIGScorer:
        # the chat template on unpadded images, as the naive procedure (benchmarks/naive.py) renders them
        options = ScorerOptions(counterfactual="blur", batch_tokens=bt, prep_chunk=args.prep_chunk,
                                prompt_format="template", image_pad="none", **levers)
        return VIGScorer(model, processor, options=options,
                         model_ref={"model": "random-weight LLaVA-1.5-7B config" if not args.small else "small"},
                         device=device, dtype=dtype)

    st = token_stats(scorer(budgets[0]), samples)
    naive_stats = token_stats(scorer(budgets[0]), naive_set)
    flops = model_flops(params, st, model.config)
    peak, peak_text = peak_flops(device, args.peak_tflops)
    print(f"corpus {describe(samples)}\ntokens { {k: v for k, v in st.items() if k != 'lengths'} }", flush=True)

    rows, vigs, best = [], {}, None
    n = len(samples)
    for bt in budgets:
        s = scorer(bt)
        s.score(warm)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        results, secs = timed(lambda: s.score(samples), cuda=cuda)
        vigs[bt] = scorer_vigs(results)
        errors = sum(r.status not in ("ok", "text_only") for r in results)
        nonfinite = sum(v is not None and not np.isfinite(v) for v in vigs[bt])
        if nonfinite:
            print(f"warning: {nonfinite} non-finite sample VIGs at batch_tokens={bt}", file=sys.stderr)
        peak_mem = f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f}" if cuda else "-"
        mfu = f"{100 * flops / secs / peak:.1f}%" if peak else "n/a"
        pad = 100 * (padded_tokens(st["lengths"], bt) / max(st["tokens"], 1) - 1)
        rows.append([bt, f"{secs:.1f}", f"{n / secs:.2f}", f"{st['tokens'] / secs:,.0f}", mfu, peak_mem,
                     f"{pad:.1f}%", errors])
        if errors:
            first = next(r for r in results if r.status not in ("ok", "text_only"))
            print(f"warning: {errors} samples failed at batch_tokens={bt}: {first.status}: {first.error}",
                  file=sys.stderr)
        if errors == 0 and (best is None or secs < best[1]):
            best = (bt, secs)
        print(f"batch_tokens={bt}: {secs:.1f}s, {n / secs:.2f} samples/s, errors {errors}", flush=True)

    best_bt = best[0] if best else budgets[0]
    lever_table = "" if args.no_levers else measure_levers(scorer, best_bt, samples, warm, st, cuda=cuda)

    # The naive baseline on a subset, and the scorer on the same subset at the best budget.
    naive_scores(model, processor, warm[:2], device=device, dtype=dtype)
    naive, naive_s = timed(lambda: naive_scores(model, processor, naive_set, device=device, dtype=dtype), cuda=cuda)
    s = scorer(best_bt)
    s.score(warm)
    sub_results, sub_s = timed(lambda: s.score(naive_set), cuda=cuda)
    k = len(naive_set)
    diff = vig_diff(scorer_vigs(sub_results), naive)
    naive_rate, sub_rate = k / naive_s, k / sub_s
    full_rate = n / best[1] if best else float("nan")
    naive_mfu = (f"{100 * model_flops(params, naive_stats, model.config) / naive_s / peak:.1f}%" if peak else "n/a")

    table = markdown_table(["batch_tokens", "time (s)", "samples/s", "tokens/s", "MFU", "peak GPU memory (GiB)",
                            "padding", "failed samples"], rows)
    naive_table = markdown_table(
        ["procedure", "rows", "time (s)", "samples/s", "tokens/s", "MFU", "speed-up vs naive"],
        [["naive (batch 1, full logits)", k, f"{naive_s:.1f}", f"{naive_rate:.2f}",
          f"{naive_stats['tokens'] / naive_s:,.0f}", naive_mfu, "1.00x"],
         [f"VIGScorer.score, batch_tokens={best_bt}, same rows", k, f"{sub_s:.1f}", f"{sub_rate:.2f}",
          f"{naive_stats['tokens'] / sub_s:,.0f}", "-", f"{sub_rate / naive_rate:.2f}x"],
         [f"VIGScorer.score, batch_tokens={best_bt}, all {n} rows", n, f"{best[1] if best else float('nan'):.1f}",
          f"{full_rate:.2f}", "-", "-", f"{full_rate / naive_rate:.2f}x"]])
    name = "LLaVA-1.5-7B configuration" if not args.small else "small LLaVA configuration (--small)"
    kinds = describe(samples)
    body = "\n".join([
        *machine_lines(),
        f"- command: `{command_line()}`",
        f"- model: random-weight {name}, {fmt_params(params['total'])} parameters (language model "
        f"{fmt_params(params['language_model'])} including input embeddings, output head "
        f"{fmt_params(params['lm_head'])}, vision tower {fmt_params(params['vision_tower'])}, projector "
        f"{fmt_params(params['projector'])}), {dtype}, "
        f"sdpa attention, {st['image_tokens_per_image']} image tokens per image, "
        f"{type(processor.image_processor).__name__}; built in {build_s:.0f}s"
        + (f"; weights {weights_gib:.1f} GiB" if weights_gib is not None else ""),
        f"- samples: {n} from benchmarks/corpus.py seed {args.seed} ({kinds['kinds']}); {st['scored_samples']} "
        f"with an image; {st['tokens']:,} tokens over both passes (mean {st['mean_len']:.0f}, max {st['max_len']} "
        f"per sequence), {st['answer_tokens']:,} answer tokens; samples/s counts every row, text-only included",
        f"- model FLOPs for the {n} rows: {flops / 1e12:.1f} TFLOP (formula in benchmarks/score_gpu.py); peak {peak_text}",
        f"- CPU preparation alone (chat template, masking, blur, image processor; one thread, inside the times "
        f"below): {st['prep_s']:.1f}s for the {n} rows ({1000 * st['prep_s'] / n:.1f} ms per row)",
        f"- each measurement after a warm-up on {WARMUP} other rows; padding = padded / real tokens - 1; "
        f"one score() call over all rows, prep_chunk {args.prep_chunk}, one background preparation thread",
        "",
        table,
        "",
        *([f"Levers at batch_tokens={best_bt}, all {n} rows, one score() call each (prep_chunk {args.prep_chunk}):",
           "", lever_table, ""] if lever_table else []),
        f"Naive baseline (benchmarks/naive.py) on the first {k} rows, and the scorer on the same rows:",
        "",
        naive_table,
        "",
        f"- max abs sample-VIG difference, scorer vs naive, on those rows: {diff:.2e} ({dtype}; batched and "
        f"batch-1 kernels round differently in low precision)",
        f"- sample VIG range (random weights, a sanity check only): {np.nanmin(_finite(vigs)):.4f} to "
        f"{np.nanmax(_finite(vigs)):.4f}",
        f"- the script ran {time.perf_counter() - t_start:.0f}s in all",
    ])
    print()
    print(body)
    if args.write:
        append_benchmarks(f"{'GPU' if cuda else 'CPU'}, VIGScorer throughput, {name} (benchmarks/score_gpu.py)",
                          body)
        print(f"\nappended to {ROOT / 'BENCHMARKS.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
