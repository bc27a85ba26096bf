"""A simulated accelerator: the score job's device step takes the time a GPU at a given rate would, and every
step is recorded, so that whether the dataflow keeps a GPU busy can be measured on a machine without one.

The scorer's device step is :func:`vig_udf.scoring.forward.answer_logprobs`, which ``VIGScorer`` calls once per
forward batch (collate, copy to the device, forward, head, copy back). In every Spark Python worker this
module wraps it: the real step runs (on a tiny checkpoint, milliseconds on the CPU), then the call sleeps
until it has lasted ``tokens / tokens_per_s`` seconds, where ``tokens`` is the batch's padded size (rows x
longest sequence: what a GPU computes and what ``batch_tokens`` budgets). While the step sleeps, the
worker's other threads (the scorer's preparation threads) run, as they do while a GPU computes. The
accelerator counts as busy from the call to ``start + tokens / tokens_per_s``; a step whose stand-in CPU
computation took longer returns later, and the excess is recorded as ``overrun_s`` (time a GPU would not
have needed: keep the rate low enough that overruns stay rare). The scores are the real ones of the tiny
checkpoint, so the job's rows, commits and resume are the product's own.

Each step is appended as one JSON line to ``<dir>/busy-<pid>.jsonl``: ``{"event": "step", "pid", "daemon",
"start", "end", "rows", "tokens", "overrun_s", "stage", "partition"}`` (wall-clock seconds, comparable
between the processes of one machine); each worker first writes ``{"event": "worker", "pid", "daemon",
"start"}``. ``daemon`` is the pid of the Python daemon that forked the worker: one per executor, so on a
``local-cluster`` whose executors run one task at a time (``spark.task.cpus`` = executor cores) it names
the executor's accelerator, whichever of its Python workers runs the task.

Plugging in, without the product knowing: Spark starts an executor's Python workers through the daemon
module named by ``spark.python.daemon.module`` (pyspark's ``pyspark.daemon`` by default), which forks a
worker per task slot and runs pyspark's worker main in it. Run as that daemon, this module adds an import
hook and then runs pyspark's daemon unchanged: in each forked worker, the first import of
``vig_udf.scoring.scorer`` (when the scoring function loads the scorer) wraps its ``answer_logprobs``.
Nothing heavy is imported in the daemon before it forks, and the worker's start and authentication are
pyspark's own::

    spark.python.daemon.module            benchmarks.sim_accelerator   (the repository root on PYTHONPATH)
    spark.executorEnv.VIG_SIM_TOKENS_PER_S 4000
    spark.executorEnv.VIG_SIM_DIR          /tmp/busy

The reading side (:func:`read_events`, :func:`accelerator_report`, the interval arithmetic) is used by
benchmarks/score_pipeline.py.
"""

from __future__ import annotations

import importlib.abc
import json
import os
import sys
import time
from pathlib import Path

RATE_ENV, DIR_ENV = "VIG_SIM_TOKENS_PER_S", "VIG_SIM_DIR"
SCORER_MODULE = "vig_udf.scoring.scorer"


class SimulatedStep:
    """``answer_logprobs`` made to last as long as a device computing ``tokens_per_s`` padded tokens a second."""

    def __init__(self, step, tokens_per_s: float, log_dir: str | os.PathLike, *, clock=time.time, sleep=time.sleep):
        if tokens_per_s <= 0:
            raise ValueError(f"tokens_per_s must be positive, got {tokens_per_s}")
        self.step, self.tokens_per_s, self.clock, self.sleep = step, float(tokens_per_s), clock, sleep
        self.log = Path(log_dir) / f"busy-{os.getpid()}.jsonl"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._write({"event": "worker", "pid": os.getpid(), "daemon": os.getppid(), "start": self.clock()})

    def __call__(self, model, seqs, **kwargs):
        start = self.clock()
        out = self.step(model, seqs, **kwargs)
        tokens = len(seqs) * max((len(s) for s in seqs), default=0)
        due = start + tokens / self.tokens_per_s
        computed = self.clock()
        if computed < due:
            self.sleep(due - computed)
        stage, partition = _task()
        self._write({"event": "step", "pid": os.getpid(), "daemon": os.getppid(), "start": start, "end": due,
                     "rows": len(seqs), "tokens": tokens, "overrun_s": max(0.0, computed - due), "stage": stage,
                     "partition": partition})
        return out

    def _write(self, event: dict) -> None:
        with open(self.log, "a") as f:  # one line per step, flushed on close: a killed worker keeps its past steps
            f.write(json.dumps(event) + "\n")


