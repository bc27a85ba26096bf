#!/usr/bin/env bash
# The device measurement as one prepared command, for the bare device image as it is (python3 with torch; no
# network): every number a first lent GPU should give, each stage under its own time limit (about 9 minutes
# in all at most), its output in $OUT (7 files: the device returns at most 8).
#
#   env    GPU, driver, library versions                                        -> gpu.txt
#   tests  tests/test_gpu.py: bf16 vs fp32 scores, pinned batches, prefetch     -> test_gpu.log
#   score  scorer throughput at LLaVA-1.5-7B scale, levers, naive baseline      -> score_gpu.md
#   bf16   bf16 vs float32 VIG agreement                                        -> bf16_agreement.md
#   load   host memory of a scorer load to the GPU against the weights' size    -> load_memory.md
#   train  training steps of a 7B-shaped model, conf/gpu-cluster.yaml's settings
#          (full, FSDP, bf16, gradient checkpointing): samples/s, tokens/s, peak
#          memory per GPU                                                       -> train_gpu.md
#   lora   the same with LoRA (method=lora, sharding=none); not in the default  -> train_lora.md
#
# Usage: bash benchmarks/gpu_check.sh [--dry-run] [STAGE ...]   (default: env tests score bf16 load train)
#   --dry-run  every stage with tiny shapes on the CPU: what can be checked without a GPU (about 6 minutes
#              on 2 cores)
#
# What the image lacks (pydantic) or has at another version than the tests here ran (transformers, regex,
# typing-extensions) travels as wheels: run scripts/device_wheels.sh here, then on the device
#   bash benchmarks/gpu_check.sh          (carry ["build/device_wheels"], timeout_s 590)
# They are installed into /tmp/vig_site, put before the image's packages. Java and pyspark are not needed
# (the Spark/bare ratio on a GPU, benchmarks/score_spark.py --size gpu, needs both: too large to carry).
set -uo pipefail
cd "$(dirname "$0")/.."
ALL="env tests score bf16 load train lora"
DEFAULT="env tests score bf16 load train"
DRY=0
STAGES=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) if [[ " $ALL " == *" $arg "* ]]; then STAGES+=("$arg")
       else echo "gpu_check.sh: unknown stage '$arg'; stages: $ALL (or --dry-run)" >&2; exit 2; fi ;;
  esac
done
[ ${#STAGES[@]} -eq 0 ] && read -r -a STAGES <<< "$DEFAULT"
OUT=${OUT:-/tmp/vig_gpu_out}
mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=$PWD
if ls build/device_wheels/*.whl > /dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/vig_site \
    build/device_wheels/*.whl || { echo "gpu_check.sh: installing build/device_wheels failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/vig_site:$PWD
fi
if ! $PY -c "import pydantic, transformers" 2> /dev/null; then
  echo "gpu_check.sh: pydantic or transformers is missing: run scripts/device_wheels.sh and carry build/device_wheels" >&2
  exit 1
fi
if [ "$DRY" = 1 ]; then echo "dry run: tiny shapes on the CPU; no number below is a GPU's" | tee "$OUT/gpu.txt"; fi

# stage NAME SECONDS OUTPUT COMMAND...: run COMMAND under a time limit, its output to $OUT/OUTPUT and stdout
failed=()
stage() {
  local name=$1 limit=$2 out=$3; shift 3
  echo "== $name (at most ${limit}s): $*"
  local started=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$out"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - started))s" | tee -a "$OUT/$out"
  [ "$rc" = 0 ] || failed+=("$name")
}

for s in "${STAGES[@]}"; do
  case "$s" in
    env)
      { if [ "$DRY" = 0 ]; then nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; fi
        $PY -c "import sys, torch, transformers, pydantic; print('python', sys.version.split()[0], 'torch', torch.__version__, \
'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available(), 'transformers', transformers.__version__, 'pydantic', \
pydantic.__version__)"; } 2>&1 | tee -a "$OUT/gpu.txt" ;;
    tests)  # on the CPU every test here is skipped (marked gpu): the dry run checks that they collect
      stage tests 100 test_gpu.log $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py ;;
    score)
      if [ "$DRY" = 1 ]; then stage score 200 score_gpu.md $PY benchmarks/score_gpu.py --small --samples 8 --naive-samples 2
      else stage score 190 score_gpu.md $PY benchmarks/score_gpu.py --samples 256 --batch-tokens 32768 --naive-samples 16; fi ;;
    bf16)
      if [ "$DRY" = 1 ]; then stage bf16 200 bf16_agreement.md $PY benchmarks/bf16_agreement.py --device cpu --samples 4 --families llava --no-mid
      else stage bf16 70 bf16_agreement.md $PY benchmarks/bf16_agreement.py --device cuda --samples 128; fi ;;
    load)
      if [ "$DRY" = 1 ]; then stage load 200 load_memory.md $PY benchmarks/load_memory.py --device cpu --hidden 256 --layers 2 --no-write
      else stage load 60 load_memory.md $PY benchmarks/load_memory.py --device cuda --no-write; fi ;;
    train)
      if [ "$DRY" = 1 ]; then stage train 300 train_gpu.md $PY benchmarks/train_gpu.py --small --steps 2 --warmup 1 --dataloader-workers 0
      else stage train 120 train_gpu.md $PY benchmarks/train_gpu.py --steps 8 --warmup 2; fi ;;
    lora)
      if [ "$DRY" = 1 ]; then stage lora 300 train_lora.md $PY benchmarks/train_gpu.py --small --steps 2 --warmup 1 --dataloader-workers 0 --set method=lora --set sharding=none
      else stage lora 90 train_lora.md $PY benchmarks/train_gpu.py --steps 6 --warmup 2 --set method=lora --set sharding=none; fi ;;
  esac
done
if [ ${#failed[@]} -gt 0 ]; then echo "gpu_check.sh: failed or timed out: ${failed[*]}"; exit 1; fi
echo "gpu_check.sh: every stage ran (${STAGES[*]})"
