#!/usr/bin/env bash
# One command on a GPU machine: training, attention, sampling and 1B-scale measurements, written
# to results/gpu/<device>.md (scripts/gpu_check.py says what is measured). At most ~8 minutes on
# one H100. --dry-run runs the same code paths at tiny sizes on CPU (the test suite does).
#
#   scripts/gpu-check.sh [--dry-run] [--out DIR] [--budget-s SECONDS]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
cd "$root"
exec "${PYTHON:-python3}" scripts/gpu_check.py "$@"
