#!/usr/bin/env bash
# Wheels of what the device image lacks for benchmarks/gpu_check.sh (pydantic and pydantic-core), for the
# CPython versions a device image may have, into build/device_wheels (a few MB; carried to the device run).
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-.venv/bin/pip}
for version in 3.10 3.11 3.12 3.13; do
  "$PIP" download -q --only-binary=:all: --platform manylinux2014_x86_64 --python-version "$version" \
    -d build/device_wheels pydantic
done
du -sh build/device_wheels
