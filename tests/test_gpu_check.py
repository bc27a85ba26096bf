"""The CPU-checkable parts of benchmarks/gpu_check.sh and benchmarks/train_gpu.py: stage arguments, the
configured training settings, the throughput arithmetic, nothing imported that the device image lacks, and a
dry run of the training steps with a tiny shape."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import train_gpu

REPO = Path(__file__).parent.parent
# what the bare device image does not have (/work/.library/device/KINDS.md); pydantic travels as a wheel
DEVICE_LACKS = ("pyspark", "delta", "mlflow", "ijson", "moto", "boto3", "deltalake")
# None in sys.modules: the import fails and importlib.util.find_spec says "not installed", as for a missing package
_AS_ON_THE_DEVICE = f"import sys; sys.modules.update(dict.fromkeys({DEVICE_LACKS!r}))\n"


def _device_python(code: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _AS_ON_THE_DEVICE + code, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin",
                                                           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})


def test_gpu_check_refuses_an_unknown_stage_and_lists_its_stages():
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "score", "scor"], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2 and "unknown stage 'scor'" in done.stderr and "train" in done.stderr
    usage = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--help"], capture_output=True,
                           text=True, timeout=30)
    assert usage.returncode == 0 and "--dry-run" in usage.stdout and "set -uo" not in usage.stdout


def test_the_training_steps_use_the_configured_gpu_cluster_settings():
    settings = train_gpu.configured_settings([])
    assert (settings.method, settings.sharding, settings.precision) == ("full", "fsdp", "bfloat16")
    assert settings.gradient_checkpointing and settings.batch_size == 4 and settings.gradient_accumulation_steps == 4
    lora = train_gpu.configured_settings(["method=lora", "sharding=none"])
    assert (lora.method, lora.sharding, lora.batch_size) == ("lora", "none", 4)
    with pytest.raises(ValueError):
        train_gpu.configured_settings(["no_such_setting=1"])


def test_arguments_need_more_steps_than_warmup(capsys):
    assert train_gpu.parse_args(["--steps", "5", "--warmup", "2", "--set", "batch_size=2"]).set == ["batch_size=2"]
    with pytest.raises(SystemExit):
        train_gpu.parse_args(["--steps", "2", "--warmup", "2"])
    assert "must be more than --warmup" in capsys.readouterr().err


def test_throughput_is_counted_after_the_warmup_steps():
    clock = train_gpu.StepClock()
    for step, (t, tokens) in enumerate([(10.0, 100), (12.0, 300), (13.0, 500), (14.0, 700)], start=1):
        clock.steps.append({"step": step, "time": t, "tokens": tokens, "padded": 2 * tokens, "samples": 16.0,
                            "supervised_tokens": 40.0, "loss": 1.0})
    result = train_gpu.steady_state(clock, warmup=2)
    assert result["timed_steps"] == 2 and result["seconds"] == 2.0 and result["seconds_per_step"] == 1.0
    assert result["samples_per_s"] == 16.0 and result["tokens_per_s"] == 200.0
    assert result["padded_tokens_per_s"] == 400.0 and result["supervised_tokens_per_s"] == 40.0
    with pytest.raises(RuntimeError, match="need more than --warmup"):
        train_gpu.steady_state(clock, warmup=4)


def test_the_gpu_scripts_import_nothing_the_device_image_lacks():
    done = _device_python("import benchmarks.train_gpu as t, benchmarks.score_gpu, benchmarks.bf16_agreement, "
                          "benchmarks.load_memory, vig_udf.scoring.scorer, vig_udf.train.trainer, vig_udf.demo.model; "
                          "print(t.configured_settings([]).sharding)")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "fsdp"
    assert _device_python("import pyspark").returncode != 0  # the check itself works


@pytest.mark.slow
def test_a_dry_run_of_the_training_steps_with_a_tiny_shape(tmp_path):
    """train_gpu.py on the CPU with the small shape: the configured FSDP setting through the product's training
    function, on one process, without the packages the device lacks."""
    out = tmp_path / "train.json"
    done = _device_python("import runpy, sys; sys.argv = ['train_gpu.py'] + sys.argv[1:]; "
                          "runpy.run_path('benchmarks/train_gpu.py', run_name='__main__')",
                          "--small", "--steps", "2", "--warmup", "1", "--dataloader-workers", "0",
                          "--workdir", str(tmp_path / "work"), "--json", str(out), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["status"] == "ok" and result["settings"]["sharding"] == "fsdp" and result["timed_steps"] == 1
    assert result["samples"] == 16  # micro-batch 4 x 4 accumulation steps
    assert result["tokens_per_s"] > 0 and result["rank_memory"]["optimizer_state_bytes"] > 0
    assert not (tmp_path / "work" / "run" / "model").exists()  # the final model is not saved
