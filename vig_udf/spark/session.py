"""The Spark session of a job, built from its typed config, always with Delta Lake.

Locally the session gets Delta Lake's Spark engine the way delta-spark documents it: the JVM artifact
that matches the installed pyspark and delta-spark (``configure_spark_with_delta_pip``), plus Delta's SQL
extension and catalog. A job that touches an ``s3a://`` URI (its lake or its input) also gets
``hadoop-aws`` at the version of the Hadoop client that pyspark ships. On Databricks the runtime's own Delta
is used as it is.

The packages are resolved once: the first session that asks for a set of them lets Spark's own package
resolution (Ivy) fetch them from Maven Central into its Ivy cache (``make setup`` does it for both sets), and
the jar files it resolved are remembered in a small manifest (``~/.cache/vig-spark/spark-jars``, or
``$VIG_SPARK_JARS_CACHE``). Later sessions pass those files as ``spark.jars``: the same jars, without an Ivy
resolution at every start (5 to 10 s on 2 cores, BENCHMARKS.md). A manifest whose files are gone is resolved
again.

Under ``spark-submit`` the JVM is started before this code runs, so packages must be given to
spark-submit itself: ``spark-submit --packages "$(python -m vig_udf.spark.session)" ...``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from vig_udf.config import SparkConfig

DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}
# Defaults sized for clusters that make a local session slow on small tables (BENCHMARKS.md): Delta
# rebuilds a table's state with 50 tasks, and VACUUM lists files with 10,000.
# A local session also listens on the loopback address only.
LOCAL_DEFAULTS = {
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.sql.sources.parallelPartitionDiscovery.parallelism": "8",
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
}


def on_databricks() -> bool:
    """Whether this process runs on a Databricks runtime (whose Spark has Delta built in)."""
    return bool(os.environ.get("DATABRICKS_RUNTIME_VERSION"))


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
    (``spark.jars.packages``), whose jars :func:`remember_resolved_jars` then records."""
    conf = dict(DELTA_CONF)
    if (cfg.master or "").startswith("local"):
        conf.update(LOCAL_DEFAULTS)
    conf.update({key: str(value) for key, value in cfg.conf.items()})
    packages = delta_packages(cfg, uris=uris)
    jars = resolved_jars(packages)
    if jars is not None:
        conf.pop("spark.jars.packages", None)
        conf["spark.jars"] = ",".join([*filter(None, conf.get("spark.jars", "").split(",")), *jars])
    else:
        conf["spark.jars.packages"] = ",".join(packages)
    for key, value in conf.items():
        builder = builder.config(key, value)
    return builder


def _jars_manifest(packages: list[str]) -> Path:
    import pyspark

    folder = Path(os.environ.get("VIG_SPARK_JARS_CACHE") or Path.home() / ".cache" / "vig-spark" / "spark-jars")
    key = hashlib.sha256(json.dumps([pyspark.__version__, sorted(packages)]).encode()).hexdigest()[:16]
    return folder / f"{key}.json"


def _own_jar(coordinate: str) -> str:
    """The file name Spark's resolution gives the jar of ``group:artifact:version``."""
    group, artifact, version = coordinate.split(":")[:3]
    return f"{group}_{artifact}-{version}.jar"


def resolved_jars(packages: list[str]) -> list[str] | None:
    """The jar files recorded for exactly ``packages`` when every one of them still exists, else ``None``."""
    try:
        manifest = json.loads(_jars_manifest(packages).read_text())
    except (OSError, ValueError):
        return None
    jars = manifest.get("jars") if isinstance(manifest, dict) else None
    if (not isinstance(jars, list) or sorted(manifest.get("packages", [])) != sorted(packages)
            or not all(isinstance(jar, str) and jar.endswith(".jar") and os.path.isfile(jar) for jar in jars)):
        return None
    return jars


def remember_resolved_jars(spark) -> None:
    """Record the jars Spark resolved for this session's packages, so that later sessions skip the resolution.

    Only a session whose JVM resolved exactly these packages is recorded: its ``spark.jars`` must hold each
    package's own jar. A session that reused a JVM started with other settings records nothing."""
    context = getattr(spark, "sparkContext", None)
    if context is None:  # Spark Connect: nothing resolved here
        return
    conf = context.getConf()
    packages = [p for p in (conf.get("spark.jars.packages") or "").split(",") if p]
    if not packages or resolved_jars(packages) is not None:
        return
    jars = [jar.removeprefix("file://").removeprefix("file:") for jar in (conf.get("spark.jars") or "").split(",")]
    jars = [jar for jar in jars if jar.endswith(".jar") and os.path.isfile(jar)]
    names = {os.path.basename(jar) for jar in jars}
    if not all(_own_jar(package) in names for package in packages):
        return
    manifest = _jars_manifest(packages)
    try:
        manifest.parent.mkdir(parents=True, exist_ok=True)
        staged = manifest.with_suffix(f".{os.getpid()}.tmp")
        staged.write_text(json.dumps({"packages": packages, "jars": jars}, indent=1))
        staged.replace(manifest)
    except OSError:  # a read-only home: every session resolves, as before
        pass


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
    builder = SparkSession.builder.appName(cfg.app_name)
    if cfg.master:
        builder = builder.master(cfg.master)
    session = with_delta(builder, cfg, uris=uris).getOrCreate()
    remember_resolved_jars(session)
    return session


def fetch_packages() -> None:
    """Resolve Delta Lake's jars, without and with hadoop-aws, into Spark's Ivy cache and record them (the
    setup runs this once); each set in a JVM of its own, since a JVM resolves packages only when it starts."""
    import subprocess

    for uri in ("/local", "s3a://any"):
        subprocess.run([sys.executable, "-m", "vig_udf.spark.session", "--fetch-for", uri], check=True)


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
