#!/usr/bin/env bash
# A fine-tuning pipeline for CI/CD made of ftsweep's own commands; it runs the same on a laptop:
#
#   examples/ci/pipeline.sh [SWEEP] [--set KEY.PATH=VALUE ...]
#
#   1. validate the data        ftsweep validate-data   errors stop the pipeline (exit 1)
#   2. a short sweep            ftsweep launch          the --set overrides shorten it
#   3. export the best trial    ftsweep export
#   4. train the winner         ftsweep train           evaluates it on the held-out test split
#   5. gate it                  ftsweep gate            exit 1 unless it beats the champion
#   6. publish                  copy the model and the reports into $ARTIFACTS
#
# SWEEP is a sweep file or a bundled sweep (default: demo). The --set overrides apply to steps 1-2.
#
# Settings (environment):
#   CHAMPION     the model in production: a directory with run.yaml and adapter/ (what this script
#                publishes as $ARTIFACTS/model). Unset: no gate, the candidate is the first model.
#   ARTIFACTS    where the results go (default: artifacts; must not exist or be empty):
#                  data-report.json  findings of the data check
#                  winner/           winner.yaml (the best trial's config, value and metrics),
#                                    training_args.json, adapter_config.json
#                  verdict.json      the gate's decision (with a champion)
#                  model/            run.yaml, metrics.json, adapter/  (only when the candidate passed)
#   WORK         scratch directory (default: a new temporary one; must not exist or be empty)
#   TRAIN_STEPS  steps of the final fit (default: the trial's own budget)
#   METRIC       what the gate compares (default: the sweep's metric); MARGIN (default 0)
#   GATE_ARGS    more gate flags, e.g. "--max-metric latency_ms=50 --relative-margin 0.01"
#   FTSWEEP      the command to run (default: ftsweep)
#
# Exit status: 0 published; 1 the data has errors or the candidate did not pass the gate (nothing
# published; the reports are); 2 bad input.
set -euo pipefail

SWEEP=demo
if [[ $# -gt 0 && $1 != --* ]]; then SWEEP=$1; shift; fi
SETS=("$@")
FTSWEEP=${FTSWEEP:-ftsweep}
ARTIFACTS=${ARTIFACTS:-artifacts}
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/ftsweep-ci.XXXXXX")}

for dir in "$ARTIFACTS" "$WORK"; do
  if [[ -e $dir && -n $(ls -A "$dir") ]]; then
    echo "error: $dir is not empty (this pipeline never overwrites results); choose another directory" >&2
    exit 2
  fi
done
if [[ -n ${CHAMPION:-} && ! -f $CHAMPION/run.yaml ]]; then
  echo "error: CHAMPION=$CHAMPION is not a trained model (no run.yaml in it)" >&2
  exit 2
fi
mkdir -p "$ARTIFACTS" "$WORK"
echo "== pipeline: sweep $SWEEP, work in $WORK, results in $ARTIFACTS"

step() { echo; echo "== $*"; }

step "1/6 validate the data"
status=0
$FTSWEEP validate-data "$SWEEP" "${SETS[@]}" --json > "$ARTIFACTS/data-report.json" || status=$?
if (( status != 0 )); then
  cat "$ARTIFACTS/data-report.json"
  echo "The data check failed (exit $status); see $ARTIFACTS/data-report.json" >&2
  exit "$status"
fi

step "2/6 sweep"
# The study goes to $WORK/sweep (a journal file), whatever the sweep file says.
$FTSWEEP launch "$SWEEP" "${SETS[@]}" --set output_dir="$WORK/sweep"
study=$(find "$WORK/sweep" -maxdepth 1 -name '*.journal' | head -n 1)
study=${study:-$SWEEP}  # a sweep with its own storage (e.g. PostgreSQL): export finds the study from the file

step "3/6 export the best trial"
$FTSWEEP export "$study" --out "$WORK/winner"
cp -R "$WORK/winner" "$ARTIFACTS/winner"

step "4/6 train the winner"
train_sets=(--set output_dir="$WORK/candidate")
if [[ -n ${TRAIN_STEPS:-} ]]; then
  train_sets+=(--set budget.max_steps="$TRAIN_STEPS" --set budget.eval_every="$TRAIN_STEPS")
fi
$FTSWEEP train "$WORK/winner/winner.yaml" "${train_sets[@]}"

if [[ -n ${CHAMPION:-} ]]; then
  step "5/6 gate: candidate vs champion $CHAMPION"
  gate=(--candidate "$WORK/candidate" --champion "$CHAMPION" --margin "${MARGIN:-0}" --out "$ARTIFACTS/verdict.json")
  if [[ -n ${METRIC:-} ]]; then gate+=(--metric "$METRIC"); fi
  status=0
  # shellcheck disable=SC2086  # GATE_ARGS is a list of flags
  $FTSWEEP gate "${gate[@]}" ${GATE_ARGS:-} || status=$?
  if (( status != 0 )); then
    echo "The gate did not pass (exit $status): the champion stays; nothing published. Reports in $ARTIFACTS" >&2
    exit "$status"
  fi
else
  step "5/6 gate: no CHAMPION given, the candidate becomes the first model"
fi

step "6/6 publish"
mkdir -p "$ARTIFACTS/model"
cp -R "$WORK/candidate/adapter" "$WORK/candidate/run.yaml" "$WORK/candidate/metrics.json" "$ARTIFACTS/model/"
echo "Published $ARTIFACTS/model (use it as CHAMPION next time)"
