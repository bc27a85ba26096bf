#!/usr/bin/env bash
# A GPU discovery script for tests: advertises two "gpu" addresses (no GPU is behind them; the scorer runs on the
# CPU). Spark's standalone workers and executors run it as they would conf/getGpusResources.sh.
echo '{"name":"gpu","addresses":["0","1"]}'
