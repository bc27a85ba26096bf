"""The Spark session of a job, built from its typed config, always with Delta Lake.

Locally the session gets Delta Lake's Spark engine the way delta-spark documents it: the JVM artifact
that matches the installed pyspark and delta-spark (``configure_spark_with_delta_pip``), plus Delta's SQL
extension and catalog. A job that touches an ``s3a://`` URI (its lake or its input) also gets
``hadoop-aws`` at the version of the Hadoop client that pyspark ships. On Databricks the runtime's own Delta
is used as it is.

The packages are resolved once, and a local JVM starts from a class-data archive when there is one
(:mod:`vig_udf.spark.startup`): later sessions pass the resolved jar files as ``spark.jars`` instead of
resolving the packages again.

Under ``spark-submit`` the JVM is started before this code runs, so packages must be given to
spark-submit itself: ``spark-submit --packages "$(python -m vig_udf.spark.session)" ...``.

Spark Connect (Databricks standard and serverless, any ``sc://`` server): ``SPARK_REMOTE`` in the environment
(as pyspark reads it) or ``spark.remote`` in the config selects a Connect session, and then wins over
``spark.master``. The server brings its own Delta Lake; ``remote: local[n]`` starts a local Connect server
with this module's Delta settings.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from vig_udf.config import SparkConfig
from vig_udf.storage import on_databricks
from vig_udf.spark.startup import class_archive_options, remember_resolved_jars, resolved_jars

DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}
# Defaults sized for clusters that make a local session slow on small tables (BENCHMARKS.md): Delta
# rebuilds a table's state with 50 tasks, and VACUUM lists files with 10,000.
# A local session also listens on the loopback address only.
# Every session: fair scheduling between the jobs of different threads (the score job commits while it scores,
# vig_udf.spark.score_commits); jobs that set no pool behave as under FIFO.
SESSION_DEFAULTS = {"spark.scheduler.mode": "FAIR"}
LOCAL_DEFAULTS = {
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.sql.sources.parallelPartitionDiscovery.parallelism": "8",
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
}
DRIVER_JAVA_OPTIONS = "spark.driver.extraJavaOptions"
# C1 only: the optimising compiler's threads cost a short job on few cores more than its faster code saves
QUICK_JIT = "-XX:TieredStopAtLevel=1"


def connect_url(cfg: SparkConfig) -> str | None:
    """The Spark Connect URL this job's session uses (``SPARK_REMOTE``, else ``cfg.remote``), or None (classic)."""
    return os.environ.get("SPARK_REMOTE") or cfg.remote


def hadoop_aws_package() -> str:
    """The ``hadoop-aws`` Maven coordinate for the Hadoop client jars that the installed pyspark ships."""
    import pyspark

    jars = sorted((Path(pyspark.__file__).parent / "jars").glob("hadoop-client-api-*.jar"))
    if not jars:
        raise RuntimeError("pyspark ships no hadoop-client-api jar: cannot tell which hadoop-aws matches it")
    version = jars[-1].name.removeprefix("hadoop-client-api-").removesuffix(".jar")
    return f"org.apache.hadoop:hadoop-aws:{version}"


def needs_s3a(uris) -> bool:
    """Whether any of ``uris`` is on S3 through Hadoop's s3a connector."""
    return any(str(uri).startswith("s3a://") for uri in uris or ())


def extra_packages(cfg: SparkConfig, *, uris=()) -> list[str]:
    """Maven coordinates besides Delta Lake's: hadoop-aws for s3a URIs, then ``cfg.packages``."""
    extra = list(cfg.packages)
    if needs_s3a(uris) and not any(":hadoop-aws:" in p for p in extra):
        extra.insert(0, hadoop_aws_package())
    return extra


def delta_packages(cfg: SparkConfig, *, uris=()) -> list[str]:
    """Every Maven coordinate the session needs: Delta Lake's artifact for the installed pyspark and
    delta-spark, hadoop-aws for s3a URIs, ``cfg.packages`` and the config's own ``spark.jars.packages``."""
    from delta.pip_utils import configure_spark_with_delta_pip
    from pyspark.sql import SparkSession

    extra = extra_packages(cfg, uris=uris)
    own = cfg.conf.get("spark.jars.packages")
    if own:
        extra += str(own).split(",")
    named = configure_spark_with_delta_pip(SparkSession.Builder(), extra_packages=list(dict.fromkeys(extra)))
    return named._options["spark.jars.packages"].split(",")  # the Builder has no public getter


