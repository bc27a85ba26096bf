"""Selection policies without Spark: tau and per-row decisions against hand-written expectations."""

from __future__ import annotations

import numpy as np
import pytest

from vig_udf.selection import policies as sel

# Sample VIG = mean of token VIG; every value is exact in float32. Sorted VIGs: d -0.5, f 0.125, b 0.25,
# e 0.25, c 0.5, a 1.0.
ROWS = {
    "a": (1.0, [2.0, 0.0, 1.0]),
    "b": (0.25, [1.0, 0.25, 0.25, -0.5]),
    "c": (0.5, [0.5, 0.5]),
    "d": (-0.5, [-1.0, 0.0]),
    "e": (0.25, [0.25, -0.25, 0.75, 0.25]),
    "f": (0.125, [0.0, 0.25]),
}
VIGS = [vig for vig, _ in ROWS.values()]
TAU = 0.1875  # p = 70: h = (6 - 1) * 0.3 = 1.5, halfway between 0.125 and 0.25


def decide(sample: str, policy: str, tau: float = TAU, **kwargs) -> sel.RowSelection:
    vig, tokens = ROWS[sample]
    return sel.select_row("ok", vig, np.array(tokens, dtype=np.float32), len(tokens), policy=policy, tau=tau, **kwargs)


def table(policy: str, **kwargs) -> dict[str, tuple[bool, str, list[bool]]]:
    out = {}
    for sample in ROWS:
        row = decide(sample, policy, **kwargs)
        out[sample] = (row.kept, row.reason, row.token_keep.tolist())
    return out


def test_tau_is_the_linear_percentile_hand_computed():
    assert sel.tau_for(VIGS, 70) == pytest.approx(TAU, abs=1e-15)
    assert sel.tau_for(VIGS, 50) == pytest.approx(0.25)  # h = 2.5 between the tied 0.25s
    assert sel.tau_for(VIGS, 100) == -0.5  # h = 0: the minimum, everything kept
    assert sel.tau_for(VIGS, 20) == 0.5  # h = 5 * 0.8 = 4: v_4 itself
    assert sel.tau_for([3.0], 70) == 3.0
    assert sel.tau_for([], 70) is None
    # ten distinct values, p = 70: h = 9 * 0.3 = 2.7 -> tau between v_2 and v_3, seven kept
    ten = [float(i) for i in range(10)]
    tau = sel.tau_for(ten, 70)
    assert tau == pytest.approx(2.7) and sum(v >= tau for v in ten) == 7
    assert tau == pytest.approx(np.percentile(ten, 30))


def test_ties_at_tau_are_all_kept():
    tau = sel.tau_for(VIGS, 60)  # h = 5 * 0.4 = 2: exactly v_2 = 0.25, which e also has
    assert tau == 0.25
    assert sorted(s for s, (v, _) in ROWS.items() if v >= tau) == ["a", "b", "c", "e"]  # 4 of 6, above 60%


@pytest.mark.parametrize("p", [0, -5, 100.5])
def test_p_out_of_range_is_refused(p):
    with pytest.raises(ValueError, match=r"\(0, 100\]"):
        sel.tau_for(VIGS, p)


def test_vig_policy_keeps_samples_and_tokens_at_or_above_the_same_tau():
    assert table("vig") == {
        "a": (True, "vig>=tau", [True, False, True]),
        "b": (True, "vig>=tau", [True, True, True, False]),
        "c": (True, "vig>=tau", [True, True]),
        "d": (False, "below_tau", []),
        "e": (True, "vig>=tau", [True, False, True, True]),
        "f": (False, "below_tau", []),
    }


def test_sample_policy_keeps_whole_samples():
    assert table("sample") == {
        "a": (True, "vig>=tau", [True, True, True]),
        "b": (True, "vig>=tau", [True, True, True, True]),
        "c": (True, "vig>=tau", [True, True]),
        "d": (False, "below_tau", []),
        "e": (True, "vig>=tau", [True, True, True, True]),
        "f": (False, "below_tau", []),
    }


def test_token_policy_masks_tokens_of_every_sample_and_drops_those_left_without_any():
    assert table("token") == {
        "a": (True, "token_vig>=tau", [True, False, True]),
        "b": (True, "token_vig>=tau", [True, True, True, False]),
        "c": (True, "token_vig>=tau", [True, True]),
        "d": (False, "no_token_vig>=tau", []),
        "e": (True, "token_vig>=tau", [True, False, True, True]),
        "f": (True, "token_vig>=tau", [False, True]),
    }


