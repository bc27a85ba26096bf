#!/usr/bin/env bash
# Spark GPU discovery script: prints the GPUs this executor can see as Spark resource JSON, e.g.
#   {"name":"gpu","addresses":["0","1"]}
# Configure with
#   spark.executor.resource.gpu.amount=1
#   spark.executor.resource.gpu.discoveryScript=/opt/vig-spark/conf/getGpusResources.sh
# and no spark.task.resource.gpu.amount: the score job's scoring stage asks for its GPU (conf/gpu-cluster.yaml)
# Exits non-zero (so Spark reports the failure) when nvidia-smi is missing or fails.
set -euo pipefail

if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "getGpusResources.sh: nvidia-smi not found; is the NVIDIA container runtime enabled?" >&2
  exit 1
fi
indices=$(nvidia-smi --query-gpu=index --format=csv,noheader)
addresses=""
for i in $indices; do
  addresses="${addresses:+$addresses,}\"$i\""
done
printf '{"name":"gpu","addresses":[%s]}\n' "$addresses"
