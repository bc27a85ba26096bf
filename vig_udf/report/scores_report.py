"""``vig report``: an HTML report (PNG plots) of a lake's scores table, and of its selection table when it exists.

Sections: rows by status and scorer; sample VIG distributions per source and per scorer (histograms from
binned counts, quantiles); the top and bottom samples by VIG with every answer token coloured by its VIG;
the selection's effect (kept samples and tokens per policy and source). Everything is read through Spark
with bounded collects: aggregates grouped by a bounded key (status, scorer, source, policy, histogram bin;
sources beyond ``max_sources`` are pooled as "other") and ``ORDER BY ... LIMIT`` for the samples shown. So
the driver's memory does not grow with the corpus.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from vig_udf.config import SparkConfig
from vig_udf.report.views import (conversation_html, html_page, html_table, legend_html, md_table, pyplot,
                                  token_scale)

BINS = 40
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
OTHER = "other"


class ReportConfig(BaseModel):
    """``vig report``: which lake, which scorer, what to show, where the report goes."""

    model_config = ConfigDict(extra="forbid")

    lake: str = Field("lake", description="lake root with the scores table (and corpus, selection)")
    out: str = Field("report", description="folder of report.html, report.md and the PNG plots")
    scorer_id: str | None = Field(None, description="scorer of the per-source distributions and the sample and "
                                                    "token views; None = the per-source distributions of the scorer "
                                                    "with the most rows and sample views of every scorer (up to "
                                                    "view_scorers; statuses and per-scorer distributions show all)")
    view_scorers: int = Field(8, gt=0, description="with no scorer_id: sample views for at most this many scorers, "
                                                   "the ones with the most rows")
    top_k: int = Field(5, ge=0, le=100, description="highest and lowest VIG samples shown with coloured tokens")
    max_sources: int = Field(12, gt=0, description="sources shown apart (by row count); the rest are 'other'")
    spark: SparkConfig = SparkConfig(conf={"spark.ui.enabled": "false"})


def _source_column(spark, lake: str, scores):
    """scores joined with the corpus's source (None when there is no corpus table), sources beyond the
    largest ``max_sources`` pooled later."""
    from pyspark.sql import functions as F

    from vig_udf.lake import lake_table, read_table, table_exists

    corpus_path = lake_table(lake, "corpus")
    if not table_exists(spark, corpus_path):
        return scores.withColumn("source", F.lit("(no corpus table)")), None
    corpus = read_table(spark, corpus_path).select("sample_id", "source", "conversations")
    return scores.join(corpus.select("sample_id", "source"), "sample_id", "left"), corpus


def _pool_sources(df, max_sources: int):
    from pyspark.sql import functions as F

    counts = df.groupBy("source").count().orderBy(F.desc("count")).limit(max_sources).collect()
    keep = [r.source for r in counts if r.source is not None]
    named = F.coalesce(F.col("source"), F.lit("(none)"))
    return df.withColumn("source", F.when(F.col("source").isin(keep), named).otherwise(F.lit(OTHER)))


def _histograms(df, group: str) -> dict[str, dict]:
    """group value -> {"edges", "counts", "n", "quantiles"} of the ok rows' VIG (one global bin grid)."""
    from pyspark.sql import functions as F

    ok = df.where((F.col("status") == "ok") & F.col("vig").isNotNull() & ~F.isnan("vig"))
    bounds = ok.agg(F.min("vig").alias("lo"), F.max("vig").alias("hi")).collect()[0]
    if bounds.lo is None:
        return {}
    lo, hi = float(bounds.lo), float(bounds.hi)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    width = (hi - lo) / BINS
    binned = (ok.withColumn("bin", F.least(F.floor((F.col("vig") - lo) / width).cast("int"), F.lit(BINS - 1)))
              .groupBy(group, "bin").count().collect())
    quantiles = ok.groupBy(group).agg(F.count(F.lit(1)).alias("n"), F.mean("vig").alias("mean"),
                                      F.percentile_approx("vig", list(QUANTILES)).alias("q")).collect()
    out = {str(r[group]): {"edges": np.linspace(lo, hi, BINS + 1), "counts": np.zeros(BINS, dtype=np.int64),
                           "n": int(r.n), "mean": float(r.mean), "quantiles": list(r.q)} for r in quantiles}
    for r in binned:
        out[str(r[group])]["counts"][int(r.bin)] = int(r["count"])
    return out


