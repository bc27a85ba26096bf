"""The select job's per-source tau (tau_by=source) and token loss weights (token_weight=vig) on local Spark,
against numpy computed independently, and both made again from their stored params."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pytest
from deltalake import write_deltalake
from pyspark.sql import functions as F_

from tests.test_select_job import score_row
from vig_udf.lake import read_table
from vig_udf.selection import policies as sel
from vig_udf.spark.select_job import SELECTION_SCHEMA, SelectJobConfig, config_from_params, run_select
from vig_udf.spark.selection_inputs import resolve_selection

pytestmark = pytest.mark.spark
QUIET = {"out": lambda *_: None}
# ok rows per source (None: corpus rows without a source); "ocr" has text-only and failed rows only
OK_PER_SOURCE = {"coco": 12, "gqa": 9, None: 5}


def make_samples() -> dict[str, tuple]:
    """sample -> (status, VIG, token VIGs or a count, source); VIGs drawn per source with different means, token
    VIGs float32-exact (multiples of 1/64) so that numpy and the job compare the same numbers."""
    rng = np.random.default_rng(5)
    samples: dict[str, tuple] = {}
    for k, (source, n) in enumerate(OK_PER_SOURCE.items()):
        for i in range(n):
            tokens = (np.round(rng.normal(k - 1.0, 1.0, rng.integers(1, 6)) * 64) / 64).tolist()
            samples[f"{source}-{i}"] = ("ok", float(np.mean(tokens)), tokens, source)
    samples["coco-t"] = ("text_only", None, 3, "coco")
    samples["ocr-t"] = ("text_only", None, 2, "ocr")
    samples["ocr-x"] = ("image_unreadable", None, None, "ocr")
    samples["gqa-x"] = ("truncated", None, 4, "gqa")
    return samples


SAMPLES = make_samples()


def write_inputs(root, samples=SAMPLES) -> None:
    """scores (scorer s1) and corpus (the sources), written with delta-rs alone to save Spark jobs."""
    from vig_udf.spark.arrow import SCORES_SCHEMA

    rows = [score_row(s, status, vig, tokens) for s, (status, vig, tokens, _) in samples.items()]
    write_deltalake(str(root / "scores"), pa.Table.from_pylist([dict(zip(SCORES_SCHEMA.names, r)) for r in rows],
                                                               schema=SCORES_SCHEMA))
    write_deltalake(str(root / "corpus"), pa.table({"sample_id": list(samples),
                                                    "source": [v[3] for v in samples.values()]}))


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("select_sources") / "lake"
    write_inputs(root)
    return root


def rows_of(spark, root, selection_id: str) -> dict[str, dict]:
    rows = read_table(spark, str(root / "selection")).where(F_.col("selection_id") == selection_id).collect()
    return {r.sample_id: r.asDict() for r in rows}


def remade(spark, lake, tmp_path, row: dict) -> tuple[dict, dict]:
    """The selection made again from ``row``'s stored params in a fresh lake with the same scores and corpus."""
    again = tmp_path / "again"
    for table in ("scores", "corpus"):
        shutil.copytree(lake / table, again / table)
    cfg = config_from_params(row["params"], lake=str(again), scorer_id=row["scorer_id"],
                             scores_version=row["scores_version"])
    summary = run_select(spark, cfg, **QUIET)
    return summary, rows_of(spark, again, summary["policies"][json.loads(row["params"])["policy"]]["selection_id"])


def numpy_taus(p: float) -> dict:
    """tau per source by numpy's default (linear) percentile, within each source's ok VIGs."""
    return {source: float(np.percentile([v[1] for v in SAMPLES.values() if v[0] == "ok" and v[3] == source], 100 - p))
            for source in OK_PER_SOURCE}


