#!/usr/bin/env python3
"""Loads covflow's TransUNet weights (safetensors, the reference's names) into the PyTorch
reference model of `transunet_ref.py` and compares its outputs with covflow's on the same input.

    python scripts/transunet_check.py --weights w.safetensors --input x.f32 --logits y.f32 \
        --bottleneck b.f32 --batch 2 --img-dim 64 --out-channels 16 --mlp-dim 32 --blocks 2 \
        [--save-torch torch.safetensors]

The `.f32` files are little-endian float32 in row-major order: the input `[N, 1, D, D]`, and
covflow's logits and bottleneck features for it. Prints one JSON line; exits 1 when an output
differs by more than `--tolerance` or a weight is missing. Needs torch only (the safetensors
file is read here directly).
"""
import argparse
import json
import os
import struct
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from transunet_ref import TransUNet  # noqa: E402

DTYPES = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = memoryview(data)[8 + n :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        t = torch.frombuffer(bytearray(body[start:end]), dtype=DTYPES[info["dtype"]])
        tensors[name] = t.reshape(info["shape"]).clone()
    return tensors


def write_safetensors(path, state):
    """The state dict as PyTorch would save it (`safetensors.torch.save_file`), counters included."""
    names = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64"}
    header, blobs, offset = {}, [], 0
    for name, t in state.items():
        b = t.detach().contiguous().cpu().numpy().tobytes()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_f32(path, shape):
    with open(path, "rb") as f:
        return torch.frombuffer(bytearray(f.read()), dtype=torch.float32).reshape(shape)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--logits", required=True)
    ap.add_argument("--bottleneck", required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--img-dim", type=int, default=128)
    ap.add_argument("--out-channels", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--mlp-dim", type=int, default=512)
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--tolerance", type=float, default=1e-4)
    ap.add_argument("--save-torch", help="also write the loaded model's state dict here")
    a = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    net = TransUNet(a.img_dim, 1, a.out_channels, a.heads, a.mlp_dim, a.blocks, a.patch, 1)
    state = read_safetensors(a.weights)
    result = net.load_state_dict(state, strict=False)
    # PyTorch's BatchNorm counter is not a weight; covflow does not write it.
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    net.eval()
    d = a.img_dim
    x = read_f32(a.input, (a.batch, 1, d, d))
    with torch.no_grad():
        logits, bott = net(x)
    want_logits = read_f32(a.logits, tuple(logits.shape))
    want_bott = read_f32(a.bottleneck, tuple(bott.shape))
    diff_logits = (logits - want_logits).abs().max().item()
    diff_bott = (bott - want_bott).abs().max().item()
    params = sum(p.numel() for p in net.parameters())
    if a.save_torch:
        write_safetensors(a.save_torch, net.state_dict())
    ok = not missing and not result.unexpected_keys and max(diff_logits, diff_bott) < a.tolerance
    print(json.dumps({
        "torch": torch.__version__,
        "params": params,
        "tensors_in_file": len(state),
        "missing": missing,
        "unexpected": result.unexpected_keys,
        "max_abs_diff_logits": diff_logits,
        "max_abs_diff_bottleneck": diff_bott,
        "logits_max_abs": logits.abs().max().item(),
        "logits_std": logits.std().item(),
        "ok": ok,
    }))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
