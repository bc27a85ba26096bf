"""The select job: one scorer's rows of the scores table -> the ``selection`` Delta table, one row per sample
and policy (kept or not, why, and the answer-token mask).

Cheap and CPU-only: trying another p or policy never touches a GPU. The job

1. reads ``<lake>/scores`` at a pinned version (default: the latest) and keeps one scorer's rows;
2. computes tau over the multimodal (``ok``) sample VIGs with Spark's ``percentile`` (exact) or, above
   ``exact_percentile_max_rows``, ``percentile_approx`` (see ``vig_udf.selection.policies`` for what "top p%" means);
   with ``tau_by="source"``, one tau per corpus source (a ``groupBy`` of the same aggregate, the method chosen by
   the table's ok-row count for every source), each row then decided against its source's tau (its ``tau``
   column);
3. for ``random`` and ``random_tokens``, draws as many samples as ``vig`` keeps: the ones with the smallest
   ``xxhash64(seed, sample_id)`` (uniform, and the same on every run and partitioning; with ``tau_by="source"``,
   as many per source as ``vig`` keeps in it); for ``random_tokens`` also the token share: ``vig``'s kept
   multimodal tokens over the drawn samples' tokens (with ``tau_by="source"``, each source's: its kept tokens
   over its drawn samples' tokens, a ``groupBy``), in one aggregation;
4. decides every row with the pure ``vig_udf.selection.policies.select_row`` inside ``mapInArrow`` (and, with
   ``token_weight="vig"``, its kept tokens' loss weights, ``policies.row_token_weights``);
5. applies per-source budgets (a window over the kept multimodal rows of each source, highest VIG first);
6. writes every new policy in one Delta commit (job ``select``).

Idempotency: each policy's rows carry a ``selection_id``, a hash of the scorer, the scores version and the
policy params. Policies whose ``selection_id`` is already in the table are not computed again, and rows are
added with ``MERGE ... WHEN NOT MATCHED THEN INSERT`` on ``(selection_id, sample_id)`` in a Delta app
transaction keyed by the ids it writes, so concurrent identical runs never write a row twice. The rows are
staged first (``<lake>/_staging/selection``) and summarised there in one aggregation (by source too, with
``tau_by="source"``); the commit records, besides the config, the scores version's commit (``scores_commit``),
every scorer's ok-row count in it (``scorer_ok_rows``) and, per
selection written, its policy, params and counts (``selections``). A rerun with the same inputs finds all of
that in the table's history and reads no scores or selection rows; a new scores version, another p, seed or
policy is not in the history and is computed.

Example (the trainer pins one ``selection_id``)::

    summary = run_select(spark, SelectJobConfig(lake="lake", policies=["vig", "random"], p=70))
    vig_id = summary["policies"]["vig"]["selection_id"]
    kept = read_table(spark, "lake/selection").where(f"selection_id = '{vig_id}' AND kept")
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from vig_udf.selection import policies as sel
from vig_udf.config import SparkConfig
from vig_udf.scoring.status import OK
from vig_udf.lake.scorers import scorer_names

# One row per scores row (of one scorer) and policy. token_keep is aligned with the scores row's token arrays
# (empty when not kept); token_weight likewise, the loss weights under token_weight=vig (null under the hard mask;
# tables written before it existed lack it until a select run adds it); tau is the threshold the row was decided
# against (the run's, or its source's with tau_by=source), p the run's; params is the policy params' canonical
# JSON, params_hash its hash, selection_id the hash of (scorer_id, scores_version, params_hash).
SELECTION_SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("scorer_id", pa.string()), ("policy", pa.string()),
    ("selection_id", pa.string()), ("params_hash", pa.string()), ("params", pa.string()),
    ("kept", pa.bool_()), ("reason", pa.string()), ("token_keep", pa.list_(pa.bool_())),
    ("token_weight", pa.list_(pa.float32())),
    ("n_tokens", pa.int32()), ("n_tokens_kept", pa.int32()), ("tau", pa.float64()), ("p", pa.float64()),
    ("scores_version", pa.int64()),
])
SELECTION_KEY = ("selection_id", "sample_id")
NEW_SELECTION_COLUMNS = ("token_weight",)  # columns a selection table written before them gets on its next write
# carried through mapInArrow for the budget window, then dropped
_PASSTHROUGH = [("_vig", pa.float64()), ("_rand_key", pa.int64()), ("_source", pa.string())]
_UDF_SCHEMA = pa.schema(list(SELECTION_SCHEMA) + [pa.field(n, t) for n, t in _PASSTHROUGH])


class SelectJobConfig(BaseModel):
    """``vig select``: which scores, which policies, how many samples to keep."""

    model_config = ConfigDict(extra="forbid")

    lake: str = Field("lake", description="lake root with the scores (and corpus) tables; writes <lake>/selection")
    scores_version: int | None = Field(None, description="scores table version to select from; None = latest")
    scorer_id: str | None = Field(None, description="the scorer whose rows to select; required when there are several")
    policies: list[Literal["vig", "sample", "token", "random", "random_tokens", "all"]] = Field(
        default_factory=lambda: ["vig"],
        description="policies written in one commit: vig | sample | token | random | random_tokens | all "
                    "(vanilla baseline)")
    p: float = Field(70.0, gt=0, le=100, description="percent of multimodal samples kept: tau = (100-p)th percentile")
    drop_negative: bool = Field(False, description="never keep multimodal samples with VIG < 0 (tau still counts them)")
    budgets: dict[str, int] | None = Field(
        None, description="source -> max kept multimodal samples (highest VIG first; random: draw order); "
                          "unnamed sources unlimited; text-only samples not counted")
    corpus_version: int | None = Field(None, description="corpus version giving each sample's source (budgets, "
                                                         "tau_by=source); None = latest")
    tau_by: Literal["global", "source"] = Field(
        "global", description="global: one tau over all ok VIGs; source: the (100-p)th percentile within each corpus "
                              "source (a null source is a group of its own)")
    token_weight: Literal["mask", "vig"] = Field(
        "mask", description="mask: train on the kept tokens with weight 1; vig: per-token loss weights from token "
                            "VIG (capped softmax with mean 1 over a sample's kept tokens)")
    token_weight_temperature: float = Field(1.0, gt=0, description="token_weight=vig: softmax temperature (nats)")
    token_weight_max: float = Field(4.0, ge=1, description="token_weight=vig: the largest weight (the mean is 1)")
    seed: int = Field(0, description="seed of the random policies' draws")
    exact_percentile_max_rows: int = Field(1_000_000, ge=0, description="exact percentile up to this many ok rows")
    percentile_accuracy: int = Field(100_000, gt=0, description="percentile_approx accuracy (rank error <= n/accuracy)")
    partitions: int | None = Field(None, description="repartition the scores rows first; None = as read")
    spark: SparkConfig = SparkConfig()

    @field_validator("policies")
    @classmethod
    def _distinct_policies(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError(f"policies must be a non-empty list without repeats, got {value}")
        return value

    @field_validator("budgets")
    @classmethod
    def _non_negative_budgets(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        negative = {k: v for k, v in (value or {}).items() if v < 0}
        if negative:
            raise ValueError(f"budgets are maximum sample counts and cannot be negative: {negative}")
        return value


def config_from_params(params: dict | str, *, lake: str, scorer_id: str, scores_version: int) -> SelectJobConfig:
    """The select config that makes a selection again from its stored ``params`` (the selection table's
    ``params`` column, or the export sidecar's): the same params, hence the same ``selection_id`` and rows, given
    the same scores and corpus versions."""
    import json
    import re

    q = json.loads(params) if isinstance(params, str) else params
    approx = re.fullmatch(r"percentile_approx\(accuracy=(\d+)\)", q["tau_method"])
    weight = q.get("token_weight") or {}
    return SelectJobConfig(
        lake=lake, scorer_id=scorer_id, scores_version=scores_version, policies=[q["policy"]], p=q["p"],
        drop_negative=q["drop_negative"], budgets=q.get("budgets"), corpus_version=q.get("corpus_version"),
        tau_by=q.get("tau_by", sel.TAU_GLOBAL), token_weight=weight.get("method", sel.HARD_MASK),
        token_weight_temperature=weight.get("temperature", 1.0), token_weight_max=weight.get("w_max", 4.0),
        seed=q.get("seed", 0), **({"exact_percentile_max_rows": 0, "percentile_accuracy": int(approx.group(1))}
                                  if approx else {"exact_percentile_max_rows": 2 ** 62}))


@dataclass(frozen=True)
class PolicyRun:
    """One policy of a run: its params (canonical JSON), their hash and the selection id."""

    policy: str
    params: str
    params_hash: str
    selection_id: str


@dataclass(frozen=True)
class SelectSpec:
    """What the executors need (small, pickled with the mapInArrow function)."""

    scorer_id: str
    scores_version: int
    tau: float | None
    p: float
    drop_negative: bool
    runs: tuple[PolicyRun, ...]
    seed: int = 0
    token_share: float | None = None  # random_tokens: the probability of keeping a drawn sample's token
    token_weight: str = sel.HARD_MASK
    temperature: float = 1.0
    w_max: float = 4.0


def select_batches(spec: SelectSpec):
    """``mapInArrow`` function: scores rows (sample_id, status, vig, n_tokens, token_vig, _tau, _chosen, _rand_key,
    _source, and optionally _token_share) -> one row per input row and policy of ``spec``, in
    :data:`SELECTION_SCHEMA` plus passthrough. ``_tau`` is the threshold of the row (the run's tau, or its
    source's), ``_token_share`` its ``random_tokens`` share (its source's; without the column, ``spec.token_share``)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            yield select_batch(batch, spec)

    return run


def select_batch(batch: pa.RecordBatch, spec: SelectSpec) -> pa.RecordBatch:
    """Decide every row of one Arrow batch under every policy of ``spec``."""
    sample_ids = batch.column("sample_id").to_pylist()
    statuses = batch.column("status").to_pylist()
    vigs = batch.column("vig").to_pylist()
    n_tokens = [int(n or 0) for n in batch.column("n_tokens").to_pylist()]
    chosen = batch.column("_chosen").to_pylist()
    taus = batch.column("_tau").to_pylist()
    shares = (batch.column("_token_share").to_pylist() if "_token_share" in batch.schema.names
              else [spec.token_share] * batch.num_rows)
    token_vig = batch.column("token_vig")
    offsets = token_vig.offsets.to_numpy()
    values = token_vig.values.to_numpy(zero_copy_only=False)
    null = token_vig.is_null().to_numpy(zero_copy_only=False)
    rows = range(batch.num_rows)
    arrays = [None if null[i] else values[offsets[i]:offsets[i + 1]] for i in rows]
    out: dict[str, list] = {"policy": [], "selection_id": [], "params_hash": [], "params": [], "kept": [],
                            "reason": [], "n_tokens_kept": []}
    masks: list[np.ndarray] = []
    weights: list[np.ndarray | None] = []
    weighted = spec.token_weight == sel.VIG_WEIGHT
    for run in spec.runs:
        draws = run.policy == sel.RANDOM_TOKENS
        for i in rows:
            token_draw = sel.random_token_draw(spec.seed, sample_ids[i], n_tokens[i]) if draws and chosen[i] else None
            decision = sel.select_row(statuses[i], vigs[i], arrays[i], n_tokens[i], policy=run.policy, tau=taus[i],
                                      drop_negative=spec.drop_negative, chosen=bool(chosen[i]),
                                      token_draw=token_draw, token_share=shares[i])
            out["kept"].append(decision.kept)
            out["reason"].append(decision.reason)
            out["n_tokens_kept"].append(decision.n_tokens_kept)
            masks.append(decision.token_keep)
            weights.append(sel.row_token_weights(decision, statuses[i], arrays[i], temperature=spec.temperature,
                                                 w_max=spec.w_max) if weighted else None)
        for key in ("policy", "selection_id", "params_hash", "params"):
            out[key] += [getattr(run, key)] * batch.num_rows
    k, n = len(spec.runs), batch.num_rows
    repeat = lambda column: pa.concat_arrays([batch.column(column)] * k)  # noqa: E731
    columns = {
        "sample_id": repeat("sample_id"), "scorer_id": pa.array([spec.scorer_id] * (k * n), pa.string()),
        **{key: pa.array(out[key], SELECTION_SCHEMA.field(key).type) for key in out},
        "token_keep": _bool_lists(masks), "token_weight": pa.array(weights, pa.list_(pa.float32())),
        "n_tokens": pa.array(n_tokens * k, pa.int32()),
        "tau": pa.array(taus * k, pa.float64()), "p": pa.array([spec.p] * (k * n), pa.float64()),
        "scores_version": pa.array([spec.scores_version] * (k * n), pa.int64()),
        "_vig": repeat("vig").cast(pa.float64()), "_rand_key": repeat("_rand_key").cast(pa.int64()),
        "_source": repeat("_source").cast(pa.string()),
    }
    return pa.RecordBatch.from_arrays([columns[name] for name in _UDF_SCHEMA.names], schema=_UDF_SCHEMA)


def _bool_lists(masks: list[np.ndarray]) -> pa.Array:
    offsets = np.zeros(len(masks) + 1, dtype=np.int32)
    offsets[1:] = np.cumsum([len(m) for m in masks])
    flat = np.concatenate(masks) if masks else np.zeros(0, dtype=bool)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=pa.bool_()))


