#!/usr/bin/env bash
# CI: `qarep train --tensorboard` event files read back by the `tensorboard`
# Python package: every scalar of metrics.jsonl must be there, at its step,
# with its value (float32). Any failure, pip included, fails CI.
set -euo pipefail
cd "$(dirname "$0")/.."
QAREP=${QAREP:-.build/release/qarep}
DATA_ROOT=${QAREP_DATA_ROOT:-/usr/share/datasets/fashion-mnist}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q --disable-pip-version-check tensorboard
"$QAREP" train --config tiny --epochs 2 --train-limit 1024 --test-limit 200 --val-split 128 --batch-size 32 \
    --data-root "$DATA_ROOT" --out "$tmp/run" --tensorboard "$tmp/tb" --quiet
"$tmp/venv/bin/python" - "$tmp/run/metrics.jsonl" "$tmp/tb" <<'PY'
import json, sys
import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
records = [json.loads(line) for line in open(sys.argv[1])]
acc = EventAccumulator(sys.argv[2]); acc.Reload()
tags = set(acc.Tags()["scalars"])
names = {"step": {"train/loss": "loss", "train/accuracy": "accuracy", "train/learning_rate": "learning_rate"},
         "epoch": {"epoch/train_loss": "loss", "epoch/validation_top1": "validation_top1", "epoch/test_top1": "test_top1"}}
checked = 0
for r in records:
    for tag, key in names[r["kind"]].items():
        events = {e.step: e.value for e in acc.Scalars(tag)} if tag in tags else {}
        assert r["step"] in events, f"{tag} at step {r['step']} missing from the event file"
        assert events[r["step"]] == np.float32(r[key]), f"{tag} at step {r['step']}: {events[r['step']]} != {r[key]}"
        checked += 1
print(f"ci-tensorboard: {checked} scalars of {len(records)} metrics records read back by tensorboard")
PY
