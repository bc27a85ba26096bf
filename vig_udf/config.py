"""Typed job configuration: pydantic models read from conf/*.yaml with ``key.sub=value`` overrides.

>>> cfg = load_config(DemoConfig, None, ["scorer.counterfactual=drop", "samples=16"])
>>> cfg.scorer.counterfactual, cfg.samples
('drop', 16)

A key part that itself contains dots is written in double quotes:
``spark.conf."spark.driver.memory"=1g`` sets ``spark.conf["spark.driver.memory"]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

import re

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vig_udf.errors import InputError
from vig_udf.scoring.options import ScorerOptions

T = TypeVar("T", bound=BaseModel)


class ScorerConfig(ScorerOptions):
    """How samples are scored (``scorer.*``): the model and every :class:`~vig_udf.scoring.options.ScorerOptions`
    field; the fields marked ``identity`` there, the model's files and the chat template make the scorer id."""

    model_path: str | None = Field(None, description="HF model id or local checkpoint folder; None = the demo model")

    def options(self) -> ScorerOptions:
        """The scorer options of this config (model path excluded)."""
        return ScorerOptions(**self.model_dump(exclude={"model_path"}))


class SparkConfig(BaseModel):
    """Spark settings of a job. ``conf`` is passed to the session builder as is."""

    model_config = ConfigDict(extra="forbid")

    remote: str | None = Field(None, description="Spark Connect URL (sc://host:port, or local[n] to start a local "
                                                 "Connect server); the SPARK_REMOTE environment variable wins; either "
                                                 "one makes master unused")
    master: str | None = Field("local[*]", description="Spark master; None = leave it to spark-submit")
    app_name: str = Field("vig-spark", description="application name")
    conf: dict[str, str] = Field(default_factory=dict, description="any spark.* setting")
    packages: list[str] = Field(default_factory=list, description="Maven coordinates added to Delta Lake's "
                                                                   "(spark.jars.packages); hadoop-aws is added "
                                                                   "for an s3a:// lake")
    quick_jit: bool = Field(True, description="a local master's JVM compiles with the quick compiler only "
                                             "(-XX:TieredStopAtLevel=1): a job of seconds to minutes no longer waits "
                                             "on the optimising compiler's threads (BENCHMARKS.md); false for a long "
                                             "local job whose JVM side is the bottleneck")


ReadEngine = Literal["auto", "local", "spark"]
READ_ENGINE_HELP = ("what reads the lake: local = delta-rs and DuckDB in this process, no JVM (a local or s3a:// "
                    "lake); spark = Spark SQL with Delta Lake (a cluster, Spark Connect, other file systems); "
                    "auto = spark on Databricks, under Spark Connect (SPARK_REMOTE) or for a lake the local "
                    "reader does not reach, else local")


class SqlConfig(BaseModel):
    """``vig sql``: where the lake is and what reads it."""

    model_config = ConfigDict(extra="forbid")

    lake: str = Field("lake", description="lake root; every Delta table under it is readable by its name")
    engine: ReadEngine = Field("auto", description=READ_ENGINE_HELP)
    spark: SparkConfig = SparkConfig()


class LakeConfig(BaseModel):
    """``vig lake optimize / vacuum / history / check / restore``: which lake and tables, and VACUUM's retention."""

    model_config = ConfigDict(extra="forbid")

    lake: str = Field("lake", description="lake root")
    engine: ReadEngine = Field("auto", description="vig lake history's reader; " + READ_ENGINE_HELP +
                                                   " (optimize and vacuum always run on Spark)")
    tables: list[str] | None = Field(None, description="tables to maintain; None = every table of the lake")
    retain_hours: float = Field(168.0, ge=0, description="VACUUM keeps files that versions of the last "
                                                         "retain_hours need (time travel, running jobs)")
    retention_check: bool = Field(True, description="refuse retain_hours under 168 (Delta's safety check); "
                                                    "false only when no job writes to the lake")
    version: int | None = Field(None, ge=0, description="vig lake restore: the version to make the latest again")
    spark: SparkConfig = SparkConfig()


