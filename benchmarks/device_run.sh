#!/usr/bin/env bash
# One command for a bare GPU machine (an H200 with torch, triton and transformers but no diffusers):
#
#   bash benchmarks/device_run.sh             # on the GPU machine, in the repository root, `.whl/` beside it
#   bash benchmarks/device_run.sh --dry-run   # the same script on CPU with shrunk shapes (CI runs this)
#
# It installs the carried wheels (WHEELS, default .whl/) into a temp dir, prints versions and the measured
# ceilings, then runs the engine cases in order of importance, each under its own timeout and skipped when
# too little of the deadline (DEADLINE_S, default 585 s) is left:
#   4B 1024² and 512²; 9B 1024² with 0 and 4 references; 9B-KV with 4 references; then 4B with fp8 linears;
#   4B 2048² and 1024² batch 4; a profile of one 4B 1024² generation.
# Into OUT (default out/device-run) it writes at most 8 files, no folders: ceilings.json, engine-*.json (one
# per step, rewritten after every case), profile-4b.txt and log.txt (everything printed). It prints the
# summary (ceilings, then every case line) last.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1
DEADLINE_S=${DEADLINE_S:-585}
OUT=${OUT:-out/device-run}
WHEELS=${WHEELS:-.whl}
PYTHON=${PYTHON:-python3}
START=$SECONDS
mkdir -p "$OUT"
LOG="$OUT/log.txt"
: >"$LOG"

say() { echo "$*" | tee -a "$LOG"; }

install_wheels() {
  local site
  site=$(mktemp -d "${TMPDIR:-/tmp}/kleinserve-site.XXXXXX")
  if compgen -G "$WHEELS/*.whl" >/dev/null; then
    say "installing $(ls "$WHEELS"/*.whl | xargs -n1 basename | tr '\n' ' ')into $site"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
      "$WHEELS"/*.whl >>"$LOG" 2>&1 || { say "FAILED: installing the wheels in $WHEELS (see $LOG)"; exit 1; }
  else
    say "no wheels in $WHEELS: using the environment's packages"
  fi
  export PYTHONPATH="$site:$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
}

check_imports() {
  "$PYTHON" -c "import diffusers, transformers, torch, kleinserve.engine" >>"$LOG" 2>&1 && return
  say "FAILED: diffusers, transformers, torch or kleinserve.engine does not import (see $LOG);"
  say "carry the wheels benchmarks/fetch_wheels.sh downloads into $WHEELS"
  exit 1
}

# step NAME NEEDS_S LIMIT_S COMMAND...: runs COMMAND under a timeout of LIMIT_S (less if the deadline is
# nearer), or skips it when fewer than NEEDS_S seconds of the deadline are left.
step() {
  local name=$1 needs=$2 limit=$3
  shift 3
  local left=$((DEADLINE_S - (SECONDS - START) - 10))  # 10 s kept for the summary
  if [ "$left" -lt "$needs" ]; then
    say "step $name: SKIPPED, ${left}s left of the deadline, needs ${needs}s"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local began=$SECONDS
  timeout -k 10 "$limit" "$@" >>"$LOG" 2>&1
  local status=$?
  local verdict=ok
  [ $status -eq 124 ] || [ $status -eq 137 ] && verdict="TIMED OUT"
  [ $status -ne 0 ] && [ "$verdict" = ok ] && verdict="FAILED (exit $status, see log.txt)"
  say "step $name: $verdict after $((SECONDS - began))s (limit ${limit}s)"
}

# bench NAME MODEL ARGS...: sets BENCH to one engine benchmark command; MODEL is 4b, 9b or 9b-kv.
bench() {
  local name=$1 model=$2
  shift 2
  local source=(--full "${model%-kv}")
  if [ $DRY_RUN = 1 ]; then
    source=(--tiny)
    [ "$model" = 9b ] && source+=(--model flux.2-klein-9b)
  fi
  [ "$model" = 9b-kv ] && source+=(--kv)
  BENCH=("$PYTHON" benchmarks/bench_engine.py "${source[@]}" --runs "$RUNS" --ref-size "$REF"
         --output "$OUT/engine-$name.json" "$@")
}

if [ $DRY_RUN = 1 ]; then  # shapes shrunk so the whole script runs on a CPU in a few minutes
  S1=80 S2=64 S3=96 REF=64 RUNS=1 SMALL=(--small)
else
  S1=1024 S2=512 S3=2048 REF=1024 RUNS=3 SMALL=()
fi

say "device run: $(date -u +%FT%TZ), deadline ${DEADLINE_S}s, dry run $DRY_RUN, output $OUT"
install_wheels
check_imports
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
  --format=csv,noheader >>"$LOG" 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

step ceilings 30 90 "$PYTHON" benchmarks/ceilings.py "${SMALL[@]}" --output "$OUT/ceilings.json"
bench 4b 4b --shapes "$S1:1:0" "$S2:1:0"
step 4b 60 170 "${BENCH[@]}"
bench 9b 9b --shapes "$S1:1:0" "$S1:1:4"
step 9b 90 200 "${BENCH[@]}"
bench 9b-kv 9b-kv --shapes "$S1:1:4"
step 9b-kv 60 150 "${BENCH[@]}"
bench 4b-fp8 4b --quantize fp8 --shapes "$S1:1:0"
step 4b-fp8 60 120 "${BENCH[@]}"
bench 4b-large 4b --no-diffusers --shapes "$S3:1:0" "$S1:4:0"
step 4b-large 60 140 "${BENCH[@]}"
bench profile-run 4b --no-diffusers --runs 1 --shapes "$S1:1:0" --profile "$OUT/profile-4b.txt"
step profile 40 90 "${BENCH[@]}"
rm -f "$OUT/engine-profile-run.json"  # the profile step's timings repeat the 4b step's

say "total $((SECONDS - START))s of ${DEADLINE_S}s"
"$PYTHON" benchmarks/device_summary.py "$OUT" | tee -a "$LOG"
