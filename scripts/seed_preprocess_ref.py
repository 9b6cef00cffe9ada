#!/usr/bin/env python3
"""The seed's CPU preprocessing (nibabel + scipy + skimage), timed on one study, and the error of
covflow's resample against skimage's resize.

    covflow phantom --out mm --count 8 --size mosmed
    covflow run pipelines/mosmed.yaml --set params.root=mm && covflow export ... grid grid
    python3 scripts/seed_preprocess_ref.py mm/studies/CT-1/study_0001.nii.gz \
        --covflow-grid grid/study_0001/ct.nii.gz

Prints one JSON line per timed step (median of --reps, one core: scipy and skimage are
single-threaded here), then the resample error lines. Needs numpy, scipy, scikit-image, nibabel.
"""
import argparse
import json
import statistics
import time

import nibabel as nib
import numpy as np
from scipy import ndimage
from skimage.transform import resize

GRID = (128, 128, 32)
LOW, HIGH = -1000.0, 400.0


def timed(step, shape, reps, f):
    times, out = [], None
    for _ in range(reps):
        t = time.perf_counter()
        out = f()
        times.append((time.perf_counter() - t) * 1e3)
    print(json.dumps({"step": step, "shape": list(shape), "median_ms": statistics.median(times),
                      "tool": "seed (python)"}))
    return out


def window(hu):
    return np.clip((hu - LOW) / (HIGH - LOW), 0.0, 1.0)


def classical_lung_mask(ct, threshold, spacing):
    """The classical method covflow implements, with scipy's functions (timed piecewise)."""
    air = ct < threshold
    labels, n = ndimage.label(air)
    border = np.unique(np.concatenate([labels[0].ravel(), labels[-1].ravel(),
                                       labels[:, 0].ravel(), labels[:, -1].ravel()]))
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(n + 1))
    sizes[border] = 0
    sizes[0] = 0
    order = np.argsort(sizes)[::-1]
    keep = [l for l in order[:4] if sizes[l] >= 0.1 * sizes[order[0]] and sizes[l] > 0]
    mask = np.isin(labels, keep)
    for k in range(mask.shape[2]):
        mask[:, :, k] = ndimage.binary_fill_holes(mask[:, :, k])
    mask = ndimage.binary_closing(mask, iterations=2)
    return mask


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ct")
    ap.add_argument("--covflow-grid", help="covflow's resample output for the same study")
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()

    img = nib.load(a.ct)
    hu = timed("decode .nii.gz (nibabel get_fdata)", img.shape, a.reps,
               lambda: nib.load(a.ct).get_fdata())
    sx, sy, sz = img.header.get_zooms()[:3]
    timed("seed: scipy rotate 90°", hu.shape, a.reps,
          lambda: ndimage.rotate(hu, 90, reshape=False))
    z = timed("seed: scipy zoom to 2 mm in-plane (order 3)", hu.shape, a.reps,
              lambda: ndimage.zoom(hu, (sx / 2.0, sy / 2.0, 1.0)))
    g = timed("seed: skimage resize order 5 + anti-aliasing", z.shape, a.reps,
              lambda: resize(z, GRID, order=5, anti_aliasing=True, preserve_range=True))
    grid = window(g)
    t = (-320.0 - LOW) / (HIGH - LOW)
    timed("classical lung mask with scipy on the grid", GRID, a.reps,
          lambda: classical_lung_mask(grid, t, None))
    air = hu < -320
    timed("scipy label (full resolution)", hu.shape, a.reps, lambda: ndimage.label(air))
    timed("scipy binary_fill_holes (full resolution)", hu.shape, a.reps,
          lambda: ndimage.binary_fill_holes(air))
    timed("scipy binary_closing x2 (full resolution)", hu.shape, a.reps,
          lambda: ndimage.binary_closing(air, iterations=2))
    timed("classical lung mask with scipy (full resolution)", hu.shape, 1,
          lambda: classical_lung_mask(hu, -320.0, None))

    if a.covflow_grid:
        ours = nib.load(a.covflow_grid).get_fdata()
        body = ours > 0.3  # above about −580 HU on either side of the window: inside the body
        for order in (5, 3, 1):
            ref = window(resize(hu, GRID, order=order, anti_aliasing=True, preserve_range=True))
            d = np.abs(ours - ref) * (HIGH - LOW)
            print(json.dumps({
                "resample error vs skimage": f"order {order}, anti_aliasing",
                "max_hu": float(d.max()), "mean_hu": float(d.mean()),
                "p99_hu": float(np.percentile(d, 99)),
                "mean_hu_in_body": float(d[body].mean()),
            }))


if __name__ == "__main__":
    main()
