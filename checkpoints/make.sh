#!/usr/bin/env bash
# Trains the shipped FP32 checkpoints of checkpoints/README.md. Run from the repository root.
#   checkpoints/make.sh           the two tiny checkpoints (about 15 minutes each on one thread)
#   checkpoints/make.sh a0-half   the two a0-half checkpoints of docs/RESULTS.md (about 20 minutes each)
set -euo pipefail
QAREP=${QAREP:-.build/release/qarep}
mkdir -p runs
if [[ "${1:-tiny}" == "a0-half" ]]; then
    common=(--config a0-half --epochs 4 --batch-size 64 --lr 0.1 --wd 1e-4 --seed 0 --threads 1)
    "$QAREP" train "${common[@]}" --block repvgg --weight-decay custom-l2 --out runs/ablation/s0 --json | tee runs/a0-half-s0.json
    "$QAREP" train "${common[@]}" --block qarepvgg --out runs/ablation/s4 --json | tee runs/a0-half-s4.json
    cp runs/ablation/s0/best.safetensors checkpoints/a0-half-repvgg-s0.safetensors
    cp runs/ablation/s4/best.safetensors checkpoints/a0-half-qarepvgg-s4.safetensors
    exit 0
fi
common=(--config tiny --epochs 10 --batch-size 64 --lr 0.1 --wd 1e-4 --seed 0 --threads 1)
"$QAREP" train "${common[@]}" --block qarepvgg --weight-decay l2 --out runs/tiny-qarepvgg --json | tee runs/tiny-qarepvgg.json
"$QAREP" train "${common[@]}" --block repvgg --weight-decay custom-l2 --out runs/tiny-repvgg --json | tee runs/tiny-repvgg.json
cp runs/tiny-qarepvgg/best.safetensors checkpoints/tiny-qarepvgg.safetensors
cp runs/tiny-repvgg/best.safetensors checkpoints/tiny-repvgg.safetensors
