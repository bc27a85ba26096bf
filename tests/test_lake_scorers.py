"""``vig lake scorers``: each scorer of a scores table described from its newest score commit."""

from __future__ import annotations

from vig_udf.lake.scorers import list_scorers, scorer_lines


def commit(version: int, scorer_id: str, model: str, counterfactual: str, family: str | None) -> dict:
    record = {"identity": {"model": model, "files": {"w.safetensors": "ab"}, "counterfactual": counterfactual,
                           "max_length": 2048, "blur_sigma": None, "chat_template": "cd"}}
    if family:
        record["family"] = family
    return {"version": version, "timestamp": f"2026-12-0{version} 10:00:00", "job": "score",
            "config": {"scorer_id": scorer_id, "scorer": {"model_path": f"/models/{model}"},
                       "scorer_record": record}}


def test_every_scorer_is_listed_with_model_family_counterfactual_options_rows_and_date():
    commits = [commit(3, "b" * 16, "qwen", "drop", "qwen2_vl"), {"version": 2, "job": "ingest", "config": {}},
               commit(2, "a" * 16, "llava", "blur", None), commit(1, "b" * 16, "old", "blur", None)]
    scorers = list_scorers(commits, {"a" * 16: 10, "b" * 16: 7, "c" * 16: 1})
    assert [(s["scorer_id"][0], s["model_path"], s["family"], s["counterfactual"], s["rows"]) for s in scorers] == [
        ("b", "/models/qwen", "qwen2_vl", "drop", 7), ("a", "/models/llava", None, "blur", 10),
        ("c", None, None, None, 1)]
    assert scorers[0]["options"] == {"counterfactual": "drop", "max_length": 2048}
    lines = scorer_lines(scorers)
    assert lines[0] == (f"{'b' * 16}  /models/qwen  family qwen2_vl  counterfactual drop  rows 7  "
                        "last scored 2026-12-03 10:00:00")
    assert lines[1] == "    counterfactual=drop, max_length=2048"


def test_a_scorer_whose_vigs_barely_move_is_flagged():
    from vig_udf.lake.scorers import BLIND_WARNING, blind_warning

    assert BLIND_WARNING in blind_warning(-0.0004, 0.0009)
    assert "within +-0.001" in blind_warning(-0.0004, 0.0009)
    assert blind_warning(-0.0004, 0.02) is None and blind_warning(None, None) is None


def test_select_names_the_scorers_next_to_their_hashes():
    import pytest

    from vig_udf.lake.scorers import scorer_names
    from vig_udf.spark.select_job import _resolve_scorer

    names = scorer_names([commit(2, "a" * 16, "llava", "blur", "llava"), commit(1, "b" * 16, "qwen", "drop", None)])
    assert names == {"a" * 16: "/models/llava, llava, blur", "b" * 16: "/models/qwen, drop"}
    with pytest.raises(ValueError, match=r"Set scorer_id=<one of them> \(a{16}: /models/llava, llava, blur; "
                                         r"b{16}: /models/qwen, drop\) \(`vig lake scorers` lists them\)"):
        _resolve_scorer(["a" * 16, "b" * 16], None, "lake/scores", 3, lambda: names)
