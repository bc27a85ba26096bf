"""vig check: the scorer sanity check (real vs counterfactual vs partly matching vs mismatched vs no image).

Model-free tests pin the numbers and the decision on hand-made log-probabilities; tiny random checkpoints
run the whole check (every family) and its report; a counterfactual equal to the real image is flagged.
"""

import json
import re

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import random_image, sample
from vig_udf.check import (CheckThresholds, SampleConditions, check_scorer, decide,
                           partly_matching, sample_records, summarise)
from vig_udf.report.check_report import SECTIONS
from vig_udf.scoring.partners import next_different
from vig_udf.scoring.scorer import VIGScorer
from vig_udf.tiny import FAMILIES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def conditions(sample_id: str, **logp) -> SampleConditions:
    """A sample with two answer tokens ("red", ".") and the given per-condition log-probabilities."""
    arrays = {k: np.asarray(v, dtype=float) for k, v in logp.items()}
    return SampleConditions(
        sample_id=sample_id, answers=["red."], image=Image.new("RGB", (4, 4)), mismatched_id="other",
        token_turn=np.zeros(2, np.int32), token_char_start=np.asarray([0, 3], np.int32),
        token_char_end=np.asarray([3, 4], np.int32),
        logp={k: arrays[k] for k in ("real", "counterfactual", "partial", "mismatched", "none")},
        cf_logp={"partial": arrays["cf_partial"], "mismatched": arrays["cf_mismatched"]})


GROUNDED = dict(real=[-0.2, -0.1], counterfactual=[-1.9, -0.1], partial=[-0.8, -0.1], mismatched=[-3.0, -0.1],
                none=[-2.0, -0.1], cf_partial=[-1.9, -0.1], cf_mismatched=[-1.9, -0.1])


def test_summary_numbers_and_a_grounded_scorer_passes():
    samples = [conditions("a", **GROUNDED), conditions("b", **{**GROUNDED, "real": [-0.4, -0.3]})]
    s = summarise(samples)
    # token VIG of a: [1.7, 0], of b: [1.5, -0.2] -> sample VIGs 0.85 and 0.65
    assert s["vig_matching"] == pytest.approx(0.75)
    assert s["vig_partial"] == pytest.approx(0.55) and s["vig_mismatched"] == pytest.approx(-0.55)
    assert s["ordering_holds"] and s["mismatch_drop_share"] == 1.0
    # nll: real 0.15 / 0.35, cf 1.0, none 1.05 -> retained = mean(0.05) / mean(0.9, 0.7)
    assert s["retained_none"] == pytest.approx(0.05 / 0.8)
    assert s["identical_share"] == 0.0
    assert s["negative_tokens"][0] == {"sample_id": "b", "turn": 0, "token": ".", "vig": pytest.approx(-0.2)}
    assert s["negative_token_strings"][0] == {"token": ".", "count": 2, "mean_vig": pytest.approx(-0.1)}
    assert decide(s, CheckThresholds()) == []


def test_a_blind_scorer_and_a_counterfactual_that_keeps_the_image_fail_with_their_reasons():
    same = [-1.0, -0.5]
    blind = summarise([conditions(i, **{k: same for k in GROUNDED}) for i in "ab"])
    failures = decide(blind, CheckThresholds())
    assert any("equals the real image" in f for f in failures)
    assert any("does not order" in f for f in failures)
    assert any("0% of answers are less likely" in f for f in failures)
    leaky = summarise([conditions("a", **{**GROUNDED, "counterfactual": [-0.4, -0.1]})])
    assert leaky["retained_none"] == pytest.approx(1.6 / 1.8)
    assert [f for f in decide(leaky, CheckThresholds()) if "keeps 89%" in f]


def test_next_different_image_skips_identical_images_and_partial_takes_the_right_half():
    assert next_different(["x", "x", "y", "z"]) == [2, 2, 3, 0]
    assert next_different(["x", "x"]) == [-1, -1]
    left, right = Image.new("RGB", (10, 4), (255, 0, 0)), Image.new("RGB", (20, 8), (0, 0, 255))
    mixed = np.asarray(partly_matching(left, right))
    assert mixed.shape == (4, 10, 3)
    assert (mixed[:, :5] == [255, 0, 0]).all() and (mixed[:, 5:] == [0, 0, 255]).all()


def records(n: int) -> list[dict]:
    return [sample(f"s{i}", [("What colour is the square?", "The square is red."), ("How many?", "Three.")],
                   random_image(64, 48, i)) for i in range(n)]


@pytest.mark.parametrize("family", FAMILIES)
def test_check_runs_on_every_family(tiny_checkpoints, family):
    result = check_scorer(VIGScorer.from_pretrained(tiny_checkpoints[family]), records(3))
    assert result.summary["n"] == 3 and not result.skipped
    assert all(np.isfinite(result.summary[k]) for k in ("vig_matching", "vig_partial", "vig_mismatched"))
    assert len(result.summary["negative_tokens"]) == min(15, sum(len(s.token_turn) for s in result.samples))


