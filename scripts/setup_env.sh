#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment with everything the jobs and tests need.
# Idempotent: a stamp file skips the install when pyproject.toml has not changed.
#   VENV=.venv  PYTHON=python3  TORCH_PACKAGES="..." (override the torch pair, or "" to keep the venv's own)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

ensure_java() {
  if command -v java >/dev/null 2>&1; then return; fi
  echo "setup: no java on PATH; pyspark needs Java 17+. Installing a headless JRE with apt-get." >&2
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null \
      || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless >/dev/null
  else
    echo "setup: cannot install Java here (not root or no apt-get): install Java 17 and set JAVA_HOME." >&2
    exit 1
  fi
}

ensure_chromium() {
  # Only the browser test of `vig report` needs it (tests/test_reports_spark.py; skipped without it).
  if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then return; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: no chromium on PATH; installing Debian's headless-capable chromium for the report's browser test." >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
      || echo "setup: installing chromium failed; the browser test will be skipped." >&2
  else
    echo "setup: no chromium (not root or no apt-get): the report's browser test will be skipped." >&2
  fi
}

pip_install() {
  # pip warns about every unused local index entry of this machine's pip config; keep real errors visible.
  "$VENV/bin/python" -m pip install -q "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

default_torch_packages() {
  # torchvision must match torch exactly. These pairs install from the local wheel cache on the
  # project's CPU machines; a GPU machine whose venv already has torch keeps its own.
  case "$(uname -s)-$(uname -m)" in
    Linux-x86_64) echo "torch==2.14.1 torchvision==0.29.1" ;;
    Linux-aarch64) echo "torch==2.9.1 torchvision==0.24.1" ;;
    *) echo "torch torchvision" ;;
  esac
}

ensure_java
ensure_chromium
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
stamp="$VENV/.vig-installed"
want=$(cat pyproject.toml scripts/setup_env.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi

pip_install --upgrade pip >/dev/null
if ! "$VENV/bin/python" -c "import torch, torchvision" >/dev/null 2>&1; then
  TORCH_PACKAGES=${TORCH_PACKAGES-$(default_torch_packages)}
  if [ -n "$TORCH_PACKAGES" ]; then
    echo "setup: installing $TORCH_PACKAGES" >&2
    # shellcheck disable=SC2086
    pip_install $TORCH_PACKAGES
  fi
fi
echo "setup: installing vig-spark and its dependencies" >&2
pip_install -e ".[dev]"
# Delta Lake's Spark jars (and hadoop-aws for s3a lakes), resolved from Maven Central into Spark's Ivy
# cache by Spark's own package resolution and recorded, and a class-data archive of each class path
# (vig_udf/spark/startup.py); later sessions pass the jar files and map the archive.
echo "setup: fetching Delta Lake's Spark jars into Spark's package cache and archiving the JVM's classes" >&2
SPARK_LOCAL_IP=${SPARK_LOCAL_IP:-127.0.0.1} "$VENV/bin/python" -m vig_udf.spark.session --fetch >/dev/null 2>&1 \
  || { echo "setup: fetching the jars failed; run: $VENV/bin/python -m vig_udf.spark.session --fetch" >&2; exit 1; }
echo "$want" > "$stamp"