def run_select(spark, cfg: SelectJobConfig, *, out=print) -> dict:
    """Write the selections of ``cfg.policies`` to ``<lake>/selection``; returns the job summary.

    A rerun with nothing new to write reads only table histories: the scorers' ok-row counts of this scores
    version and every selection's tau and counts are recorded in the select commits
    (:func:`vig_udf.spark.selection_inputs.select_commits`); where they are not, they are read from the rows."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    from vig_udf.lake import (insert_new_rows, lake_table, read_table, staging_folder, table_commit, table_exists,
                              table_history, table_version)
    from vig_udf.spark.selection_inputs import recorded_selections, select_commits

    scores_path, selection_path = lake_table(cfg.lake, "scores"), lake_table(cfg.lake, "selection")
    scores_commit = table_commit(spark, scores_path, cfg.scores_version)
    scores_version = cfg.scores_version if cfg.scores_version is not None else (
        scores_commit["version"] if scores_commit else None)
    if scores_version is None:
        raise FileNotFoundError(f"no scores table at {scores_path}: run `vig score` first")
    scores_mark = _commit_mark(scores_commit)
    commits = select_commits(spark, selection_path) if table_exists(spark, selection_path) else []
    recorded = recorded_selections(commits) if commits is not None else None
    scores = read_table(spark, scores_path, version=scores_version)
    valid_ok = (F.col("status") == OK) & F.col("vig").isNotNull() & ~F.isnan("vig")
    ok_rows = next((c["scorer_ok_rows"] for c in commits or [] if scores_mark is not None and
                    c.get("scores_version") == scores_version and c.get("scores_commit") == scores_mark), None)
    if ok_rows is None:
        ok_rows = {r["scorer_id"]: r["ok"] for r in scores.groupBy("scorer_id").agg(
            F.sum(F.when(valid_ok, 1).otherwise(0)).alias("ok")).collect()}
    scorer_id = _resolve_scorer(sorted(ok_rows), cfg.scorer_id, scores_path, scores_version,
                                lambda: scorer_names(table_history(spark, scores_path)))
    n_ok = ok_rows[scorer_id]
    corpus_version = None
    by_source = cfg.tau_by == sel.TAU_BY_SOURCE
    if cfg.budgets or by_source:
        corpus_path = lake_table(cfg.lake, "corpus")
        corpus_version = cfg.corpus_version if cfg.corpus_version is not None else table_version(spark, corpus_path)
        if corpus_version is None:
            needs = "budgets" if cfg.budgets else "tau_by=source"
            raise FileNotFoundError(f"{needs} needs each sample's source from {corpus_path}, but there is no table "
                                    "there")
    tau_method = _tau_method(n_ok, cfg)
    runs = []
    for policy in cfg.policies:
        params = sel.policy_params(policy, p=cfg.p, drop_negative=cfg.drop_negative, tau_method=tau_method,
                                   budgets=cfg.budgets, corpus_version=corpus_version, seed=cfg.seed,
                                   tau_by=cfg.tau_by, token_weight=cfg.token_weight,
                                   temperature=cfg.token_weight_temperature, w_max=cfg.token_weight_max)
        digest = sel.params_hash(params)
        runs.append(PolicyRun(policy, sel.params_json(params), digest, sel.selection_id(
            scorer_id=scorer_id, scores_version=scores_version, params_hash=digest)))
    ids = [run.selection_id for run in runs]
    if recorded is not None:
        present = {i for i in ids if i in recorded}
    else:
        present = {r[0] for r in read_table(spark, selection_path).where(F.col("selection_id").isin(ids))
                   .select("selection_id").distinct().collect()}
    new = tuple(run for run in runs if run.selection_id not in present)
    version, stats, taus, token_share, token_shares = None, {}, None, None, None
    if not new:  # a rerun: tau is recorded with the selections; nothing else is computed
        if recorded is not None:
            tau, taus = recorded[ids[0]]["tau"], recorded[ids[0]].get("taus")
        else:
            tau = None if by_source else _recorded_tau(read_table(spark, selection_path), ids)
    else:
        base = scores.where(F.col("scorer_id") == scorer_id).select("sample_id", "status", "vig", "n_tokens",
                                                                    "token_vig")
        if cfg.partitions:
            base = base.repartition(cfg.partitions)
        sources = None
        if cfg.budgets or by_source:
            base, sources = _with_sources(spark, base, cfg, corpus_version)
        else:
            base = base.withColumn("_source", F.lit(None).cast("string"))
        ok = base.where(valid_ok)
        if by_source:
            tau, taus = None, _taus_by_source(ok, n_ok, cfg)
            base = _with_source_taus(spark, base, taus)
            ok = base.where(valid_ok)
        else:
            tau = _tau(ok, n_ok, cfg)
            base = base.withColumn("_tau", F.lit(tau).cast("double"))
            ok = base.where(valid_ok)
        base = _with_random_draw(base, ok, tau, cfg)
        token_share = token_shares = None
        if sel.RANDOM_TOKENS in cfg.policies and by_source:
            token_shares = _token_shares(base, valid_ok, cfg)
            base = _with_source_values(spark, base, [(t["source"], t["token_share"]) for t in token_shares],
                                       "_token_share")
        elif sel.RANDOM_TOKENS in cfg.policies:
            token_share = next((t["token_share"] for t in _token_shares(base, valid_ok, cfg)), None)
        spec = SelectSpec(scorer_id, scores_version, tau, cfg.p, cfg.drop_negative, new, cfg.seed, token_share,
                          cfg.token_weight, cfg.token_weight_temperature, cfg.token_weight_max)
        rows = base.mapInArrow(select_batches(spec), from_arrow_schema(_UDF_SCHEMA))
        rows = _apply_budgets(rows, cfg.budgets) if cfg.budgets else rows
        config = {**cfg.model_dump(mode="json"), "scorer_id": scorer_id, "scores_version": scores_version,
                  "scores_commit": scores_mark, "scorer_ok_rows": ok_rows, "corpus_version": corpus_version,
                  "tau": tau, "tau_method": tau_method, "taus": taus, "token_share": token_share,
                  "token_shares": token_shares}

        def record_selections(staged) -> dict:  # what a rerun, export and train read instead of the rows
            new_ids = [run.selection_id for run in new]
            stats.update(_selection_stats(staged, new_ids, sources=sources if taus is not None else None,
                                          taus=taus))
            return {"selections": {run.selection_id: {"policy": run.policy, "params": run.params,
                                                      "params_hash": run.params_hash, **stats[run.selection_id]}
                                   for run in new}}

        app_id = "select/" + hashlib.sha256(",".join(sorted(r.selection_id for r in new)).encode()).hexdigest()[:16]
        commit = insert_new_rows(rows.select(*SELECTION_SCHEMA.names), selection_path, keys=list(SELECTION_KEY),
                                 job="select", config=config, app_id=app_id, app_version=0,
                                 staging=staging_folder(cfg.lake, "selection"), staged_config=record_selections,
                                 add_columns=NEW_SELECTION_COLUMNS)
        version = commit.version if commit else None
    if recorded is not None:
        stats.update({i: recorded[i] for i in present})
    else:
        stats.update(_selection_stats(read_table(spark, selection_path), sorted(present)) if present else {})
    summary = {"scorer_id": scorer_id, "scores_version": scores_version, "selection_version": version,
               "tau": tau, "tau_method": tau_method, "p": cfg.p, "ok_rows": n_ok, "tau_by": cfg.tau_by,
               "taus": taus, "token_weight": cfg.token_weight, "token_share": token_share, "token_shares": token_shares,
               "policies": {run.policy: _policy_summary(run, stats[run.selection_id], run.selection_id not in present)
                            for run in runs}}
    _print_summary(summary, out)
    return summary


def _source_order(source: str | None) -> tuple:
    """Sort key of per-source lists: the null source first, then by name."""
    return source is not None, source or ""


def _source_name(source: str | None) -> str:
    return "(null source)" if source is None else source


def _commit_mark(commit: dict | None) -> str | None:
    """What tells a scores version from a version of the same number of a table recreated at the same path."""
    if commit is None:
        return None
    return commit["write_id"] or str(commit["timestamp"])


def _resolve_scorer(present: list[str], scorer_id: str | None, path: str, version: int, names=dict) -> str:
    """The scorer to select from; ``names()`` (read only for a message) gives each scorer id's description."""
    if scorer_id is not None:
        if scorer_id not in present:
            raise ValueError(f"scorer_id {scorer_id!r} has no rows in {path} v{version}; scorers there: {present}"
                             + _described(present, names()))
        return scorer_id
    if len(present) != 1:
        raise ValueError(f"{path} v{version} holds {len(present)} scorers: {present}. Set scorer_id=<one of them>"
                         f"{_described(present, names())} (`vig lake scorers` lists them).")
    return present[0]


