#!/usr/bin/env bash
# A GPU discovery script for benchmarks/score_pipeline.py --gpus: one "gpu" address per executor (no GPU is behind
# it; the simulated accelerator stands in for it).
echo '{"name":"gpu","addresses":["0"]}'