def test_tau_by_source_is_numpys_percentile_within_each_source_and_remakes_from_its_params(spark, lake, tmp_path):
    lines: list[str] = []
    cfg = SelectJobConfig(lake=str(lake), policies=["vig", "random"], p=60, tau_by="source", seed=3)
    summary = run_select(spark, cfg, out=lines.append)
    expected = numpy_taus(60)
    assert summary["tau"] is None and summary["tau_by"] == "source"
    assert [t["source"] for t in summary["taus"]] == [None, "coco", "gqa"]  # ocr has no ok row: no tau
    for t in summary["taus"]:
        assert t["tau"] == pytest.approx(expected[t["source"]], abs=1e-12)
        assert t["ok_rows"] == OK_PER_SOURCE[t["source"]]
    assert len(set(expected.values())) == 3  # the sources really differ
    vig = summary["policies"]["vig"]
    rows = rows_of(spark, lake, vig["selection_id"])
    params = json.loads(rows["coco-0"]["params"])
    assert (params["tau_by"], params["corpus_version"], "token_weight" in params) == ("source", 0, False)
    kept_per_source = {}
    for sample_id, (status, value, tokens, source) in SAMPLES.items():
        r = rows[sample_id]
        tau = expected.get(source)
        assert r["tau"] == (pytest.approx(tau, abs=1e-12) if tau is not None else None), sample_id
        n = len(tokens) if isinstance(tokens, list) else tokens
        decision = sel.select_row(status, value, tokens if isinstance(tokens, list) else None, n, policy="vig", tau=tau)
        assert (r["kept"], r["reason"], list(r["token_keep"])) == (decision.kept, decision.reason,
                                                                  decision.token_keep.tolist()), sample_id
        assert r["token_weight"] is None
        if status == "ok":
            kept_per_source[source] = kept_per_source.get(source, 0) + decision.kept
    # each source keeps its own top share, and the summary lists the per-source counts
    by_source = {r["source"]: r for r in vig["by_source"]}
    assert {s: by_source[s]["kept_multimodal"] for s in OK_PER_SOURCE} == kept_per_source
    assert by_source["ocr"]["multimodal_rows"] == 0 and by_source["ocr"]["tau"] is None
    assert any("per source" in line and "(null source)" in line for line in lines)
    # random draws as many per source as vig keeps there
    random_rows = rows_of(spark, lake, summary["policies"]["random"]["selection_id"])
    drawn = {}
    for sample_id, r in random_rows.items():
        if r["reason"] == sel.RANDOM_KEPT:
            drawn[SAMPLES[sample_id][3]] = drawn.get(SAMPLES[sample_id][3], 0) + 1
    assert drawn == {s: k for s, k in kept_per_source.items() if k}
    # a rerun finds the per-source taus and counts in the history
    rerun = run_select(spark, cfg, **QUIET)
    assert not rerun["policies"]["vig"]["written"] and rerun["taus"] == summary["taus"]
    assert rerun["policies"]["vig"]["by_source"] == vig["by_source"]
    # the same selection, from its params alone, in another lake
    again, again_rows = remade(spark, lake, tmp_path, rows["coco-0"])
    assert again["policies"]["vig"]["selection_id"] == vig["selection_id"] and again_rows == rows


def test_token_weight_vig_is_bounded_mean_one_and_remakes_from_its_params_with_approx_per_source_tau(spark, lake,
                                                                                                      tmp_path):
    cfg = SelectJobConfig(lake=str(lake), policies=["vig", "sample"], p=60, token_weight="vig",
                          token_weight_temperature=0.5, token_weight_max=2.0, tau_by="source",
                          exact_percentile_max_rows=0)
    summary = run_select(spark, cfg, **QUIET)  # (the hard mask's rows, token_weight null: the first test)
    # percentile_approx within each source: one of the source's VIGs, within a rank of the exact position
    assert summary["tau_method"].startswith("percentile_approx")
    for t in summary["taus"]:
        values = np.sort([v[1] for v in SAMPLES.values() if v[0] == "ok" and v[3] == t["source"]]).tolist()
        assert t["tau"] in values and abs(values.index(t["tau"]) - (len(values) - 1) * 0.4) <= 1
    capped = 0
    for policy in ("vig", "sample"):
        rows = rows_of(spark, lake, summary["policies"][policy]["selection_id"])
        assert json.loads(rows["coco-0"]["params"])["token_weight"] == {"method": "vig", "temperature": 0.5,
                                                                        "w_max": 2.0}
        for sample_id, (status, _, tokens, _) in SAMPLES.items():
            r = rows[sample_id]
            weights, keep = np.asarray(r["token_weight"], dtype=np.float64), np.asarray(r["token_keep"], dtype=bool)
            if not r["kept"]:
                assert weights.size == 0
                continue
            if status == "text_only":
                assert weights.tolist() == [1.0] * r["n_tokens"]
                continue
            assert weights.shape == keep.shape and np.all(weights[~keep] == 0)
            assert np.all(weights >= 0) and np.all(weights <= 2.0 + 1e-6)
            assert weights[keep].mean() == pytest.approx(1.0, abs=1e-5)
            capped += int(np.isclose(weights, 2.0).any())
            # the documented transform: min(w_max, c * exp(g / T)) with mean 1, c found by bisection here
            g = np.asarray(tokens)[keep] / 0.5
            lo, hi = 0.0, 1e9
            for _ in range(200):
                c = (lo + hi) / 2
                lo, hi = (c, hi) if np.minimum(2.0, c * np.exp(g - g.max())).mean() < 1 else (lo, c)
            np.testing.assert_allclose(weights[keep], np.minimum(2.0, c * np.exp(g - g.max())), rtol=1e-5, atol=1e-6)
    assert capped  # the cap binds somewhere
    rows = rows_of(spark, lake, summary["policies"]["vig"]["selection_id"])
    again, again_rows = remade(spark, lake, tmp_path, rows["coco-0"])
    assert again["policies"]["vig"]["selection_id"] == summary["policies"]["vig"]["selection_id"]
    assert again_rows == rows