def _described(present: list[str], names: dict[str, str]) -> str:
    known = [f"{s}: {names[s]}" for s in present if s in names]
    return f" ({'; '.join(known)})" if known else ""


def _tau_method(n_ok: int, cfg: SelectJobConfig) -> str:
    """How tau is computed: exact ``percentile`` up to the size threshold, ``percentile_approx`` above it."""
    if n_ok <= cfg.exact_percentile_max_rows:
        return "percentile"
    return f"percentile_approx(accuracy={cfg.percentile_accuracy})"


def _tau(ok, n_ok: int, cfg: SelectJobConfig) -> float | None:
    """tau over the ok VIGs, by :func:`_tau_method`."""
    from pyspark.sql import functions as F

    q = sel.tau_quantile(cfg.p)
    if _tau_method(n_ok, cfg) == "percentile":
        column = F.percentile("vig", F.lit(q))
    else:
        column = F.percentile_approx("vig", q, cfg.percentile_accuracy)
    tau = ok.select(column.alias("tau")).first()["tau"] if n_ok else None
    return float(tau) if tau is not None else None


def _taus_by_source(ok, n_ok: int, cfg: SelectJobConfig) -> list[dict]:
    """tau within each source of the ok rows (``_source``; null is a group of its own), by :func:`_tau_method`:
    ``[{"source", "tau", "ok_rows"}]`` sorted by source (null first). Sources with no ok row are absent."""
    from pyspark.sql import functions as F

    q = sel.tau_quantile(cfg.p)
    if _tau_method(n_ok, cfg) == "percentile":
        column = F.percentile("vig", F.lit(q))
    else:
        column = F.percentile_approx("vig", q, cfg.percentile_accuracy)
    rows = ok.groupBy("_source").agg(column.alias("tau"), F.count(F.lit(1)).alias("ok_rows")).collect()
    return [{"source": r["_source"], "tau": float(r["tau"]), "ok_rows": int(r["ok_rows"])}
            for r in sorted(rows, key=lambda r: _source_order(r["_source"]))]


