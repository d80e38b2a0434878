#!/usr/bin/env python3
"""PyTorch/safetensors interoperability checks for QARep (numpy + safetensors only).

A numpy reference of the RepVGG-family classifier of DESIGN sections 1 and 4,
reading and writing PyTorch `state_dict` names (DESIGN section 6):

    generate OUTDIR
        Writes small fixtures the way PyTorch users do
        (`safetensors.numpy.save_file(state_dict)`, no metadata), one per block
        kind plus one deployed model, each with a sibling `<name>.io.safetensors`
        holding `input` and the eval-mode `logits` of this reference.

    check CHECKPOINT --data-root DIR --limit N --expect-top1 X
        Rebuilds the model of a checkpoint written by qarep (its `__metadata__`
        gives the config; `optimizer.*` tensors are ignored), evaluates the
        first N Fashion-MNIST test images in eval mode and fails unless its
        top-1 equals X within 0.001 (and, with --expect-loss L, its mean
        cross-entropy equals L within 1e-4 relative).

    fold CHECKPOINT OUT
        Folds a multi-branch checkpoint into the deployed form (numpy
        reparameterization) and writes it with qarep metadata
        (`kind` fp32-deploy), so the Swift side can load a deployed file made
        outside Swift.

Block kinds (the identity branch exists only when in == out and stride 1;
convolutions have no bias; ReLU after every block):

    repvgg     y = ReLU( BN(conv3x3 x) + BN(conv1x1 x) + BN_id(x) )
    s2         y = ReLU( BN(conv3x3 x) + BN(conv1x1 x) + x )
    s3         y = ReLU( BN(conv3x3 x) + conv1x1 x + x )
    qarepvgg   y = ReLU( BN_post( BN(conv3x3 x) + conv1x1 x + x ) )
    deployed   y = ReLU( conv3x3(x; K) + b )         (`rbr_reparam`)

Stage 0 is one block from the input channels with stride 1; the first block of
stages 1..4 has stride 2; head = global average pool + linear.
"""

import argparse
import gzip
import json
import os
import sys

import numpy as np
from safetensors.numpy import load_file, save_file
from safetensors import safe_open

EPS = 1e-5
KINDS = ("repvgg", "s2", "s3", "qarepvgg")
MEAN, STD = 0.2860, 0.3530
OPTIMIZER_PREFIX = "optimizer."
NBT = "num_batches_tracked"


class InteropError(Exception):
    pass


# ---------------------------------------------------------------------------
# Model structure: the state_dict keys a config implies (PyTorch names)
# ---------------------------------------------------------------------------

def blocks_of(config):
    """(prefix, in_channels, out_channels, stride) of every block, stage 0 first."""
    out, c = [], config["inChannels"]
    for s in range(5):
        for b in range(config["blocks"][s]):
            prefix = "stage0" if s == 0 else f"stage{s}.{b}"
            stride = 2 if (s > 0 and b == 0) else 1
            out.append((prefix, c, config["widths"][s], stride))
            c = config["widths"][s]
    return out


def has_identity(cin, cout, stride):
    return cin == cout and stride == 1


def bn_keys(prefix):
    return [f"{prefix}.{n}" for n in ("weight", "bias", "running_mean", "running_var")]


def expected_shapes(config, deployed):
    """Every float tensor of the model, in state_dict order, with its shape;
    and the BatchNorm prefixes (each has a `num_batches_tracked`)."""
    kind = config["block"]
    if kind not in KINDS:
        raise InteropError(f"unknown block kind '{kind}'")
    shapes, bns = {}, []

    def bn(prefix, c):
        bns.append(prefix)
        for k in bn_keys(prefix):
            shapes[k] = [c]

    for p, cin, cout, stride in blocks_of(config):
        if deployed:
            shapes[f"{p}.rbr_reparam.weight"] = [cout, cin, 3, 3]
            shapes[f"{p}.rbr_reparam.bias"] = [cout]
            continue
        shapes[f"{p}.rbr_dense.conv.weight"] = [cout, cin, 3, 3]
        bn(f"{p}.rbr_dense.bn", cout)
        if kind in ("repvgg", "s2"):
            shapes[f"{p}.rbr_1x1.conv.weight"] = [cout, cin, 1, 1]
            bn(f"{p}.rbr_1x1.bn", cout)
        else:
            shapes[f"{p}.rbr_1x1.weight"] = [cout, cin, 1, 1]
        if kind == "repvgg" and has_identity(cin, cout, stride):
            bn(f"{p}.rbr_identity", cin)
        if kind == "qarepvgg":
            bn(f"{p}.bn", cout)
    shapes["linear.weight"] = [config["classes"], config["widths"][4]]
    shapes["linear.bias"] = [config["classes"]]
    return shapes, bns


