"""Which selection a downstream job (train, export) reads, and at which table versions.

The selections a table holds are read from its history when every commit there is a select commit that
recorded them (:func:`select_commits`): a rerun then finds them without reading a row. Otherwise (a table
written by an older version, a commit of another kind, a history Delta has cleaned up) they are read from the
rows.

Both jobs name one selection (``selection_id``, or ``policy`` when the selection table version holds exactly
one selection of it) and pin three versions: the selection table's (pinned or latest), the scores version the
selection's rows came from, and the corpus version (pinned or latest).
"""

from __future__ import annotations

TABLES = ("corpus", "scores", "selection")
SELECT_JOB = "select"
# operations that rewrite files without changing the rows (Delta's names in DESCRIBE HISTORY)
ROW_PRESERVING_OPERATIONS = frozenset({"OPTIMIZE", "VACUUM START", "VACUUM END"})
# what a select commit records of each selection it writes, besides its id
SELECTION_KEYS = ("policy", "params", "params_hash", "rows", "failed_rows", "text_only_rows", "kept_multimodal",
                  "kept_text_only", "tokens_kept", "answer_tokens", "reasons")


def select_commits(spark, path: str, *, up_to: int | None = None) -> list[dict] | None:
    """The configs of the select commits of the selection table at ``path`` (up to version ``up_to``), newest
    first, each with ``version`` and the ``selections`` it wrote; ``None`` when the history does not account for
    every row: it no longer reaches version 0, or a commit is neither a select commit that recorded its
    selections nor an operation that keeps the rows (OPTIMIZE, VACUUM). Reads the history only."""
    from vig_udf.lake import table_history

    history = [c for c in table_history(spark, path) if up_to is None or c["version"] <= up_to]
    if not history or history[-1]["version"] != 0:
        return None
    commits = []
    for commit in history:
        if commit["operation"] in ROW_PRESERVING_OPERATIONS:
            continue
        config = commit["config"]
        if commit["job"] != SELECT_JOB or not isinstance(config, dict) or "selections" not in config:
            return None
        commits.append({**config, "version": commit["version"]})
    return commits


def recorded_selections(commits: list[dict]) -> dict[str, dict]:
    """selection_id -> the selection as its select commit recorded it (:data:`SELECTION_KEYS` plus ``p``,
    ``tau``, ``taus`` (the per-source taus of ``tau_by=source``, else None), ``scorer_id``, ``scores_version``),
    from :func:`select_commits`."""
    selections: dict[str, dict] = {}
    for commit in reversed(commits):  # oldest first: the commit that wrote a selection describes it
        for selection_id, recorded in commit["selections"].items():
            selections.setdefault(selection_id, {
                "selection_id": selection_id, **recorded, "p": commit["p"], "tau": commit["tau"],
                "taus": commit.get("taus"),
                "scorer_id": commit["scorer_id"], "scores_version": commit["scores_version"]})
    return selections


def pinned_or_latest(path: str, pinned: int | None, producer: str, spark) -> int:
    """``pinned``, or the latest version of the table at ``path``; raises when there is no table."""
    from vig_udf.lake import table_version

    latest = table_version(spark, path)
    if latest is None:
        raise FileNotFoundError(f"no Delta table at {path}: run `{producer}` first (or check lake=)")
    return latest if pinned is None else pinned


def resolve_selection(spark, *, lake: str, selection_id: str | None, policy: str | None,
                      selection_version: int | None = None, corpus_version: int | None = None) -> dict:
    """The chosen selection (id, policy, params, p, tau, scorer, kept count), the table URIs and the pinned
    versions of the corpus, scores and selection tables."""
    from pyspark.sql import functions as F

    from vig_udf.lake import lake_table, read_table, table_version

    paths = {name: lake_table(lake, name) for name in TABLES}
    versions = {"selection": pinned_or_latest(paths["selection"], selection_version, "vig select", spark)}
    keys = ["selection_id", "policy", "params", "p", "tau", "scorer_id", "scores_version"]
    commits = select_commits(spark, paths["selection"], up_to=versions["selection"])
    if commits is not None:
        available = [{**{k: s[k] for k in keys}, "kept": s["kept_multimodal"] + s["kept_text_only"],
                      "taus": s["taus"]} for _, s in sorted(recorded_selections(commits).items())]
    else:  # one row per selection in the table (a handful), not per sample
        selection = read_table(spark, paths["selection"], version=versions["selection"])
        grouped = selection.groupBy(*[k for k in keys if k != "tau"]).agg(
            F.sum(F.col("kept").cast("int")).alias("kept"), F.min("tau").alias("_low"), F.max("tau").alias("_high"))
        # a tau_by=source selection's rows hold their sources' taus: no one tau, as its select commit records
        available = [{**{k: r[k] for k in keys if k != "tau"}, "kept": r["kept"],
                      "tau": r["_low"] if r["_low"] == r["_high"] else None, "taus": None}
                     for r in grouped.orderBy("selection_id").collect()]
    if selection_id is not None:
        matches = [s for s in available if s["selection_id"] == selection_id]
        wanted = f"selection_id {selection_id!r}"
    else:
        matches = [s for s in available if s["policy"] == policy]
        wanted = f"a single selection of policy {policy!r}"
    if len(matches) != 1:
        listing = "; ".join(f"{s['selection_id']} (policy {s['policy']}, scorer {s['scorer_id']}, scores "
                            f"v{s['scores_version']}, kept {s['kept']}, params {s['params']})" for s in available)
        raise ValueError(f"{paths['selection']} v{versions['selection']} has no {wanted} (it matches "
                         f"{len(matches)} selections); set selection_id to one of: {listing or 'none (empty)'}")
    chosen = matches[0]
    versions["scores"] = int(chosen.pop("scores_version"))
    if table_version(spark, paths["scores"]) is None:
        raise FileNotFoundError(f"no scores table at {paths['scores']}: selection {chosen['selection_id']} was made "
                                f"from scores v{versions['scores']}, whose token spans the mask is aligned to")
    versions["corpus"] = pinned_or_latest(paths["corpus"], corpus_version, "vig ingest", spark)
    return {**chosen, "paths": paths, "versions": versions}
