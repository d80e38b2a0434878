#!/usr/bin/env bash
# CI: export the shipped tiny QARepVGG after a short PTQ, then check both ONNX
# files with onnx.checker and ONNX Runtime against qarep's own results
# (scripts/check_onnx.py). Any failure fails CI.
set -euo pipefail
cd "$(dirname "$0")/.."
QAREP=${QAREP:-.build/release/qarep}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q --disable-pip-version-check numpy onnx onnxruntime

ckpt=checkpoints/tiny-qarepvgg.safetensors
"$QAREP" ptq --checkpoint "$ckpt" --calib-images 256 --out "$tmp/int8.safetensors" --quiet
"$QAREP" export --from "$tmp/int8.safetensors" --format onnx --out "$tmp/int8.onnx"
"$QAREP" export --from "$ckpt" --format onnx-fp32 --out "$tmp/fp32.onnx"
"$QAREP" eval --int8 "$tmp/int8.safetensors" --logits-out "$tmp/int8.npy" --quiet
"$QAREP" eval --checkpoint "$ckpt" --deploy --logits-out "$tmp/fp32.npy" --quiet
"$tmp/venv/bin/python" scripts/check_onnx.py --fp32 "$tmp/fp32.onnx" --fp32-logits "$tmp/fp32.npy" \
    --int8 "$tmp/int8.onnx" --int8-logits "$tmp/int8.npy"

# Any-model quantization: the custom-model recipe (a residual network with a
# float-kept classifier), briefly trained, through graph capture, QAT,
# conversion and QDQ export; ONNX Runtime must agree with the graph engine.
swift build -c release --product custom-model-qat >/dev/null
RECIPE=.build/release/custom-model-qat
"$RECIPE" --train-limit 2048 --epochs 1 --qat-epochs 1 --out "$tmp/custom" >/dev/null
"$tmp/venv/bin/python" scripts/check_onnx.py --int8 "$tmp/custom/custom-int8.onnx" --int8-logits "$tmp/custom/custom-int8-logits.npy"

# The same through the command line, on a ResNet: train, PTQ to the native INT8
# graph file, export it as QDQ; ONNX Runtime must agree with the graph engine.
"$QAREP" train --model resnet8 --train-limit 2048 --test-limit 2000 --epochs 1 --val-split 0 --out "$tmp/resnet" --quiet
"$QAREP" ptq --checkpoint "$tmp/resnet/last.safetensors" --calib-images 256 --out "$tmp/resnet-int8.safetensors" --quiet
"$QAREP" export --from "$tmp/resnet-int8.safetensors" --format onnx --out "$tmp/resnet-int8.onnx"
"$QAREP" eval --int8 "$tmp/resnet-int8.safetensors" --test-limit 2000 --logits-out "$tmp/resnet-int8.npy" --quiet
"$tmp/venv/bin/python" scripts/check_onnx.py --int8 "$tmp/resnet-int8.onnx" --int8-logits "$tmp/resnet-int8.npy" --limit 2000
