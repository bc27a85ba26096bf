"""The select job on local Spark over a hand-built scores table, against hand-written expectations."""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import write_deltalake
from pyspark.sql import functions as F_

from vig_udf.selection import policies as sel
from vig_udf.lake import read_table, table_history, table_version, write_table
from vig_udf.spark.select_job import SELECTION_SCHEMA, SelectJobConfig, run_select

pytestmark = pytest.mark.spark

T0 = dt.datetime(2025, 1, 2, 3, 4, 5)
# sample -> (status, sample VIG, token VIGs or a token count, corpus source). Token VIGs are exact in
# float32 and average to the sample VIG. Sorted ok VIGs: d -0.5, f 0.125, b 0.25, e 0.25, c 0.5, a 1.0.
SAMPLES = {
    "a": ("ok", 1.0, [2.0, 0.0, 1.0], "coco"),
    "b": ("ok", 0.25, [1.0, 0.25, 0.25, -0.5], "coco"),
    "c": ("ok", 0.5, [0.5, 0.5], "coco"),
    "d": ("ok", -0.5, [-1.0, 0.0], "gqa"),
    "e": ("ok", 0.25, [0.25, -0.25, 0.75, 0.25], "gqa"),
    "f": ("ok", 0.125, [0.0, 0.25], "gqa"),
    "t1": ("text_only", None, 3, None),
    "t2": ("text_only", None, 2, None),
    "x1": ("image_unreadable", None, None, "coco"),
    "x2": ("truncated", None, 5, "gqa"),
}
TAU = 0.1875  # p = 70 over 6 ok VIGs: h = 5 * 0.3 = 1.5, halfway between 0.125 and 0.25
T, F = True, False
ALWAYS = {  # text-only rows kept whole, failed rows never, under every policy
    "t1": (T, "text_only_kept_whole", [T, T, T]), "t2": (T, "text_only_kept_whole", [T, T]),
    "x1": (F, "failed:image_unreadable", []), "x2": (F, "failed:truncated", []),
}
EXPECTED = {
    "vig": {"a": (T, "vig>=tau", [T, F, T]), "b": (T, "vig>=tau", [T, T, T, F]), "c": (T, "vig>=tau", [T, T]),
            "d": (F, "below_tau", []), "e": (T, "vig>=tau", [T, F, T, T]), "f": (F, "below_tau", []), **ALWAYS},
    "sample": {"a": (T, "vig>=tau", [T, T, T]), "b": (T, "vig>=tau", [T, T, T, T]), "c": (T, "vig>=tau", [T, T]),
               "d": (F, "below_tau", []), "e": (T, "vig>=tau", [T, T, T, T]), "f": (F, "below_tau", []), **ALWAYS},
    "token": {"a": (T, "token_vig>=tau", [T, F, T]), "b": (T, "token_vig>=tau", [T, T, T, F]),
              "c": (T, "token_vig>=tau", [T, T]), "d": (F, "no_token_vig>=tau", []),
              "e": (T, "token_vig>=tau", [T, F, T, T]), "f": (T, "token_vig>=tau", [F, T]), **ALWAYS},
}
N_TOKENS = {s: len(v[2]) if isinstance(v[2], list) else v[2] or 0 for s, v in SAMPLES.items()}
OK_TOKENS = {s: N_TOKENS[s] for s, v in SAMPLES.items() if v[0] == "ok"}


