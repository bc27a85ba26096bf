"""The demo benchmark on the embedded default (local Spark, local Delta folder, local MLflow store).

aligned model -> generated corpus -> ingest -> score (Spark) -> select (every policy) -> instruction-tune
the aligned model once per policy and seed (MLflow runs) -> evaluate on the balanced test split -> report.
The design, written before the results: docs/demo_benchmark.md.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vig_udf.config import DemoConfig, ScorerConfig
from vig_udf.demo import variants
from vig_udf.demo.model import DemoModelConfig, build_demo_model
from vig_udf.demo.world import ATTRIBUTE_WORDS, generate, generate_test

log = logging.getLogger(__name__)


def write_demo_corpus(folder: Path, n: int, seed: int, model_config: DemoModelConfig) -> Path:
    """Generated records as LLaVA JSON with PNG images under ``folder/images/shapes``; returns the JSON path.

    The ground truth of every answer turn (kind, prior conflict) goes to ``meta.json`` for the report.
    """
    images = folder / "images" / "shapes"
    images.mkdir(parents=True, exist_ok=True)
    records, meta = [], {}
    for rec in generate(n, seed=seed, config=model_config.world):
        out = {"id": rec["id"], "conversations": rec["conversations"]}
        if "image" in rec:
            rec["image"].save(images / f"{rec['id']}.png")
            out["image"] = f"shapes/{rec['id']}.png"
        records.append(out)
        meta[rec["id"]] = {"kinds": rec["meta"]["kinds"], "conflict": rec["meta"]["conflict"]}
    (folder / "records.json").write_text(json.dumps(records))
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder / "records.json"


def run_demo(cfg: DemoConfig, *, model_config: DemoModelConfig = DemoModelConfig(), spark=None, out=print) -> dict:
    """Run the benchmark; returns a summary (tables, selections, per-run metrics, MLflow run ids, report)."""
    import torch

    from vig_udf.spark.ingest_job import IngestJobConfig, run_ingest
    from vig_udf.spark.score_job import ScoreJobConfig, run_score
    from vig_udf.spark.session import spark_session

    started = time.perf_counter()
    torch.set_num_threads(cfg.torch_threads)
    workdir = Path(cfg.workdir).absolute()
    model_path = cfg.scorer.model_path or build_demo_model(workdir / "model", model_config)
    out(f"aligned model: {model_path} (ready after {time.perf_counter() - started:.0f}s)")
    gate = scorer_gate(cfg, model_path, model_config, workdir / "report", out)
    gates = {cfg.scorer.counterfactual: gate}
    if variants.MISMATCHED in cfg.comparisons:
        gates[variants.MISMATCHED] = scorer_gate(cfg, model_path, model_config, workdir / "report", out,
                                                 counterfactual=variants.MISMATCHED)
    if not gate.passed and cfg.gate == "enforce":
        report = write_refusal(workdir / "report", gate, cfg, model_path)
        out("policy comparison refused: the scorer fails the gate (docs/demo_benchmark.md, \"The scorer gate\"): "
            + "; ".join(gate.failures))
        out(f"report: {report}")
        return {"gate": gate, "runs": [], "report": {"report": report}}
    corpus_dir = workdir / "corpus"
    records_path = write_demo_corpus(corpus_dir, cfg.samples, cfg.seed, model_config)
    test_items = generate_test(cfg.test_samples, seed=cfg.seed + 2000, config=model_config.world)
    lake = cfg.lake or str(workdir / "lake")
    spark = spark or spark_session(cfg.spark)
    image_root = str(corpus_dir / "images")
    ingest = run_ingest(spark, IngestJobConfig(input=str(records_path), image_root=image_root, lake=lake), out=out)
    names = variants.counterfactuals(cfg.scorer.counterfactual, cfg.comparisons)
    scorer = ScorerConfig(**{**cfg.scorer.model_dump(), "model_path": model_path, "image_root": image_root,
                             **({"counterfactuals": names} if len(names) > 1 else {})})
    scored = run_score(spark, ScoreJobConfig(lake=lake, scorer=scorer, spark=cfg.spark), out=out)
    scorer_ids = scored.get("scorer_ids") or {cfg.scorer.counterfactual: scored["scorer_id"]}
    if len(names) > 1:  # the main scorer's summary; the others are compared in the report's issue-24 section
        scored = {**scored["by_scorer"][scorer_ids[cfg.scorer.counterfactual]], "scorer_ids": scorer_ids}
    selections = _select(spark, cfg, lake, scored["scorer_id"], out)
    trained_arms = [arm for arm in variants.arms(cfg.comparisons) if arm != variants.VIG_MISMATCHED
                    or gates[variants.MISMATCHED].passed or cfg.gate == "report"]
    selections.update(_select_arms(spark, cfg, lake, scorer_ids, trained_arms, out))
    tracking = _mlflow_settings(cfg, workdir)
    test_inputs = _test_sequences(model_path, test_items)
    plan = training_plan(cfg, selections, trained_arms)
    shared = " (a policy that keeps every sample trains the same steps under both and runs once)" \
        if len(cfg.schedules) > 1 else ""
    out(f"training plan: {len(plan)} runs ({len(cfg.seeds)} seeds; schedules {', '.join(cfg.schedules)}){shared}")
    runs, outcomes = [], {}
    for planned in plan:
        row, items = _train_and_evaluate(spark, cfg, lake, model_path, image_root, selections, planned,
                                         test_items, test_inputs, tracking, workdir, out)
        for schedule in planned.schedules:
            runs.append({**row, "schedule": schedule})
            outcomes[(schedule, planned.policy, planned.seed)] = items
    report = _report(spark, cfg, lake, scored, selections, runs, outcomes, test_items, corpus_dir, tracking,
                     workdir, started, ingest, model_path, gates, scorer_ids)
    _print_table(report, out)
    out(f"\nreport: {report['report']}  (MLflow: {tracking['tracking_uri']}, experiment {tracking['experiment']})")
    out(f"tables: {lake}/corpus, scores, selection  (query them: vig sql \"SELECT ...\" --lake {lake})")
    out(f"demo finished in {time.perf_counter() - started:.0f}s")
    return {"lake": lake, "scorer_id": scored["scorer_id"], "rows_by_status": scored["rows_by_status"],
            "rows_for_scorer": scored["rows_for_scorer"], "corpus_version": ingest["corpus_version"],
            "selections": selections, "runs": runs, "report": report, "tracking": tracking, "gate": gate,
            "gates": gates, "scorer_ids": scorer_ids}


def scorer_gate(cfg: DemoConfig, model_path: str, model_config: DemoModelConfig, report_dir: Path, out, *,
                counterfactual: str | None = None):
    """Measure the scorer gate on the check split (with ``counterfactual`` in place of the configured one, whose
    ``vig check`` report then goes to ``report_dir/check_<counterfactual>``; else to ``report_dir/check``)."""
    from vig_udf.demo.gate import check_split, measure_gate
    from vig_udf.report.check_report import write_check_report
    from vig_udf.scoring.scorer import VIGScorer

    started = time.perf_counter()
    options = cfg.scorer.options()
    if counterfactual:
        options = options.model_copy(update={"counterfactual": counterfactual})
    scorer = VIGScorer.from_pretrained(model_path, options, device="cpu")
    gate = measure_gate(scorer, check_split(cfg.gate_items, seed=cfg.seed, config=model_config.world))
    folder = report_dir / (f"check_{counterfactual}" if counterfactual else "check")
    write_check_report(gate.check, folder, context={"model": model_path, "input": "the demo's check split "
                       f"({cfg.gate_items} colour items, seed {cfg.seed} + 3000)", "counterfactual": options.counterfactual})
    out(gate.verdict() + f" ({time.perf_counter() - started:.0f}s)")
    return gate


def write_refusal(report_dir: Path, gate, cfg: DemoConfig, model_path: str) -> str:
    """report.md when the scorer fails the gate: the gate's numbers and why no policy comparison is reported."""
    from vig_udf.demo.gate import gate_lines
    from vig_udf.report.scores_report import ReportConfig, write_scores_report

    report_dir.mkdir(parents=True, exist_ok=True)
    md = ["# Demo benchmark report", "", f"- **aligned model**: {model_path}",
          f"- **counterfactual**: {cfg.scorer.counterfactual}", "",
          "## Scorer gate", ""] + gate_lines(gate) + [
          "", "## Policy comparison: refused", "",
          "The scorer fails the gate of docs/demo_benchmark.md, so VIG scores from it would not measure what the "
          "images contribute, and a comparison of selection policies built on them would test nothing. No policy "
          "was trained. Failed criteria:", ""] + [f"- {f}" for f in gate.failures]
    path = report_dir / "report.md"
    path.write_text("\n".join(md) + "\n", encoding="utf-8")
    return str(path)