def check_state(state, config, deployed, source):
    """`load_state_dict(strict=True)`: same keys, same shapes, float values;
    `num_batches_tracked` of a BatchNorm and `optimizer.*` accepted."""
    shapes, bns = expected_shapes(config, deployed)
    allowed_extra = {f"{p}.{NBT}" for p in bns}
    for k in sorted(state):
        if k in shapes or k.startswith(OPTIMIZER_PREFIX):
            continue
        if k in allowed_extra:
            v = state[k]
            if v.dtype != np.int64 or v.size != 1:
                raise InteropError(f"{source}: {k} should be one int64, is {v.dtype} {list(v.shape)}")
            continue
        raise InteropError(f"{source}: unexpected key {k} for a {'deployed' if deployed else config['block']} model")
    for k, shape in shapes.items():
        if k not in state:
            raise InteropError(f"{source}: missing key {k}")
        if list(state[k].shape) != shape:
            raise InteropError(f"{source}: {k} has shape {list(state[k].shape)}, model needs {shape}")
        if state[k].dtype not in (np.float32, np.float16):
            raise InteropError(f"{source}: {k} is {state[k].dtype}, expected float32")


def infer_config(state, source):
    """Widths, blocks and kind from names and shapes (files without metadata)."""
    def shape(k):
        return list(state[k].shape) if k in state else None
    stem = shape("stage0.rbr_dense.conv.weight") or shape("stage0.rbr_reparam.weight")
    head = shape("linear.weight")
    if stem is None or head is None:
        raise InteropError(f"{source}: no stage0 / linear tensors to infer the model from")
    widths, blocks = [stem[0]], [1]
    for s in range(1, 5):
        b, w = 0, 0
        while True:
            sh = shape(f"stage{s}.{b}.rbr_dense.conv.weight") or shape(f"stage{s}.{b}.rbr_reparam.weight")
            if sh is None:
                break
            w, b = sh[0], b + 1
        if b == 0:
            raise InteropError(f"{source}: no blocks in stage {s}")
        widths.append(w)
        blocks.append(b)
    keys = list(state)
    if any(k.endswith(".bn.weight") and "rbr_" not in k for k in keys):
        kind = "qarepvgg"
    elif any(k.endswith("rbr_1x1.conv.weight") for k in keys):
        kind = "repvgg" if any(".rbr_identity." in k for k in keys) else "s2"
    elif any(k.endswith("rbr_1x1.weight") for k in keys):
        kind = "s3"
    else:
        kind = "qarepvgg"  # deployed: the kind is gone
    return {"widths": widths, "blocks": blocks, "block": kind, "classes": head[0], "inChannels": stem[1]}


# ---------------------------------------------------------------------------
# Numpy forward pass (eval mode). Each op accumulates in float64 and returns
# float32, like a float32 network with exact accumulation.
# ---------------------------------------------------------------------------

