"""Which optional parts of the install (pyproject.toml's extras) each ``vig`` command needs.

The plain ``pip install vig-spark`` scores (``VIGScorer``, ``vig score-file``, ``vig check`` on a file) and
keeps whatever Spark the platform brings (a Databricks runtime's). A command that needs an extra which is
not installed ends at its start with one line naming the extra, never with a traceback or after minutes of
work (the demo builds its model before it starts Spark):

    vig ingest: needs pyspark, delta, which are not installed here: pip install 'vig-spark[spark]'
"""

from __future__ import annotations

import importlib.util
import sys

# The top-level modules each extra installs (the ones the commands import).
EXTRA_MODULES = {"spark": ("pyspark", "delta"), "train": ("mlflow", "peft"), "demo": ("scipy",)}
# The extras each command needs; a command not named here needs ("spark",). check needs Spark only for a
# Parquet input or the lake's corpus: a missing pyspark is reported when it gets there (run_cli).
COMMAND_EXTRAS = {"score-file": (), "check": (), "train": ("spark", "train"), "demo": ("spark", "train", "demo")}


def missing_extras(extras) -> tuple[list[str], list[str]]:
    """(modules that cannot be imported, the extras that install them) among ``extras``."""
    modules, needed = [], []
    for extra in extras:
        absent = [module for module in EXTRA_MODULES[extra] if importlib.util.find_spec(module) is None]
        modules += absent
        needed += [extra] if absent else []
    return modules, needed


def missing_message(command: str, modules: list[str], extras: list[str]) -> str:
    """The one line that ends a command whose extras are missing."""
    verb = "is" if len(modules) == 1 else "are"
    return (f"vig {command}: needs {', '.join(modules)}, which {verb} not installed here: "
            f"pip install 'vig-spark[{','.join(extras)}]'")


def run_cli(app, argv: list[str] | None = None) -> None:
    """Run the typer ``app`` on ``argv`` (default: the process's), first checking the command's extras."""
    import typer

    argv = sys.argv[1:] if argv is None else argv
    commands = typer.main.get_command(app).commands
    command = argv[0] if argv and argv[0] in commands else None
    if command and "--help" not in argv:
        modules, extras = missing_extras(COMMAND_EXTRAS.get(command, ("spark",)))
        if modules:
            _exit(missing_message(command, modules, extras))
    try:
        app(argv)
    except ModuleNotFoundError as error:  # a lazy import deeper in (check on the lake needs pyspark)
        module = (error.name or "").partition(".")[0]
        extra = next((name for name, modules in EXTRA_MODULES.items() if module in modules), None)
        if extra is None:
            raise
        _exit(missing_message(command or "", [module], [extra]))


def _exit(message: str):
    print(message, file=sys.stderr)
    raise SystemExit(2)