def with_delta(builder, cfg: SparkConfig, *, uris=()):
    """``builder`` configured with Delta Lake's Spark engine, its jars and the lake's file system jars: the
    jar files resolved for these packages before (``spark.jars``), else the packages to resolve
    (``spark.jars.packages``), whose jars :func:`remember_resolved_jars` then records. A local driver JVM
    starts from the class-data archive of its class path when ``make setup`` made one, and with the quick
    compiler only (:data:`QUICK_JIT`) unless ``cfg.quick_jit`` is false."""
    local = (cfg.master or "").startswith("local")
    conf = {**DELTA_CONF, **SESSION_DEFAULTS}
    if local:
        conf.update(LOCAL_DEFAULTS)
    conf.update({key: str(value) for key, value in cfg.conf.items()})
    packages = delta_packages(cfg, uris=uris)
    jars = resolved_jars(packages)
    if jars is not None:
        conf.pop("spark.jars.packages", None)
        conf["spark.jars"] = ",".join([*filter(None, conf.get("spark.jars", "").split(",")), *jars])
        archive = class_archive_options(conf["spark.jars"].split(",")) if local else None
        if archive:
            conf[DRIVER_JAVA_OPTIONS] = " ".join(filter(None, [archive, conf.get(DRIVER_JAVA_OPTIONS)]))
    else:
        conf["spark.jars.packages"] = ",".join(packages)
    if local and cfg.quick_jit:
        conf[DRIVER_JAVA_OPTIONS] = " ".join(filter(None, [QUICK_JIT, conf.get(DRIVER_JAVA_OPTIONS)]))
    for key, value in conf.items():
        builder = builder.config(key, value)
    return builder


def spark_session(cfg: SparkConfig, *, uris=()):
    """Get or create the session, with Delta Lake (and hadoop-aws when one of ``uris``, the job's lake and
    input, is on s3a); Python workers use this interpreter unless PYSPARK_PYTHON says otherwise.

    Example::

        spark = spark_session(SparkConfig(master="local[2]"), uris=["s3a://bucket/lake"])
    """
    from pyspark.sql import SparkSession

    if on_databricks():
        return SparkSession.builder.getOrCreate()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    remote = connect_url(cfg)
    if remote is None:
        builder = SparkSession.builder.appName(cfg.app_name)
        if cfg.master:
            builder = builder.master(cfg.master)
        session = with_delta(builder, cfg, uris=uris).getOrCreate()
        remember_resolved_jars(session)
        return session
    builder = SparkSession.builder.remote(remote).appName(cfg.app_name)
    if remote.startswith("local"):  # pyspark starts a local Connect server with these settings
        return with_delta(builder, cfg.model_copy(update={"master": remote}), uris=uris).getOrCreate()
    for key, value in cfg.conf.items():  # a running server takes session settings; static ones are ignored
        builder = builder.config(key, str(value))
    return builder.getOrCreate()


def fetch_packages() -> None:
    """Resolve Delta Lake's jars, without and with hadoop-aws, into Spark's Ivy cache, record them, and make
    the class-data archive of each class path (the setup runs this once). Each step runs in a JVM of its own:
    a JVM resolves packages only when it starts, and writes its archive when it exits."""
    import subprocess

    from vig_udf.spark.startup import build_class_archive

    for uri in ("/local", "s3a://any"):
        subprocess.run([sys.executable, "-m", "vig_udf.spark.session", "--fetch-for", uri], check=True)
        try:
            build_class_archive(delta_packages(SparkConfig(), uris=[uri]))
        except subprocess.CalledProcessError as error:  # sessions then start without an archive, only slower
            print(f"vig: no class-data archive for {uri} ({error}); Spark sessions start without one",
                  file=sys.stderr)


def _fetch_for(uri: str) -> None:
    spark = spark_session(SparkConfig(master="local[1]", app_name="vig-fetch-jars",
                                      conf={"spark.ui.enabled": "false"}), uris=[uri])
    spark.stop()


if __name__ == "__main__":
    if sys.argv[1:] == ["--fetch"]:
        fetch_packages()
    elif sys.argv[1:2] == ["--fetch-for"]:
        _fetch_for(sys.argv[2])
    else:  # the --packages value for spark-submit; --s3a adds hadoop-aws
        print(",".join(delta_packages(SparkConfig(master=None), uris=["s3a://"] if "--s3a" in sys.argv else [])))