class DemoConfig(BaseModel):
    """The demo benchmark (docs/demo_benchmark.md): align the small model, score a generated corpus, select
    with every policy, instruction-tune per policy and seed, evaluate, report."""

    model_config = ConfigDict(extra="forbid")

    workdir: str = Field(".demo", description="where the model, corpus, lake, MLflow store and report go")
    samples: int = Field(800, gt=0, description="generated instruction samples (ingested, scored, selected)")
    test_samples: int = Field(1000, gt=1, description="balanced test items (half prior-conflicting)")
    seed: int = Field(7, description="seed of the generated corpus and test split")
    seeds: list[int] = Field(default_factory=lambda: list(range(10)),
                             description="training seeds (data order, random draws)")
    policies: list[Literal["all", "vig", "sample", "token", "random", "random_tokens"]] = Field(
        default_factory=lambda: ["all", "vig", "random", "random_tokens"],
        description="policies trained and compared (all = vanilla; sample and token are the paper's ablations)")
    schedules: list[Literal["equal_epochs", "equal_steps"]] = Field(
        default_factory=lambda: ["equal_epochs"],
        description="equal_epochs: `epochs` passes over each policy's kept samples (fewer steps when it keeps "
                    "fewer); equal_steps: every policy trains as many steps as `all` does in `epochs` passes "
                    "(both: about 20 minutes on 2 cores, docs/demo_benchmark.md)")
    comparisons: list[Literal["mismatched", "token_weight"]] = Field(
        default_factory=list,
        description="issue 24's comparisons, each an arm trained per seed next to vig (docs/demo_benchmark.md): "
                    "mismatched = vig selected with the mismatched-image scorer (scored in the same job, gated "
                    "too); token_weight = vig's samples with token_weight=vig; [] = neither (make demo)")
    p: float = Field(70.0, gt=0, le=100, description="percent of multimodal samples kept by vig/sample/random")
    epochs: float = Field(3.0, gt=0, description="passes over each policy's kept samples (equal_epochs)")
    batch_size: int = Field(16, gt=0, description="samples per training step")
    learning_rate: float = Field(1e-3, gt=0, description="peak learning rate of instruction tuning")
    torch_threads: int = Field(1, ge=1, description="intra-op threads of the demo's own process (model build, gate, "
                                                    "training, evaluation): the model is tiny, and a second thread "
                                                    "only spins against Spark's processes")
    bootstrap_resamples: int = Field(4000, gt=99, description="replicates of the paired bootstrap over seeds and items")
    examples: int = Field(8, ge=0, description="conversations shown in the report's token view")
    gate_items: int = Field(240, gt=1, description="check-split items of the scorer gate (docs/demo_benchmark.md)")
    gate: Literal["enforce", "report"] = Field("enforce", description="enforce: no policy comparison when the "
                                                                      "scorer fails the gate; report: compare anyway "
                                                                      "and mark the report")
    lake: str | None = Field(None, description="lake root for the corpus, scores and selection tables; None = <workdir>/lake")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI; None = sqlite:///<workdir>/mlflow.db")
    experiment: str = Field("vig-demo", description="MLflow experiment of the demo's runs")
    system_metrics: bool = Field(True, description="log CPU/memory usage in every training run")
    scorer: ScorerConfig = ScorerConfig(counterfactual="drop")  # the scorer gate's choice: docs/demo_benchmark.md
    spark: SparkConfig = SparkConfig(conf={"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "4"})

    @model_validator(mode="after")
    def _comparisons_need_vig(self) -> "DemoConfig":
        if self.comparisons and "vig" not in self.policies:
            raise ValueError(f"comparisons={self.comparisons} compare arms with vig: add vig to policies")
        return self


SHARED_SECTIONS = ("lake", "spark")
_KEY_PART = re.compile(r'"([^"]+)"|([^."]+)')


def override_key_parts(key: str) -> list[str]:
    """An override key split on its dots; a double-quoted part is one part, dots included.

    >>> override_key_parts('spark.conf."spark.driver.memory"')
    ['spark', 'conf', 'spark.driver.memory']
    """
    parts, pos = [], 0
    while True:
        match = _KEY_PART.match(key, pos)
        if match is None:
            raise InputError(f"override key {key!r}: expected a name or a \"quoted.name\" at character {pos}")
        parts.append(match.group(1) if match.group(1) is not None else match.group(2))
        pos = match.end()
        if pos == len(key):
            return parts
        if key[pos] != ".":
            raise InputError(f"override key {key!r}: expected a dot at character {pos}")
        pos += 1


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
            raise InputError(f"{path} must hold a YAML mapping at the top level")
    if section is not None:
        job = dict(data.get(section) or {})
        for shared in SHARED_SECTIONS:
            if shared in data and shared not in job and shared in model.model_fields:
                job[shared] = data[shared]
        data = job
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InputError(f"override {item!r} must look like key.sub=value")
        node = data
        *parents, leaf = override_key_parts(key)
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError(f"override {item!r}: {part} is not a section")
        node[leaf] = yaml.safe_load(raw)
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
                             for e in error.errors())
        raise InputError(f"invalid settings: {problems}") from None
