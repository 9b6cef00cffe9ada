#!/usr/bin/env python3
"""PyTorch eager reference for `covflow bench transunet` (run on the GPU machine by gpu-check.sh).

The seed TransUNet (transunet_pytorch by mkara44, MIT; seed configuration, 66 870 129 parameters)
with attention divided by sqrt(d_k) as covflow does, a projection head on the pooled bottleneck,
and the same three losses (contrastive tau=0.06 w=1.5, MSE, sensitivity BCE beta=2), Adam 5e-5.
Prints one JSON object per configuration, in the shape covflow's bench prints.
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class EncoderBottleneck(nn.Module):
    def __init__(self, i, o, stride=1):
        super().__init__()
        self.downsample = nn.Sequential(nn.Conv2d(i, o, 1, stride=stride, bias=False), nn.BatchNorm2d(o))
        self.conv1 = nn.Conv2d(i, o, 1, bias=False)
        self.norm1 = nn.BatchNorm2d(o)
        self.conv2 = nn.Conv2d(o, o, 3, stride=2, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(o)
        self.conv3 = nn.Conv2d(o, o, 1, bias=False)
        self.norm3 = nn.BatchNorm2d(o)

    def forward(self, x):
        d = self.downsample(x)
        x = F.relu(self.norm1(self.conv1(x)))
        x = F.relu(self.norm2(self.conv2(x)))
        x = self.norm3(self.conv3(x))
        return F.relu(x + d)


class DecoderBottleneck(nn.Module):
    def __init__(self, i, o):
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.layer = nn.Sequential(
            nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
            nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())

    def forward(self, x, skip=None):
        x = self.upsample(x)
        if skip is not None:
            x = torch.cat([skip, x], dim=1)
        return self.layer(x)


class MultiHeadAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.head_num = heads
        self.dk = (dim // heads) ** 0.5
        self.qkv_layer = nn.Linear(dim, 3 * dim, bias=False)
        self.out_attention = nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        b, t, e = x.shape
        d = e // self.head_num
        # "b t (d k h) -> k b h t d", as the reference rearranges it.
        qkv = self.qkv_layer(x).reshape(b, t, d, 3, self.head_num).permute(3, 0, 4, 1, 2)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = torch.softmax(q @ k.transpose(-1, -2) / self.dk, dim=-1)
        return self.out_attention((a @ v).transpose(1, 2).reshape(b, t, e))


class TransformerEncoderBlock(nn.Module):
    def __init__(self, dim, heads, mlp):
        super().__init__()
        self.multi_head_attention = MultiHeadAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Dropout(0.1), nn.Linear(mlp, dim), nn.Dropout(0.1))
        self.layer_norm1 = nn.LayerNorm(dim)
        self.layer_norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x):
        x = self.layer_norm1(x + self.dropout(self.multi_head_attention(x)))
        return self.layer_norm2(x + self.mlp(x))


class TransformerEncoder(nn.Module):
    def __init__(self, dim, heads, mlp, blocks):
        super().__init__()
        self.layer_blocks = nn.ModuleList([TransformerEncoderBlock(dim, heads, mlp) for _ in range(blocks)])

    def forward(self, x):
        for block in self.layer_blocks:
            x = block(x)
        return x


class ViT(nn.Module):
    """Patch size 1 over the deepest feature map: every pixel is a token."""

    def __init__(self, grid, dim, heads, mlp, blocks):
        super().__init__()
        self.projection = nn.Linear(dim, dim)
        self.embedding = nn.Parameter(torch.rand(grid * grid + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.dropout = nn.Dropout(0.1)
        self.transformer = TransformerEncoder(dim, heads, mlp, blocks)

    def forward(self, x):
        b, c, h, w = x.shape
        tok = self.projection(x.flatten(2).transpose(1, 2))
        tok = torch.cat([self.cls_token.expand(b, 1, c), tok], 1) + self.embedding[: h * w + 1]
        return self.transformer(self.dropout(tok))[:, 1:]


class Encoder(nn.Module):
    def __init__(self, img_dim, in_ch, oc, heads, mlp, blocks, patch):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, oc, 7, stride=2, padding=3, bias=False)
        self.norm1 = nn.BatchNorm2d(oc)
        self.encoder1 = EncoderBottleneck(oc, 2 * oc, 2)
        self.encoder2 = EncoderBottleneck(2 * oc, 4 * oc, 2)
        self.encoder3 = EncoderBottleneck(4 * oc, 8 * oc, 2)
        self.vit_img_dim = img_dim // patch
        self.vit = ViT(self.vit_img_dim, 8 * oc, heads, mlp, blocks)
        self.conv2 = nn.Conv2d(8 * oc, 4 * oc, 3, padding=1)
        self.norm2 = nn.BatchNorm2d(4 * oc)

    def forward(self, x):
        x1 = F.relu(self.norm1(self.conv1(x)))
        x2 = self.encoder1(x1)
        x3 = self.encoder2(x2)
        x = self.encoder3(x3)
        b, c, h, w = x.shape
        x = self.vit(x).transpose(1, 2).reshape(b, c, h, w)
        return F.relu(self.norm2(self.conv2(x))), x1, x2, x3


class Decoder(nn.Module):
    def __init__(self, oc, classes):
        super().__init__()
        self.decoder1 = DecoderBottleneck(8 * oc, 2 * oc)
        self.decoder2 = DecoderBottleneck(4 * oc, oc)
        self.decoder3 = DecoderBottleneck(2 * oc, oc // 2)
        self.decoder4 = DecoderBottleneck(oc // 2, oc // 8)
        self.conv1 = nn.Conv2d(oc // 8, classes, 1)

    def forward(self, x, x1, x2, x3):
        x = self.decoder1(x, x3)
        x = self.decoder2(x, x2)
        x = self.decoder3(x, x1)
        return self.conv1(self.decoder4(x))


class TransUNet(nn.Module):
    """The reference's module tree (`encoder.…`, `decoder.…`), so its weights load by name."""

    def __init__(self, img_dim=128, in_ch=1, oc=128, heads=4, mlp=512, blocks=8, patch=16, classes=1):
        super().__init__()
        self.encoder = Encoder(img_dim, in_ch, oc, heads, mlp, blocks, patch)
        self.decoder = Decoder(oc, classes)

    def forward(self, x):
        """Logits and the bottleneck features (for the contrastive projection head)."""
        bott, x1, x2, x3 = self.encoder(x)
        return self.decoder(bott, x1, x2, x3), bott


