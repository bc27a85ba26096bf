"""Training processes and an MLflow tracking server that requires credentials (as Databricks' and any shared
server does): a training process without them (an executor does not inherit the driver's environment) fails at
once, before it loads a model, with a message that says what to pass; given the credentials the train job
forwards from the driver, it logs the run."""

from __future__ import annotations

import pytest

from tests.mlflow_server import ADMIN, PASSWORD, mlflow_auth_server
from tests.test_train_loss import settings, write_train_set
from vig_udf.spark.train_job import MlflowConfig, tracking_for_ranks

pytestmark = pytest.mark.slow
CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def test_ranks_without_credentials_fail_at_once_and_with_the_forwarded_ones_log(tmp_path, tiny_checkpoints,
                                                                                monkeypatch):
    from mlflow.tracking import MlflowClient
    from transformers import AutoProcessor

    from vig_udf.train.trainer import TrackingUnreachable, train_selected

    path = tiny_checkpoints["llava"]
    train_set = write_train_set(AutoProcessor.from_pretrained(path), tmp_path / "train.parquet", n_copies=2)
    job = settings(path, steps=2, checkpoint_every=0).model_dump(mode="json")
    with mlflow_auth_server(tmp_path / "mlflow") as url:
        monkeypatch.setenv(CREDENTIALS[0], ADMIN)  # the driver's credentials
        monkeypatch.setenv(CREDENTIALS[1], PASSWORD)
        client = MlflowClient(tracking_uri=url)
        run_id = client.create_run(client.create_experiment("auth")).info.run_id
        tracking = tracking_for_ranks(url, run_id, MlflowConfig(log_model=False))
        assert tracking["env"] == {CREDENTIALS[0]: ADMIN, CREDENTIALS[1]: PASSWORD}
        for name in CREDENTIALS:  # from here on this process is a rank: none of the driver's environment
            monkeypatch.delenv(name)

        with pytest.raises(TrackingUnreachable) as stranded:
            train_selected(job, train_set, str(tmp_path / "without"), tracking={**tracking, "env": {}})
        assert f"cannot log to MLflow run {run_id} at {url}" in str(stranded.value)
        assert "forwarded now: none" in str(stranded.value) and "mlflow.forward_env" in str(stranded.value)
        assert not (tmp_path / "without").exists()  # it failed before writing or loading anything

        result = train_selected(job, train_set, str(tmp_path / "with"), tracking=tracking)
        assert result["steps"] == 2
        monkeypatch.setenv(CREDENTIALS[0], ADMIN)
        monkeypatch.setenv(CREDENTIALS[1], PASSWORD)
        assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2]  # every step, from the rank
        assert client.get_metric_history(run_id, "processes")[0].step == 0  # the first metric, before training
