#!/usr/bin/env bash
# PyTorch/safetensors interop check, run by CI after the Swift tests.
#
# Trains a very small run with the release binary, then has an independent
# numpy reference (scripts/interop.py) rebuild the model from the checkpoint's
# PyTorch names and reproduce `qarep eval`'s top-1 on the same test images:
#   1. the multi-branch training checkpoint qarep wrote;
#   2. its deployed form, folded in numpy (`interop.py fold`) and evaluated by
#      qarep, so a deployed file made outside Swift is checked both ways.
# Any mismatch fails the script, and so does failing to install numpy and
# safetensors: a check that CI runs either runs or fails, never skips.
#
# Environment: QAREP_BIN (default .build/release/qarep), QAREP_DATA_ROOT
# (default /usr/share/datasets/fashion-mnist), QAREP_THREADS (default 2),
# PYTHON (default python3).
set -euo pipefail

cd "$(dirname "$0")/.."
BIN=${QAREP_BIN:-.build/release/qarep}
DATA_ROOT=${QAREP_DATA_ROOT:-/usr/share/datasets/fashion-mnist}
THREADS=${QAREP_THREADS:-2}
PYTHON=${PYTHON:-python3}
LIMIT=500

TMP=$(mktemp -d "${TMPDIR:-/tmp}/qarep-interop.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

if [[ ! -x "$BIN" ]]; then
    echo "interop: $BIN not found; build with 'swift build -c release' first" >&2
    exit 1
fi

if ! "$PYTHON" -m venv "$TMP/venv" >"$TMP/venv.log" 2>&1 \
    || ! "$TMP/venv/bin/pip" install --quiet numpy safetensors >"$TMP/pip.log" 2>&1; then
    tail -n 3 "$TMP/venv.log" "$TMP/pip.log" >&2 2>/dev/null || true
    echo "interop: could not install numpy and safetensors into a virtual environment (needs python3-venv and PyPI)" >&2
    exit 1
fi
PY="$TMP/venv/bin/python"
# The numpy reference runs single-threaded so it does not compete with qarep.
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

json_field() {  # one field of the JSON object in file $1
    "$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}

# Batch size 16 (32 steps): with the default 64 (8 steps) the BN running
# statistics are still far off and the model predicts one class, which would
# make a top-1 comparison vacuous.
echo "interop: training a tiny qarepvgg run (1 epoch, 512 images)"
"$BIN" train --config tiny --block qarepvgg --epochs 1 --train-limit 512 --test-limit 200 --batch-size 16 \
    --data-root "$DATA_ROOT" --threads "$THREADS" --out "$TMP/run" --quiet >/dev/null
CKPT="$TMP/run/last.safetensors"

# 1. The multi-branch checkpoint qarep wrote (and qarep's own folding, --deploy).
"$BIN" eval --checkpoint "$CKPT" --deploy --test-limit "$LIMIT" --data-root "$DATA_ROOT" \
    --threads "$THREADS" --json >"$TMP/eval.json"
TOP1=$(json_field "$TMP/eval.json" top1)
LOSS=$(json_field "$TMP/eval.json" loss)
SWIFT_DEPLOYED_TOP1=$(json_field "$TMP/eval.json" deployed_top1)
"$PY" scripts/interop.py check "$CKPT" --data-root "$DATA_ROOT" --limit "$LIMIT" --expect-top1 "$TOP1" --expect-loss "$LOSS"

# 2. The deployed form as a FILE, folded by numpy: qarep loads and evaluates it,
#    and the numpy reference must agree with that and with qarep's own folding.
"$PY" scripts/interop.py fold "$CKPT" "$TMP/deployed.safetensors"
"$BIN" eval --checkpoint "$TMP/deployed.safetensors" --test-limit "$LIMIT" --data-root "$DATA_ROOT" \
    --threads "$THREADS" --json >"$TMP/eval-deployed.json"
DTOP1=$(json_field "$TMP/eval-deployed.json" top1)
DLOSS=$(json_field "$TMP/eval-deployed.json" loss)
"$PY" scripts/interop.py check "$TMP/deployed.safetensors" --data-root "$DATA_ROOT" --limit "$LIMIT" \
    --expect-top1 "$DTOP1" --expect-loss "$DLOSS"
"$PY" scripts/interop.py check "$TMP/deployed.safetensors" --data-root "$DATA_ROOT" --limit "$LIMIT" --expect-top1 "$SWIFT_DEPLOYED_TOP1"

echo "interop: all checks passed"
