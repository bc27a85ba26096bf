#!/usr/bin/env bash
# Issue 6's device measurement as one prepared command (about 8 minutes on an H100 or H200):
#   GPU tests (bf16 vs fp32, pinned batches), scorer throughput at LLaVA-1.5-7B scale with the levers and the
#   naive batch-1 baseline, and bf16 vs float32 agreement of VIG. Every output lands in $OUT.
#
# The device image has torch, transformers, pillow, numpy, pyarrow, pytest, scipy and typer; the scorer path
# also needs pydantic (ScorerOptions), which the image lacks and cannot download: `scripts/device_wheels.sh`
# puts its wheels under build/device_wheels here, and the run carries them (carry=["build/device_wheels"]).
# The Spark/bare ratio on the GPU (benchmarks/score_spark.py --size gpu) also needs Java 17 and pyspark there,
# which the device image lacks and which are too large to carry (64 MiB per call).
#
#   device run:  scripts/device_wheels.sh here, then on the device: bash benchmarks/gpu_check.sh
#                (carry build/device_wheels, timeout_s 590)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/vig_gpu_out}
mkdir -p "$OUT"
PY=${PY:-python3}
if ! $PY -c "import pydantic" 2>/dev/null; then
  $PY -m pip install -q --no-index --find-links build/device_wheels pydantic 2>&1 | tail -2 \
    || echo "pydantic is missing and build/device_wheels has no wheel for this Python: run scripts/device_wheels.sh"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
  | tee -a "$OUT/gpu.txt"
timeout 150 $PY -m pytest -q tests/test_gpu.py 2>&1 | tee "$OUT/test_gpu.log"
# one token budget with the lever table and the naive baseline; BENCHMARKS-ready markdown to stdout
timeout 300 $PY benchmarks/score_gpu.py --samples 256 --batch-tokens 32768 --naive-samples 16 2>&1 \
  | tee "$OUT/score_gpu.md"
timeout 120 $PY benchmarks/bf16_agreement.py --device cuda --samples 128 2>&1 | tee "$OUT/bf16_agreement.md"