def _select(spark, cfg: DemoConfig, lake: str, scorer_id: str, out) -> dict:
    """One select run for the deterministic policies and one per seed for the random draws (of the main
    scorer's rows)."""
    from vig_udf.selection.policies import RANDOM_DRAWS
    from vig_udf.spark.select_job import SelectJobConfig, run_select

    fixed = [p for p in cfg.policies if p not in RANDOM_DRAWS]
    drawn = [p for p in cfg.policies if p in RANDOM_DRAWS]
    selections: dict = {}
    runs = ([(fixed, None)] if fixed else []) + ([(drawn, seed) for seed in cfg.seeds] if drawn else [])
    for policies, seed in runs:
        summary = run_select(spark, SelectJobConfig(lake=lake, policies=policies, p=cfg.p, seed=seed or 0,
                                                    scorer_id=scorer_id), out=out)
        for policy in policies:
            selections[(policy, seed)] = {**summary["policies"][policy], "tau": summary["tau"],
                                          "scores_version": summary["scores_version"]}
    return selections


def _select_arms(spark, cfg: DemoConfig, lake: str, scorer_ids: dict[str, str], arms: list[str], out) -> dict:
    """The selections of the issue-24 arms (:mod:`vig_udf.demo.variants`): ``vig`` with the mismatched scorer,
    ``vig`` with soft token weights."""
    from vig_udf.spark.select_job import SelectJobConfig, run_select

    settings = {variants.VIG_MISMATCHED: {"scorer_id": scorer_ids.get(variants.MISMATCHED)},
                variants.VIG_WEIGHTED: {"scorer_id": scorer_ids[cfg.scorer.counterfactual], "token_weight": "vig"}}
    selections = {}
    for arm in arms:
        job = SelectJobConfig(lake=lake, policies=["vig"], p=cfg.p, **settings[arm])
        summary = run_select(spark, job, out=out)
        selections[(arm, None)] = {**summary["policies"]["vig"], "tau": summary["tau"],
                                   "scores_version": summary["scores_version"],
                                   "token_weight": {"temperature": job.token_weight_temperature,
                                                    "max": job.token_weight_max}}
    return selections


