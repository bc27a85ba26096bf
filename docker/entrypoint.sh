#!/usr/bin/env bash
# The vig-spark image's entrypoint: Spark on Kubernetes' container contract, the arguments and environment
# with which Spark's Kubernetes scheduler backend starts the pods of an application that uses this image
# (spark.kubernetes.container.image):
#
#   driver ARGS...  the driver pod of `spark-submit --deploy-mode cluster`. Spark passes
#                   `--properties-file /opt/spark/conf/spark.properties --class <main class> <app> <app args>`
#                   and sets SPARK_DRIVER_BIND_ADDRESS to the pod's IP; the driver runs here as spark-submit
#                   in client mode.
#   executor        an executor pod, which the driver creates. Everything comes from the environment:
#                   SPARK_DRIVER_URL, SPARK_EXECUTOR_{ID,CORES,MEMORY,POD_IP,POD_NAME}, SPARK_APPLICATION_ID,
#                   SPARK_RESOURCE_PROFILE_ID, the JVM options SPARK_JAVA_OPT_0, _1, ... (in that order),
#                   SPARK_CLASSPATH and SPARK_CONF_DIR (the mounted spark.properties).
#   COMMAND ...     pass-through: runs COMMAND as given, e.g. `vig score ...`, `python ...`, or spark-submit
#                   in client mode from a pod (`spark-submit --master k8s://... --deploy-mode client ...`).
#
# Every mode runs under tini (-s: reaps zombies and forwards signals even when it is not PID 1). A driver
# whose submission requests executor GPUs without a vendor or a discovery script gets this image's:
# nvidia.com (the NVIDIA device plugin's nvidia.com/gpu) and conf/getGpusResources.sh.
set -euo pipefail

VIG_HOME=${VIG_HOME:-/opt/vig-spark}
GPU_VENDOR=nvidia.com
GPU_DISCOVERY_SCRIPT=$VIG_HOME/conf/getGpusResources.sh

fail() {
  echo "entrypoint.sh: $*" >&2
  exit 2
}

require_env() {  # the variables Spark's scheduler sets on every pod of the given role
  local role=$1 name
  shift
  for name in "$@"; do
    [ -n "${!name:-}" ] || fail "$role: $name is not set (Spark's Kubernetes scheduler sets it on the $role pod)"
  done
}

classpath() {  # the executor JVM's: Spark's conf dir first, then Hadoop's, the job's, Spark's jars, extras
  local cp=${SPARK_CONF_DIR:-$SPARK_HOME/conf}
  if [ -n "${HADOOP_CONF_DIR:-}" ]; then cp+=":$HADOOP_CONF_DIR"; fi
  if [ -n "${SPARK_CLASSPATH:-}" ]; then cp+=":$SPARK_CLASSPATH"; fi
  cp+=":$SPARK_HOME/jars/*"
  if [ -n "${SPARK_EXTRA_CLASSPATH:-}" ]; then cp+=":$SPARK_EXTRA_CLASSPATH"; fi
  cp+=":$PWD"
  if [ -n "${SPARK_DIST_CLASSPATH:-}" ]; then cp+=":$SPARK_DIST_CLASSPATH"; fi
  printf '%s' "$cp"
}

executor_java_options() {  # SPARK_JAVA_OPT_<n> in the order of n, one argument each (values keep their spaces)
  local name
  while IFS= read -r name; do
    printf '%s\0' "${!name}"
  done < <(compgen -e | grep -E '^SPARK_JAVA_OPT_[0-9]+$' | sort -t_ -k4,4n || true)
}

properties_file() {  # the value of the driver's --properties-file argument, if any
  while [ $# -gt 0 ]; do
    case $1 in
      --properties-file) printf '%s' "${2:-}"; return ;;
      --properties-file=*) printf '%s' "${1#*=}"; return ;;
    esac
    shift
  done
}

has_property() {  # has_property KEY FILE: KEY is set in the Java properties FILE
  grep -Eq "^[[:space:]]*${1//./\\.}[[:space:]]*([=:[:space:]]|$)" "$2"
}

