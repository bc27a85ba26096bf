# Databricks notebook source
# MAGIC %pip install "vig-spark"

# COMMAND ----------

# MAGIC %md
# MAGIC # Score samples with Visual Information Gain
# MAGIC
# MAGIC Scores a few LLaVA-format conversations with a vision-language model and shows, for every answer
# MAGIC token, how much the image helped predict it. Runs locally as plain Python
# MAGIC (`python notebooks/01_score_samples.py`) or as a Databricks / jupytext notebook.
# MAGIC
# MAGIC Set the `model_path` widget (or `VIG_MODEL_PATH` off Databricks) to any Hugging Face image-text-to-text
# MAGIC checkpoint; by default the project's demo model is built (about two minutes on a CPU) and used. The
# MAGIC scorer runs in bfloat16 on a GPU and float32 on a CPU. This notebook needs no Spark.

# COMMAND ----------

import html
import os

import numpy as np

from vig_udf import VIGScorer
from vig_udf.demo.model import build_demo_model
from vig_udf.demo.world import generate
from vig_udf.notebook import setting

DBUTILS = globals().get("dbutils")  # Databricks: the settings are widgets
MODEL_PATH = setting(DBUTILS, "model_path", None, "model (hub id or folder)") or build_demo_model(".demo/model")
COUNTERFACTUAL = setting(DBUTILS, "counterfactual", "blur", "counterfactual (blur, drop, blank, noise)")
scorer = VIGScorer.from_pretrained(MODEL_PATH, counterfactual=COUNTERFACTUAL)
print("scorer", scorer.scorer_id, "on", scorer.device)

# COMMAND ----------

# MAGIC %md Generated shapes-world samples (swap in your own records: `{"id", "image", "conversations"}`).

# COMMAND ----------

samples = generate(12, seed=11)
results = scorer.score(samples)
for result in results:
    vig = "-" if result.vig is None else f"{result.vig:+.3f}"
    print(f"{result.sample_id:<10} {result.status:<10} VIG {vig}  tokens {result.n_tokens}")

# COMMAND ----------

# MAGIC %md Token heatmap: each answer token coloured by its VIG (green: the image helped; red: it hurt).


# COMMAND ----------

def token_heatmap(sample: dict, result) -> str:
    """HTML of the sample's answers with every scored token coloured by its VIG."""
    answers = [t["value"] for t in sample["conversations"] if t["from"] == "gpt"]
    parts = []
    for turn, answer in enumerate(answers):
        in_turn = np.nonzero(result.token_turn == turn)[0]
        spans = []
        for i in in_turn:
            vig = float(result.token_vig[i]) if result.status == "ok" else 0.0
            alpha = min(abs(vig), 2.0) / 2.0
            colour = f"rgba(0,160,0,{alpha:.2f})" if vig >= 0 else f"rgba(200,0,0,{alpha:.2f})"
            text = html.escape(answer[result.token_char_start[i]:result.token_char_end[i]])
            spans.append(f'<span title="{vig:+.3f}" style="background:{colour}">{text}</span>')
        parts.append("<p>" + "".join(spans) + "</p>")
    return "\n".join(parts)


page = "\n".join(f"<h4>{html.escape(s['id'])}</h4>{token_heatmap(s, r)}" for s, r in zip(samples, results))
try:
    displayHTML(page)  # noqa: F821  (Databricks)
except NameError:
    os.makedirs(".demo", exist_ok=True)
    with open(".demo/token_heatmap.html", "w") as f:
        f.write(page)
    print("heatmap written to .demo/token_heatmap.html")
