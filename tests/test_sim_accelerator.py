"""The simulated accelerator of benchmarks/sim_accelerator.py and the report of benchmarks/score_pipeline.py:
a device step that lasts tokens / rate, its record, the import hook that installs it in a Spark worker, and
the busy-share and commit arithmetic."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from benchmarks import sim_accelerator as sim
from benchmarks.score_pipeline import _gaps, pipeline_report, save_kind
from tests.conftest import random_image, sample

REPO = Path(__file__).parent.parent


class _Seq:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


class _Clock:
    def __init__(self):
        self.now, self.slept = 100.0, []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def test_a_step_lasts_its_padded_tokens_over_the_rate_and_is_recorded(tmp_path):
    clock = _Clock()

    def fast(model, seqs, **kwargs):
        clock.now += 0.05  # the stand-in forward
        return ["out", kwargs]

    step = sim.SimulatedStep(fast, 100.0, tmp_path, clock=clock, sleep=clock.sleep)
    assert step("model", [_Seq(10), _Seq(6)], pad_token_id=0) == ["out", {"pad_token_id": 0}]
    assert clock.slept == [pytest.approx(0.15)]  # 2 rows x 10 padded = 20 tokens at 100/s = 0.2 s in all

    def slow(model, seqs, **kwargs):
        clock.now += 1.0
        return None

    sim.SimulatedStep(slow, 100.0, tmp_path, clock=clock, sleep=clock.sleep)("model", [_Seq(5)])
    assert len(clock.slept) == 1  # an overrun does not sleep
    events = sim.read_events(tmp_path)
    assert [e["event"] for e in events] == ["worker", "step", "worker", "step"]
    first, second = events[1], events[3]
    assert first["start"] == 100.0 and first["end"] == pytest.approx(100.2) and first["tokens"] == 20
    assert first["rows"] == 2 and first["overrun_s"] == 0
    assert second["end"] - second["start"] == pytest.approx(0.05) and second["overrun_s"] == pytest.approx(0.95)
    with pytest.raises(ValueError, match="positive"):
        sim.SimulatedStep(fast, 0, tmp_path)


def test_a_killed_workers_cut_line_is_skipped(tmp_path):
    (tmp_path / "busy-1.jsonl").write_text(json.dumps({"event": "worker", "pid": 1, "daemon": 9}) + "\n{\"event\": ")
    assert sim.read_events(tmp_path) == [{"event": "worker", "pid": 1, "daemon": 9}]


def test_the_real_scorer_runs_through_the_simulated_step(tiny_checkpoints, tmp_path, monkeypatch):
    import vig_udf.scoring.scorer as scorer_module
    from vig_udf.scoring.scorer import VIGScorer

    records = [sample(f"s{i}", [("What is it?", "A red square " * (i + 1))], random_image(40, 30, i)) for i in range(6)]
    scorer = VIGScorer.from_pretrained(tiny_checkpoints["llava"], batch_tokens=64, prep_workers=1)
    plain = scorer.score(records)
    monkeypatch.setattr(scorer_module, "answer_logprobs",
                        sim.SimulatedStep(scorer_module.answer_logprobs, 20_000.0, tmp_path))
    timed = scorer.score(records)
    for a, b in zip(plain, timed):
        assert a.status == b.status == "ok"
        np.testing.assert_array_equal(a.token_vig, b.token_vig)
    steps = [e for e in sim.read_events(tmp_path) if e["event"] == "step"]
    assert len(steps) >= 2 and sum(e["rows"] for e in steps) == 2 * len(records)  # both passes of each sample
    for e in steps:
        assert e["end"] - e["start"] == pytest.approx(e["tokens"] / 20_000.0, abs=1e-6)  # wall-clock floats


@pytest.mark.slow
def test_the_import_hook_installs_the_step_in_a_fresh_worker(tmp_path):
    """What the daemon module does before pyspark's daemon forks: the scorer module, imported later, is wrapped."""
    code = ("import sys; from benchmarks.sim_accelerator import InstallOnImport, SimulatedStep; "
            f"sys.meta_path.insert(0, InstallOnImport(500.0, {str(tmp_path)!r})); "
            "assert 'vig_udf.scoring.scorer' not in sys.modules; "
            "import vig_udf.scoring.scorer as s; import vig_udf.scoring.forward as f; "
            "assert isinstance(s.answer_logprobs, SimulatedStep) and s.answer_logprobs.step is f.answer_logprobs; "
            "print(s.answer_logprobs.tokens_per_s)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "500.0"
    assert [e["event"] for e in sim.read_events(tmp_path)] == ["worker"]


def test_the_daemon_refuses_to_start_without_its_settings(monkeypatch):
    monkeypatch.delenv(sim.RATE_ENV, raising=False)
    monkeypatch.setenv(sim.DIR_ENV, "/tmp/x")
    with pytest.raises(RuntimeError, match="VIG_SIM_TOKENS_PER_S"):
        sim.settings_from_env()


def test_interval_arithmetic():
    assert sim.union([(3, 4), (0, 1), (0.5, 2), (5, 5)]) == [(0, 2), (3, 4)]
    assert sim.length([(0, 2), (1, 3), (10, 11)]) == 4
    assert sim.overlap([(0, 2), (4, 6)], [(1, 5)]) == 2
    assert sim.overlap([(0, 1)], [(1, 2)]) == 0
    assert sim.clip([(0, 2), (3, 4), (5, 9)], 1, 6) == [(1, 2), (3, 4), (5, 6)]
    assert _gaps([(1, 2), (3, 4)], 0, 5) == [(0, 1), (2, 3), (4, 5)] and _gaps([(0, 5)], 1, 4) == []


def _step(daemon, pid, start, end):
    return {"event": "step", "daemon": daemon, "pid": pid, "start": start, "end": end, "rows": 2, "tokens": 10,
            "overrun_s": 0.0}


def test_busy_share_counts_from_each_accelerators_first_step_to_the_last_step_anywhere():
    events = [{"event": "worker", "daemon": 1, "pid": 11}, {"event": "worker", "daemon": 2, "pid": 21},
              {"event": "worker", "daemon": 2, "pid": 22}, {"event": "worker", "daemon": 3, "pid": 31},
              _step(1, 11, 0, 1), _step(1, 11, 1, 5), _step(1, 11, 7, 10),  # idle 5-7 (a commit)
              _step(2, 21, 2, 3), _step(2, 22, 3, 6)]  # a second worker of the same executor; idle from 6 to 10
    report = {a["accelerator"]: a for a in sim.accelerator_report(events)}
    assert report[1]["busy_share"] == pytest.approx(7 / 9) and report[1]["steps"] == 3
    assert report[2]["busy_share"] == pytest.approx(3 / 7) and report[2]["workers"] == [21, 22]
    assert report[3]["steps"] == 0 and report[3]["busy_share"] is None  # a worker that never ran a batch

    summary = pipeline_report(events, commits=[(5, 7), (10, 12)], loads=Counter({"11": 1, "21": 1, "22": 1}),
                              rows=10, job_start=-1, job_end=12)
    by = {a["accelerator"]: a for a in summary["accelerators"]}
    assert by[1]["idle_s"] == pytest.approx(2) and by[1]["idle_during_commits_s"] == pytest.approx(2)
    assert by[2]["idle_s"] == pytest.approx(4) and by[2]["idle_during_commits_s"] == pytest.approx(1)
    assert by[1]["loads"] == 1 and by[2]["loads"] == 2  # a reload: the executor's second worker loaded again
    assert summary["commit_s"] == 4 and summary["commit_overlapping_scoring_s"] == pytest.approx(1)  # 5-6: daemon 2
    assert summary["loads"] == 3 and summary["loads_per_worker_max"] == 1 and summary["rows_per_s"] == 10 / 13
    assert summary["busy_share_min"] == pytest.approx(3 / 7)
    assert summary["first_step_s"] == 1 and summary["last_step_to_job_end_s"] == 2


def test_only_writes_to_the_scores_table_are_commits():
    assert save_kind("file:/l/lake/scores") == "commit" and save_kind("s3a://b/lake/scores/") == "commit"
    assert save_kind("/l/lake/_staging/scores/ab12") == "stage"
    assert save_kind("/l/lake/corpus") == "other" and save_kind(None) == "other"
