"""The demo's scorer gate (docs/demo_benchmark.md): a deliberately blind scorer fails it and the demo refuses
to compare policies, saying why; the gate's accuracies and distances are computed as documented."""

import numpy as np
import pytest
import torch

from vig_udf.config import DemoConfig
from vig_udf.demo.gate import GateThresholds, candidate_records, check_split, measure_gate
from vig_udf.demo.world import COLOURS
from vig_udf.scoring.scorer import VIGScorer


@pytest.fixture(scope="module")
def blind_checkpoint(tmp_path_factory) -> str:
    """A tiny LLaVA whose projector outputs zeros: the image cannot change any prediction."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vig_udf.tiny import build_tiny_checkpoint

    root = tmp_path_factory.mktemp("blind")
    path = build_tiny_checkpoint("llava", root / "tiny", seed=3)
    model = AutoModelForImageTextToText.from_pretrained(path)
    with torch.no_grad():
        for p in model.model.multi_modal_projector.parameters():
            p.zero_()
    model.save_pretrained(root / "blind")
    AutoProcessor.from_pretrained(path).save_pretrained(root / "blind")
    return str(root / "blind")


def test_check_split_is_balanced_and_not_the_test_split():
    from vig_udf.demo.world import generate_test

    items = check_split(8, seed=7)
    assert [i["conflict"] for i in items] == [False, True] * 4
    test_ids = {i["id"] for i in generate_test(8, seed=7 + 2000)}
    assert not test_ids & {i["id"] for i in items}
    records = candidate_records(items[:1])
    assert [r["conversations"][1]["value"].split()[-1] for r in records] == [f"{c}." for c in COLOURS]


def test_a_blind_scorer_fails_the_gate(blind_checkpoint):
    gate = measure_gate(VIGScorer.from_pretrained(blind_checkpoint), check_split(8, seed=7))
    n = gate.numbers
    assert not gate.passed
    # the image changes nothing: real and counterfactual give the same predictions, and vig check flags it
    assert n["acc_real_consistent"] == n["acc_counterfactual_consistent"]
    assert n["acc_real_conflicting"] == n["acc_counterfactual_conflicting"]
    assert any("accuracy" in f for f in gate.failures)
    assert any("vig check fails" in f and "equals the real image" in f for f in gate.failures)
    assert gate.verdict().startswith("scorer gate FAIL on 8 check items")
    # the thresholds decide: with none at all the same numbers pass all but vig check
    lax = measure_gate(VIGScorer.from_pretrained(blind_checkpoint), check_split(8, seed=7),
                       thresholds=GateThresholds(min_acc_consistent=0, min_acc_conflicting=0, max_prior_distance=1))
    assert [f for f in lax.failures if not f.startswith("vig check fails")] == []
    assert 0 <= lax.numbers["prior_distance"] <= 1 and np.isfinite(lax.numbers["p_true_none"])


def test_the_demo_refuses_a_policy_comparison_with_a_blind_scorer(blind_checkpoint, tmp_path):
    from vig_udf.demo.run import run_demo

    lines = []
    cfg = DemoConfig(workdir=str(tmp_path), gate_items=8, scorer={"model_path": blind_checkpoint})
    summary = run_demo(cfg, out=lines.append)  # no Spark session is given: a refusal never starts one
    assert summary["runs"] == [] and not summary["gate"].passed
    refusal = next(line for line in lines if line.startswith("policy comparison refused"))
    assert "real-image accuracy" in refusal
    report = open(summary["report"]["report"]).read()
    assert "## Policy comparison: refused" in report and "No policy was trained" in report
    assert "| real image |" in report and (tmp_path / "report" / "check" / "check.html").exists()
    assert not (tmp_path / "lake").exists() and not (tmp_path / "runs").exists()


def test_the_mismatched_gate_takes_criterion_3m_and_scores_an_items_candidates_against_one_partner(
        blind_checkpoint):
    from vig_udf.demo.gate import item_partners
    from vig_udf.scoring.options import ScorerOptions

    items = check_split(8, seed=7)
    partners = item_partners(items, seed=0)
    assert set(partners) == {i["id"] for i in items}  # every item has another item's image as its partner
    assert all(p["counterfactual_partner"] != item_id for item_id, p in partners.items())
    records = candidate_records(items, partners)
    assert len({r["counterfactual_partner"] for r in records[:len(COLOURS)]}) == 1  # an item's four candidates

    scorer = VIGScorer.from_pretrained(blind_checkpoint, ScorerOptions(counterfactual="mismatched"))
    lax = dict(min_acc_consistent=0, min_acc_conflicting=0, max_prior_distance=0)  # criterion 3 is not used here
    strict = measure_gate(scorer, items, thresholds=GateThresholds(**lax, max_p_true_mismatched_conflicting=0))
    n = strict.numbers
    # the blind model answers alike with any image: the partner's leaves p(true colour) where the real one has it
    assert n["counterfactual"] == "mismatched"
    assert n["p_true_counterfactual_conflicting"] == pytest.approx(n["p_true_real_conflicting"], abs=1e-5)
    assert [f for f in strict.failures if not f.startswith("vig check fails")] == [
        next(f for f in strict.failures if "partner's image" in f)]
    assert "p(true colour) with the partner's image" in strict.verdict()
    loose = measure_gate(scorer, items, thresholds=GateThresholds(**lax, max_p_true_mismatched_conflicting=1))
    assert [f for f in loose.failures if not f.startswith("vig check fails")] == []