@dataclass(frozen=True)
class PlannedRun:
    """One instruction-tuning run: a policy's selection (per seed for the random draws), its steps, and the
    schedules it stands for (both, when a policy keeps every sample and so trains the same steps in each)."""

    policy: str
    seed: int
    selection_key: tuple
    steps: int
    schedules: tuple[str, ...]


def training_plan(cfg: DemoConfig, selections: dict, arms: list[str] = ()) -> list[PlannedRun]:
    """The runs of the benchmark, seed by seed, for every policy and then every issue-24 arm in ``arms``.
    ``equal_epochs``: ``epochs`` passes over the policy's kept samples; ``equal_steps``: the steps that ``epochs``
    passes over every scorable sample take (vanilla's)."""
    from vig_udf.selection.policies import RANDOM_DRAWS

    plan = []
    for seed in cfg.seeds:
        for policy in [*cfg.policies, *arms]:
            key = (policy, seed if policy in RANDOM_DRAWS else None)
            selection = selections[key]
            kept = selection["kept_multimodal"] + selection["kept_text_only"]
            every = selection["multimodal_rows"] + selection["text_only_rows"]
            steps = {"equal_epochs": _steps(cfg, kept), "equal_steps": _steps(cfg, every)}
            by_steps: dict[int, list[str]] = {}
            for schedule in cfg.schedules:
                by_steps.setdefault(steps[schedule], []).append(schedule)
            plan += [PlannedRun(policy, seed, key, n, tuple(names)) for n, names in by_steps.items()]
    return plan


