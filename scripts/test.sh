#!/usr/bin/env bash
# Set up, then run the whole default test suite (slow end-to-end runs: add -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 -m pytest -q "$@"