def plot_histograms(hists: dict[str, dict], path: Path, title: str) -> None:
    """Density step histograms of binned VIG per group, into ``path``."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    for name, h in sorted(hists.items(), key=lambda kv: -kv[1]["n"]):
        edges, counts = h["edges"], h["counts"]
        density = counts / max(1, counts.sum()) / np.diff(edges)
        ax.stairs(density, edges, lw=1.5, label=f"{name} (n={h['n']}, mean {h['mean']:+.3f})")
    if not hists:
        ax.text(0.5, 0.5, "no scored rows", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize=7)
    ax.axvline(0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("sample VIG")
    ax.set_ylabel("density")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_selection(rows: list[dict], path: Path) -> None:
    """Share of samples and of answer tokens kept, per policy (bars)."""
    plt = pyplot()
    policies = sorted({r["policy"] for r in rows})
    agg = {p: [sum(r[k] for r in rows if r["policy"] == p) for k in ("rows", "kept", "tokens", "tokens_kept")]
           for p in policies}
    x = np.arange(len(policies))
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(policies) + 2), 3.6))
    ax.bar(x - 0.2, [agg[p][1] / max(1, agg[p][0]) for p in policies], 0.4, label="samples kept")
    ax.bar(x + 0.2, [agg[p][3] / max(1, agg[p][2]) for p in policies], 0.4, label="answer tokens kept")
    ax.set_xticks(x, policies)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share kept")
    ax.legend(fontsize=8)
    ax.set_title("What each selection keeps")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _examples(scores, corpus, scorer_id: str, k: int) -> tuple[list[dict], list[dict]]:
    """The ``k`` highest and lowest VIG ok rows of ``scorer_id`` with their conversations."""
    from pyspark.sql import functions as F

    if k == 0:
        return [], []
    ok = scores.where((F.col("scorer_id") == scorer_id) & (F.col("status") == "ok") & F.col("vig").isNotNull())
    cols = ["sample_id", "vig", "token_turn", "token_char_start", "token_char_end", "token_vig"]
    if corpus is not None:
        ok = ok.join(corpus.select("sample_id", "conversations"), "sample_id", "left")
        cols.append("conversations")
    top = ok.orderBy(F.desc("vig")).limit(k).select(*cols).collect()
    bottom = ok.orderBy(F.asc("vig")).limit(k).select(*cols).collect()

    def example(row) -> dict:
        row = row.asDict(recursive=True)
        turns = row.get("conversations") or []
        return {"sample_id": row["sample_id"], "vig": float(row["vig"]),
                "questions": [t["value"].replace("<image>", "").strip() for t in turns if t["from"] == "human"],
                "answers": [t["value"] for t in turns if t["from"] == "gpt"],
                **{key: list(row[key] or []) for key in ("token_turn", "token_char_start", "token_char_end",
                                                          "token_vig")}}

    return [example(r) for r in top], [example(r) for r in bottom]


def selection_options(params: str | None) -> str:
    """What a selection's params set beyond its policy and p, in words: the threshold (one tau, or per source),
    the token loss (hard mask, or VIG weights with their temperature and cap), drop_negative, budgets, seed."""
    import json

    if not params:
        return ""
    q = json.loads(params)
    words = ["tau per source" if q.get("tau_by") == "source" else "one tau"]
    weight = q.get("token_weight")
    words.append(f"token weights vig (T={weight['temperature']:g}, w_max={weight['w_max']:g})" if weight
                 else "hard token mask")
    if q.get("drop_negative"):
        words.append("drop VIG<0")
    if q.get("budgets"):
        words.append("budgets " + ", ".join(f"{k}={v}" for k, v in q["budgets"].items()))
    if q.get("seed") is not None:
        words.append(f"seed {q['seed']}")
    return "; ".join(words)


def _selection_rows(spark, lake: str, scored) -> list[dict]:
    """Per selection and source: rows, kept rows, answer tokens, kept tokens, the tau the source's rows were
    decided against and the mean kept-token loss weight where the selection has weights (empty without a
    selection table)."""
    from pyspark.sql import functions as F

    from vig_udf.lake import lake_table, read_table, table_exists

    path = lake_table(lake, "selection")
    if not table_exists(spark, path):
        return []
    selection = read_table(spark, path)
    weight_columns = [F.lit(None).cast("double").alias("max_weight")]
    if "token_weight" in selection.columns:  # absent from tables written before token weights
        weight_columns = [F.max(F.array_max("token_weight")).alias("max_weight")]
    selection = selection.join(scored.select("sample_id", "scorer_id", "source"), ["sample_id", "scorer_id"], "left")
    rows = (selection.groupBy("policy", "selection_id", "scorer_id", "source")
            .agg(F.count(F.lit(1)).alias("rows"), F.sum(F.col("kept").cast("int")).alias("kept"),
                 F.sum("n_tokens").alias("tokens"), F.sum("n_tokens_kept").alias("tokens_kept"),
                 F.max("tau").alias("tau"), F.first("params").alias("params"), *weight_columns).collect())
    return [{**{k: (v if v is not None else 0) if k in ("rows", "kept", "tokens", "tokens_kept") else v
                for k, v in r.asDict().items()}, "options": selection_options(r["params"])} for r in rows]


def write_scores_report(spark, cfg: ReportConfig, *, out=print) -> dict:
    """Read the lake's tables with bounded collects and write report.html, report.md and the plots."""
    from pyspark.sql import functions as F

    from vig_udf.lake import lake_table, read_table, table_exists, table_version

    scores_path = lake_table(cfg.lake, "scores")
    if not table_exists(spark, scores_path):
        raise FileNotFoundError(f"no scores table at {scores_path}: run `vig score` first")
    version = table_version(spark, scores_path)
    scores = read_table(spark, scores_path, version=version)
    folder = Path(cfg.out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: str(folder / name) for name in
             ("report.html", "report.md", "vig_by_source.png", "vig_by_scorer.png", "selection.png")}

    statuses = [r.asDict() for r in scores.groupBy("scorer_id", "counterfactual", "status").count()
                .orderBy("scorer_id", F.desc("count")).collect()]
    per_scorer = {}
    for r in statuses:
        per_scorer[r["scorer_id"]] = per_scorer.get(r["scorer_id"], 0) + r["count"]
    scorer_id = cfg.scorer_id or (max(per_scorer, key=per_scorer.get) if per_scorer else None)
    if cfg.scorer_id and cfg.scorer_id not in per_scorer:
        raise ValueError(f"scorer_id={cfg.scorer_id!r} has no rows in {scores_path}; it holds {sorted(per_scorer)}")
    with_source, corpus = _source_column(spark, cfg.lake, scores)
    with_source = _pool_sources(with_source, cfg.max_sources)
    by_source = _histograms(with_source.where(F.col("scorer_id") == scorer_id), "source") if scorer_id else {}
    by_scorer = _histograms(scores, "scorer_id")
    plot_histograms(by_source, Path(paths["vig_by_source.png"]), f"Sample VIG per source (scorer {scorer_id})")
    plot_histograms(by_scorer, Path(paths["vig_by_scorer.png"]), "Sample VIG per scorer")
    shown = [scorer_id] if cfg.scorer_id else sorted(per_scorer, key=lambda s: (-per_scorer[s], s))[:cfg.view_scorers]
    from vig_udf.lake import table_history
    from vig_udf.lake.scorers import scorer_names

    names = scorer_names(table_history(spark, scores_path))
    named = lambda sid: f"{sid} ({names[sid]})" if sid in names else str(sid)  # noqa: E731
    views = [dict(zip(("top", "bottom"), _examples(scores, corpus, sid, cfg.top_k)), scorer_id=sid, name=named(sid))
             for sid in shown]
    selection = _selection_rows(spark, cfg.lake, with_source)
    if selection:
        plot_selection(selection, Path(paths["selection.png"]))
    else:
        paths.pop("selection.png")

    tables = _tables(statuses, by_source, by_scorer, selection)
    hidden = len(per_scorer) - len(shown)
    _write_md(paths, scores_path, version, named(scorer_id), tables, views, hidden)
    _write_html(paths, scores_path, version, named(scorer_id), tables, views, hidden)
    warnings = _blind_scorers(scores)
    if warnings:
        with open(paths["report.md"], "a") as md:
            md.write("\n## Warnings\n\n" + "".join(f"- scorer {k}: {w}\n" for k, w in warnings.items()))
    for blind, warning in warnings.items():
        out(f"WARNING scorer {named(blind)}: {warning}")
    out(f"report: {paths['report.html']} (per-source distributions: scorer {named(scorer_id)}; sample views: "
        f"{'; '.join(v['name'] for v in views) or 'none'}{f'; {hidden} more scorers not shown' if hidden else ''})")
    return {"paths": paths, "scorer_id": scorer_id, "statuses": statuses, "by_source": by_source,
            "by_scorer": by_scorer, "selection": selection, "views": views, "warnings": warnings}