def _steps(cfg: DemoConfig, samples: int) -> int:
    return max(1, math.ceil(cfg.epochs * samples / cfg.batch_size))


def _mlflow_settings(cfg: DemoConfig, workdir: Path) -> dict:
    return {"tracking_uri": cfg.tracking_uri or f"sqlite:///{workdir / 'mlflow.db'}",
            "experiment": cfg.experiment, "artifact_location": str(workdir / "mlartifacts")}


def _test_sequences(model_path: str, items: list[dict]) -> list:
    """The test split's candidate inputs, built once: fine-tuning keeps the processor."""
    from transformers import AutoProcessor

    from vig_udf.demo.evaluate import candidate_sequences

    return candidate_sequences(AutoProcessor.from_pretrained(model_path), items)


def _train_and_evaluate(spark, cfg: DemoConfig, lake: str, model_path: str, image_root: str, selections: dict,
                        planned: PlannedRun, test_items: list[dict], test_inputs: list, tracking: dict,
                        workdir: Path, out) -> tuple[dict, dict]:
    """Train one planned run (an MLflow run) and evaluate it: (the run's row, its per-item outcomes)."""
    from mlflow.tracking import MlflowClient

    from vig_udf.demo.evaluate import evaluate
    from vig_udf.spark.train_job import TrainJobConfig, run_train

    policy, seed, steps = planned.policy, planned.seed, planned.steps
    selection = selections[planned.selection_key]
    kept = selection["kept_multimodal"] + selection["kept_text_only"]
    name = f"{policy}-seed{seed}-{steps}steps"
    job = TrainJobConfig(
        lake=lake, selection_id=selection["selection_id"], output_dir=str(workdir / "runs" / name),
        training={"base_model": model_path, "steps": steps, "batch_size": cfg.batch_size,
                  "learning_rate": cfg.learning_rate, "warmup_ratio": 0.05, "seed": seed, "image_root": image_root,
                  "checkpoint_every": 0, "resume": False, "cache_examples": True, "device": "cpu",
                  "log_every": 5},
        mlflow={**tracking, "run_name": name, "system_metrics": cfg.system_metrics},
        spark=cfg.spark)
    trained = run_train(spark, job, out=lambda *_: None)
    metrics, items = evaluate(trained["model_dir"], test_items, sequences=test_inputs)
    client = MlflowClient(tracking["tracking_uri"])
    client.set_tag(trained["run_id"], "vig.demo.schedules", ",".join(planned.schedules))
    for key, value in metrics.items():
        client.log_metric(trained["run_id"], f"eval_{key}", float(value))
    # supervised tokens as the paper counts them: the answer tokens the selection keeps (once, not per epoch)
    row = {"policy": policy, "seed": seed, "samples_kept": kept, "supervised_tokens": selection["tokens_kept"],
           "trained_token_steps": trained["supervised_tokens"], "steps": steps, "run_id": trained["run_id"],
           "selection_id": selection["selection_id"], "final_loss": trained["losses"][-1], **metrics}
    out(f"{policy:<13} seed {seed} ({'/'.join(planned.schedules)}): {kept} samples, {selection['tokens_kept']} "
        f"supervised tokens, {steps} steps; accuracy consistent {metrics['acc_consistent']:.3f} conflicting "
        f"{metrics['acc_conflicting']:.3f}, prior answers on conflicting {metrics['prior_rate_conflicting']:.3f} "
        f"({trained['seconds']:.0f}s)")
    return row, items


