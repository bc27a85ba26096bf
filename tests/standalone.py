"""A real Spark standalone cluster on 127.0.0.1: a master and workers (each its own JVM, as `start-master.sh`
and `start-worker.sh` run them), each worker advertising GPU addresses through a discovery script."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

DISCOVERY = str(Path(__file__).parent / "data" / "fake_gpus.sh")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spark_class() -> str:
    import pyspark

    return str(Path(pyspark.__file__).parent / "bin" / "spark-class")


def _alive_workers(status: str) -> int:
    return sum(worker["state"] == "ALIVE" for worker in json.loads(status)["workers"])


def _wait_for(url: str, process: subprocess.Popen, log: Path, what: str, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return urllib.request.urlopen(url, timeout=1).read().decode()
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {what} did not start: {log.read_text()[-2000:]}") from None
            time.sleep(0.5)


@contextmanager
def standalone_cluster(folder: Path, *, workers: int = 2, cores: int = 4, memory: str = "1500m", gpus: int = 2):
    """Start a master and ``workers`` workers (``cores`` cores, ``gpus`` GPU addresses each); yields the master
    URL once every worker has registered; stops them all afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    port, ui = _free_port(), _free_port()
    jvm = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_DAEMON_JAVA_OPTS": jvm, "SPARK_DAEMON_MEMORY": "256m",
           "SPARK_LOG_DIR": str(folder), "SPARK_WORKER_DIR": str(folder / "work")}
    processes: list[subprocess.Popen] = []
    logs = []
    try:
        log = folder / "master.log"
        logs.append(log)
        with open(log, "w") as out:
            processes.append(subprocess.Popen(
                [_spark_class(), "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                 "--webui-port", str(ui)], stdout=out, stderr=subprocess.STDOUT, env=env))
        master = f"spark://127.0.0.1:{port}"
        _wait_for(f"http://127.0.0.1:{ui}/json/", processes[0], log, "master")
        worker_env = {**env, "SPARK_WORKER_OPTS": f"-Dspark.worker.resource.gpu.amount={gpus} "
                                                  f"-Dspark.worker.resource.gpu.discoveryScript={DISCOVERY}"}
        for i in range(workers):
            log = folder / f"worker-{i}.log"
            logs.append(log)
            with open(log, "w") as out:
                processes.append(subprocess.Popen(
                    [_spark_class(), "org.apache.spark.deploy.worker.Worker", master, "--host", "127.0.0.1",
                     "--cores", str(cores), "--memory", memory, "--webui-port", str(_free_port()),
                     "--work-dir", str(folder / f"work-{i}")], stdout=out, stderr=subprocess.STDOUT, env=worker_env))
        deadline = time.monotonic() + 90
        while _alive_workers(_wait_for(f"http://127.0.0.1:{ui}/json/", processes[0], logs[0], "master")) < workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the workers did not register: {logs[-1].read_text()[-2000:]}")
            for process, log in zip(processes[1:], logs[1:]):
                if process.poll() is not None:
                    raise RuntimeError(f"a worker died: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield master
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def stages_from_event_log(folder: Path) -> dict[int, dict]:
    """Per stage of the applications' event logs in ``folder`` (Spark 4 writes each as a folder of rolled files):
    its name, its resource profile's task requests,
    its successful tasks ``(executor, launch ms, finish ms, index, attempt)`` and the most tasks that ran at
    once on one executor (overlapping by more than :data:`OVERLAP_MS`)."""
    logs = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(("appstatus", ".")))
    events = [json.loads(line) for log in logs for line in log.read_text().splitlines() if line.strip()]
    profiles = {e["Resource Profile Id"]: {name: request["Amount"] for name, request in e["Task Resource Requests"].items()}
                for e in events if e["Event"].endswith("ResourceProfileAdded")}
    stages: dict[int, dict] = {}
    for e in events:
        if e["Event"] == "SparkListenerStageSubmitted":
            info = e["Stage Info"]
            stages.setdefault(info["Stage ID"], {"tasks": []}).update(
                name=info["Stage Name"], profile=profiles.get(info["Resource Profile Id"], {}))
        elif e["Event"] == "SparkListenerTaskEnd" and e["Task End Reason"]["Reason"] == "Success":
            info = e["Task Info"]
            stages.setdefault(e["Stage ID"], {"tasks": [], "name": "", "profile": {}})["tasks"].append(
                (info["Executor ID"], info["Launch Time"], info["Finish Time"], info["Index"], info["Attempt"]))
    for stage in stages.values():
        stage["most_at_once"] = max((_most_at_once([t[1:3] for t in stage["tasks"] if t[0] == executor])
                                     for executor in {t[0] for t in stage["tasks"]}), default=0)
    return stages


# The driver records a task's finish when it handles the executor's status update, a few milliseconds after the
# executor freed its slot for the next task: overlaps shorter than this are bookkeeping, not concurrency.
OVERLAP_MS = 200


def _most_at_once(intervals: list[tuple[int, int]]) -> int:
    edges = sorted([(start, 1) for start, _ in intervals] + [(end - OVERLAP_MS, -1) for _, end in intervals])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most
