#!/usr/bin/env bash
# CI-triggered retraining, the same on GitHub Actions and on any machine (tests/e2e run it here):
# pull the data, the outputs in dvc.lock and the DVC run-cache -> reproduce (stages whose results
# exist anywhere in the cache are restored, not recomputed) -> optionally promote -> push results
# and run-cache -> write the metrics diff against the base branch as a job summary -> fail if the
# model missed the quality gate.
#
# Environment:
#   CI_BASE_REF           branch or commit to diff metrics against (default: main)
#   GITHUB_STEP_SUMMARY   where the summary goes (GitHub sets it; default: reports/ci_summary.md)
#   ONLY_IF_DATA_CHANGED  1: stop early, successfully, when the data is the production model's
#   PROMOTE               1: promote the model when every check passes (then commit models/production.dvc)
#   PYTHON                interpreter with the project installed (default: python)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
base=${CI_BASE_REF:-main}
summary=${GITHUB_STEP_SUMMARY:-reports/ci_summary.md}
mkdir -p "$(dirname "$summary")"

echo "== pull data, outputs and run-cache"
# --allow-missing: on the first run, or for outputs never pushed, there is nothing to pull yet.
"$py" -m dvc pull --run-cache --allow-missing

if [ "${ONLY_IF_DATA_CHANGED:-0}" = 1 ]; then
  status=0
  "$py" -m stages.data_version >/dev/null || status=$?
  if [ "$status" = 10 ]; then
    printf '## Retraining skipped\n\nThe dataset is the one the production model was trained on.\n' >>"$summary"
    exit 0
  elif [ "$status" != 0 ]; then
    exit "$status"
  fi
fi

echo "== reproduce"
"$py" -m dvc repro

# A failed gate is recorded, not a crash: its results are pushed like any others, and the job then
# fails at the end, naming the failed checks.
echo "== quality gate"
gate=0
"$py" -m stages.gate || gate=$?

if [ "${PROMOTE:-0}" = 1 ] && [ "$gate" = 0 ]; then
  echo "== promote"
  "$py" -m stages.promote
fi

echo "== push results and run-cache"
"$py" -m dvc push --run-cache

echo "== metrics against $base"
# The base's metrics are DVC-cached outputs: fetch them (they are small) before diffing.
"$py" -m dvc fetch --type metrics --all-commits --quiet || echo "warning: could not fetch the metrics of $base" >&2
{
  printf '## Metrics against %s\n\n' "$base"
  "$py" -m dvc metrics diff "$base" --all --md --precision 4
  printf '\n'
} >>"$summary"
cat "$summary"
exit "$gate"
