"""What makes a local Spark session start quickly: Delta Lake's jars resolved once, and a class-data archive
of the JVM's classes.

- **Jars.** The first session that asks for a set of Maven packages lets Spark's own package resolution (Ivy)
  fetch them into its Ivy cache; :func:`remember_resolved_jars` then records which jar files it resolved, in a
  small manifest under the cache folder. Later sessions pass those files as ``spark.jars``: the same jars,
  without an Ivy resolution at every start (about 10 s on 2 cores, BENCHMARKS.md). A manifest whose files are
  gone is ignored, and the packages are resolved again.
- **Classes.** A JVM that runs Spark SQL and Delta Lake for the first time loads and verifies some 20,000
  classes; a dynamic class-data-sharing archive (JDK 13+, ``-XX:ArchiveClassesAtExit``) made once by a JVM
  that ran a small ingest lets later JVMs map them instead (start and first Delta write about 40% faster on
  2 cores, BENCHMARKS.md). ``make setup`` makes it (:func:`build_class_archive`); a local driver uses it when
  one exists for its exact class path and Java (``-XX:SharedArchiveFile``): each installation of pyspark (each
  virtual environment) has its own, since the JVM ignores an archive made with jars at other paths. A JVM that
  cannot use it (another Java build) starts as it would without; the archive is about 200 MB per class path.

The cache folder is ``~/.cache/vig-spark/spark-jars`` (``$VIG_SPARK_JARS_CACHE``). Its files name the jars a
session loads, like Spark's Ivy cache itself, so it belongs to the user who runs the jobs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

QUIET_CDS = "-Xlog:cds=off -Xlog:cds+dynamic=off"  # an archive the JVM cannot use is skipped without a word


def cache_folder() -> Path:
    """Where the jars manifests and class archives are kept."""
    return Path(os.environ.get("VIG_SPARK_JARS_CACHE") or Path.home() / ".cache" / "vig-spark" / "spark-jars")


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _jars_manifest(packages: list[str]) -> Path:
    import pyspark

    return cache_folder() / f"{_key(pyspark.__version__, sorted(packages))}.json"


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

    Only a session whose JVM resolved these packages is recorded: its ``spark.jars`` must hold each package's
    own jar. A session that reused a JVM started for other packages records nothing."""
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
    _write_atomically(_jars_manifest(packages), json.dumps({"packages": packages, "jars": jars}, indent=1))


def _write_atomically(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_suffix(f".{os.getpid()}.tmp")
        staged.write_text(text)
        staged.replace(path)
    except OSError:  # a read-only home: sessions resolve as before
        pass


def _java() -> str | None:
    """The java that Spark's launcher runs: ``$JAVA_HOME/bin/java``, else the one on the PATH."""
    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home else shutil.which("java")
    return os.path.realpath(java) if java and os.path.isfile(java) else None


def _archive_path(jars: list[str]) -> Path | None:
    """Where the class archive of a driver with these ``spark.jars`` on this Java and pyspark is kept."""
    import pyspark

    java = _java()
    if java is None:
        return None
    stat = os.stat(java)
    # the JVM maps an archive only for the exact class path it was made with: the jars' folder is part of the key
    # (two virtual environments with the same pyspark have the same jar names in different folders)
    folder = (Path(pyspark.__file__).parent / "jars").resolve()
    spark_jars = sorted(p.name for p in folder.glob("*.jar"))
    key = _key(java, stat.st_size, stat.st_mtime_ns, pyspark.__version__, str(folder), spark_jars, jars)
    return cache_folder() / f"{key}.jsa"


def class_archive_options(jars: list[str]) -> str | None:
    """The driver's Java options that map the class archive of this class path, or ``None`` without one."""
    path = _archive_path(jars)
    return f"-XX:SharedArchiveFile={path} {QUIET_CDS}" if path is not None and path.is_file() else None


def build_class_archive(packages: list[str]) -> Path | None:
    """Make the class archive for the recorded jars of ``packages`` (resolved before) by running a small
    ingest in a JVM that writes its classes when it exits; returns its path (``None`` without Java or jars)."""
    jars = resolved_jars(packages)
    path = _archive_path(jars) if jars is not None else None
    if path is None or path.is_file():
        return path
    staged = path.with_suffix(f".{os.getpid()}.tmp")
    subprocess.run([sys.executable, "-m", "vig_udf.spark.startup", str(staged), *packages], check=True)
    if staged.is_file() and staged.stat().st_size > 0:
        staged.replace(path)
        return path
    return None


def _archive_workload(staged: str, packages: list[str]) -> None:
    """Two small ingests (a new table, then a MERGE into it), the history and a pinned read, in a JVM that
    writes its loaded classes to ``staged`` when it exits; waits for that JVM to end."""
    from pyspark import SparkContext

    from vig_udf.config import SparkConfig
    from vig_udf.lake import read_table, table_history
    from vig_udf.spark.ingest_job import IngestJobConfig, run_ingest
    from vig_udf.spark.session import spark_session

    uris = ["s3a://archive"] if any(":hadoop-aws:" in p for p in packages) else []
    conf = {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
            "spark.driver.extraJavaOptions": f"-XX:ArchiveClassesAtExit={staged} {QUIET_CDS}"}
    with tempfile.TemporaryDirectory(prefix="vig-class-archive-") as work:
        spark = spark_session(SparkConfig(master="local[2]", app_name="vig-class-archive", conf=conf), uris=uris)
        for part in ("a", "b"):
            records = [{"id": f"{part}{i}", "conversations": [{"from": "human", "value": "Hello?"},
                                                              {"from": "gpt", "value": f"Hi {i}."}]} for i in range(3)]
            Path(work, f"{part}.json").write_text(json.dumps(records))
            run_ingest(spark, IngestJobConfig(input=f"{work}/{part}.json", lake=f"{work}/lake"), out=lambda *_: None)
        table_history(spark, f"{work}/lake/corpus")
        read_table(spark, f"{work}/lake/corpus", version=0).count()
        jvm = SparkContext._gateway.proc  # the JVM writes the archive as it exits: wait for it
        spark.stop()
        jvm.stdin.close()
        jvm.wait(timeout=600)


if __name__ == "__main__":
    _archive_workload(sys.argv[1], sys.argv[2:])