def score_row(sample_id: str, status: str, vig, tokens, scorer_id: str = "s1") -> tuple:
    token_vig = tokens if isinstance(tokens, list) else []
    n = len(token_vig) if isinstance(tokens, list) else tokens
    k = len(token_vig)
    logp = [-1.0] * k
    return (sample_id, scorer_id, "blur", status, None if status in ("ok", "text_only") else "broken", vig,
            1.0 if vig is not None else None, None if vig is None else 1.0 + vig, n, list(range(n or 0)),
            token_vig, logp, [-1.0 - v for v in token_vig], [0] * k, list(range(k)), list(range(1, k + 1)), 0.01, T0, None, None)


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory):
    """scores v0: scorer s1 (6 ok, 2 text-only, 2 failed rows); v1 adds scorer s2. corpus v0: the sources."""
    from pyspark.sql.pandas.types import from_arrow_schema

    from vig_udf.spark.arrow import SCORES_SCHEMA

    root = tmp_path_factory.mktemp("select") / "lake"
    schema = from_arrow_schema(SCORES_SCHEMA)
    rows = [score_row(s, status, vig, tokens) for s, (status, vig, tokens, _) in SAMPLES.items()]
    write_table(spark.createDataFrame(rows, schema).coalesce(1), str(root / "scores"), job="score", config={})
    write_table(spark.createDataFrame([score_row("a", "ok", 2.0, [2.0], "s2")], schema), str(root / "scores"),
                job="score", config={})
    # the job reads only sample_id and source of the corpus; written with delta-rs alone to save a Spark job
    sources = [v[3] for v in SAMPLES.values()]
    write_deltalake(str(root / "corpus"), pa.table({"sample_id": list(SAMPLES), "source": sources}))
    return root


def selected(spark, lake, summary) -> dict[str, dict]:
    """policy -> sample_id -> selection row, for the selections of one run (one Spark job)."""
    ids = {s["selection_id"]: policy for policy, s in summary["policies"].items()}
    out: dict[str, dict] = {policy: {} for policy in ids.values()}
    for r in read_table(spark, str(lake / "selection")).where(F_.col("selection_id").isin(list(ids))).collect():
        assert r.sample_id not in out[ids[r.selection_id]]
        out[ids[r.selection_id]][r.sample_id] = r
    return out


def decisions(rows: dict) -> dict[str, tuple]:
    return {s: (r.kept, r.reason, list(r.token_keep)) for s, r in rows.items()}


def test_every_policy_keeps_the_hand_computed_samples_and_tokens_in_one_idempotent_commit(spark, lake):
    cfg = SelectJobConfig(lake=str(lake), scorer_id="s1", policies=["vig", "sample", "token", "random", "random_tokens"],
                          seed=11)
    lines: list[str] = []
    summary = run_select(spark, cfg, out=lines.append)
    assert summary["tau"] == pytest.approx(TAU, abs=1e-12) and summary["tau_method"] == "percentile"
    assert summary["selection_version"] == 0 and table_version(spark, str(lake / "selection")) == 0
    tables = selected(spark, lake, summary)
    for policy, expected in EXPECTED.items():
        rows = tables[policy]
        assert decisions(rows) == expected, policy
        for r in rows.values():
            assert (r.scorer_id, r.policy, r.scores_version, r.p) == ("s1", policy, 1, 70.0)
            assert r.tau == summary["tau"] and r.n_tokens_kept == sum(r.token_keep)
            assert r.n_tokens == N_TOKENS[r.sample_id]
    random = decisions(tables["random"])
    kept = sorted(s for s in OK_TOKENS if random[s][0])
    assert len(kept) == 4  # as many as vig keeps
    assert all(random[s] == (T, "random_kept", [T] * OK_TOKENS[s]) for s in kept)
    assert all(random[s] == (F, "random_not_chosen", []) for s in OK_TOKENS if s not in kept)
    assert {s: random[s] for s in ALWAYS} == ALWAYS
    # random_tokens: the same draw, and in it each token with probability vig's multimodal tokens / drawn tokens
    share = (2 + 3 + 2 + 3) / sum(OK_TOKENS[s] for s in kept)
    random_tokens = decisions(tables["random_tokens"])
    for s in OK_TOKENS:
        mask = (sel.random_token_draw(11, s, OK_TOKENS[s]) < share).tolist()
        want = (T, "random_tokens_kept", mask) if s in kept and any(mask) else (
            (F, "no_token_drawn", []) if s in kept else (F, "random_not_chosen", []))
        assert random_tokens[s] == want, s
    assert {s: random_tokens[s] for s in ALWAYS} == ALWAYS
    vig = summary["policies"]["vig"]
    assert {k: vig[k] for k in ("kept_multimodal", "multimodal_rows", "kept_text_only", "failed_rows",
                                "tokens_kept", "answer_tokens", "rows", "written")} == {
        "kept_multimodal": 4, "multimodal_rows": 6, "kept_text_only": 2, "failed_rows": 2,
        "tokens_kept": 2 + 3 + 2 + 3 + 5, "answer_tokens": 17 + 5, "rows": 10, "written": True}
    assert vig["supervision_kept"] == pytest.approx(15 / 22)
    assert summary["policies"]["token"]["tokens_kept"] == 2 + 3 + 2 + 3 + 1 + 5
    assert any(line.startswith("vig [") and "15/22" in line for line in lines)
    commit = table_history(spark, str(lake / "selection"))[0]
    assert commit["job"] == "select" and commit["config"]["scorer_id"] == "s1"
    assert commit["config"]["selections"][vig["selection_id"]]["policy"] == "vig"
    assert commit["config"]["tau"] == summary["tau"]

    again = run_select(spark, cfg, out=lambda *_: None)
    assert again["selection_version"] is None and table_version(spark, str(lake / "selection")) == 0
    assert all(not s["written"] for s in again["policies"].values())
    assert {p: s["selection_id"] for p, s in again["policies"].items()} == {
        p: s["selection_id"] for p, s in summary["policies"].items()}
    assert again["policies"]["random"]["reasons"] == summary["policies"]["random"]["reasons"]