def conv2d(x, w, b=None, stride=1, padding=0):
    """PyTorch `F.conv2d` (no groups/dilation) via im2col; x [N,C,H,W], w [O,C,k,k]."""
    n, c, h, wd = x.shape
    o, ci, kh, kw = w.shape
    assert ci == c, (w.shape, x.shape)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho = (h + 2 * padding - kh) // stride + 1
    wo = (wd + 2 * padding - kw) // stride + 1
    cols = np.empty((n, c, kh, kw, ho, wo), dtype=np.float64)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xp[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
    cols = cols.reshape(n, c * kh * kw, ho * wo)
    y = np.matmul(w.reshape(o, -1).astype(np.float64), cols)  # [N, O, ho*wo]
    if b is not None:
        y += b.astype(np.float64)[None, :, None]
    return y.reshape(n, o, ho, wo).astype(np.float32)


def batchnorm(x, state, prefix):
    """Eval-mode `nn.BatchNorm2d` (eps 1e-5): (x - mean) / sqrt(var + eps) * gamma + beta."""
    g, b, m, v = (state[k].astype(np.float64)[None, :, None, None] for k in bn_keys(prefix))
    return ((x.astype(np.float64) - m) / np.sqrt(v + EPS) * g + b).astype(np.float32)


def block_forward(x, state, config, prefix, cin, cout, stride, deployed):
    kind = config["block"]
    if deployed:
        y = conv2d(x, state[f"{prefix}.rbr_reparam.weight"], state[f"{prefix}.rbr_reparam.bias"], stride, 1)
        return np.maximum(y, 0)
    y = batchnorm(conv2d(x, state[f"{prefix}.rbr_dense.conv.weight"], None, stride, 1), state, f"{prefix}.rbr_dense.bn")
    if kind in ("repvgg", "s2"):
        y1 = batchnorm(conv2d(x, state[f"{prefix}.rbr_1x1.conv.weight"], None, stride, 0), state, f"{prefix}.rbr_1x1.bn")
    else:
        y1 = conv2d(x, state[f"{prefix}.rbr_1x1.weight"], None, stride, 0)
    acc = y.astype(np.float64) + y1
    if has_identity(cin, cout, stride):
        acc += batchnorm(x, state, f"{prefix}.rbr_identity") if kind == "repvgg" else x
    y = acc.astype(np.float32)
    if kind == "qarepvgg":
        y = batchnorm(y, state, f"{prefix}.bn")
    return np.maximum(y, 0)


def forward(state, config, deployed, x):
    """Logits [N, classes] of `x` [N, C, H, W] in eval mode."""
    for prefix, cin, cout, stride in blocks_of(config):
        x = block_forward(x, state, config, prefix, cin, cout, stride, deployed)
    pooled = x.astype(np.float64).mean(axis=(2, 3))
    logits = pooled @ state["linear.weight"].astype(np.float64).T + state["linear.bias"].astype(np.float64)
    return logits.astype(np.float32)


# ---------------------------------------------------------------------------
# Reparameterization (RepVGG's get_equivalent_kernel_bias, YOLOv6's QARepVGG)
# ---------------------------------------------------------------------------

def fold_bn(kernel, bias, state, prefix):
    g, b, m, v = (state[k].astype(np.float64) for k in bn_keys(prefix))
    t = g / np.sqrt(v + EPS)
    return kernel * t[:, None, None, None], b + (bias - m) * t


def fold_state(state, config):
    """Deployed state dict (`rbr_reparam.{weight,bias}`, `linear.*`) of a multi-branch one."""
    kind, out = config["block"], {}
    for p, cin, cout, stride in blocks_of(config):
        k, b = fold_bn(state[f"{p}.rbr_dense.conv.weight"].astype(np.float64), np.zeros(cout), state, f"{p}.rbr_dense.bn")
        k1 = np.zeros((cout, cin, 3, 3))
        if kind in ("repvgg", "s2"):
            k1[:, :, 1:2, 1:2], b1 = fold_bn(state[f"{p}.rbr_1x1.conv.weight"].astype(np.float64), np.zeros(cout), state, f"{p}.rbr_1x1.bn")
        else:
            k1[:, :, 1, 1], b1 = state[f"{p}.rbr_1x1.weight"][:, :, 0, 0], np.zeros(cout)
        k, b = k + k1, b + b1
        if has_identity(cin, cout, stride):
            kid = np.zeros((cout, cin, 3, 3))
            kid[np.arange(cout), np.arange(cin), 1, 1] = 1
            bid = np.zeros(cout)
            if kind == "repvgg":
                kid, bid = fold_bn(kid, bid, state, f"{p}.rbr_identity")
            k, b = k + kid, b + bid
        if kind == "qarepvgg":
            k, b = fold_bn(k, b, state, f"{p}.bn")
        out[f"{p}.rbr_reparam.weight"] = k.astype(np.float32)
        out[f"{p}.rbr_reparam.bias"] = b.astype(np.float32)
    out["linear.weight"] = state["linear.weight"].astype(np.float32)
    out["linear.bias"] = state["linear.bias"].astype(np.float32)
    return out


# ---------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------

FIXTURE_WIDTHS = [4, 4, 8, 8, 16]
FIXTURE_BLOCKS = [1, 1, 2, 1, 1]
FIXTURE_NBT = 123  # num_batches_tracked of every BN, as a trained PyTorch model has


def random_state(config, rng):
    """A PyTorch-style state dict: random weights, non-trivial BN statistics."""
    shapes, bns = expected_shapes(config, deployed=False)
    state = {}
    for k, shape in shapes.items():
        if k.endswith("running_var"):
            state[k] = rng.uniform(0.5, 2.0, shape)
        elif k.endswith("running_mean"):
            state[k] = rng.uniform(-0.5, 0.5, shape)
        elif any(k == f"{p}.weight" for p in bns):
            state[k] = rng.uniform(0.5, 2.0, shape)  # gamma
        elif any(k == f"{p}.bias" for p in bns):
            state[k] = rng.uniform(-0.3, 0.5, shape)  # beta
        else:  # conv and linear: kaiming-like scale so activations stay O(1)
            fan_in = int(np.prod(shape[1:]))
            state[k] = rng.uniform(-1, 1, shape) * np.sqrt(3.0 / fan_in)
        state[k] = np.ascontiguousarray(state[k], dtype=np.float32)
    for p in bns:
        state[f"{p}.{NBT}"] = np.array(FIXTURE_NBT, dtype=np.int64)  # 0-dim int64, like PyTorch
    return state


def rel_err(a, b):
    return float(np.max(np.abs(a.astype(np.float64) - b)) / max(np.max(np.abs(b)), 1e-30))


def generate(outdir):
    os.makedirs(outdir, exist_ok=True)
    rng = np.random.default_rng(20240607)
    # Odd and even sizes: 12 -> 12, 6, 3, 2, 1 and 11 -> 11, 6, 3, 2, 1 (any size >= 1 works).
    sizes = {"repvgg": 12, "s2": 11, "s3": 12, "qarepvgg": 11}
    written = []
    for kind in KINDS:
        config = {"widths": FIXTURE_WIDTHS, "blocks": FIXTURE_BLOCKS, "block": kind, "classes": 10, "inChannels": 1}
        state = random_state(config, rng)
        x = rng.standard_normal((2, 1, sizes[kind], sizes[kind])).astype(np.float32)
        logits = forward(state, config, False, x)
        # Self-checks of the reference: inference from names, folding, non-degenerate output.
        assert infer_config(state, kind) == config, (infer_config(state, kind), config)
        folded = fold_state(state, config)
        e = rel_err(forward(folded, config, True, x), logits.astype(np.float64))
        assert e < 1e-5, f"{kind}: folded logits differ by {e}"
        assert np.ptp(logits[0]) > 1e-2 and np.max(np.abs(logits[0] - logits[1])) > 1e-2, logits
        written += save_fixture(outdir, kind, state, x, logits)
        if kind == "qarepvgg":
            dx = rng.standard_normal((2, 1, 12, 12)).astype(np.float32)
            written += save_fixture(outdir, "qarepvgg_deployed", folded, dx, forward(folded, config, True, dx))
    for path in written:
        print(f"{path}: {os.path.getsize(path)} bytes")


def save_fixture(outdir, name, state, x, logits):
    model = os.path.join(outdir, f"{name}.safetensors")
    io = os.path.join(outdir, f"{name}.io.safetensors")
    save_file(state, model)  # no metadata: what `safetensors.torch.save_file(model.state_dict())` gives
    save_file({"input": x, "logits": logits}, io)
    return [model, io]


# ---------------------------------------------------------------------------
# check
# ---------------------------------------------------------------------------

def read_idx(path, ndim):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 + 4 * ndim or data[:2] != b"\0\0" or data[2] != 0x08 or data[3] != ndim:
        raise InteropError(f"{path}: not an IDX file of unsigned bytes with {ndim} dimensions")
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise InteropError(f"{path}: {body.size} bytes of data, header says {dims}")
    return body.reshape(dims)


def find_idx(root, name):
    for candidate in (os.path.join(root, name + ".gz"), os.path.join(root, name)):
        if os.path.exists(candidate):
            return candidate
    raise InteropError(f"{root}: no {name} or {name}.gz")


def load_test(root, limit):
    images = read_idx(find_idx(root, "t10k-images-idx3-ubyte"), 3)[:limit]
    labels = read_idx(find_idx(root, "t10k-labels-idx1-ubyte"), 1)[:limit]
    x = images.astype(np.float32) / np.float32(255)
    x = (x - np.float32(MEAN)) / np.float32(STD)
    return x[:, None, :, :].astype(np.float32), labels.astype(np.int64)


def read_checkpoint(path):
    with safe_open(path, framework="numpy") as f:
        metadata = f.metadata() or {}
    state = load_file(path)
    name = os.path.basename(path)
    deployed = any(k.endswith("rbr_reparam.weight") for k in state)
    inferred = infer_config(state, name)
    if "model" in metadata:
        config = json.loads(metadata["model"])
        for field in ("widths", "blocks", "classes", "inChannels") + (() if deployed else ("block",)):
            if config[field] != inferred[field]:
                raise InteropError(f"{name}: metadata says {field}={config[field]}, tensor names and shapes say {inferred[field]}")
        kind = metadata.get("kind")
        if kind is not None and kind != ("fp32-deploy" if deployed else "fp32-train"):
            raise InteropError(f"{name}: metadata kind '{kind}' but the tensors are {'deployed' if deployed else 'multi-branch'}")
    else:
        config = inferred
    check_state(state, config, deployed, name)
    return state, config, deployed, metadata


def check(args):
    state, config, deployed, _ = read_checkpoint(args.checkpoint)
    x, labels = load_test(args.data_root, args.limit)
    correct, loss_sum, predicted = 0, 0.0, set()
    for i in range(0, len(x), args.batch):
        logits = forward(state, config, deployed, x[i:i + args.batch]).astype(np.float64)
        y = labels[i:i + args.batch]
        pred = np.argmax(logits, axis=1)  # first maximum, like qarep
        correct += int(np.sum(pred == y))
        predicted.update(pred.tolist())
        top = logits.max(axis=1)
        lse = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
        loss_sum += float(np.sum(lse - logits[np.arange(len(y)), y]))
    top1, loss = correct / len(x), loss_sum / len(x)
    form = "deployed" if deployed else "multi-branch"
    name = os.path.basename(args.checkpoint)
    desc = f"{name}: {form} {config['block']} widths {config['widths']} blocks {config['blocks']}, {len(x)} images"
    if abs(top1 - args.expect_top1) > 0.001:
        print(f"interop MISMATCH {desc}: numpy top-1 {top1:.4f}, qarep said {args.expect_top1:.4f}", file=sys.stderr)
        return 1
    # The mean cross-entropy depends on every logit, not only the arg-max:
    # a much finer check than top-1 where qarep's loss is given.
    if args.expect_loss is not None and abs(loss - args.expect_loss) > 1e-4 * max(1.0, abs(args.expect_loss)):
        print(f"interop MISMATCH {desc}: numpy loss {loss:.6f}, qarep said {args.expect_loss:.6f}", file=sys.stderr)
        return 1
    loss_note = f", loss {loss:.6f} = qarep {args.expect_loss:.6f}" if args.expect_loss is not None else ""
    print(f"interop ok {desc}: numpy top-1 {top1:.4f} = qarep {args.expect_top1:.4f}{loss_note} "
          f"({len(predicted)} classes predicted)")
    return 0


def fold(args):
    state, config, deployed, metadata = read_checkpoint(args.checkpoint)
    if deployed:
        raise InteropError(f"{os.path.basename(args.checkpoint)} is already deployed")
    meta = {"format": metadata.get("format", "qarep"), "format_version": metadata.get("format_version", "1"),
            "kind": "fp32-deploy", "model": json.dumps(config, sort_keys=True)}
    save_file(fold_state(state, config), args.out, metadata=meta)
    print(f"wrote {args.out}: deployed {config['block']} ({len(blocks_of(config))} blocks)")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="write PyTorch-style fixtures with reference logits")
    g.add_argument("outdir")
    c = sub.add_parser("check", help="numpy top-1 of a qarep checkpoint must equal qarep's")
    c.add_argument("checkpoint")
    c.add_argument("--data-root", default="/usr/share/datasets/fashion-mnist")
    c.add_argument("--limit", type=int, default=10000)
    c.add_argument("--expect-top1", type=float, required=True)
    c.add_argument("--expect-loss", type=float, help="also require qarep's mean cross-entropy (1e-4 relative)")
    c.add_argument("--batch", type=int, default=100, help=argparse.SUPPRESS)
    f = sub.add_parser("fold", help="write the deployed form of a multi-branch checkpoint")
    f.add_argument("checkpoint")
    f.add_argument("out")
    args = parser.parse_args()
    try:
        if args.command == "generate":
            generate(args.outdir)
            return 0
        return check(args) if args.command == "check" else fold(args)
    except (InteropError, OSError, ValueError, KeyError) as e:
        print(f"interop error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