def contrastive(z, labels, tau=0.06, w=1.5):
    f = F.normalize(z, dim=1)
    s = torch.exp((f @ f.T - 1.0) / tau)
    same = (labels[:, None] == labels[None, :]).float()
    eye = torch.eye(len(labels), device=z.device)
    pos = w * (s * (same - eye)).sum(1)
    neg = (s * (1 - same)).sum(1)
    return (-torch.log((pos / (pos + neg).clamp_min(1e-30)).clamp_min(1e-30))).mean()


def sensitivity(p, t, beta=2.0):
    bce = F.binary_cross_entropy_with_logits(p, t, reduction="none")
    return (bce * (1 + beta * (1 - torch.sigmoid(p)) * t)).mean()


def bench(batch, steps, tf32, dev="cuda", width_div=1, count_ops=False):
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.manual_seed(7)
    oc = 128 // width_div
    net = TransUNet(oc=oc, mlp=512 // width_div).to(dev)
    head = nn.Linear(4 * oc, 128).to(dev)
    params = sum(p.numel() for p in net.parameters())
    opt = torch.optim.Adam(list(net.parameters()) + list(head.parameters()), lr=5e-5)
    x = torch.rand(batch, 1, 128, 128, device=dev)
    t = (torch.rand(batch, 1, 128, 128, device=dev) > 0.9).float()
    labels = torch.arange(batch, device=dev) % 2

    def step():
        opt.zero_grad(set_to_none=True)
        logits, bott = net(x)
        z = head(bott.mean(dim=(2, 3)))
        loss = contrastive(z, labels) + F.mse_loss(torch.sigmoid(logits), t) + sensitivity(logits, t)
        loss.backward()
        opt.step()
        v = loss.item()
        if dev == "cuda":
            torch.cuda.synchronize()
        return v

    if count_ops:
        step()
        step()
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        events = [e for e in prof.events() if e.name.startswith("aten::")]
        # Leaves: operators that call no other operator, the ones that run kernels.
        parents = {id(e.cpu_parent) for e in events if e.cpu_parent is not None}
        leaves = [e for e in events if id(e) not in parents]
        return {"impl": "pytorch-eager-ops", "batch": batch, "width_div": width_div,
                "aten_ops": len(events), "leaf_ops": len(leaves)}
    t0 = time.perf_counter()
    first_loss = step()
    first = time.perf_counter() - t0
    times = []
    last = first_loss
    for _ in range(steps):
        t0 = time.perf_counter()
        last = step()
        times.append((time.perf_counter() - t0) * 1e3)
    net.eval()
    inf = []
    with torch.no_grad():
        for i in range(21):
            t0 = time.perf_counter()
            net(x)[0].sum().item()
            if i:
                inf.append((time.perf_counter() - t0) * 1e3)
    return {
        "impl": "pytorch-eager" + ("-tf32" if tf32 else "-fp32") + ("-cpu" if dev == "cpu" else ""),
        "threads": torch.get_num_threads(),
        "width_div": width_div,
        "torch": torch.__version__,
        "batch": batch,
        "params": params,
        "first_step_s": first,
        "median_step_ms": sorted(times)[len(times) // 2],
        "median_inference_ms": sorted(inf)[len(inf) // 2],
        "loss_first": first_loss,
        "loss_last": last,
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--width-div", type=int, default=1, help="divide every width (as covflow's --width-div)")
    ap.add_argument("--count-ops", action="store_true", help="count the operators of one steady step (torch.profiler) instead of timing")
    a = ap.parse_args()
    if a.count_ops:
        for b in a.batch:
            print(json.dumps(bench(b, 0, False, a.device, a.width_div, count_ops=True)), flush=True)
        raise SystemExit
    for b in a.batch:
        # TF32 exists only on CUDA.
        for tf32 in (False, True) if a.device == "cuda" else (False,):
            print(json.dumps(bench(b, a.steps, tf32, a.device, a.width_div)), flush=True)