gpu_defaults() {  # --conf arguments for what a GPU request in the driver's properties leaves out
  local props
  props=$(properties_file "$@")
  [ -n "$props" ] && [ -r "$props" ] || return 0
  has_property spark.executor.resource.gpu.amount "$props" || return 0
  if ! has_property spark.executor.resource.gpu.vendor "$props"; then
    printf '%s\0' --conf "spark.executor.resource.gpu.vendor=$GPU_VENDOR"
  fi
  if ! has_property spark.executor.resource.gpu.discoveryScript "$props"; then
    printf '%s\0' --conf "spark.executor.resource.gpu.discoveryScript=$GPU_DISCOVERY_SCRIPT"
  fi
}

ensure_passwd_entry() {
  # A pod run as an arbitrary UID (OpenShift, runAsUser) has no passwd entry, and the JVM and Hadoop need a
  # user name: give this process one through nss_wrapper when the image has it.
  local uid gid lib
  uid=$(id -u)
  gid=$(id -g)
  if getent passwd "$uid" >/dev/null 2>&1; then return 0; fi
  lib=${NSS_WRAPPER_LIB:-$(compgen -G '/usr/lib/*/libnss_wrapper.so' | head -n 1 || true)}
  if [ -z "$lib" ] || [ ! -e "$lib" ]; then
    echo "entrypoint.sh: uid $uid has no passwd entry and nss_wrapper is missing; Hadoop may fail to name the user" >&2
    return 0
  fi
  NSS_WRAPPER_PASSWD=$(mktemp)
  NSS_WRAPPER_GROUP=$(mktemp)
  printf 'spark:x:%s:%s:%s:%s:/bin/false\n' "$uid" "$gid" "${SPARK_USER_NAME:-anonymous uid}" "${HOME:-/}" \
    >"$NSS_WRAPPER_PASSWD"
  printf 'spark:x:%s:\n' "$gid" >"$NSS_WRAPPER_GROUP"
  export NSS_WRAPPER_PASSWD NSS_WRAPPER_GROUP LD_PRELOAD=$lib
}

if [ -n "${HADOOP_HOME:-}" ] && [ -z "${SPARK_DIST_CLASSPATH:-}" ]; then
  SPARK_DIST_CLASSPATH=$("$HADOOP_HOME/bin/hadoop" classpath)
  export SPARK_DIST_CLASSPATH
fi

mode=${1:-}
case $mode in
  driver)
    shift
    : "${SPARK_HOME:?entrypoint.sh driver: SPARK_HOME is not set}"
    require_env driver SPARK_DRIVER_BIND_ADDRESS
    mapfile -d '' defaults < <(gpu_defaults "$@")
    command=("$SPARK_HOME/bin/spark-submit"
      --conf "spark.driver.bindAddress=$SPARK_DRIVER_BIND_ADDRESS"
      --conf "spark.executorEnv.SPARK_DRIVER_POD_IP=$SPARK_DRIVER_BIND_ADDRESS"
      --deploy-mode client
      "${defaults[@]}"
      "$@")
    ;;
  executor)
    : "${SPARK_HOME:?entrypoint.sh executor: SPARK_HOME is not set}"
    require_env executor SPARK_DRIVER_URL SPARK_EXECUTOR_ID SPARK_EXECUTOR_CORES SPARK_EXECUTOR_MEMORY \
      SPARK_APPLICATION_ID SPARK_EXECUTOR_POD_IP SPARK_EXECUTOR_POD_NAME SPARK_RESOURCE_PROFILE_ID
    mapfile -d '' java_options < <(executor_java_options)
    command=("${JAVA_HOME:+$JAVA_HOME/bin/}java"
      "${java_options[@]}"
      "-Xms$SPARK_EXECUTOR_MEMORY" "-Xmx$SPARK_EXECUTOR_MEMORY"
      -cp "$(classpath)"
      org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend
      --driver-url "$SPARK_DRIVER_URL"
      --executor-id "$SPARK_EXECUTOR_ID"
      --cores "$SPARK_EXECUTOR_CORES"
      --app-id "$SPARK_APPLICATION_ID"
      --hostname "$SPARK_EXECUTOR_POD_IP"
      --resourceProfileId "$SPARK_RESOURCE_PROFILE_ID"
      --podName "$SPARK_EXECUTOR_POD_NAME")
    ;;
  "")
    fail "no command: give driver, executor (as Spark's Kubernetes scheduler does) or a command to run"
    ;;
  *)
    command=("$@")
    ;;
esac

ensure_passwd_entry
exec tini -s -- "${command[@]}"