def _task() -> tuple[int | None, int | None]:
    try:
        from pyspark import TaskContext
    except ImportError:
        return None, None
    ctx = TaskContext.get()
    return (ctx.stageId(), ctx.partitionId()) if ctx is not None else (None, None)


def install(scorer_module, tokens_per_s: float, log_dir: str | os.PathLike) -> SimulatedStep:
    """Replace ``scorer_module``'s device step by a :class:`SimulatedStep` (once)."""
    if not isinstance(scorer_module.answer_logprobs, SimulatedStep):
        scorer_module.answer_logprobs = SimulatedStep(scorer_module.answer_logprobs, tokens_per_s, log_dir)
    return scorer_module.answer_logprobs


def settings_from_env() -> tuple[float, str]:
    """The rate and the record folder, from ``VIG_SIM_TOKENS_PER_S`` and ``VIG_SIM_DIR``."""
    missing = [name for name in (RATE_ENV, DIR_ENV) if not os.environ.get(name)]
    if missing:
        raise RuntimeError(f"the simulated accelerator needs {missing} in the executors' environment "
                           "(spark.executorEnv.*)")
    return float(os.environ[RATE_ENV]), os.environ[DIR_ENV]


class InstallOnImport(importlib.abc.MetaPathFinder):
    """An import hook: when ``vig_udf.scoring.scorer`` is first imported, :func:`install` runs on it."""

    def __init__(self, tokens_per_s: float, log_dir: str):
        self.tokens_per_s, self.log_dir = tokens_per_s, log_dir

    def find_spec(self, name, path, target=None):
        if name != SCORER_MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            install(module, self.tokens_per_s, self.log_dir)

        spec.loader.exec_module = exec_module
        return spec


def serve() -> None:
    """Run pyspark's daemon with the import hook in place (inherited by every worker it forks)."""
    import pyspark.daemon

    sys.meta_path.insert(0, InstallOnImport(*settings_from_env()))
    pyspark.daemon.manager()


# -- reading the record ----------------------------------------------------------------------------------

def read_events(log_dir: str | os.PathLike) -> list[dict]:
    """Every event that the workers wrote under ``log_dir`` (a line cut off by a killed worker is skipped)."""
    events = []
    for path in sorted(Path(log_dir).glob("busy-*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


def union(intervals) -> list[tuple[float, float]]:
    """The union of ``(start, end)`` intervals, as sorted disjoint intervals."""
    merged: list[list[float]] = []
    for start, end in sorted((s, e) for s, e in intervals if e > s):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


def length(intervals) -> float:
    """Total length covered by ``intervals`` (overlaps counted once)."""
    return sum(e - s for s, e in union(intervals))


def overlap(a, b) -> float:
    """Length of the time covered by both interval sets ``a`` and ``b``."""
    a, b = union(a), union(b)
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if hi > lo:
            total += hi - lo
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def clip(intervals, lo: float, hi: float) -> list[tuple[float, float]]:
    """``intervals`` cut to the window ``[lo, hi]``."""
    return [(max(s, lo), min(e, hi)) for s, e in intervals if min(e, hi) > max(s, lo)]


def accelerator_report(events: list[dict], *, until: float | None = None) -> list[dict]:
    """Per accelerator (daemon), the share of wall time it was busy after its first step.

    The window of each runs from the end of its first step (the warm-up: model load, first preparation) to
    ``until`` (default: the end of the last step on any accelerator), so an accelerator that idles while
    another finishes counts as idle. Also: steps, rows (sequences forwarded), padded tokens, overruns (count
    and seconds), the workers it ran in.
    """
    steps = [e for e in events if e.get("event") == "step"]
    if not steps:
        return []
    until = until if until is not None else max(e["end"] for e in steps)
    out = []
    for daemon in sorted({e["daemon"] for e in events}):
        own = sorted((e for e in steps if e["daemon"] == daemon), key=lambda e: e["start"])
        workers = sorted({e["pid"] for e in events if e["daemon"] == daemon})
        if not own:
            out.append({"accelerator": daemon, "workers": workers, "steps": 0, "busy_share": None})
            continue
        warm = own[0]["end"]
        busy = length(clip([(e["start"], e["end"]) for e in own[1:]], warm, until))
        window = until - warm
        out.append({"accelerator": daemon, "workers": workers, "steps": len(own), "rows": sum(e["rows"] for e in own),
                    "tokens": sum(e["tokens"] for e in own), "overruns": sum(e["overrun_s"] > 0 for e in own),
                    "overrun_s": sum(e["overrun_s"] for e in own),
                    "first_step_start": own[0]["start"], "warm_at": warm, "window_s": window, "busy_s": busy,
                    "busy_share": busy / window if window > 0 else None})
    return out


if __name__ == "__main__":
    serve()
