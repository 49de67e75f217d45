#!/usr/bin/env bash
# Set up everything the tests need on a fresh Debian machine, then run every test.
# Idempotent. Extra arguments go to pytest (e.g. scripts/test.sh -k jobs -x).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup-system.sh          # Debian packages, buildx, dockerd, CHP, venv
bash tests/images/build.sh >/dev/null # local notebook base image (cached by content hash)
.venv/bin/ruff check booklab_hub booklab_spawner tests jupyterhub_config.py
set +e
.venv/bin/python -m pytest "$@"
code=$?
set -e
if [ "$code" = 5 ]; then echo "pytest collected no tests: that is a failure here" >&2; exit 1; fi
exit "$code"
