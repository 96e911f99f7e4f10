#!/usr/bin/env bash
# configs/study-pydocs.yaml in two queues, one CPU thread each (2 cores; hours): each queue trains
# its runs one after the other and evaluates each as soon as the judge is trained; the report is
# written when both are done. Every stage resumes, so rerunning this after an interruption
# continues where it stopped. Logs: runs/study-pydocs/queue-{a,b}.log.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=configs/study-pydocs.yaml
HDLM=${HDLM:-hdlm}  # e.g. HDLM="env PYTHONPATH=FROZEN/src python3 -m hdlm": a copy edits can't touch
export OMP_NUM_THREADS=1
mkdir -p runs/study-pydocs

judge_done() { grep -qs "step_0006000" runs/study-pydocs/judge-seed0/latest; }

queue() {  # queue NAME RUN...: train each run, then evaluate every run of the queue trained so far
  local name=$1 trained=()
  shift
  for run in "$@"; do
    $HDLM study --config "$CONFIG" --only "$run" --train-only --no-progress
    trained+=("$run")
    if judge_done; then
      $HDLM study --config "$CONFIG" --only "$(IFS=,; echo "${trained[*]}")" --no-progress
    fi
  done
  while ! judge_done; do sleep 60; done
  $HDLM study --config "$CONFIG" --only "$(IFS=,; echo "${trained[*]}")" --no-progress
  echo "queue $name done"
}

# seed 0 first (the judge costs about three runs); the two queues take about equal time (the
# eps- and gamma-hybrid train at about half of mdlm's and ar's tokens/s)
queue a judge-seed0 eps-hybrid-seed0 mdlm-seed1 gamma-hybrid-seed1 ar-seed1 gamma-hybrid-seed2 \
  eps-hybrid-visible-seed0 >>runs/study-pydocs/queue-a.log 2>&1 &
queue b mdlm-seed0 gamma-hybrid-seed0 ar-seed0 eps-hybrid-seed1 eps-hybrid-seed2 mdlm-seed2 \
  ar-seed2 >>runs/study-pydocs/queue-b.log 2>&1 &
wait
$HDLM study --config "$CONFIG" --no-progress