def test_several_scorers_need_a_scorer_id_and_a_pinned_version_selects_from_it_with_approx_tau(spark, lake):
    with pytest.raises(ValueError, match=r"2 scorers: \['s1', 's2'\]. Set scorer_id"):
        run_select(spark, SelectJobConfig(lake=str(lake)), out=lambda *_: None)
    with pytest.raises(ValueError, match=r"'s3' has no rows .* scorers there: \['s1', 's2'\]"):
        run_select(spark, SelectJobConfig(lake=str(lake), scorer_id="s3"), out=lambda *_: None)
    # v0 has s1 only, so no scorer_id is needed; above 0 ok rows tau comes from percentile_approx, which
    # returns a VIG: the smallest with at least 30% of the 6 VIGs at or below it, f's 0.125
    cfg = SelectJobConfig(lake=str(lake), scores_version=0, exact_percentile_max_rows=0)
    pinned = run_select(spark, cfg, out=lambda *_: None)
    assert (pinned["scorer_id"], pinned["scores_version"], pinned["tau"]) == ("s1", 0, 0.125)
    assert pinned["tau_method"] == "percentile_approx(accuracy=100000)" and pinned["policies"]["vig"]["written"]
    rows = selected(spark, lake, pinned)["vig"]
    assert decisions(rows) == {**EXPECTED["vig"], "f": (T, "vig>=tau", [F, T])}
    assert {r.scores_version for r in rows.values()} == {0}


def test_drop_negative_filters_misaligned_samples_and_tau_still_counts_them(spark, lake):
    cfg = SelectJobConfig(lake=str(lake), scorer_id="s1", policies=["token", "random"], drop_negative=True)
    summary = run_select(spark, cfg, out=lambda *_: None)
    assert summary["tau"] == pytest.approx(TAU, abs=1e-12)
    tables = selected(spark, lake, summary)
    token = decisions(tables["token"])
    assert token == {**EXPECTED["token"], "d": (F, "negative_vig_filtered", [])}
    random = decisions(tables["random"])
    assert random["d"] == (F, "negative_vig_filtered", [])
    assert sum(random[s][0] for s in OK_TOKENS) == 4 and summary["policies"]["random"]["reasons"] == {
        "failed:image_unreadable": 1, "failed:truncated": 1, "negative_vig_filtered": 1, "random_kept": 4,
        "random_not_chosen": 1, "text_only_kept_whole": 2}


