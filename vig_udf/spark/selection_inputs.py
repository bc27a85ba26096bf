"""Which selection a downstream job (train, export) reads, and at which table versions.

Both jobs name one selection (``selection_id``, or ``policy`` when the selection table version holds exactly
one selection of it) and pin three versions: the selection table's (pinned or latest), the scores version the
selection's rows came from, and the corpus version (pinned or latest).
"""

from __future__ import annotations

TABLES = ("corpus", "scores", "selection")


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
    selection = read_table(spark, paths["selection"], version=versions["selection"])
    keys = ["selection_id", "policy", "params", "p", "tau", "scorer_id", "scores_version"]
    # one row per selection in the table (a handful), not per sample
    available = [r.asDict() for r in selection.groupBy(*keys).agg(F.sum(F.col("kept").cast("int")).alias("kept"))
                 .orderBy("selection_id").collect()]
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
