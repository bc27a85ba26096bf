"""vig report on a small lake, opened in a real headless browser (Debian's chromium), and vig check's
sample of a Delta corpus table.

The lake: a corpus ingested by the ingest job from a LLaVA JSONL file (two sources), hand-made scores rows
whose token spans cover the answers' words (known VIGs), and a selection made by the select job.
The browser test takes a screenshot of report.html and finds, by pixel colour, the plots (matplotlib's first
line colour) and the fully coloured positive and negative token spans; a control page without them must
show none of these colours, so the check can fail.
"""

import datetime as dt
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import random_image

pytestmark = pytest.mark.spark

ANSWERS = {  # sample -> (source folder, answer, token VIGs of its words); sample VIG = mean
    "a": ("coco", "The circle is red.", [0.0, 0.1, 0.0, 3.0]),
    "b": ("coco", "The square is blue.", [0.0, 0.0, 0.1, 0.5]),
    "c": ("gqa", "It is on the left.", [0.0, 0.0, 0.1, 0.0, -0.1]),
    "d": ("gqa", "Yes, it is.", [0.0, 0.0, -3.0]),
}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
PLOT_BLUE = (31, 119, 180)  # matplotlib's C0, the first histogram line


def word_spans(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory):
    from pyspark.sql.pandas.types import from_arrow_schema

    from vig_udf.lake import write_table
    from vig_udf.spark.arrow import SCORES_SCHEMA
    from vig_udf.spark.ingest_job import IngestJobConfig, run_ingest
    from vig_udf.spark.select_job import SelectJobConfig, run_select

    root = tmp_path_factory.mktemp("report")
    lines = []
    for i, (sample_id, (source, answer, _)) in enumerate(ANSWERS.items()):
        (root / "images" / source).mkdir(parents=True, exist_ok=True)
        random_image(32, 32, i).save(root / "images" / source / f"{sample_id}.png")
        lines.append(json.dumps({"id": sample_id, "image": f"{source}/{sample_id}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": answer}]}))
    (root / "data.jsonl").write_text("\n".join(lines))
    lake = str(root / "lake")
    run_ingest(spark, IngestJobConfig(input=str(root / "data.jsonl"), image_root=str(root / "images"), lake=lake),
               out=lambda *_: None)
    rows = []
    for scorer, sign in (("s1", 1.0), ("s2", -1.0)):  # s2: another scorer, whose VIGs order the samples the other way
        for sample_id, (_, answer, vigs) in ANSWERS.items():
            spans = word_spans(answer)
            n, vigs = len(spans), [sign * v for v in vigs]
            rows.append((sample_id, scorer, "blur", "ok", None, float(np.mean(vigs)), 1.0, 1.0 + float(np.mean(vigs)),
                         n, list(range(n)), vigs, [-1.0] * n, [-1.0 - v for v in vigs], [0] * n,
                         [s for s, _ in spans], [e for _, e in spans], 0.01, dt.datetime(2026, 1, 1), None, None))
    rows.append(("x", "s1", "blur", "image_unreadable", "missing", None, None, None, 0, [], [], [], [], [], [], [],
                 0.0, dt.datetime(2026, 1, 1), None, None))
    write_table(spark.createDataFrame(rows, from_arrow_schema(SCORES_SCHEMA)), lake + "/scores", job="score",
                config={})
    run_select(spark, SelectJobConfig(lake=lake, policies=["vig", "sample"], p=50, scorer_id="s1"),
               out=lambda *_: None)
    weighted = run_select(spark, SelectJobConfig(lake=lake, policies=["token"], p=50, scorer_id="s1", tau_by="source",
                                                 token_weight="vig", token_weight_max=1.5), out=lambda *_: None)
    (root / "weighted.json").write_text(json.dumps(weighted["taus"]))
    return root


@pytest.fixture(scope="module")
def report(spark, lake):
    from vig_udf.report.scores_report import ReportConfig, write_scores_report

    return write_scores_report(spark, ReportConfig(lake=str(lake / "lake"), out=str(lake / "report"), top_k=2),
                               out=lambda *_: None)


def test_report_sections_tables_and_bounded_views(report):
    result = report
    folder = Path(result["paths"]["report.html"]).parent
    assert {(r["status"], r["count"]) for r in result["statuses"]} == {("ok", 4), ("image_unreadable", 1)}
    assert result["scorer_id"] == "s1"  # the per-source distributions: the scorer with the most rows
    assert result["warnings"] == {}  # their VIGs spread: they see the images
    assert {k: h["n"] for k, h in result["by_source"].items()} == {"coco": 2, "gqa": 2}
    assert sum(result["by_scorer"]["s1"]["counts"]) == 4 and sum(result["by_scorer"]["s2"]["counts"]) == 4
    # with no scorer chosen, each scorer's own sample views, named
    assert views(result) == {"s1": (["a", "b"], ["d", "c"]), "s2": (["d", "c"], ["a", "b"])}
    kept = {(r["policy"], r["source"]): (r["rows"], r["kept"]) for r in result["selection"]}
    assert sum(v[0] for k, v in kept.items() if k[0] == "vig") == 5  # every scores row, per policy
    assert sum(v[1] for k, v in kept.items() if k[0] == "sample") == 2  # p=50 of the four ok rows
    page = (folder / "report.html").read_text()
    for anchor in ("statuses", "sources", "scorers", "samples", "selection"):
        assert f'id="{anchor}"' in page
    assert 'title="VIG +3.000">red.</span>' in page and 'title="VIG -3.000">is.</span>' in page
    assert "<h3>Scorer s1</h3>" in page and "<h3>Scorer s2</h3>" in page
    md = (folder / "report.md").read_text()
    assert "| coco | 2 |" in md and "| vig |" in md
    # the per-source, token-weighted selection: listed with its options, each source's tau and its largest weight
    taus = {t["source"]: t["tau"] for t in json.loads((folder.parent / "weighted.json").read_text())}
    token = {r["source"]: r for r in result["selection"] if r["policy"] == "token"}
    assert set(token) >= set(taus) and {s: token[s]["tau"] for s in taus} == taus
    assert all(r["options"] == "tau per source; token weights vig (T=1, w_max=1.5)" for r in token.values())
    assert all(0 < r["max_weight"] <= 1.5 for r in token.values() if r["kept"])
    assert {r["options"] for r in result["selection"] if r["policy"] == "vig"} == {"one tau; hard token mask"}
    assert "tau per source; token weights vig (T=1, w_max=1.5)" in md