def test_random_policy_keeps_the_chosen_whole():
    assert (decide("f", "random", chosen=True).kept, decide("f", "random", chosen=True).token_keep.tolist()) == (
        True, [True, True])
    assert decide("f", "random", chosen=True).reason == "random_kept"
    assert (decide("a", "random").kept, decide("a", "random").reason) == (False, "random_not_chosen")


def test_random_tokens_policy_keeps_the_drawn_tokens_of_the_chosen():
    draw = np.array([0.1, 0.7, 0.4])
    row = decide("a", "random_tokens", chosen=True, token_draw=draw, token_share=0.5)
    assert (row.kept, row.reason, row.token_keep.tolist()) == (True, "random_tokens_kept", [True, False, True])
    none = decide("a", "random_tokens", chosen=True, token_draw=draw, token_share=0.05)
    assert (none.kept, none.reason) == (False, "no_token_drawn")
    assert decide("a", "random_tokens", token_draw=draw, token_share=0.5).reason == "random_not_chosen"
    with pytest.raises(ValueError, match="one token_draw value per answer token"):
        decide("a", "random_tokens", chosen=True, token_draw=draw[:2], token_share=0.5)


def test_random_token_draw_is_reproducible_per_sample_and_keeps_the_share_in_expectation():
    assert np.array_equal(sel.random_token_draw(3, "s1", 5), sel.random_token_draw(3, "s1", 5))
    assert not np.array_equal(sel.random_token_draw(3, "s1", 5), sel.random_token_draw(4, "s1", 5))
    assert not np.array_equal(sel.random_token_draw(3, "s1", 5), sel.random_token_draw(3, "s2", 5))
    kept = np.concatenate([sel.random_token_draw(0, f"s{i}", 10) < 0.6 for i in range(2000)])
    assert abs(kept.mean() - 0.6) < 0.015  # binomial sd 0.0035 over 20,000 tokens


def test_all_policy_keeps_every_scorable_sample_whole():
    assert table("all") == {
        "a": (True, "all_kept", [True, True, True]), "b": (True, "all_kept", [True, True, True, True]),
        "c": (True, "all_kept", [True, True]), "d": (True, "all_kept", [True, True]),
        "e": (True, "all_kept", [True, True, True, True]), "f": (True, "all_kept", [True, True]),
    }


@pytest.mark.parametrize("policy", sel.POLICIES)
def test_drop_negative_filters_negative_vig_under_every_policy(policy):
    draws = dict(token_draw=np.zeros(2), token_share=0.5)  # d and f have two tokens each
    row = decide("d", policy, drop_negative=True, chosen=True, **draws)
    assert (row.kept, row.reason, row.token_keep.tolist()) == (False, "negative_vig_filtered", [])
    assert decide("f", policy, drop_negative=True, chosen=True, **draws).reason != "negative_vig_filtered"  # 0.125 >= 0


@pytest.mark.parametrize("policy", sel.POLICIES)
def test_text_only_rows_are_kept_whole_and_failed_rows_never(policy):
    row = sel.select_row("text_only", None, [], 3, policy=policy, tau=TAU, drop_negative=True)
    assert (row.kept, row.reason, row.token_keep.tolist(), row.n_tokens_kept) == (
        True, "text_only_kept_whole", [True, True, True], 3)
    for status, n in [("image_unreadable", None), ("truncated", 5), ("model_error", 2)]:
        row = sel.select_row(status, 0.9, [0.9] * (n or 0), n, policy=policy, tau=TAU, chosen=True)
        assert (row.kept, row.reason, row.token_keep.tolist()) == (False, f"failed:{status}", [])
        assert sel.is_failure(row.reason)


def test_inconsistent_ok_rows_are_failures_not_guesses():
    missing = sel.select_row("ok", None, [1.0], 1, policy="vig", tau=TAU)
    nan = sel.select_row("ok", float("nan"), [1.0], 1, policy="vig", tau=TAU)
    short = sel.select_row("ok", 1.0, [1.0], 2, policy="vig", tau=TAU)
    assert [(r.kept, r.reason) for r in (missing, nan, short)] == [
        (False, "failed:missing_vig"), (False, "failed:missing_vig"), (False, "failed:token_count_mismatch")]


def test_float32_token_vig_compared_in_float64():
    # 0.1 in float32 is 0.100000001490116...; widened it stays above the float64 0.1
    row = sel.select_row("ok", 0.1, np.array([0.1, 0.0999], dtype=np.float32), 2, policy="token", tau=0.1)
    assert row.token_keep.tolist() == [True, False]


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="unknown selection policy 'topk'"):
        sel.select_row("ok", 1.0, [1.0], 1, policy="topk", tau=0.0)


