#!/usr/bin/env bash
# Set up, then train the tiny AR model on the default corpus, sample from it, report perplexity.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
RUN=${RUN:-runs/demo-ar-tiny}
rm -rf "$RUN"
hdlm train --config configs/ar-tiny.yaml --out "$RUN"
hdlm sample "$RUN" --prompt "The Python interpreter" -n 2 --length 96 --top-p 0.9
hdlm eval "$RUN" --split test --json "$RUN/eval-test.json"
