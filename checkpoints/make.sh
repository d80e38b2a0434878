#!/usr/bin/env bash
# Trains the shipped FP32 checkpoints of checkpoints/README.md. Run from the repository root.
set -euo pipefail
QAREP=${QAREP:-.build/release/qarep}
common=(--config tiny --epochs 10 --batch-size 64 --lr 0.1 --wd 1e-4 --seed 0 --threads 1)
"$QAREP" train "${common[@]}" --block qarepvgg --weight-decay l2 --out runs/tiny-qarepvgg --json | tee runs/tiny-qarepvgg.json
"$QAREP" train "${common[@]}" --block repvgg --weight-decay custom-l2 --out runs/tiny-repvgg --json | tee runs/tiny-repvgg.json
cp runs/tiny-qarepvgg/best.safetensors checkpoints/tiny-qarepvgg.safetensors
cp runs/tiny-repvgg/best.safetensors checkpoints/tiny-repvgg.safetensors