def _with_source_taus(spark, base, taus: list[dict]):
    """``base`` with ``_tau``, its source's tau (null-safe on the source; null for a source with no ok row)."""
    from pyspark.sql import functions as F

    return _with_source_values(spark, base, [(t["source"], t["tau"]) for t in taus], "_tau")


def _with_source_values(spark, base, values: list[tuple], name: str):
    """``base`` with column ``name``: the value of the row's source in ``values`` (``(source, value)`` pairs, one
    per source, few), null-safe on the source; null for a source not in ``values``."""
    from pyspark.sql import functions as F

    table = spark.createDataFrame(values, f"_value_source string, {name} double")
    joined = base.join(F.broadcast(table), base["_source"].eqNullSafe(table["_value_source"]), "left")
    return joined.drop("_value_source")


def _recorded_tau(table, selection_ids: list[str]) -> float | None:
    """The tau recorded in the rows of these selections (one run's selections share it)."""
    from pyspark.sql import functions as F

    row = table.where(F.col("selection_id").isin(selection_ids) & F.col("tau").isNotNull()).select("tau").first()
    return row["tau"] if row else None


def _with_sources(spark, base, cfg: SelectJobConfig, corpus_version: int):
    """``base`` with each sample's corpus ``source`` as ``_source`` (null where the corpus has none, or not the
    sample), and the ``(sample_id, _source)`` rows; checks that every budget names a source."""
    from pyspark.sql import functions as F

    from vig_udf.lake import lake_table, read_table

    sources = (read_table(spark, lake_table(cfg.lake, "corpus"), version=corpus_version)
               .select("sample_id", F.col("source").alias("_source")))
    if cfg.budgets:
        known = {r[0] for r in sources.select("_source").distinct().collect()}
        unknown = sorted(set(cfg.budgets) - known)
        if unknown:
            raise ValueError(f"budgets name sources {unknown} that corpus v{corpus_version} does not have; its "
                             f"sources: {sorted(s for s in known if s is not None)}")
    return base.join(sources, "sample_id", "left"), sources


