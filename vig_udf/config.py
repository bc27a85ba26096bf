"""Typed job configuration: pydantic models read from conf/*.yaml with ``key.sub=value`` overrides.

>>> cfg = load_config(DemoConfig, None, ["scorer.counterfactual=drop", "samples=16"])
>>> cfg.scorer.counterfactual, cfg.samples
('drop', 16)
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field

from vig_udf.images import DEFAULT_BLUR_SIGMA

T = TypeVar("T", bound=BaseModel)


class ScorerConfig(BaseModel):
    """How samples are scored; every field but batch_tokens and device is part of the scorer identity."""

    model_config = ConfigDict(extra="forbid")

    model_path: str | None = Field(None, description="HF model id or local checkpoint folder; None = the demo model")
    counterfactual: str = Field("blur", description="blur | drop | blank | noise")
    blur_sigma: float = Field(DEFAULT_BLUR_SIGMA, description="blur sigma as a fraction of the image's shorter side")
    max_length: int | None = Field(None, description="longer samples get status 'truncated'; None = no limit")
    batch_tokens: int | None = Field(None, description="token budget per forward batch; None = 2048 CPU / 32768 GPU")
    dtype: str | None = Field(None, description="float32 | bfloat16 | float16; None = bf16 on GPU, fp32 on CPU")
    device: str | None = Field(None, description="cuda | cuda:N | cpu; None = cuda when available")
    image_root: str | None = Field(None, description="folder that relative image paths resolve against")
    max_image_pixels: int | None = Field(64_000_000, description="larger images get 'image_unreadable'")

    def scorer_kwargs(self) -> dict:
        """Keyword arguments for VIGScorer.from_pretrained (model path excluded)."""
        kwargs = self.model_dump(exclude={"model_path"})
        return {k: v for k, v in kwargs.items() if v is not None}


class SparkConfig(BaseModel):
    """Spark settings of a job. ``conf`` is passed to the session builder as is."""

    model_config = ConfigDict(extra="forbid")

    master: str | None = Field("local[*]", description="Spark master; None = leave it to spark-submit")
    app_name: str = Field("vig-spark", description="application name")
    conf: dict[str, str] = Field(default_factory=dict, description="any spark.* setting")


class SqlConfig(BaseModel):
    """``vig sql``: where the lake is and how to start Spark."""

    model_config = ConfigDict(extra="forbid")

    lake: str = Field("lake", description="lake root; every Delta table under it becomes a view")
    spark: SparkConfig = SparkConfig()


class DemoConfig(BaseModel):
    """The demo: build the small shapes-world model, score generated samples, print high-VIG tokens."""

    model_config = ConfigDict(extra="forbid")

    workdir: str = Field(".demo", description="where the demo model and its outputs are written")
    samples: int = Field(96, description="generated samples to score")
    seed: int = Field(7, description="seed of the scored samples (the model trains on another seed)")
    top: int = Field(15, description="how many highest-VIG tokens to print")
    lake: str | None = Field(None, description="lake root for the corpus and scores tables; None = <workdir>/lake")
    scorer: ScorerConfig = ScorerConfig()
    spark: SparkConfig = SparkConfig(conf={"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "4"})


SHARED_SECTIONS = ("lake", "spark")


def load_config(model: type[T], path: str | Path | None, overrides: list[str] | None = None, *,
                section: str | None = None) -> T:
    """Read ``path`` (YAML, optional), apply ``key.sub=value`` overrides (values parsed as YAML), validate.

    With ``section``, the job's settings are the file's ``section:`` mapping, and the top-level ``lake``
    and ``spark`` settings (shared by every job in the file) fill in what the section does not set.
    """
    data: dict = {}
    if path is not None:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a YAML mapping at the top level")
    if section is not None:
        job = dict(data.get(section) or {})
        for shared in SHARED_SECTIONS:
            if shared in data and shared not in job and shared in model.model_fields:
                job[shared] = data[shared]
        data = job
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part} is not a section")
        node[leaf] = yaml.safe_load(raw)
    return model.model_validate(data)
