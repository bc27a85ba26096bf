"""The demo job, fast: a tiny checkpoint instead of the trained demo model, a few samples."""

import pytest

from vig_udf.config import DemoConfig, ScorerConfig
from vig_udf.lake import table_history

pytestmark = pytest.mark.spark


def test_demo_ingests_scores_and_reports(spark, tmp_path, tiny_checkpoints):
    from vig_udf.demo.run import run_demo

    lines = []
    cfg = DemoConfig(workdir=str(tmp_path), samples=12, top=5, scorer=ScorerConfig(model_path=tiny_checkpoints["llava"]))
    summary = run_demo(cfg, spark=spark, out=lines.append)
    assert summary["rows_for_scorer"] == 12 and sum(summary["rows_by_status"].values()) == 12
    assert set(summary["rows_by_status"]) <= {"ok", "text_only"}
    assert set(summary["vig_by_kind"]) <= {"colour", "count", "where", "define"} and summary["vig_by_kind"]
    text = "\n".join(lines)
    assert "highest-VIG answer tokens" in text and text.count(" in '") == 5
    assert table_history(summary["lake"] + "/scores")[0]["job"] == "score"