def scored_turns_and_tokens(scores, conversations: dict, meta: dict):
    """Per answer turn (kind, prior conflict, mean token VIG) and per answer token (text, VIG, attribute
    word or not) of the ok rows of ``scores`` (a pandas frame of the scores table)."""
    import pandas as pd

    turns, tokens = [], []
    for row in scores[scores.status == "ok"].itertuples():
        answers = [t["value"].strip() for t in conversations[row.sample_id] if t["from"] == "gpt"]
        info = meta.get(row.sample_id, {})
        token_turn, token_vig = np.asarray(row.token_turn), np.asarray(row.token_vig, dtype=np.float64)
        for turn, answer in enumerate(answers):
            inside = np.nonzero(token_turn == turn)[0]
            if inside.size == 0:
                continue
            turns.append({"sample_id": row.sample_id, "turn": turn, "kind": info.get("kinds", [None] * 9)[turn],
                          "conflict": info.get("conflict", [None] * 9)[turn], "vig": float(token_vig[inside].mean())})
            for i in inside:
                text = answer[row.token_char_start[i]:row.token_char_end[i]]
                tokens.append({"sample_id": row.sample_id, "turn": turn, "token": text, "vig": float(token_vig[i]),
                               "attribute": text.strip(" .").lower() in ATTRIBUTE_WORDS})
    return pd.DataFrame(turns), pd.DataFrame(tokens)


def _report(spark, cfg: DemoConfig, lake: str, scored: dict, selections: dict, runs: list[dict], outcomes: dict,
            test_items: list[dict], corpus_dir: Path, tracking: dict, workdir: Path, started: float, ingest: dict,
            model_path: str, gates: dict, scorer_ids: dict[str, str]) -> dict:
    import mlflow

    from vig_udf.demo.gate import gate_lines
    from vig_udf.report.scores_report import ReportConfig, write_scores_report
    from vig_udf.demo.report import write_report
    from vig_udf.lake import read_table

    scores = read_table(spark, lake + "/scores").where(f"scorer_id = '{scored['scorer_id']}'").toPandas()
    corpus = read_table(spark, lake + "/corpus").select("sample_id", "conversations").toPandas()
    conversations = {r.sample_id: [dict(t) for t in r.conversations] for r in corpus.itertuples()}
    meta = json.loads((corpus_dir / "meta.json").read_text())
    turns, tokens = scored_turns_and_tokens(scores, conversations, meta)
    examples = _examples(scores, conversations, count=cfg.examples)
    vig_selection = selections.get(("vig", None)) or next(iter(selections.values()))
    kept_rates = (_kept_rates(spark, lake, vig_selection["selection_id"], meta, scores, conversations)
                  if ("vig", None) in selections else {})
    context = {"aligned model": model_path, "scorer_id": scored["scorer_id"], "counterfactual": cfg.scorer.counterfactual,
               "p": cfg.p, "tau": vig_selection.get("tau"), "instruction samples": cfg.samples,
               "test items": cfg.test_samples, "rows by status": scored["rows_by_status"],
               "schedules": list(cfg.schedules), "epochs (equal_epochs)": cfg.epochs, "batch size": cfg.batch_size,
               "learning rate": cfg.learning_rate, "seeds": list(cfg.seeds),
               "bootstrap resamples": cfg.bootstrap_resamples, "corpus version": ingest["corpus_version"],
               "scores version": vig_selection.get("scores_version"),
               "seconds until the report": round(time.perf_counter() - started),
               **kept_rates}
    gate = gates[cfg.scorer.counterfactual]
    gate_md = gate_lines(gate) + ([] if gate.passed else [
        "", "**This scorer FAILS the gate; the policy comparison below was made anyway (gate=report) and does not "
            "test the method.**"])
    result = write_report(workdir / "report", runs=runs, outcomes=outcomes, test_items=test_items, turns=turns,
                          tokens=tokens, examples=examples, context=context, gate=gate_md,
                          resamples=cfg.bootstrap_resamples)
    lake_report = write_scores_report(spark, ReportConfig(lake=lake, out=str(workdir / "report" / "lake"),
                                                          scorer_id=scored["scorer_id"]), out=lambda *_: None)
    with open(result["paths"]["report.md"], "a", encoding="utf-8") as md:
        md.write("\n\n## The lake\n\n[lake/report.html](lake/report.html): `vig report` of the demo's lake (rows by "
                 "status, VIG per source, top and bottom samples, what each selection keeps).\n")
    result["paths"]["lake/report.html"] = lake_report["paths"]["report.html"]
    if cfg.comparisons:
        lines = _variants_section(spark, cfg, lake, selections, gates, scorer_ids, conversations, meta, turns)
        with open(result["paths"]["report.md"], "a", encoding="utf-8") as md:
            md.write("\n".join(lines) + "\n")
    mlflow.set_tracking_uri(tracking["tracking_uri"])
    with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name(tracking["experiment"]).experiment_id,
                          run_name="report"):
        mlflow.set_tags({"vig.kind": "report", "vig.scorer_id": scored["scorer_id"]})
        mlflow.log_params({"p": cfg.p, "seeds": json.dumps(list(cfg.seeds)), "samples": cfg.samples,
                           "test_samples": cfg.test_samples, "schedules": ",".join(cfg.schedules)})
        mlflow.log_artifacts(str(workdir / "report"), artifact_path="report")
    return {**result, "report": result["paths"]["report.md"]}