def _with_random_draw(base, ok, tau: float | None, cfg: SelectJobConfig):
    """``_rand_key`` and ``_chosen``: the random policy keeps the K eligible samples with the smallest keys,
    K being the number that ``vig`` keeps before budgets; with ``tau_by=source``, within each source the K of
    that source (the same keys, so the draw is still uniform inside every source)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if not set(sel.RANDOM_DRAWS) & set(cfg.policies):
        return base.withColumn("_rand_key", F.lit(None).cast("long")).withColumn("_chosen", F.lit(False))
    base = base.withColumn("_rand_key", F.xxhash64(F.lit(cfg.seed), "sample_id"))
    eligible = ok.where(F.col("vig") >= 0) if cfg.drop_negative else ok
    keyed = eligible.select("sample_id", "_source", "vig", "_tau",
                            F.xxhash64(F.lit(cfg.seed), "sample_id").alias("_key"))
    if cfg.tau_by == sel.TAU_BY_SOURCE:
        source = Window.partitionBy("_source")
        chosen = (keyed.withColumn("_k", F.count_if(F.col("vig") >= F.col("_tau")).over(source))
                  .withColumn("_rank", F.row_number().over(source.orderBy("_key", "sample_id")))
                  .where(F.col("_rank") <= F.col("_k")))
    else:
        k = eligible.where(F.col("vig") >= tau).count() if tau is not None else 0
        chosen = keyed.orderBy("_key", "sample_id").limit(k)
    chosen = chosen.select("sample_id", F.lit(True).alias("_chosen"))
    return base.join(chosen, "sample_id", "left").withColumn("_chosen", F.coalesce("_chosen", F.lit(False)))


def _token_shares(base, valid_ok, cfg: SelectJobConfig) -> list[dict]:
    """``random_tokens``' probability of keeping a token: the multimodal tokens ``vig`` keeps (tokens with VIG >=
    tau inside samples with VIG >= tau, each against its row's tau) over the tokens of the drawn samples, at most
    1 (before budgets); with ``tau_by=source``, within each source. One aggregation over ``base`` (a ``groupBy``
    of the source with ``tau_by=source``): ``[{"source", "token_share"}]`` sorted by source (null first; the
    source None alone with ``tau_by=global``); a source with no drawn token has none."""
    from pyspark.sql import functions as F

    eligible = valid_ok & (F.col("vig") >= F.col("_tau"))
    if cfg.drop_negative:
        eligible = eligible & (F.col("vig") >= 0)
    counts = [F.sum(F.when(eligible, F.size(F.filter("token_vig", lambda t: t.cast("double") >= F.col("_tau")))))
              .alias("kept"), F.sum(F.when(F.col("_chosen"), F.col("n_tokens"))).alias("drawn")]
    if cfg.tau_by == sel.TAU_BY_SOURCE:
        rows = [(r["_source"], r["kept"], r["drawn"]) for r in base.groupBy("_source").agg(*counts).collect()]
    else:
        row = base.select(*counts).first()
        rows = [(None, row["kept"], row["drawn"])]
    shares = [{"source": source, "token_share": min(1.0, float(kept or 0) / float(drawn))}
              for source, kept, drawn in rows if drawn]
    return sorted(shares, key=lambda t: _source_order(t["source"]))


def _apply_budgets(rows, budgets: dict[str, int]):
    """Cap the kept multimodal samples of each budgeted source: beyond the cap, reason ``budget``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    cap = F.create_map(*[F.lit(x) for source, n in sorted(budgets.items()) for x in (source, n)])
    random = F.col("policy").isin(*sel.RANDOM_DRAWS)
    order = Window.partitionBy("selection_id", "_source", "_candidate").orderBy(
        F.when(random, F.col("_rand_key")).asc_nulls_last(), F.when(~random, F.col("_vig")).desc_nulls_last(),
        "sample_id")
    rows = (rows.withColumn("_candidate", F.col("kept") & (F.col("reason") != sel.TEXT_ONLY_KEPT))
            .withColumn("_cap", F.when(F.col("_source").isNotNull(), cap[F.col("_source")])))
    over = F.col("_candidate") & F.col("_cap").isNotNull() & (F.row_number().over(order) > F.col("_cap"))
    rows = rows.withColumn("_over", over)
    return (rows.withColumn("kept", F.col("kept") & ~F.col("_over"))
            .withColumn("reason", F.when(F.col("_over"), F.lit(sel.BUDGET)).otherwise(F.col("reason")))
            .withColumn("token_keep", F.when(F.col("_over"), F.array().cast("array<boolean>"))
                        .otherwise(F.col("token_keep")))
            .withColumn("n_tokens_kept", F.when(F.col("_over"), F.lit(0)).otherwise(F.col("n_tokens_kept"))))


