#!/usr/bin/env python3
"""PyTorch reference of covflow's 3D GAN iteration, for `BENCHMARKS.md`.

The same generator (our reading of the paper: dense levels, noise at the bottleneck, parallel
1/3/5 convolutions, k2/s2 transposed-convolution decoder with skips) and discriminator (valid
3-D convolutions, max-pooling, global average pool, dense 32/16/8 with dropout, softmax) as
`covflow-models`, at a width multiplier, and the same three-step iteration: reconstruction MSE
on noisy healthy volumes, the discriminator on real against generated, the adversarial step.
It prints the parameter counts (compare with `covflow bench gan`) and seconds per iteration.

    python scripts/gan_ref.py --batch 2 --width 0.25 --grid 32 64 64 --steps 5 --threads 2
    python scripts/gan_ref.py --batch 5 --width 1 --grid 32 128 128 --steps 20 --device cuda

The augmentation here is uniform noise inside a random slab (the timing concerns the networks;
covflow's Perlin fields cost about 1 % of its iteration on the CPU).
"""
import argparse
import statistics
import time

import torch
from torch import nn
import torch.nn.functional as F


def scale(f, width):
    return max(1, round(f * width))


class DenseLevel(nn.Module):
    def __init__(self, c_in, extra, f):
        super().__init__()
        self.first = nn.Conv3d(c_in + extra, f, 3, padding=1)
        self.second = nn.Conv3d(c_in + f, f, 3, padding=1)

    def forward(self, x, extra=None, slope=0.3):
        first_in = x if extra is None else torch.cat([x, extra], 1)
        y = F.leaky_relu(self.first(first_in), slope)
        y = F.leaky_relu(self.second(torch.cat([x, y], 1)), slope)
        return torch.cat([x, y], 1)


class Generator(nn.Module):
    def __init__(self, width=1.0, noise_channels=10):
        super().__init__()
        enc = [scale(f, width) for f in (8, 16, 32, 64)]
        b = scale(128, width)
        dec = [scale(f, width) for f in (256, 128, 64, 32)]
        self.noise_channels = noise_channels
        self.levels = nn.ModuleList()
        skips, c = [], 1
        for f in enc:
            self.levels.append(DenseLevel(c, 0, f))
            c += f
            skips.append(c)
        self.bottleneck = DenseLevel(c, noise_channels, b)
        c_mid = c + b
        self.p1 = nn.Conv3d(c_mid, b, 1)
        self.p3 = nn.Conv3d(c_mid, b, 3, padding=1)
        self.p5 = nn.Conv3d(c_mid, b, 5, padding=2)
        c = 3 * b
        self.up = nn.ModuleList()
        for f, skip in zip(dec, reversed(skips)):
            self.up.append(nn.ConvTranspose3d(c, f, 2, stride=2))
            c = f + skip
        self.out = nn.Conv3d(c, 1, 1)

    def forward(self, x, z):
        skips = []
        for level in self.levels:
            y = level(x)
            x = F.max_pool3d(y, 2)
            skips.append(y)
        x = self.bottleneck(x, z)
        act = lambda t: F.leaky_relu(t, 0.3)
        x = torch.cat([act(self.p1(x)), act(self.p3(x)), act(self.p5(x))], 1)
        for up, skip in zip(self.up, reversed(skips)):
            x = torch.cat([act(up(x)), skip], 1)
        return F.relu(self.out(x))


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv3d(1, 32, 3)
        self.c2 = nn.Conv3d(32, 64, 3)
        self.c3 = nn.Conv3d(64, 128, 3)
        self.d1, self.d2, self.d3 = nn.Linear(128, 32), nn.Linear(32, 16), nn.Linear(16, 8)
        self.out = nn.Linear(8, 2)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        for c in (self.c1, self.c2, self.c3):
            x = F.max_pool3d(F.relu(c(x)), 2)
        x = x.mean(dim=(2, 3, 4))
        for d in (self.d1, self.d2, self.d3):
            x = self.drop(F.relu(d(x)))
        return F.softmax(self.out(x), 1)


def params(m):
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--grid", type=int, nargs=3, default=[32, 64, 64])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    a = ap.parse_args()
    dev = torch.device(a.device)
    # Kernels run asynchronously on a GPU: a time is read only after they have finished.
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    g, d = Generator(a.width).to(dev), Discriminator().to(dev)
    opt_g = torch.optim.Adam(g.parameters(), lr=5e-5)
    opt_d = torch.optim.Adam(d.parameters(), lr=1e-3)
    n, (dd, hh, ww) = a.batch, a.grid
    shape = (n, 1, dd, hh, ww)
    zshape = (n, 10, dd // 16, hh // 16, ww // 16)
    healthy, infected = torch.rand(shape, device=dev), torch.rand(shape, device=dev)
    real = torch.tensor([[1.0, 0.0]], device=dev).repeat(n, 1)
    fake = torch.tensor([[0.0, 1.0]], device=dev).repeat(n, 1)

    def iteration():
        noisy = healthy.clone()
        k = torch.randint(0, dd - dd // 4 + 1, (1,)).item()
        noisy[:, :, k : k + dd // 4] += 0.2 * (torch.rand_like(noisy[:, :, k : k + dd // 4]) - 0.5)
        z = lambda: torch.rand(zshape, device=dev) - 0.5
        # 1. Reconstruction.
        opt_g.zero_grad()
        F.mse_loss(g(noisy.clamp(0, 1), z()), healthy).backward()
        opt_g.step()
        # 2. Discriminator.
        opt_d.zero_grad()
        with torch.no_grad():
            twins = g(infected, z())
        ((F.mse_loss(d(healthy), real) + F.mse_loss(d(twins), fake)) / 2).backward()
        opt_d.step()
        # 3. Adversarial (only the generator steps).
        opt_g.zero_grad()
        F.mse_loss(d(g(infected, z())), real).backward()
        opt_g.step()

    t = time.perf_counter()
    iteration()
    sync()
    first = time.perf_counter() - t
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        iteration()
        sync()
        times.append(time.perf_counter() - t)
    print(
        f'{{"reference":"pytorch {torch.__version__}","device":"{a.device}","threads":{a.threads},"batch":{n},'
        f'"width":{a.width},"grid":{list(a.grid)},"generator_params":{params(g)},'
        f'"discriminator_params":{params(d)},"first_s":{first:.3f},'
        f'"steps_s":{[round(x, 3) for x in times]},"median_s":{statistics.median(times):.3f}}}'
    )


if __name__ == "__main__":
    main()
