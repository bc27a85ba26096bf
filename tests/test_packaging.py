"""The install's parts: the plain `pip install vig-spark` scores without pyspark, Delta, MLflow or scipy, and
every command that needs an extra ends with one line naming it; the extras' pins match the Delta Lake jar.

The plain install is simulated faithfully: a Python started without site-packages (-S) whose path holds this
checkout and every installed distribution except those of the spark, train and demo extras, so importing
pyspark fails as it does where it was never installed."""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
import typer
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from vig_udf.extras import COMMAND_EXTRAS, EXTRA_MODULES, run_cli

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]
OPTIONAL = ("spark", "train", "demo")  # the extras a plain install lacks (dev adds only test tools)


def requirements(extra: str) -> list[Requirement]:
    return [Requirement(text) for text in EXTRAS[extra]]


def distributions(extra: str) -> set[str]:
    """The distributions an extra names itself (not through vig-spark[...])."""
    return {canonicalize_name(req.name) for req in requirements(extra) if req.name != "vig-spark"}


def included_extras(extra: str) -> set[str]:
    """The extra and the extras it pulls in through vig-spark[...], transitively."""
    found, todo = set(), [extra]
    while todo:
        name = todo.pop()
        if name not in found:
            found.add(name)
            todo += [e for req in requirements(name) if req.name == "vig-spark" for e in req.extras]
    return found


@pytest.fixture(scope="module")
def plain_env(tmp_path_factory) -> dict[str, str]:
    """The environment of a Python that has vig-spark's plain install: site-packages without the extras."""
    site = Path(sysconfig.get_paths()["purelib"])
    left_out = {"vig-spark"}.union(*(distributions(extra) for extra in OPTIONAL))
    entries = set()
    for name in left_out:
        files = metadata.distribution(name).files
        assert files, f"{name} lists no files: cannot leave it out"
        entries |= {Path(f).parts[0] for f in files if Path(f).parts[0] != ".."}
    plain = tmp_path_factory.mktemp("plain-site-packages")
    for entry in site.iterdir():
        if entry.name not in entries and entry.suffix != ".pth":
            (plain / entry.name).symlink_to(entry)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(plain)]), "HF_HUB_OFFLINE": "1"}
    probe = "import importlib.util as u, json; print(json.dumps({m: bool(u.find_spec(m)) for m in %r}))"
    modules = [m for extra in OPTIONAL for m in EXTRA_MODULES[extra]] + ["torch", "transformers", "vig_udf"]
    found = json.loads(plain_python(["-c", probe % modules], env).stdout)
    assert found == {m: m in ("torch", "transformers", "vig_udf") for m in modules}, found
    return env