def _selection_stats(table, selection_ids: list[str], *, sources=None, taus: list[dict] | None = None
                     ) -> dict[str, dict]:
    """selection_id -> row, failure, kept and token counts and the rows per reason: one aggregation over the
    selections' rows (one result row per selection, reason and kept). With ``sources`` (``(sample_id,
    _source)`` rows) and ``taus``, the same aggregation also groups by source and each selection gains
    ``by_source``: per source (null included; every source with a row) its tau and ok rows, and the selection's
    multimodal rows and kept multimodal samples there."""
    from pyspark.sql import functions as F

    rows = table.where(F.col("selection_id").isin(selection_ids))
    groups = ["selection_id", "reason", "kept"]
    if sources is not None:
        rows, groups = rows.join(sources, "sample_id", "left"), [*groups, "_source"]
    counts = rows.groupBy(*groups).agg(F.count(F.lit(1)).alias("rows"), F.sum("n_tokens").alias("n_tokens"),
                                       F.sum("n_tokens_kept").alias("n_tokens_kept")).collect()
    keys = ("rows", "failed_rows", "text_only_rows", "kept_multimodal", "kept_text_only", "tokens_kept",
            "answer_tokens")
    stats = {i: {**dict.fromkeys(keys, 0), "reasons": {}} for i in selection_ids}
    per_source: dict[str, dict[str | None, list[int]]] = {i: {} for i in selection_ids}  # [multimodal, kept]
    for r in counts:
        s, n = stats[r["selection_id"]], r["rows"]
        failed, text_only = sel.is_failure(r["reason"]), r["reason"] == sel.TEXT_ONLY_KEPT
        s["rows"] += n
        s["failed_rows"] += n if failed else 0
        s["text_only_rows"] += n if text_only else 0
        s["kept_multimodal"] += n if r["kept"] and not text_only else 0
        s["kept_text_only"] += n if r["kept"] and text_only else 0
        s["tokens_kept"] += r["n_tokens_kept"] or 0
        s["answer_tokens"] += 0 if failed else (r["n_tokens"] or 0)
        s["reasons"][r["reason"]] = s["reasons"].get(r["reason"], 0) + n
        if sources is not None:
            multimodal = not failed and not text_only
            counted = per_source[r["selection_id"]].setdefault(r["_source"], [0, 0])
            counted[0] += n if multimodal else 0
            counted[1] += n if multimodal and r["kept"] else 0
    by_tau = {t["source"]: t for t in taus or []}
    for selection_id, s in stats.items():
        s["reasons"] = dict(sorted(s["reasons"].items()))
        if sources is not None:
            s["by_source"] = [{"source": source, "tau": by_tau.get(source, {}).get("tau"),
                               "ok_rows": by_tau.get(source, {}).get("ok_rows", 0), "multimodal_rows": rows_there,
                               "kept_multimodal": kept_there}
                              for source, (rows_there, kept_there) in sorted(per_source[selection_id].items(),
                                                                             key=lambda x: _source_order(x[0]))]
    return stats