def test_a_selection_table_without_token_weight_gets_the_column_on_the_next_write(spark, tmp_path):
    """A table written before the column (by delta-rs here, so its history is not all select commits)."""
    root = tmp_path / "lake"
    write_inputs(root, {k: SAMPLES[k] for k in ("coco-0", "coco-1", "coco-2", "gqa-0", "gqa-1", "gqa-2")})
    old = pa.schema([f for f in SELECTION_SCHEMA if f.name != "token_weight"])
    write_deltalake(str(root / "selection"), old.empty_table())
    summary = run_select(spark, SelectJobConfig(lake=str(root), policies=["vig"], token_weight="vig", tau_by="source"),
                         **QUIET)
    selection_id = summary["policies"]["vig"]["selection_id"]
    rows = rows_of(spark, root, selection_id)
    assert len(rows) == 6 and all(r["token_weight"] is not None for r in rows.values())
    # a history that is not all select commits: the selection is found from its rows, with no one tau (two sources)
    chosen = resolve_selection(spark, lake=str(root), selection_id=selection_id, policy=None)
    assert (chosen["selection_id"], chosen["tau"], chosen["kept"]) == (selection_id, None,
                                                                     sum(r["kept"] for r in rows.values()))


DRAWN = (sel.RANDOM_TOKENS_KEPT, sel.NO_TOKEN_DRAWN)  # the rows of random_tokens' draw


def test_random_tokens_by_source_keeps_each_sources_token_share_and_remakes_from_its_params(spark, lake, tmp_path):
    cfg = SelectJobConfig(lake=str(lake), policies=["vig", "random_tokens"], p=60, tau_by="source", seed=4)
    summary = run_select(spark, cfg, **QUIET)
    vig_rows = rows_of(spark, lake, summary["policies"]["vig"]["selection_id"])
    rows = rows_of(spark, lake, summary["policies"]["random_tokens"]["selection_id"])
    # the share within each source: vig's kept multimodal tokens there over the tokens of its drawn samples
    kept, drawn = {}, {}
    for sample_id, (status, _, _, source) in SAMPLES.items():
        if status == "ok":
            kept[source] = kept.get(source, 0) + vig_rows[sample_id]["n_tokens_kept"]
        if rows[sample_id]["reason"] in DRAWN:
            drawn[source] = drawn.get(source, 0) + rows[sample_id]["n_tokens"]
    shares = {s: min(1.0, kept[s] / drawn[s]) for s in drawn}
    assert len(set(shares.values())) == 3  # the sources' shares differ: one table-wide share would be wrong
    assert {t["source"]: t["token_share"] for t in summary["token_shares"]} == pytest.approx(shares, abs=1e-12)
    assert json.loads(rows["coco-0"]["params"])["token_share_by"] == "source"
    for sample_id, r in rows.items():
        if r["reason"] not in DRAWN:
            continue
        mask = sel.random_token_draw(4, sample_id, r["n_tokens"]) < shares[SAMPLES[sample_id][3]]
        if r["reason"] == sel.NO_TOKEN_DRAWN:
            assert not mask.any() and not r["kept"], sample_id
        else:
            assert (r["reason"], list(r["token_keep"])) == (sel.RANDOM_TOKENS_KEPT, mask.tolist()), sample_id
    again, again_rows = remade(spark, lake, tmp_path, rows["coco-0"])
    assert again["policies"]["random_tokens"]["selection_id"] == summary["policies"]["random_tokens"]["selection_id"]
    assert again_rows == rows