def test_params_hash_and_selection_id_are_stable_and_record_what_matters():
    vig = sel.policy_params("vig", p=70, drop_negative=False, tau_method="percentile", seed=3, corpus_version=4)
    assert vig == {"policy": "vig", "p": 70.0, "drop_negative": False, "tau_method": "percentile", "budgets": None}
    assert sel.params_json(vig) == ('{"budgets":null,"drop_negative":false,"p":70.0,"policy":"vig",'
                                    '"tau_method":"percentile"}')
    random = sel.policy_params("random", p=70, drop_negative=False, tau_method="percentile", seed=3,
                               budgets={"gqa": 2, "coco": 1}, corpus_version=4)
    assert random["seed"] == 3 and random["corpus_version"] == 4 and list(random["budgets"]) == ["coco", "gqa"]
    h = sel.params_hash(vig)
    assert len(h) == 16 and h == sel.params_hash(dict(reversed(list(vig.items()))))
    assert h != sel.params_hash({**vig, "p": 60.0})
    one = sel.selection_id(scorer_id="s1", scores_version=2, params_hash=h)
    assert one == sel.selection_id(scorer_id="s1", scores_version=2, params_hash=h)
    assert one != sel.selection_id(scorer_id="s1", scores_version=3, params_hash=h)
    assert one != sel.selection_id(scorer_id="s2", scores_version=2, params_hash=h)


def test_token_weights_are_bounded_mean_one_ordered_by_vig_and_zero_off_the_mask():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 12))
        vig, keep = rng.normal(0, 3, n), rng.random(n) < 0.7
        temperature, w_max = float(rng.uniform(0.1, 3)), float(rng.uniform(1, 5))
        w = sel.token_weights(vig, keep, temperature=temperature, w_max=w_max)
        assert w.dtype == np.float32 and w.shape == (n,) and np.all(w[~keep] == 0)
        if keep.any():
            assert np.all(w >= 0) and np.all(w <= w_max * (1 + 1e-6))
            assert w[keep].mean() == pytest.approx(1.0, abs=1e-5)
            order = np.argsort(vig[keep], kind="stable")
            assert np.all(np.diff(w[keep][order]) >= -1e-6)  # a higher token VIG never weighs less
    # equal VIGs, or w_max = 1: the hard mask again
    keep = np.array([True, False, True])
    assert sel.token_weights(np.zeros(3), keep, temperature=1.0, w_max=4.0).tolist() == [1.0, 0.0, 1.0]
    assert sel.token_weights(np.array([5.0, 0.0, -5.0]), keep, temperature=1.0, w_max=1.0).tolist() == [1.0, 0.0, 1.0]
    # uncapped it is m * softmax(g / T)
    g = np.array([0.0, np.log(2.0)])
    assert sel.token_weights(g, np.ones(2, bool), temperature=1.0, w_max=4.0).tolist() == pytest.approx([2 / 3, 4 / 3])
    with pytest.raises(ValueError, match="w_max"):
        sel.token_weights(g, np.ones(2, bool), temperature=1.0, w_max=0.5)
    with pytest.raises(ValueError, match="temperature"):
        sel.token_weights(g, np.ones(2, bool), temperature=0.0, w_max=2.0)


def test_row_token_weights_text_only_weigh_one_and_unkept_rows_none():
    text = sel.select_row("text_only", None, None, 3, policy="vig", tau=0.0)
    assert sel.row_token_weights(text, "text_only", None, temperature=1.0, w_max=4.0).tolist() == [1.0, 1.0, 1.0]
    dropped = sel.select_row("ok", -1.0, np.array([-1.0]), 1, policy="vig", tau=0.0)
    assert sel.row_token_weights(dropped, "ok", np.array([-1.0]), temperature=1.0, w_max=4.0).size == 0


def test_new_options_enter_the_params_only_when_set():
    base = dict(p=70, drop_negative=False, tau_method="percentile", corpus_version=3)
    plain = sel.policy_params("vig", **base)
    assert plain == sel.policy_params("vig", **base, tau_by="global", token_weight="mask", temperature=9.0)
    by_source = sel.policy_params("vig", **base, tau_by="source")
    assert (by_source["tau_by"], by_source["corpus_version"]) == ("source", 3)
    weighted = sel.policy_params("vig", **base, token_weight="vig", temperature=0.5, w_max=2.0)
    assert weighted["token_weight"] == {"method": "vig", "temperature": 0.5, "w_max": 2.0}
    assert len({sel.params_hash(q) for q in (plain, by_source, weighted)}) == 3
    with pytest.raises(ValueError, match="tau_by"):
        sel.policy_params("vig", **base, tau_by="scorer")
