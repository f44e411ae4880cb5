#!/usr/bin/env bash
# CI-triggered retraining, the same on GitHub Actions and on any machine (tests/e2e run it here):
# finish or undo a promotion a killed run left -> pull the data, the outputs in dvc.lock and the DVC
# run-cache -> reproduce (stages whose results exist anywhere in the cache are restored, not
# recomputed) -> optionally promote -> push results (and run-cache) -> push the promotion's commit and
# tag -> write the metrics diff against the base branch as a job summary -> fail if the model missed
# the quality gate or a promotion asked for was refused.
#
# The whole run holds the workspace lock (stages/core/lock.py): it re-runs itself under
# `python -m stages.core.lock` unless it already holds it.
#
# Environment:
#   CI_BASE_REF           branch or commit to diff metrics against (default: main)
#   GITHUB_STEP_SUMMARY   where the summary goes (GitHub sets it; default: reports/ci_summary.md)
#   ONLY_IF_DATA_CHANGED  1: stop early, successfully, when the data is the production model's
#   PROMOTE               1: promote the model when every check passes; the promotion commits
#                         models/production.dvc and tags it production-v<N> (and, where dvc.yaml
#                         declares the artifact, <name>@v<N>.0.0 and <name>#prod#<k>), all pushed.
#                         Where they cannot be pushed (a detached HEAD, no push access) the run
#                         refuses to promote, says why, and fails.
#   PROMOTION_PUSH_URL    where the promotion is pushed (default: origin)
#   PUSH_RUN_CACHE        0: push the outputs but not the run-cache (pull requests; default: 1)
#   PYTHON                interpreter with the project installed (default: python)
set -euo pipefail
self="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$self")/.."
py=${PYTHON:-python}
if [ -z "${PIPELINE_LOCK_TOKEN:-}" ]; then
  exec "$py" -m stages.core.lock --owner "scripts/ci_retrain.sh" -- bash "$self" "$@"
fi
base=${CI_BASE_REF:-main}
summary=${GITHUB_STEP_SUMMARY:-reports/ci_summary.md}
push_to=${PROMOTION_PUSH_URL:-origin}
mkdir -p "$(dirname "$summary")"

echo "== finish or undo an interrupted promotion"
"$py" -m stages.promote --recover

# Promotion is refused up front when what it would commit cannot be pushed: an unpushed promotion
# would be lost with the runner's checkout, and the next run would number its own the same.
cannot_push=""
if [ "${PROMOTE:-0}" = 1 ]; then
  if ! branch=$(git symbolic-ref --quiet --short HEAD); then
    cannot_push="HEAD is detached (not a branch to commit the promotion to)"
  elif ! git push --dry-run --quiet "$push_to" "HEAD:refs/heads/$branch" >/dev/null 2>&1; then
    cannot_push="'git push --dry-run' to the promotion remote failed (no push access: set PROMOTION_PUSH_URL)"
  fi
fi

echo "== pull data, outputs and run-cache"
# --allow-missing: on the first run, or for outputs never pushed, there is nothing to pull yet.
"$py" -m stages.core.remotes pull --run-cache --allow-missing

if [ "${ONLY_IF_DATA_CHANGED:-0}" = 1 ]; then
  status=0
  "$py" -m stages.core.data_version >/dev/null || status=$?
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

promoted=""
registry=()
failed=$gate
if [ "${PROMOTE:-0}" = 1 ] && [ "$gate" = 0 ]; then
  if [ -n "$cannot_push" ]; then
    echo "refused to promote: cannot push the promotion: $cannot_push" >&2
    printf '## Promotion refused\n\nCannot push the promotion: %s.\n\n' "$cannot_push" >>"$summary"
    failed=1
  else
    echo "== promote"
    status=0
    "$py" -m stages.promote || status=$?
    if [ "$status" != 0 ]; then
      printf '## Not promoted\n\nSee reports/promotion.json.\n\n' >>"$summary"
      failed=$status
    else
      promoted=$("$py" -c 'import json; r = json.load(open("reports/promotion.json")); print((r["tag"] or "untagged") if r["promoted"] else "")')
      # The model-registry tags (GTO's format) that `dvc artifacts get --stage prod` reads, pushed with it.
      read -r -a registry <<<"$("$py" -c 'import json; r = json.load(open("reports/promotion.json")); print(" ".join("refs/tags/" + t for t in r.get("registry_tags", [])))')"
      if [ "$promoted" = untagged ]; then
        echo "error: promoted but not committed (promote.commit is false): this run cannot share it" >&2
        printf '## Promotion not committed

promote.commit is false: nothing was pushed.

' >>"$summary"
        promoted=""
        failed=1
      fi
    fi
  fi
fi

echo "== push results"
# The project's push (stages/core/remotes.py): DVC's, with a dropped connection retried and a remote
# that refuses the credentials or does not answer reported as one error naming it.
if [ "${PUSH_RUN_CACHE:-1}" = 1 ]; then
  "$py" -m stages.core.remotes push --run-cache
else
  "$py" -m stages.core.remotes push  # outputs only: a pull request's run-cache entries could be restored on main
fi

if [ -n "$promoted" ]; then
  # After its files are on the DVC remote, so the pushed pointer always refers to pushed files.
  echo "== push the promotion ($promoted)"
  if git push --quiet "$push_to" "HEAD:refs/heads/$branch" "refs/tags/$promoted" ${registry[@]+"${registry[@]}"}; then
    printf '## Promoted\n\n%s, committed as %s and pushed to %s.\n\n' "$promoted" "$(git rev-parse --short HEAD)" "$branch" >>"$summary"
  else
    echo "error: promoted $promoted here but pushing its commit and tag failed; it is not shared" >&2
    printf '## Promotion not pushed\n\n%s was committed here but the push failed.\n\n' "$promoted" >>"$summary"
    failed=1
  fi
fi

echo "== metrics against $base"
# The base's metrics are DVC-cached outputs: fetch them (they are small) before diffing.
"$py" -m dvc fetch --type metrics --all-commits --quiet || echo "warning: could not fetch the metrics of $base" >&2
{
  printf '## Metrics against %s\n\n' "$base"
  "$py" -m dvc metrics diff "$base" --all --md --precision 4
  printf '\n'
} >>"$summary"
cat "$summary"
exit "$failed"
