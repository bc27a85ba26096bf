"""The scorers of a scores table, told apart: each scorer id with the model, family, counterfactual and options
its score commits recorded (``config.scorer`` and ``config.scorer_record``), its rows and when it last scored."""

from __future__ import annotations


def commit_scorers(config: dict) -> list[dict]:
    """The scorers a score commit's ``config`` wrote rows of, each ``{"scorer_id", "scorer_record"}``: one
    (``scorer_id``, ``scorer_record``) or several at once (``scorers``, a job of several counterfactuals)."""
    if config.get("scorers"):
        return [{"scorer_id": s.get("scorer_id"), "scorer_record": s.get("scorer_record") or {}}
                for s in config["scorers"]]
    if config.get("scorer_id"):
        return [{"scorer_id": config["scorer_id"], "scorer_record": config.get("scorer_record") or {}}]
    return []


def list_scorers(commits: list[dict], rows: dict[str, int]) -> list[dict]:
    """One entry per scorer id of ``rows`` (scorer id -> rows in the table) or of the score commits in
    ``commits`` (:func:`vig_udf.lake.table_history` entries, newest first), described by its newest commit."""
    found: dict[str, dict] = {}
    for commit in commits:
        config = commit.get("config") or {}
        if commit.get("job") != "score":
            continue
        scorer = config.get("scorer") or {}
        for written in commit_scorers(config):
            scorer_id, record = written["scorer_id"], written["scorer_record"]
            if not scorer_id or scorer_id in found:
                continue
            identity = record.get("identity") or {}
            options = {k: v for k, v in identity.items() if k not in ("model", "files", "commit", "chat_template")
                       and v is not None}
            found[scorer_id] = {"scorer_id": scorer_id, "model_path": scorer.get("model_path"),
                                "family": record.get("family"),
                                "counterfactual": identity.get("counterfactual", scorer.get("counterfactual")),
                                "options": options, "rows": rows.get(scorer_id, 0), "date": commit.get("timestamp")}
    for scorer_id, n in rows.items():  # rows whose commits the history no longer holds
        found.setdefault(scorer_id, {"scorer_id": scorer_id, "model_path": None, "family": None,
                                     "counterfactual": None, "options": {}, "rows": n, "date": None})
    return sorted(found.values(), key=lambda s: str(s["date"] or ""), reverse=True)


def scorer_lines(scorers: list[dict]) -> list[str]:
    """``vig lake scorers``' lines: one per scorer, its options after it."""
    lines = []
    for s in scorers:
        lines.append(f"{s['scorer_id']}  {s['model_path'] or '?'}  family {s['family'] or '?'}  "
                     f"counterfactual {s['counterfactual'] or '?'}  rows {s['rows']}  last scored {s['date'] or '?'}")
        if s["options"]:
            lines.append("    " + ", ".join(f"{k}={v}" for k, v in sorted(s["options"].items())))
    return lines


BLIND_VIG = 0.001  # a scorer whose every ok sample VIG is within +-BLIND_VIG measures no image
BLIND_WARNING = "this scorer may not see the images"


def blind_warning(vig_min: float | None, vig_max: float | None) -> str | None:
    """The warning for a scorer whose sample VIGs all lie within +-:data:`BLIND_VIG` (None when they spread)."""
    if vig_min is None or vig_max is None or max(abs(vig_min), abs(vig_max)) > BLIND_VIG:
        return None
    return (f"{BLIND_WARNING}: every sample VIG is within +-{BLIND_VIG} ({vig_min:+.5f} to {vig_max:+.5f}); "
            "run `vig check` on it")


def scorer_names(commits: list[dict]) -> dict[str, str]:
    """Scorer id -> ``model path, family, counterfactual`` from the score commits (:func:`list_scorers`)."""
    return {s["scorer_id"]: ", ".join(str(v) for v in (s["model_path"], s["family"], s["counterfactual"]) if v)
            for s in list_scorers(commits, {}) if s["model_path"]}
