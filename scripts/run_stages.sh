#!/usr/bin/env bash
# Run every stage's CLI in order without DVC (for machines without DVC, e.g. a bare GPU box),
# timing each. Usage: scripts/run_stages.sh [LOG]   (run from the workspace root)
set -euo pipefail
log=${1:-/dev/stdout}
for stage in $(python3 -c 'from stages import PIPELINE; print(*PIPELINE)'); do
  start=$(date +%s.%N)
  python3 -m "stages.$stage" >>"$log" 2>&1
  echo "$stage $(python3 -c "print(f'{$(date +%s.%N) - $start:.1f}')") s" | tee -a "$log"
done
