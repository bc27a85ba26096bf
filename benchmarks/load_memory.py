"""Host memory of a scorer load against the size of the weights, and what verifying the weights costs.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/load_memory.py                # about 2 GB of fp32 weights
    PYTHONPATH=$PWD .venv/bin/python benchmarks/load_memory.py --layers 2 --no-write   # a quick look
    python3 benchmarks/load_memory.py --device cuda --no-write                          # host memory of a GPU load

A LLaVA-shaped random-weight checkpoint (vig_udf.tiny, ``--hidden`` x ``--layers``) is saved twice, in
float32 and in bfloat16 (safetensors, as ``save_pretrained`` writes them; released LLaVA checkpoints are
half precision). Each load then runs in a fresh Python process (``VIGScorer.from_pretrained`` on
``--device``):

- float32 file loaded as float32 (the CPU scorer's default);
- bfloat16 file loaded as bfloat16 (the GPU default dtype with a half-precision checkpoint);
- float32 file loaded as bfloat16 (a conversion on the way, as a float16 checkpoint scored in bfloat16).

For each: the process's resident memory after loading and dropping a tiny checkpoint of the same family (the
baseline: every library the load imports, and the allocator's pools), its peak during the
load (``VmHWM``, the kernel's own high-water mark, so no peak is missed), its anonymous and file-backed parts
(sampled every 2 ms: file-backed pages are the memory-mapped safetensors file, which the kernel can drop
and share between processes; anonymous pages are copies), after the load and after reading every weight
once (as the first forward passes do: memory-mapped weights are only read then), and the load's time. Then, for
the float32 file: the driver's full SHA-256 of the weights (a cold digest cache) against a worker's check
of the same files (``weight_stamps`` + ``verified_fingerprint``: a stat and the safetensors header).

The files are in the page cache when they are loaded (just written), so the times are not disk reads.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LOADS = (("float32", "float32"), ("bfloat16", "bfloat16"), ("float32", "bfloat16"))  # (file dtype, load dtype)


def memory() -> dict[str, int]:
    """This process's VmRSS, VmHWM, RssAnon and RssFile in bytes (Linux ``/proc/self/status``)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def build(out: Path, hidden: int, layers: int) -> dict:
    """The float32 checkpoint and its bfloat16 copy under ``out``; returns their folders and sizes."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vig_udf.tiny import TinySize, build_tiny_checkpoint

    size = TinySize(hidden_size=hidden, num_layers=layers, num_heads=max(1, hidden // 128),
                    intermediate_size=int(hidden * 2.6875), vision_hidden_size=max(32, hidden // 2),
                    vision_layers=layers, image_size=336, patch_size=14)
    build_tiny_checkpoint("llava", out / "warmup", seed=0)  # loaded first: the libraries' lazy imports
    fp32 = build_tiny_checkpoint("llava", out / "float32", size=size, seed=0)
    model = AutoModelForImageTextToText.from_pretrained(fp32, dtype=torch.bfloat16)
    model.save_pretrained(out / "bfloat16")
    AutoProcessor.from_pretrained(fp32).save_pretrained(out / "bfloat16")
    params = sum(p.numel() for p in model.parameters())
    return {"parameters": params, "size": str(size),
            **{name: {"path": str(out / name), "weight_bytes": _weight_bytes(out / name)}
               for name in ("float32", "bfloat16")}}


def _weight_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.suffix == ".safetensors")


def measure_load(path: str, dtype: str, device: str) -> dict:
    """One load in this (fresh) process: baseline, peak, anonymous and file-backed memory, seconds.

    A tiny checkpoint of the same family is loaded and dropped first, so that the baseline holds every
    library the load imports (transformers imports model and processor classes lazily)."""
    import gc

    import torch

    from vig_udf.scoring.scorer import VIGScorer

    torch.set_num_threads(1)
    warmup = VIGScorer.from_pretrained(str(Path(path).parent / "warmup"), device=device, dtype=dtype)
    del warmup
    gc.collect()
    base = memory()
    peaks = dict(base)
    done = threading.Event()

    def sample():
        while not done.is_set():
            now = memory()
            for key in ("RssAnon", "RssFile"):
                peaks[key] = max(peaks[key], now[key])
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    scorer = VIGScorer.from_pretrained(path, device=device, dtype=dtype)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    after = memory()
    held = sum(p.numel() * p.element_size() for p in scorer.model.parameters())
    with torch.no_grad():  # read every weight once, as the first forward passes do
        for p in scorer.model.parameters():
            p.sum()
    touched = memory()
    gpu = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
    return {"baseline": base, "peak_rss": after["VmHWM"], "peak_anon_sampled": peaks["RssAnon"],
            "peak_file_sampled": peaks["RssFile"], "after": after, "touched": touched, "parameter_bytes": held,
            "seconds": seconds,
            "device": str(scorer.device), "gpu_peak_allocated": gpu}


def measure_verify(path: str) -> dict:
    """The driver's full hash of the weights (cold cache) against a worker's check of the same files."""
    from vig_udf.scoring.identity import model_fingerprint, verified_fingerprint, weight_stamps

    with tempfile.TemporaryDirectory(prefix="vig-digests-") as caches:
        os.environ["VIG_DIGEST_CACHE"] = os.path.join(caches, "driver.json")
        started = time.perf_counter()
        stamps = weight_stamps(path)
        fingerprint = model_fingerprint(path)
        driver = time.perf_counter() - started
        os.environ["VIG_DIGEST_CACHE"] = os.path.join(caches, "worker.json")
        started = time.perf_counter()
        verified_fingerprint(path, fingerprint, stamps)
        return {"driver_hash_s": driver, "worker_check_s": time.perf_counter() - started}


def _child(*args) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"{args}: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def run(args) -> tuple[dict, str]:
    work = Path(args.workdir)
    built = _child("--build", str(work), str(args.hidden), str(args.layers))
    rows = ["| file | loaded as | weights on disk GiB | parameters in memory GiB | peak RSS - baseline GiB "
            "| peak anonymous - baseline GiB | peak file-backed - baseline GiB | anonymous after load - baseline GiB "
            "| peak RSS / file | after reading every weight: anonymous / file-backed - baseline GiB "
            "| GPU peak allocated GiB | load s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    loads = []
    for file_dtype, dtype in LOADS:
        ckpt = built[file_dtype]
        m = _child("--measure", ckpt["path"], dtype, args.device)
        base = m["baseline"]
        rss, anon = m["peak_rss"] - base["VmRSS"], m["peak_anon_sampled"] - base["RssAnon"]
        loads.append({"file": file_dtype, "dtype": dtype, **m})
        rows.append(f"| {file_dtype} | {dtype} | {gib(ckpt['weight_bytes'])} | {gib(m['parameter_bytes'])} | "
                    f"{gib(rss)} | {gib(anon)} | {gib(m['peak_file_sampled'] - base['RssFile'])} | "
                    f"{gib(m['after']['RssAnon'] - base['RssAnon'])} | {rss / ckpt['weight_bytes']:.2f} | "
                    f"{gib(m['touched']['RssAnon'] - base['RssAnon'])} / {gib(m['touched']['RssFile'] - base['RssFile'])} | "
                    f"{gib(m['gpu_peak_allocated']) if m['gpu_peak_allocated'] is not None else '-'} | "
                    f"{m['seconds']:.1f} |")
    verify = _child("--verify", built["float32"]["path"])
    table = "\n".join(rows) + (
        f"\n\nVerifying the {gib(built['float32']['weight_bytes'])} GiB float32 weights: the driver's full SHA-256 "
        f"{verify['driver_hash_s']:.2f} s, a worker's check of the same files (stat + safetensors header) "
        f"{verify['worker_check_s'] * 1000:.1f} ms.\n")
    return {"checkpoint": built, "loads": loads, "verify": verify}, table


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("--build", "--measure", "--verify"):
        mode, *rest = sys.argv[1:]
        if mode == "--build":
            result = build(Path(rest[0]), int(rest[1]), int(rest[2]))
        elif mode == "--measure":
            result = measure_load(rest[0], rest[1], rest[2])
        else:
            result = measure_verify(rest[0])
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=2048, help="language model hidden size")
    parser.add_argument("--layers", type=int, default=8, help="language model and vision tower layers")
    parser.add_argument("--device", default="cpu", help="where the scorer loads the model (cpu, cuda)")
    parser.add_argument("--workdir", default=None, help="keep the checkpoints here (default: a temporary folder, "
                        "removed afterwards)")
    parser.add_argument("--no-write", action="store_true", help="do not append to BENCHMARKS.md")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="vig-load-memory-") as tmp:
        args.workdir = args.workdir or tmp
        report, table = run(args)
    print(table)
    print(json.dumps(report))
    if not args.no_write:
        import transformers

        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        with open(ROOT / "BENCHMARKS.md", "a") as f:
            f.write(f"\n## {now}: host memory of a scorer load on {args.device} (benchmarks/load_memory.py)\n\n"
                    f"Machine: {os.cpu_count()} cores, {platform.machine()}, transformers {transformers.__version__}; "
                    f"1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after. Command: "
                    f"`python benchmarks/load_memory.py {shlex.join(sys.argv[1:])}`. Checkpoint: LLaVA-shaped, "
                    f"{report['checkpoint']['parameters'] / 1e6:.0f}M parameters ({report['checkpoint']['size']}), "
                    "random weights, one safetensors file per dtype, in the page cache.\n\n" + table)


if __name__ == "__main__":
    main()