def views(result) -> dict:
    return {v["scorer_id"]: ([e["sample_id"] for e in v["top"]], [e["sample_id"] for e in v["bottom"]])
            for v in result["views"]}


def test_the_sample_views_follow_the_chosen_scorer(spark, lake, tmp_path):
    from vig_udf.report.scores_report import ReportConfig, write_scores_report

    lines = []
    result = write_scores_report(spark, ReportConfig(lake=str(lake / "lake"), out=str(tmp_path), top_k=2,
                                                     scorer_id="s2"), out=lines.append)
    assert result["scorer_id"] == "s2" and views(result) == {"s2": (["d", "c"], ["a", "b"])}
    assert result["by_source"]["coco"]["mean"] < 0 < result["by_source"]["gqa"]["mean"]  # s2's, not s1's
    assert "sample views: s2" in lines[-1], lines


def _screenshot(page, png) -> np.ndarray:
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1280,3600", f"--screenshot={png}", f"file://{page}"],
                   check=True, capture_output=True, timeout=120)
    return np.asarray(Image.open(png).convert("RGB")).astype(int)


def _pixels_near(shot: np.ndarray, rgb, tol: int = 12) -> int:
    return int((np.abs(shot - np.asarray(rgb)).max(axis=2) <= tol).sum())


def _blend(rgb, alpha: float) -> tuple:
    return tuple(round(alpha * c + (1 - alpha) * 255) for c in rgb)


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (scripts/setup_env.sh installs it as root)")
def test_report_renders_in_a_headless_browser(report, tmp_path):
    from vig_udf.report.views import NEGATIVE_RGB, POSITIVE_RGB

    result = report
    shot = _screenshot(result["paths"]["report.html"], tmp_path / "shot.png")
    green, red = _blend(POSITIVE_RGB, 0.85), _blend(NEGATIVE_RGB, 0.85)  # |VIG| 3.0 is past the colour scale
    assert _pixels_near(shot, PLOT_BLUE, tol=6) > 200, "the VIG plots did not render"
    assert _pixels_near(shot, green, tol=6) > 50, "no fully green token span"
    assert _pixels_near(shot, red, tol=6) > 50, "no fully red token span"
    # control: the same page without its images and token colours shows none of these colours
    page = open(result["paths"]["report.html"]).read()
    plain = re.sub(r'<img [^>]*>', "", re.sub(r'style="background-color: [^"]*"', "", page))
    plain_page = Path(result["paths"]["report.html"]).with_name("plain.html")
    plain_page.write_text(plain)
    control = _screenshot(plain_page, tmp_path / "plain.png")
    assert _pixels_near(control, PLOT_BLUE, tol=6) == 0 and _pixels_near(control, green, tol=6) == 0
    assert _pixels_near(control, red, tol=6) == 0


def test_check_samples_the_corpus_table_with_a_seed(spark, lake):
    from vig_udf.spark.check_job import sample_corpus, sample_input

    first = sample_corpus(spark, str(lake / "lake"), n=3, seed=5, image_root=str(lake / "images"))
    again = sample_corpus(spark, str(lake / "lake"), n=3, seed=5, image_root=str(lake / "images"))
    assert [r["id"] for r in first] == [r["id"] for r in again] and len(first) == 3
    assert set(r["id"] for r in first) <= set(ANSWERS)
    assert all(r["image"].startswith(str(lake / "images")) and r["conversations"][1]["from"] == "gpt" for r in first)
    assert len(sample_corpus(spark, str(lake / "lake"), n=50, seed=5)) == 4
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [json.loads(line) for line in (lake / "data.jsonl").read_text().splitlines()]
    rows = records + [{"id": "t", "image": None, "conversations": records[0]["conversations"]}]
    pq.write_table(pa.Table.from_pylist(rows), lake / "data.parquet")
    drawn = sample_input(spark, str(lake / "data.parquet"), n=3, seed=5)
    assert len(drawn) == 3 and {r["id"] for r in drawn} <= set(ANSWERS)  # the text-only record is never drawn
    assert drawn[0]["conversations"][1]["from"] == "gpt" and drawn[0]["image"].endswith(".png")
