"""A Spark Connect server on 127.0.0.1 (Spark's own SparkConnectServer, started with spark-submit as
`start-connect-server.sh` does) with Delta Lake and the s3a connector, as a Databricks standard or serverless
workspace serves its clients; its executors run this interpreter, so they import vig_udf."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def connect_server(folder: Path, *, conf: dict[str, str] | None = None):
    """Start the server on a free loopback port; yields its ``sc://`` URL once it accepts connections."""
    import pyspark
    from pyspark.sql import SparkSession

    from vig_udf.config import SparkConfig
    from vig_udf.spark.session import with_delta

    folder.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    # what the product's sessions get (Delta's packages and settings), read off a builder that starts nothing
    builder = with_delta(SparkSession.Builder(), SparkConfig(master="local[2]", conf=conf or {}), uris=["s3a://"])
    settings = dict(builder._options)  # the Builder has no public getter
    settings.update({"spark.connect.grpc.binding.port": str(port), "spark.connect.grpc.binding.address": "127.0.0.1",
                     "spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "4",
                     "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"})
    # the jar files resolved before (spark.jars), or the packages to resolve
    jars = ["--jars", settings.pop("spark.jars")] if "spark.jars" in settings else [
        "--packages", settings.pop("spark.jars.packages")]
    submit = str(Path(pyspark.__file__).parent / "bin" / "spark-submit")
    command = [submit, "--master", "local[2]", *jars, "--class",
               "org.apache.spark.sql.connect.service.SparkConnectServer", "--name", "vig-connect-test"]
    for key, value in settings.items():
        command += ["--conf", f"{key}={value}"]
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    env.pop("SPARK_REMOTE", None)
    log = folder / "connect-server.log"
    with open(log, "w") as out:
        server = subprocess.Popen(command + ["spark-internal"], stdout=out, stderr=subprocess.STDOUT, env=env,
                                  cwd=folder, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the Spark Connect server did not start: {log.read_text()[-3000:]}") from None
                time.sleep(0.5)
        yield f"sc://127.0.0.1:{port}"
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait()