def _variants_section(spark, cfg: DemoConfig, lake: str, selections: dict, gates: dict, scorer_ids: dict,
                      conversations: dict, meta: dict, main_turns) -> list[str]:
    """The report's issue-24 section: the gates, per-kind VIG and kept rates per scorer, the token weights."""
    from pyspark.sql import functions as F

    from vig_udf.demo.gate import gate_lines
    from vig_udf.lake import read_table

    main = cfg.scorer.counterfactual
    vig_by_kind, kept_by_kind, weights = {main: variants.kind_vig(main_turns)}, {}, None
    keys = {main: ("vig", None)}
    if variants.MISMATCHED in scorer_ids:
        scores = read_table(spark, lake + "/scores").where(
            F.col("scorer_id") == scorer_ids[variants.MISMATCHED]).toPandas()
        turns, _ = scored_turns_and_tokens(scores, conversations, meta)
        vig_by_kind[variants.MISMATCHED] = variants.kind_vig(turns)
        if (variants.VIG_MISMATCHED, None) in selections:
            keys[variants.MISMATCHED] = (variants.VIG_MISMATCHED, None)
    selection = read_table(spark, lake + "/selection")
    for name, key in keys.items():
        if key in selections:
            rows = (selection.where((F.col("selection_id") == selections[key]["selection_id"])
                                    & ~F.col("reason").startswith("text_only")).select("sample_id", "kept").collect())
            kept_by_kind[name] = variants.kind_kept({r.sample_id: bool(r.kept) for r in rows}, meta)
    if (variants.VIG_WEIGHTED, None) in selections:
        weighted = selections[(variants.VIG_WEIGHTED, None)]
        totals = (selection.where((F.col("selection_id") == weighted["selection_id"]) & F.col("kept")
                                  & F.col("token_weight").isNotNull())
                  .select(F.explode("token_weight").alias("w"))
                  .agg(F.sum("w").alias("mass"), F.count(F.lit(1)).alias("tokens"), F.max("w").alias("largest"))
                  .first())
        weights = {**weighted["token_weight"], "mass": float(totals.mass or 0),
                   "tokens": int(selections[("vig", None)]["tokens_kept"]), "largest": float(totals.largest or 0)}
    failed = ("the {arm} arm was trained anyway (gate=report): its comparison with vig does not test the method"
              if cfg.gate == "report" else "the {arm} arm was not trained, and its comparison with vig is not made")
    gate_md = {name: gate_lines(g) + ([] if g.passed else [
        "", f"**This scorer fails the gate: {failed.format(arm=variants.ARMS[name])}.**"])
        for name, g in gates.items() if name != main}
    return variants.section(main_cf=main, vig_by_kind=vig_by_kind, kept_by_kind=kept_by_kind, gates=gate_md,
                            weights=weights)