def plain_python(args: list[str], env: dict, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-S", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def records(folder: Path) -> Path:
    """A LLaVA JSON file of a record with an image and a text-only one."""
    from tests.conftest import random_image, sample

    random_image(48, 48, seed=3).save(folder / "cat.png")
    data = [sample("with-image", [("What colour is the square?", "The square is blue.")], "cat.png"),
            sample("text-only", [("How many sides has a square?", "Four.")])]
    path = folder / "data.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.slow
def test_the_plain_install_runs_score_file(plain_env, tiny_checkpoints, tmp_path):
    data = records(tmp_path)
    done = plain_python(["-m", "vig_udf.cli", "score-file", str(data), "--model", tiny_checkpoints["llava"],
                         "--out", "scores.jsonl", "--set", f"image_root={tmp_path}"], plain_env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "scored 2 records -> scores.jsonl; statuses {'ok': 1, 'text_only': 1}"
    rows = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert [(row["sample_id"], row["status"]) for row in rows] == [("with-image", "ok"), ("text-only", "text_only")]
    assert rows[0]["n_tokens"] == len(rows[0]["token_vig"]) > 0 and rows[0]["vig"] is not None


@pytest.mark.slow
def test_the_plain_install_imports_and_runs_the_scorer(plain_env, tiny_checkpoints, tmp_path):
    data = records(tmp_path)
    script = ("import json, sys; from vig_udf import VIGScorer\n"
              "scorer = VIGScorer.from_pretrained(sys.argv[1], image_root=sys.argv[2])\n"
              "print(json.dumps([r.status for r in scorer.score(json.load(open(sys.argv[3])))]))")
    done = plain_python(["-c", script, tiny_checkpoints["llava"], str(tmp_path), str(data)], plain_env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["ok", "text_only"]


SPARK_LINE = "needs pyspark, delta, which are not installed here: pip install 'vig-spark[spark]'"


@pytest.mark.parametrize("args, line", [
    (["ingest", "input=data.jsonl"], f"vig ingest: {SPARK_LINE}"),
    (["score", "scorer.model_path=/models/llava"], f"vig score: {SPARK_LINE}"),
    (["select", "policies=[vig]"], f"vig select: {SPARK_LINE}"),
    (["export", "policy=vig", "output=out.json"], f"vig export: {SPARK_LINE}"),
    (["report"], f"vig report: {SPARK_LINE}"),
    (["sql", "SELECT 1"], f"vig sql: {SPARK_LINE}"),
    (["lake", "history", "scores"], f"vig lake: {SPARK_LINE}"),
    (["train", "policy=vig"], "vig train: needs pyspark, delta, mlflow, peft, which are not installed here: "
                              "pip install 'vig-spark[spark,train]'"),
    (["demo"], "vig demo: needs pyspark, delta, mlflow, peft, scipy, which are not installed here: "
               "pip install 'vig-spark[spark,train,demo]'"),
    # check samples the lake's corpus on Spark when it has no input file: found out past the start
    (["check", "scorer.model_path=/models/llava"], "vig check: needs pyspark, which is not installed here: "
                                                   "pip install 'vig-spark[spark]'"),
], ids=["ingest", "score", "select", "export", "report", "sql", "lake", "train", "demo", "check"])
def test_a_command_without_its_extra_ends_with_one_line(plain_env, tmp_path, args, line):
    done = plain_python(["-m", "vig_udf.cli", *args], plain_env, cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr.strip().splitlines()) == (2, "", [line])
    assert list(tmp_path.iterdir()) == []  # stopped before it did anything


def test_help_works_without_the_extra(plain_env):
    done = plain_python(["-m", "vig_udf.cli", "ingest", "--help"], plain_env)
    assert done.returncode == 0 and "corpus Delta table" in done.stdout


def two_command_app(error: ModuleNotFoundError) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    def check():  # needs no extra at its start, like vig check
        raise error

    @app.command()
    def other():
        pass

    return app


def test_a_missing_module_of_an_extra_found_late_names_its_extra(capsys):
    app = two_command_app(ModuleNotFoundError("No module named 'mlflow.tracking'", name="mlflow.tracking"))
    with pytest.raises(SystemExit) as stop:
        run_cli(app, ["check"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "vig check: needs mlflow, which is not installed here: pip install 'vig-spark[train]'"]


def test_any_other_missing_module_is_not_passed_off_as_an_extra():
    app = two_command_app(ModuleNotFoundError("No module named 'torchvision'", name="torchvision"))
    with pytest.raises(ModuleNotFoundError, match="torchvision"):
        run_cli(app, ["check"])


def test_the_extras_table_matches_pyproject():
    from vig_udf.cli import app

    providers = metadata.packages_distributions()
    for extra, modules in EXTRA_MODULES.items():
        for module in modules:
            assert {canonicalize_name(name) for name in providers[module]} & distributions(extra), \
                f"{module} is not installed by the {extra} extra"
    commands = typer.main.get_command(app).commands
    assert set(COMMAND_EXTRAS) <= set(commands)
    assert {extra for extras in COMMAND_EXTRAS.values() for extra in extras} <= set(EXTRA_MODULES) <= set(EXTRAS)


def test_pyspark_is_pinned_to_the_spark_minor_of_the_delta_jar():
    import pyspark

    spark = next(req for req in requirements("spark") if req.name == "pyspark")
    delta = next(req for req in requirements("spark") if req.name == "delta-spark")
    installed = Version(pyspark.__version__)
    # delta-spark's JVM artifact is built per Spark minor, named after the installed pyspark's (delta.pip_utils)
    assert [str(s) for s in delta.specifier] == [f"=={metadata.version('delta-spark')}"]
    assert installed in spark.specifier
    assert not spark.specifier.contains(f"{installed.major}.{installed.minor + 1}.0")
    assert not spark.specifier.contains(f"{installed.major}.{installed.minor - 1}.9")
    delta_requires = [Requirement(text) for text in metadata.requires("delta-spark") if text.startswith("pyspark")]
    assert all(installed in req.specifier for req in delta_requires), delta_requires


def test_setup_and_the_image_install_what_they_need():
    assert included_extras("dev") == set(EXTRAS)  # make setup installs .[dev]: every extra
    assert 'pip_install -e ".[dev]"' in (ROOT / "scripts" / "setup_env.sh").read_text()
    assert 'pip install "./[spark,train]"' in (ROOT / "Dockerfile").read_text()  # executors score and train
    assert "pyspark" not in " ".join(PYPROJECT["project"]["dependencies"])