def _blind_scorers(scores) -> dict[str, str]:
    """Scorer id -> :func:`vig_udf.lake.scorers.blind_warning` for each scorer whose ok VIGs barely move (one
    aggregation, a row per scorer)."""
    from pyspark.sql import functions as F

    from vig_udf.lake.scorers import blind_warning

    ranges = (scores.where(F.col("status") == "ok").groupBy("scorer_id")
              .agg(F.min("vig").alias("low"), F.max("vig").alias("high")).collect())
    found = {r["scorer_id"]: blind_warning(r["low"], r["high"]) for r in ranges}
    return {k: w for k, w in sorted(found.items()) if w}


def _fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:+.3f}"


def _tables(statuses, by_source, by_scorer, selection) -> dict[str, tuple[list[str], list[list]]]:
    def dist(hists):
        return [[name, h["n"], _fmt(h["mean"])] + [_fmt(q) for q in h["quantiles"]]
                for name, h in sorted(hists.items(), key=lambda kv: -kv[1]["n"])]

    qhead = [f"q{int(q * 100):02d}" for q in QUANTILES]
    sel = sorted(selection, key=lambda r: (r["policy"], r["selection_id"], str(r["source"])))
    return {
        "statuses": (["scorer", "counterfactual", "status", "rows"],
                     [[r["scorer_id"], r["counterfactual"], r["status"], r["count"]] for r in statuses]),
        "by_source": (["source", "ok rows", "mean VIG"] + qhead, dist(by_source)),
        "by_scorer": (["scorer", "ok rows", "mean VIG"] + qhead, dist(by_scorer)),
        "selection": (["policy", "selection", "options", "source", "tau", "rows", "kept", "share kept",
                       "answer tokens", "tokens kept", "share of tokens", "max token weight"],
                      [[r["policy"], r["selection_id"][:12], r["options"], r["source"], _fmt(r["tau"]), r["rows"],
                        r["kept"], f"{r['kept'] / max(1, r['rows']):.1%}", r["tokens"], r["tokens_kept"],
                        f"{r['tokens_kept'] / max(1, r['tokens']):.1%}",
                        _fmt(r["max_weight"]) if r["max_weight"] is not None else ""] for r in sel]),
    }


