#!/usr/bin/env bash
# Wheels of what benchmarks/gpu_check.sh needs and the bare device image lacks or has at another version, for
# the image's Python (3.12, x86-64), into build/device_wheels (about 15 MB; carried to the device run):
#   pydantic and its own dependencies (the image has none of them), and transformers, regex and
#   typing-extensions at the versions of this checkout's environment (the image's transformers is older than
#   the one the code is tested with). Versions are read from this environment, so the device runs what the
#   tests here ran. Each is downloaded without its dependencies (one version of each: two would stop the
#   install); everything else they need is in the image (see /work/.library/device/KINDS.md there).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PYTHON_VERSION=${DEVICE_PYTHON:-3.12}
OUT=build/device_wheels
PACKAGES="pydantic pydantic-core annotated-types typing-inspection typing-extensions transformers regex"
rm -rf "$OUT"
mkdir -p "$OUT"
for package in $PACKAGES; do
  pinned="$package==$("$PY" -c "from importlib.metadata import version; print(version('$package'))")"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --implementation cp --python-version "$PYTHON_VERSION" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$OUT" "$pinned"
done
ls "$OUT"
du -sh "$OUT"