def _print_table(report: dict, out) -> None:
    from vig_udf.demo.stats import format_interval

    for schedule, policies in report["schedules"].items():
        out(f"\n{schedule}: policy, samples, supervised tokens, steps, conflicting accuracy [95% interval], "
            "prior answers on conflicting")
        for policy, s in policies.items():
            out(f"  {policy:<13} {s['samples_kept']:>6.0f} {s['supervised_tokens']:>8.0f} {s['steps']:>5.0f}  "
                f"{format_interval(s['acc_conflicting'])}  {format_interval(s['prior_rate_conflicting'])}")
    out("\ndifferences in conflicting accuracy (paired bootstrap over seeds and items):")
    for (schedule, a, b), cmp in report["comparisons"].items():
        if cmp is not None:
            out(f"  {schedule:<12} {a} - {b}: {format_interval(cmp['acc_conflicting'], signed=True)} "
                f"(MDE {cmp['acc_conflicting']['mde']:.3f})")


def _kept_rates(spark, lake: str, selection_id: str, meta: dict, scores, conversations: dict) -> dict[str, str]:
    """What the selection keeps, by what the answers need: the share of samples kept with a prior-conflicting
    colour answer, with only prior-consistent colour answers, with only definitions; and the share of colour
    words kept (with their mean token VIG) in prior-conflicting and prior-consistent answers."""
    from vig_udf.demo.world import COLOURS
    from vig_udf.lake import read_table

    rows = {r.sample_id: r for r in read_table(spark, lake + "/selection")
            .where(f"selection_id = '{selection_id}'").select("sample_id", "kept", "token_keep").collect()}
    groups: dict[str, list[bool]] = {"samples with a prior-conflicting colour answer": [],
                                     "samples with only prior-consistent colour answers": [],
                                     "samples with only definition answers": []}
    words: dict[bool, list[tuple[bool, float]]] = {True: [], False: []}
    scored = {r.sample_id: r for r in scores[scores.status == "ok"].itertuples()}
    for sample_id, info in meta.items():
        if sample_id not in rows:
            continue
        conflict = [c for k, c in zip(info["kinds"], info["conflict"]) if k == "colour"]
        if any(conflict):
            groups["samples with a prior-conflicting colour answer"].append(bool(rows[sample_id].kept))
        elif conflict and len(conflict) == len(info["kinds"]):
            groups["samples with only prior-consistent colour answers"].append(bool(rows[sample_id].kept))
        elif set(info["kinds"]) == {"define"}:
            groups["samples with only definition answers"].append(bool(rows[sample_id].kept))
        row, keep = scored.get(sample_id), rows[sample_id].token_keep or []
        if row is None:
            continue
        answers = [t["value"].strip() for t in conversations[sample_id] if t["from"] == "gpt"]
        for i, turn in enumerate(row.token_turn):
            text = answers[turn][row.token_char_start[i]:row.token_char_end[i]].strip()
            if info["kinds"][turn] == "colour" and text in COLOURS:
                words[bool(info["conflict"][turn])].append((bool(keep[i]) if keep else False, float(row.token_vig[i])))
    out = {f"share kept by vig: {g}": f"{np.mean(v):.1%} of {len(v)}" if v else "none" for g, v in groups.items()}
    for conflict, name in ((True, "prior-conflicting"), (False, "prior-consistent")):
        values = words[conflict]
        if values:
            out[f"colour words in {name} answers"] = (f"mean token VIG {np.mean([v for _, v in values]):+.3f}, "
                                                     f"{np.mean([k for k, _ in values]):.1%} of {len(values)} kept by vig")
    return out


def _examples(scores, conversations: dict, count: int) -> list[dict]:
    """A few scored conversations (the highest sample VIG first) for the token view."""
    ok = scores[scores.status == "ok"].sort_values("vig", ascending=False)
    picked = list(ok.head(count // 2).itertuples()) + list(ok.tail(count - count // 2).itertuples())
    out = []
    for row in picked:
        turns = conversations[row.sample_id]
        out.append({"sample_id": row.sample_id,
                    "questions": [t["value"].replace("<image>", "").strip() for t in turns if t["from"] == "human"],
                    "answers": [t["value"] for t in turns if t["from"] == "gpt"],
                    "token_turn": list(row.token_turn), "token_char_start": list(row.token_char_start),
                    "token_char_end": list(row.token_char_end), "token_vig": list(row.token_vig)})
    return out