def _hidden_note(hidden: int) -> str:
    return (f"{hidden} more scorers have no sample views here; `vig report scorer_id=<id>` shows one of them."
            if hidden else "")


def _write_md(paths, scores_path, version, scorer, tables, views, hidden) -> None:
    md = ["# VIG report", "", f"- **scores table**: {scores_path} (version {version})",
          f"- **scorer of the per-source distributions**: {scorer}",
          f"- **scorers of the sample views**: {'; '.join(v['name'] for v in views) or 'none'}", "",
          "## Rows by status", ""]
    md += md_table(*tables["statuses"])
    md += ["", "## VIG per source", ""] + md_table(*tables["by_source"]) + ["", "![per source](vig_by_source.png)"]
    md += ["", "## VIG per scorer", ""] + md_table(*tables["by_scorer"]) + ["", "![per scorer](vig_by_scorer.png)"]
    md += ["", "## Top and bottom samples", ""]
    for view in views:
        top, bottom = view["top"], view["bottom"]
        md.append(f"- scorer {view['name']}: report.html shows the {len(top)} highest and {len(bottom)} lowest VIG "
                  "samples with every answer token coloured: "
                  + ", ".join(f"{e['sample_id']} ({_fmt(e['vig'])})" for e in top + bottom) + ".")
    if hidden:
        md += ["", _hidden_note(hidden)]
    md += ["", "## Selection", ""]
    if "selection.png" in paths:
        md += md_table(*tables["selection"]) + ["", "![selection](selection.png)"]
    else:
        md.append("No selection table in the lake (run `vig select`).")
    Path(paths["report.md"]).write_text("\n".join(md) + "\n", encoding="utf-8")


def _write_html(paths, scores_path, version, scorer, tables, views, hidden) -> None:
    scale = token_scale(v for view in views for e in view["top"] + view["bottom"] for v in e["token_vig"])
    body = ["<h1>VIG report</h1>",
            f"<p>Scores table {html.escape(scores_path)} (version {version}); per-source distributions of scorer "
            f"{html.escape(scorer)}; sample views of {len(views)} scorer(s).</p>",
            '<h2 id="statuses">Rows by status</h2>', html_table(*tables["statuses"]),
            '<h2 id="sources">VIG per source</h2>', html_table(*tables["by_source"]),
            '<img src="vig_by_source.png" alt="VIG per source">',
            '<h2 id="scorers">VIG per scorer</h2>', html_table(*tables["by_scorer"]),
            '<img src="vig_by_scorer.png" alt="VIG per scorer">',
            '<h2 id="samples">Top and bottom samples</h2>', legend_html(scale)]
    for view in views:
        body.append(f"<h3>Scorer {html.escape(view['name'])}</h3>")
        for title, examples in (("Highest VIG", view["top"]), ("Lowest VIG", view["bottom"])):
            body.append(f"<h4>{title}</h4>")
            body += [conversation_html(e, scale, heading=f"{e['sample_id']}: VIG {_fmt(e['vig'])}") for e in examples]
    if hidden:
        body.append(f"<p>{html.escape(_hidden_note(hidden))}</p>")
    body.append('<h2 id="selection">Selection</h2>')
    if "selection.png" in paths:
        body += [html_table(*tables["selection"]), '<img src="selection.png" alt="selection">']
    else:
        body.append("<p>No selection table in the lake (run <code>vig select</code>).</p>")
    Path(paths["report.html"]).write_text(html_page("VIG report", "\n".join(body)), encoding="utf-8")
