#!/usr/bin/env bash
# Tiny models through the evaluation entry points on offline tasks (docs/results.md, "Benchmarks
# researchers use"): zero-shot perplexity on whole files, lm-evaluation-harness tasks (multiple
# choice, last word, generation, rolling perplexity) and story infilling, written as JSON to
# results/harness-tiny/ with the tables in table.md. Trains runs/<family>-tiny first when missing (300 steps each).
# Usage: [FAMILIES="ar mdlm a3"] scripts/harness-tiny.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT=results/harness-tiny
TASKS=runs/offline-tasks
mkdir -p "$OUT"
python3 scripts/offline_tasks.py --out "$TASKS"
for family in ${FAMILIES:-ar mdlm a3}; do
  run=runs/$family-tiny
  if [ ! -f "$run/latest" ]; then
    hdlm train --config "configs/$family-tiny.yaml" --out "$run" --no-progress
  fi
  hdlm eval "$run" --max-blocks 256 --json "$OUT/$family-test-split.json" >/dev/null  # for scale
  hdlm eval "$run" --data "$TASKS/pydocs-sample.txt" --json "$OUT/$family-zero-shot-pydocs.json" >/dev/null
  hdlm eval "$run" --data "$TASKS/gpl-3.raw" --json "$OUT/$family-zero-shot-gpl.json" >/dev/null
  if [ "$family" = mdlm ]; then
    hdlm eval "$run" --data "$TASKS/pydocs-sample.txt" --mc-samples 96 \
      --json "$OUT/$family-zero-shot-pydocs-mc96.json" >/dev/null
  fi
  hdlm eval "$run" --data "$TASKS/pydocs-sample.txt" --stride 32 \
    --json "$OUT/$family-zero-shot-pydocs-stride32.json" >/dev/null
  hdlm harness "$run" --include-path "$TASKS/tasks" --no-progress --bootstrap-iters 1000 \
    --tasks pydocs_next,pydocs_lastword,pydocs_lastword_gen,pydocs_ppl \
    --json "$OUT/$family-harness.json" >/dev/null
  hdlm harness "$run" --include-path "$TASKS/tasks" --no-progress --bootstrap-iters 1000 \
    --tasks pydocs_order --json "$OUT/$family-order.json" >/dev/null
  hdlm eval "$run" --metrics story-infill --data "$TASKS/stories.jsonl" \
    --json "$OUT/$family-story.json" >/dev/null
  if [ "$family" = a3 ]; then
    hdlm eval "$run" --metrics story-infill --data "$TASKS/stories.jsonl" --story-length free \
      --json "$OUT/$family-story-free.json" >/dev/null
  fi
done
python3 scripts/harness_table.py "$OUT" >/dev/null
echo "wrote $OUT (tables: $OUT/table.md)"
