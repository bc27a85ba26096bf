"""Which Delta implementation a call uses: delta-rs (local default) or Delta Lake built into Spark.

``backend`` arguments and the ``VIG_DELTA_BACKEND`` environment variable take ``"delta-rs"``,
``"native"`` or ``"auto"`` (the default). ``auto`` picks ``native`` when the Spark session has Delta
Lake (Databricks, or a session configured with ``DeltaSparkSessionExtension`` or the Delta jars), and
``delta-rs`` otherwise. An explicit argument wins over the environment variable.
"""

from __future__ import annotations

import os

BACKEND_ENV = "VIG_DELTA_BACKEND"
DELTA_RS = "delta-rs"
NATIVE = "native"
CHOICES = ("auto", DELTA_RS, NATIVE)


def spark_has_delta(spark) -> bool:
    """Whether ``spark`` can read and write ``format("delta")`` itself."""
    if os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        return True
    if "DeltaSparkSessionExtension" in (spark.conf.get("spark.sql.extensions", None) or ""):
        return True
    jvm = getattr(spark, "_jvm", None)  # None on Spark Connect
    if jvm is None:
        return False
    from py4j.java_gateway import JavaClass

    try:
        return isinstance(jvm.io.delta.tables.DeltaTable, JavaClass)
    except Exception:  # a JVM without the class answers with a JavaPackage; anything else: no Delta
        return False


def resolve_backend(spark=None, backend: str | None = None) -> str:
    """``"delta-rs"`` or ``"native"`` for this call (see the module docstring for the rules)."""
    choice = backend or os.environ.get(BACKEND_ENV) or "auto"
    if choice not in CHOICES:
        source = "backend argument" if backend else f"environment variable {BACKEND_ENV}"
        raise ValueError(f"Unknown Delta backend {choice!r} in the {source}; use one of {CHOICES}.")
    if choice != "auto":
        return choice
    return NATIVE if spark is not None and spark_has_delta(spark) else DELTA_RS