def test_check_of_a_mismatched_scorer_compares_each_condition_with_another_image(tiny_checkpoints):
    scorer = VIGScorer.from_pretrained(tiny_checkpoints["llava"], counterfactual="mismatched")
    result = check_scorer(scorer, records(3))
    assert result.summary["n"] == 3 and not result.skipped  # no condition lacks its partner
    # the real image's counterfactual is the next other image, which the mismatched condition shows
    for s in result.samples:
        np.testing.assert_allclose(s.logp["counterfactual"], s.logp["mismatched"], atol=1e-5)


def test_a_counterfactual_equal_to_the_real_image_is_flagged(tiny_checkpoints):
    # a blur of 1e-6 of the shorter side is the identity on these images: the counterfactual IS the image
    same = check_scorer(VIGScorer.from_pretrained(tiny_checkpoints["llava"], blur_sigma=1e-6), records(4))
    assert same.summary["identical_share"] == 1.0 and not same.passed
    assert "equals the real image" in same.verdict() and same.verdict().startswith("vig check FAIL")
    blurred = check_scorer(VIGScorer.from_pretrained(tiny_checkpoints["llava"], blur_sigma=0.3), records(4))
    assert blurred.summary["identical_share"] == 0.0
    assert not any("equals the real image" in f for f in blurred.failures)


def image_record_lines(tmp_path, n: int) -> list[str]:
    """``n`` records as JSON lines whose images are saved under ``tmp_path/images`` (paths relative to it)."""
    (tmp_path / "images").mkdir()
    lines = []
    for i, rec in enumerate(records(n)):
        rec["image"].save(tmp_path / "images" / f"{i}.png")
        lines.append(json.dumps({**rec, "image": f"{i}.png"}))
    return lines


def test_cli_check_on_a_jsonl_file_writes_every_section(tiny_checkpoints, tmp_path):
    from vig_udf.cli import app

    lines = image_record_lines(tmp_path, 5)
    lines.append(json.dumps(sample("text", [("Hi?", "Hello.")])))  # no image: never sampled
    (tmp_path / "data.jsonl").write_text("\n".join(lines))
    assert len(sample_records(tmp_path / "data.jsonl", n=3, seed=1)) == 3
    (tmp_path / "data.json").write_text("[" + ",".join(lines) + "]")  # one array, streamed the same way
    assert sample_records(tmp_path / "data.json", n=3, seed=1) == sample_records(tmp_path / "data.jsonl", n=3, seed=1)
    out = tmp_path / "check"
    result = CliRunner().invoke(app, ["check", f"input={tmp_path / 'data.jsonl'}", f"out={out}", "samples=10",
                                      f"scorer.model_path={tiny_checkpoints['llava']}",
                                      f"scorer.image_root={tmp_path / 'images'}"])
    assert result.exit_code in (0, 1), result.output
    verdict = result.output.splitlines()[0]
    assert re.match(r"vig check (PASS|FAIL) \(n=5, counterfactual blur\)", verdict)
    assert (result.exit_code == 0) == verdict.startswith("vig check PASS")
    md = (out / "check.md").read_text()
    page = (out / "check.html").read_text()
    for section in SECTIONS:
        assert f"## {section}" in md and f"<h2>{section}</h2>" in page
    assert verdict in md and "0.923" in md and "| matching |" in md
    assert page.count('<span class="tok"') >= 5 * 5  # five samples shown, five answer tokens or more each
    assert page.count('src="data:image/png;base64,') == 5
    assert (out / "check.png").read_bytes()[:8] == PNG_MAGIC
    data = json.loads((out / "check.json").read_text())
    assert data["n"] == 5 and data["verdict"] == verdict and data["passed"] == (result.exit_code == 0)


def test_cli_check_without_a_readable_image_names_image_root_and_exits_2(tiny_checkpoints, tmp_path):
    from vig_udf.cli import app

    lines = image_record_lines(tmp_path, 3)
    (tmp_path / "data.jsonl").write_text("\n".join(lines))
    args = ["check", f"input={tmp_path / 'data.jsonl'}", f"out={tmp_path / 'check'}",
            f"scorer.model_path={tiny_checkpoints['llava']}"]
    unset = CliRunner().invoke(app, args)  # as a first try looks: no scorer.image_root
    assert unset.exit_code == 2, unset.output
    assert "none of the 3 sampled images can be read" in unset.output
    assert "scorer.image_root is not set" in unset.output and "Traceback" not in unset.output
    wrong = CliRunner().invoke(app, args + [f"scorer.image_root={tmp_path}"])
    assert wrong.exit_code == 2 and f"is scorer.image_root={tmp_path} the folder" in wrong.output
    assert not (tmp_path / "check").exists()
