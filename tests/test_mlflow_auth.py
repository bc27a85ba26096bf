"""Training processes and an MLflow tracking server that requires credentials (as Databricks' and any shared
server does): a process started without them fails at once with a message that says what to pass, before it
loads a model; given the credentials the train job forwards, it logs the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mlflow_server import ADMIN, PASSWORD, mlflow_auth_server
from tests.test_train_loss import settings, write_train_set
from vig_udf.spark.train_job import MlflowConfig, tracking_for_ranks

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _rank(tmp_path: Path, arguments: dict, name: str) -> subprocess.CompletedProcess:
    """Run one training process with an environment of its own: no MLflow or Databricks credentials."""
    (tmp_path / f"{name}.json").write_text(json.dumps(arguments))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DATABRICKS_"))}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, str(REPO / "tests" / "rank_job.py"), str(tmp_path / f"{name}.json")],
                          env=env, capture_output=True, text=True, timeout=600)


def test_ranks_without_credentials_fail_at_once_and_with_the_forwarded_ones_log(tmp_path, tiny_checkpoints,
                                                                                monkeypatch):
    from mlflow.tracking import MlflowClient
    from transformers import AutoProcessor

    path = tiny_checkpoints["llava"]
    train_set = write_train_set(AutoProcessor.from_pretrained(path), tmp_path / "train.parquet", n_copies=2)
    with mlflow_auth_server(tmp_path / "mlflow") as url:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)  # the driver's credentials
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
        client = MlflowClient(tracking_uri=url)
        run_id = client.create_run(client.create_experiment("auth")).info.run_id
        tracking = tracking_for_ranks(url, run_id, MlflowConfig(log_model=False))
        assert tracking["env"] == {"MLFLOW_TRACKING_USERNAME": ADMIN, "MLFLOW_TRACKING_PASSWORD": PASSWORD}
        job = {"settings": settings(path, steps=2, checkpoint_every=0).model_dump(mode="json"),
               "train_set": train_set}

        stranded = _rank(tmp_path, {**job, "output_dir": str(tmp_path / "without"),
                                    "tracking": {**tracking, "env": {}}}, "without")
        assert stranded.returncode == 3, stranded.stderr[-3000:]
        assert f"cannot log to MLflow run {run_id} at {url}" in stranded.stdout
        assert "forwarded now: none" in stranded.stdout and "mlflow.forward_env" in stranded.stdout
        assert not (tmp_path / "without").exists()  # it failed before writing or loading anything

        logged = _rank(tmp_path, {**job, "output_dir": str(tmp_path / "with"), "tracking": tracking}, "with")
        assert logged.returncode == 0, logged.stderr[-3000:]
        assert json.loads(logged.stdout.strip().splitlines()[-1]) == {"steps": 2}
        history = client.get_metric_history(run_id, "loss")
        assert [m.step for m in history] == [1, 2]  # every step, logged by the rank
        assert client.get_metric_history(run_id, "processes")[0].step == 0  # the first metric, before training
