#!/usr/bin/env bash
# Set the machine up (as scripts/test.sh does, idempotent), then run every benchmark and
# print one table of ratios against baselines run in the same process (docs/performance.md).
# Writes benchmarks/results/<UTC date-time>.json. Arguments go to benchmarks/suite.py:
#   bash scripts/bench.sh                 # all, load test at 2 hosts x 10 runners x 100 launches
#   bash scripts/bench.sh --load-full     # load test at 5 hosts x 50 runners x 500 launches
#   bash scripts/bench.sh --no-load --runs 12 --latency 0.05
# It fails only when a benchmark cannot run, never because a number is slow.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
mkdir -p benchmarks/results
bash scripts/setup-system.sh > benchmarks/results/setup.log 2>&1 \
    || { tail -n 30 benchmarks/results/setup.log >&2; exit 1; }
bash tests/images/build.sh >/dev/null  # the local notebook base image (cached)
PYTHONUNBUFFERED=1 exec .venv/bin/python -m benchmarks.suite "$@"
