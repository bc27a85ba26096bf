"""The demo's training plan: steps per schedule, and one run where both schedules train the same steps."""

from __future__ import annotations

from vig_udf.config import DemoConfig
from vig_udf.demo.run import training_plan


def selection(kept: int, every: int = 100) -> dict:
    return {"kept_multimodal": kept - 10, "kept_text_only": 10, "multimodal_rows": every - 10, "text_only_rows": 10}


def test_equal_steps_trains_every_policy_as_long_as_vanilla_and_shares_runs_that_coincide():
    cfg = DemoConfig(seeds=[0, 1], policies=["all", "vig", "random"], schedules=["equal_epochs", "equal_steps"],
                     epochs=3, batch_size=16)
    selections = {("all", None): selection(100), ("vig", None): selection(70),
                  ("random", 0): selection(70), ("random", 1): selection(70)}
    plan = training_plan(cfg, selections)
    runs = {(r.policy, r.seed, r.schedules): r for r in plan}
    assert runs[("all", 0, ("equal_epochs", "equal_steps"))].steps == 19  # ceil(3 * 100 / 16)
    assert runs[("vig", 0, ("equal_epochs",))].steps == 14  # ceil(3 * 70 / 16)
    assert runs[("vig", 0, ("equal_steps",))].steps == 19
    assert runs[("random", 1, ("equal_steps",))].selection_key == ("random", 1)
    assert runs[("vig", 1, ("equal_epochs",))].selection_key == ("vig", None)
    assert len(plan) == 2 * (1 + 2 + 2)
    assert [r.seed for r in plan] == [0] * 5 + [1] * 5  # seed by seed


def test_one_schedule_gives_one_run_per_policy_and_seed():
    cfg = DemoConfig(seeds=[3], policies=["vig", "all"], schedules=["equal_steps"], epochs=1, batch_size=10)
    plan = training_plan(cfg, {("all", None): selection(100), ("vig", None): selection(50)})
    assert [(r.policy, r.steps, r.schedules) for r in plan] == [("vig", 10, ("equal_steps",)),
                                                                 ("all", 10, ("equal_steps",))]
