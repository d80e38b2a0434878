#!/usr/bin/env bash
# Regenerates Sources/QARepONNX/Generated/onnx.pb.swift from onnx.proto (ONNX 1.17.0, IR version 10).
# Run once by hand when the proto changes; the generated Swift is committed so builds need no protoc.
#
#   apt-get install -y protobuf-compiler            # protoc 3.21
#   git clone --branch 1.39.0 https://github.com/apple/swift-protobuf /tmp/swift-protobuf
#   (cd /tmp/swift-protobuf && swift build --product protoc-gen-swift)
#   pip download onnx==1.17.0 --no-deps --only-binary=:all: -d /tmp/onnxwheel   # onnx/onnx.proto inside
#   scripts/generate-onnx-swift.sh /tmp/swift-protobuf/.build/debug/protoc-gen-swift
set -euo pipefail
plugin=${1:?path to protoc-gen-swift}
cd "$(dirname "$0")/../Sources/QARepONNX/Generated"
protoc --plugin=protoc-gen-swift="$plugin" --swift_opt=Visibility=Public --swift_out=. onnx.proto
