#!/usr/bin/env bash
# Train every tiny family at the same budget on one corpus, evaluate each on the same test
# blocks, and write results/compare-tiny-<corpus>/table.md.
# Usage: [STEPS=300] [FAMILIES="ar mdlm ..."] scripts/compare-tiny.sh [corpus]
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${1:-pydocs}
STEPS=${STEPS:-300}
OUT=results/compare-tiny-$CORPUS
mkdir -p "$OUT"
EXTRA=()
if [ "$CORPUS" = synthetic ]; then EXTRA=(--set data.tokenizer.kind=char); fi
for family in ${FAMILIES:-ar mdlm block-diffusion slide eps-hybrid gamma-hybrid a3}; do
  run=runs/compare-$CORPUS/$family
  if [ ! -f "$run/latest" ] || ! grep -q "step_$(printf %07d "$STEPS")" "$run/latest"; then
    rm -rf "$run"
    hdlm train --config "configs/$family-tiny.yaml" --out "$run" --no-progress \
      --set data.corpus="$CORPUS" --set train.eval_batches=4 \
      --set train.steps="$STEPS" --set train.eval_every=100 --set train.save_every=100 "${EXTRA[@]}"
  fi
  if [ ! -f "$OUT/$family.json" ] || [ "$run/latest" -nt "$OUT/$family.json" ]; then
    hdlm eval "$run" --split test --max-blocks 256 --json "$OUT/$family.json" >/dev/null
  fi
done
python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
speed = {}
for family in rows:
    lines = Path(f"runs/compare-{rows[family]['corpus']}/{family}/metrics.jsonl").read_text().splitlines()
    rates = [json.loads(l)["tokens_per_s"] for l in lines if "tokens_per_s" in l]
    speed[family] = sum(rates[1:]) / max(1, len(rates) - 1)  # skip the warm-up window
floor = next(iter(rows.values()))["entropy_floor"]
table = ["| family | test NELBO (nats/token) | perplexity (<=) | train tokens/s | vs ar |", "|---|---|---|---|---|"]
for family, r in rows.items():
    table.append(f"| {family} | {r['nelbo_per_token']:.4f} | {r['perplexity']:.2f} | {speed[family]:,.0f} | {speed[family] / speed['ar']:.2f} |")
if floor:
    table.append(f"\nentropy floor of the corpus: {floor:.4f} nats/token (perplexity {2.718281828 ** floor:.2f})")
(out / "table.md").write_text("\n".join(table) + "\n")
print("\n".join(table))
PY
