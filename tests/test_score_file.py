"""``vig score-file``: the shipped configs' max_length by default, a progress line per list of records, and each
list's results in the output as soon as it is scored."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tests.conftest import random_image, sample
from vig_udf import VIGScorer
from vig_udf.cli import app
from vig_udf.score_file import DEFAULT_MAX_LENGTH, score_records, scorer_config


def test_max_length_defaults_to_the_configs_unless_given(tmp_path):
    assert scorer_config("m", []).max_length == DEFAULT_MAX_LENGTH == 2048
    assert scorer_config("m", ["max_length=100"]).max_length == 100
    assert scorer_config("m", ["max_length=null"]).max_length is None  # no limit, when asked for
    (tmp_path / "c.yaml").write_text("score:\n  scorer:\n    max_length: 512\n    counterfactual: drop\n")
    from_file = scorer_config("m", [], tmp_path / "c.yaml")
    assert (from_file.max_length, from_file.counterfactual, from_file.model_path) == (512, "drop", "m")
    (tmp_path / "d.yaml").write_text("score:\n  scorer:\n    counterfactual: drop\n")
    assert scorer_config("m", [], tmp_path / "d.yaml").max_length == DEFAULT_MAX_LENGTH


def test_results_are_written_as_each_list_is_scored(tiny_checkpoints, tmp_path):
    scorer = VIGScorer.from_pretrained(tiny_checkpoints["llava"])
    records = [sample(f"r{i}", [("What colour?", "Red")], random_image(32, 32, i)) for i in range(5)]
    out, seen = tmp_path / "out.jsonl", []

    def progress(line: str) -> None:  # what the output holds when each progress line is printed
        seen.append((line, len(out.read_text().splitlines())))

    counts = score_records(scorer, records, out, chunk=2, progress=progress)
    assert counts == {"ok": 5}
    assert [n for _, n in seen] == [2, 4, 5]
    assert seen[0][0].startswith("scored 2/5 records (") and "s left" in seen[0][0]
    assert [json.loads(line)["sample_id"] for line in out.read_text().splitlines()] == [f"r{i}" for i in range(5)]


def test_a_very_long_answer_is_truncated_by_default_not_run(tiny_checkpoints, tmp_path):
    long = sample("long", [("Describe it.", "word " * 20_000)], random_image(32, 32, 1))
    (tmp_path / "in.jsonl").write_text(json.dumps({**long, "image": "a.png"}) + "\n")
    random_image(32, 32, 1).save(tmp_path / "a.png")
    result = CliRunner().invoke(app, ["score-file", str(tmp_path / "in.jsonl"), "--model", tiny_checkpoints["llava"],
                                      "--out", str(tmp_path / "out.jsonl"), "--set", f"image_root={tmp_path}"])
    assert result.exit_code == 0, result.output
    [row] = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert row["status"] == "truncated"
    assert "scored 1/1 records" in result.output


def test_several_counterfactuals_are_refused_with_the_job_that_takes_them():
    import pytest

    from vig_udf.errors import InputError

    with pytest.raises(InputError, match="one counterfactual.*vig score"):
        scorer_config("m", ["counterfactuals=[blur,drop]"])
    assert scorer_config("m", ["counterfactuals=[drop]"]).counterfactual == "drop"