def test_per_source_budgets_keep_the_highest_vig_samples_of_each_source(spark, lake):
    with pytest.raises(ValueError, match=r"sources \['vg'\] that corpus v0 does not have; its sources: \['coco'"):
        run_select(spark, SelectJobConfig(lake=str(lake), scorer_id="s1", budgets={"vg": 1}), out=lambda *_: None)
    cfg = SelectJobConfig(lake=str(lake), scorer_id="s1", policies=["vig", "random"], budgets={"coco": 1, "gqa": 5})
    summary = run_select(spark, cfg, out=lambda *_: None)
    tables = selected(spark, lake, summary)
    vig = decisions(tables["vig"])
    # coco: a (1.0) beats c (0.5) and b (0.25); gqa's budget holds its only candidate e; text-only unaffected
    assert vig == {**EXPECTED["vig"], "b": (F, "budget", []), "c": (F, "budget", [])}
    assert summary["policies"]["vig"]["kept_multimodal"] == 2
    random = decisions(tables["random"])
    coco = [s for s in ("a", "b", "c") if random[s][0]]
    assert len(coco) <= 1 and {s: random[s] for s in ALWAYS} == ALWAYS
    params = tables["vig"]["a"].params
    assert '"budgets":{"coco":1,"gqa":5}' in params and '"corpus_version":0' in params


def test_selection_table_has_the_documented_columns(spark, lake):
    assert read_table(spark, str(lake / "selection")).columns == SELECTION_SCHEMA.names


@contextlib.contextmanager
def data_files_hidden(*tables: Path):
    """The tables' Parquet files renamed away (their Delta logs stay): any read of their rows fails."""
    files = [f for table in tables for f in table.rglob("*.parquet") if "_delta_log" not in f.parts]
    for f in files:
        f.rename(f.with_name(f.name + ".hidden"))
    try:
        yield
    finally:
        for f in files:
            f.with_name(f.name + ".hidden").rename(f)


def test_a_rerun_reads_only_histories_and_new_scores_or_another_p_are_computed(spark, lake, tmp_path):
    root = tmp_path / "lake"
    shutil.copytree(lake / "scores", root / "scores")
    cfg = SelectJobConfig(lake=str(root), scorer_id="s1", policies=["vig", "random"], seed=3)
    first = run_select(spark, cfg, out=lambda *_: None)
    with pytest.raises(Exception):  # the hiding works: reading rows fails
        with data_files_hidden(root / "scores"):
            read_table(spark, str(root / "scores")).select("sample_id").collect()
    with data_files_hidden(root / "scores", root / "selection"):
        again = run_select(spark, cfg, out=lambda *_: None)
    assert again["selection_version"] is None and again["tau"] == first["tau"]
    assert again["policies"] == {p: {**s, "written": False} for p, s in first["policies"].items()}

    schema = read_table(spark, str(root / "scores")).schema
    new_scores = spark.createDataFrame([score_row("g", "ok", 3.0, [3.0])], schema)
    write_table(new_scores, str(root / "scores"), job="score", config={})  # scores v2: one more s1 row
    grown = run_select(spark, cfg, out=lambda *_: None)
    assert grown["scores_version"] == 2 and grown["selection_version"] == 1
    assert all(s["written"] and s["rows"] == 11 for s in grown["policies"].values())
    other_p = run_select(spark, cfg.model_copy(update={"p": 50.0}), out=lambda *_: None)
    assert other_p["selection_version"] == 2 and other_p["policies"]["vig"]["kept_multimodal"] == 5  # tau 0.25
    with data_files_hidden(root / "scores", root / "selection"):  # the first selections, from the history
        pinned = run_select(spark, cfg.model_copy(update={"scores_version": 1}), out=lambda *_: None)
    assert pinned["policies"] == again["policies"]