def _policy_summary(run: PolicyRun, stats: dict, written: bool) -> dict:
    counts = {k: stats[k] for k in ("rows", "failed_rows", "text_only_rows", "kept_multimodal", "kept_text_only",
                                    "tokens_kept", "answer_tokens")}
    summary = {"selection_id": run.selection_id, "params_hash": run.params_hash, "written": written, **counts,
               "multimodal_rows": counts["rows"] - counts["failed_rows"] - counts["text_only_rows"],
               "supervision_kept": counts["tokens_kept"] / counts["answer_tokens"] if counts["answer_tokens"] else None,
               "reasons": dict(stats["reasons"])}
    if stats.get("by_source") is not None:
        summary["by_source"] = stats["by_source"]
    return summary


def _print_summary(summary: dict, out) -> None:
    weights = " with token VIG loss weights" if summary["token_weight"] == sel.VIG_WEIGHT else ""
    if summary["tau_by"] == sel.TAU_BY_SOURCE:
        taus = summary["taus"]
        listed = ", ".join(f"{_source_name(t['source'])} {t['tau']:+.4f} ({t['ok_rows']} ok)" for t in taus or [])
        out(f"scorer {summary['scorer_id']}, scores v{summary['scores_version']}: tau per source (p={summary['p']:g}, "
            f"{summary['tau_method']} within each source of {summary['ok_rows']} ok rows){weights}: "
            + (listed or ("none (no ok rows)" if taus is not None else "recorded in the rows' tau")))
    else:
        tau = f"{summary['tau']:+.4f}" if summary["tau"] is not None else "none (no ok rows)"
        out(f"scorer {summary['scorer_id']}, scores v{summary['scores_version']}: tau {tau} "
            f"(p={summary['p']:g}, {summary['tau_method']} over {summary['ok_rows']} ok rows){weights}")
    for policy, s in summary["policies"].items():
        where = "written" if s["written"] else "already in the table"
        fraction = f"{s['supervision_kept']:.1%}" if s["supervision_kept"] is not None else "n/a"
        out(f"{policy} [{s['selection_id']}, {where}]: kept {s['kept_multimodal']}/{s['multimodal_rows']} multimodal "
            f"and {s['kept_text_only']}/{s['text_only_rows']} text-only samples; tokens {s['tokens_kept']}/"
            f"{s['answer_tokens']} ({fraction} of supervision); failed rows {s['failed_rows']}; reasons {s['reasons']}")
        if s.get("by_source"):
            out("  per source: " + "; ".join(f"{_source_name(r['source'])} kept {r['kept_multimodal']}/"
                                             f"{r['multimodal_rows']}" for r in s["by_source"]))
    if summary["selection_version"] is not None:
        out(f"committed selection v{summary['selection_version']}")
