#!/usr/bin/env bash
# Regenerates Sources/QARepTensorBoard/Generated/event.pb.swift from event.proto.
# Run by hand when the proto changes; the generated Swift is committed. The
# protoc and protoc-gen-swift that swift-protobuf builds beside qarep do it:
#
#   swift build -c release --product protoc --product protoc-gen-swift
#   scripts/generate-tensorboard-swift.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(swift build -c release --show-bin-path)
cd Sources/QARepTensorBoard/Generated
"$bin/protoc" --plugin=protoc-gen-swift="$bin/protoc-gen-swift" --swift_opt=Visibility=Internal --swift_out=. event.proto
