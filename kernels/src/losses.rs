//! The segmenter's two per-pixel losses in one pass: the MSE between σ(logit) and the target,
//! and the sensitivity-enhanced BCE `BCE(p, t)·(1 + β·(1 − σ(p))·t)` (docs/method.md, stage 7),
//! forward and backward.
//!
//! Composed from tensor operations, the two losses cost about twenty launches forward and as many
//! backward, each reading and writing the whole batch. Here the forward is one launch (each
//! unit accumulates both losses over a grid-stride range; each cube reduces its units by a tree
//! in shared memory and writes two partial sums) and the backward one elementwise launch:
//!
//! `∂mse/∂p = 2(σ − t)·σ(1 − σ) / N`,
//! `∂sens/∂p = ((σ − t)·w − bce·β·t·σ(1 − σ)) / N`, with `w = 1 + β(1 − σ)t`
//!
//! (the weight is differentiated too, as autodiff of the composed form does). The partial sums
//! are added in cube order, so the result does not depend on scheduling.

use cubecl::prelude::*;

/// Units per cube; a power of two for the tree reduction.
const THREADS: u32 = 256;
/// At most this many cubes (partial sums) however large the batch.
const MAX_CUBES: usize = 1024;
/// Elements each unit adds before the tree: fewer cubes, so fewer barrier-bound trees.
const PER_UNIT: usize = 4;

fn sigmoid(p: f64) -> f64 {
    1.0 / (1.0 + (-p).exp())
}

/// The numerically stable BCE with logits.
fn bce(p: f64, t: f64) -> f64 {
    p.max(0.0) - p * t + (-p.abs()).exp().ln_1p()
}

/// Plain CPU reference: `(mse, sensitivity)` means over all elements, in f64.
pub fn pixel_losses_reference(logits: &[f32], target: &[f32], beta: f32) -> (f64, f64) {
    assert_eq!(logits.len(), target.len(), "one target per logit");
    let n = logits.len().max(1) as f64;
    let (mut mse, mut sens) = (0.0, 0.0);
    for (&p, &t) in logits.iter().zip(target) {
        let (p, t) = (f64::from(p), f64::from(t));
        let s = sigmoid(p);
        mse += (s - t) * (s - t);
        sens += bce(p, t) * (1.0 + f64::from(beta) * (1.0 - s) * t);
    }
    (mse / n, sens / n)
}

/// Plain CPU reference of the backward: the gradient for each logit given the gradients
/// `[g_mse, g_sensitivity]` of the two means.
pub fn pixel_losses_backward_reference(
    logits: &[f32],
    target: &[f32],
    grad: [f32; 2],
    beta: f32,
) -> Vec<f32> {
    let n = logits.len().max(1) as f64;
    let beta = f64::from(beta);
    logits
        .iter()
        .zip(target)
        .map(|(&p, &t)| {
            let (p, t) = (f64::from(p), f64::from(t));
            let s = sigmoid(p);
            let ds = s * (1.0 - s);
            let w = 1.0 + beta * (1.0 - s) * t;
            let d_mse = 2.0 * (s - t) * ds;
            let d_sens = (s - t) * w - bce(p, t) * beta * t * ds;
            ((f64::from(grad[0]) * d_mse + f64::from(grad[1]) * d_sens) / n) as f32
        })
        .collect()
}

#[cube]
fn sigmoid_f32(p: f32) -> f32 {
    1.0 / (1.0 + f32::exp(-p))
}

#[cube]
fn bce_f32(p: f32, t: f32) -> f32 {
    f32::max(p, 0.0) - p * t + f32::log1p(f32::exp(-f32::abs(p)))
}

/// Each cube writes its units' sums of the squared error and of the weighted BCE to
/// `partials[2·cube]` and `partials[2·cube + 1]`.
#[cube(launch)]
pub fn pixel_losses_kernel(
    logits: &Array<f32>,
    target: &Array<f32>,
    partials: &mut Array<f32>,
    beta: f32,
    n: u32,
    stride: u32,
) {
    let unit = UNIT_POS as usize;
    let mut mse = SharedMemory::<f32>::new(THREADS as usize);
    let mut sens = SharedMemory::<f32>::new(THREADS as usize);
    let mut a = 0.0f32;
    let mut b = 0.0f32;
    let mut i = CUBE_POS as u32 * THREADS + UNIT_POS;
    while i < n {
        let p = logits[i as usize];
        let t = target[i as usize];
        let s = sigmoid_f32(p);
        a += (s - t) * (s - t);
        b += bce_f32(p, t) * (1.0 + beta * (1.0 - s) * t);
        i += stride;
    }
    mse[unit] = a;
    sens[unit] = b;
    sync_cube();
    let mut half = (CUBE_DIM / 2) as usize;
    while half > 0 {
        if unit < half {
            mse[unit] = mse[unit] + mse[unit + half];
            sens[unit] = sens[unit] + sens[unit + half];
        }
        sync_cube();
        half /= 2;
    }
    if unit == 0 {
        let o = 2 * CUBE_POS;
        partials[o] = mse[0usize];
        partials[o + 1] = sens[0usize];
    }
}

/// `out[i]` = the gradient for logit `i`, given `grad = [g_mse, g_sensitivity]` of the means.
#[cube(launch)]
pub fn pixel_losses_backward_kernel(
    logits: &Array<f32>,
    target: &Array<f32>,
    grad: &Array<f32>,
    out: &mut Array<f32>,
    beta: f32,
    n: u32,
) {
    let i = ABSOLUTE_POS;
    if i < n as usize {
        let p = logits[i];
        let t = target[i];
        let s = sigmoid_f32(p);
        let ds = s * (1.0 - s);
        let w = 1.0 + beta * (1.0 - s) * t;
        let d_mse = 2.0 * (s - t) * ds;
        let d_sens = (s - t) * w - bce_f32(p, t) * beta * t * ds;
        out[i] = (grad[0usize] * d_mse + grad[1usize] * d_sens) / f32::cast_from(n);
    }
}

/// How many cubes (pairs of partial sums) [`launch_pixel_losses`] writes for `n` elements.
pub fn pixel_loss_cubes(n: usize) -> usize {
    n.div_ceil(THREADS as usize * PER_UNIT).clamp(1, MAX_CUBES)
}

/// The forward on device buffers of `n` logits and targets: a handle to
/// `[pixel_loss_cubes(n), 2]` partial sums (MSE, weighted BCE), to be added and divided by `n`.
pub fn launch_pixel_losses<R: Runtime>(
    client: &ComputeClient<R>,
    logits: cubecl::server::Handle,
    target: cubecl::server::Handle,
    n: usize,
    beta: f32,
) -> cubecl::server::Handle {
    let cubes = pixel_loss_cubes(n);
    let partials = client.empty(2 * cubes * 4);
    pixel_losses_kernel::launch::<R>(
        client,
        CubeCount::Static(cubes as u32, 1, 1),
        CubeDim::new_1d(THREADS),
        unsafe { ArrayArg::from_raw_parts(logits, n) },
        unsafe { ArrayArg::from_raw_parts(target, n) },
        unsafe { ArrayArg::from_raw_parts(partials.clone(), 2 * cubes) },
        beta,
        n as u32,
        (cubes as u32) * THREADS,
    );
    partials
}

/// The backward on device buffers: a handle to the `n` logits' gradients, given the handle of
/// `[g_mse, g_sensitivity]`.
pub fn launch_pixel_losses_backward<R: Runtime>(
    client: &ComputeClient<R>,
    logits: cubecl::server::Handle,
    target: cubecl::server::Handle,
    grad: cubecl::server::Handle,
    n: usize,
    beta: f32,
) -> cubecl::server::Handle {
    let out = client.empty(n.max(1) * 4);
    pixel_losses_backward_kernel::launch::<R>(
        client,
        crate::cube_count_for(n, THREADS),
        CubeDim::new_1d(THREADS),
        unsafe { ArrayArg::from_raw_parts(logits, n) },
        unsafe { ArrayArg::from_raw_parts(target, n) },
        unsafe { ArrayArg::from_raw_parts(grad, 2) },
        unsafe { ArrayArg::from_raw_parts(out.clone(), n) },
        beta,
        n as u32,
    );
    out
}

/// [`launch_pixel_losses`] on host slices: `(mse, sensitivity)`.
pub fn pixel_losses<R: Runtime>(
    client: &ComputeClient<R>,
    logits: &[f32],
    target: &[f32],
    beta: f32,
) -> (f64, f64) {
    assert_eq!(logits.len(), target.len(), "one target per logit");
    let n = logits.len();
    let up = |v: &[f32]| client.create_from_slice(f32::as_bytes(v));
    let partials = launch_pixel_losses(client, up(logits), up(target), n, beta);
    let partials = f32::from_bytes(&client.read_one_unchecked(partials)).to_vec();
    let (mut mse, mut sens) = (0.0f64, 0.0f64);
    for pair in partials.chunks(2) {
        mse += f64::from(pair[0]);
        sens += f64::from(pair[1]);
    }
    let n = n.max(1) as f64;
    (mse / n, sens / n)
}

/// [`launch_pixel_losses_backward`] on host slices.
pub fn pixel_losses_backward<R: Runtime>(
    client: &ComputeClient<R>,
    logits: &[f32],
    target: &[f32],
    grad: [f32; 2],
    beta: f32,
) -> Vec<f32> {
    let n = logits.len();
    let up = |v: &[f32]| client.create_from_slice(f32::as_bytes(v));
    let out = launch_pixel_losses_backward(client, up(logits), up(target), up(&grad), n, beta);
    f32::from_bytes(&client.read_one_unchecked(out))[..n].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cubecl::wgpu::{WgpuDevice, WgpuRuntime};

    /// Logits over ±12 (saturated sigmoids included) and soft targets in [0, 1], a third 0.
    fn batch(n: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let logits = crate::random_hu(n, seed)
            .iter()
            .map(|v| (v + 548.0) / 125.0)
            .collect();
        let target = crate::random_hu(n, seed + 1)
            .iter()
            .map(|v| ((v + 2048.0) / 2000.0 - 0.5).clamp(0.0, 1.0))
            .collect();
        (logits, target)
    }

    #[test]
    fn wgpu_losses_match_the_cpu_reference_on_random_batches() {
        let client = WgpuRuntime::client(&WgpuDevice::default());
        // Fewer elements than a cube, not a multiple of it, and more than MAX_CUBES cubes hold.
        for (n, seed) in [
            (37, 1),
            (5000, 2),
            (MAX_CUBES * THREADS as usize * PER_UNIT + 5, 3),
        ] {
            let (p, t) = batch(n, seed);
            let (want_mse, want_sens) = pixel_losses_reference(&p, &t, 2.0);
            let (mse, sens) = pixel_losses(&client, &p, &t, 2.0);
            assert!(
                (mse - want_mse).abs() < 1e-5 * want_mse.max(1e-3),
                "{n}: mse {mse} vs {want_mse}"
            );
            assert!(
                (sens - want_sens).abs() < 1e-5 * want_sens.max(1e-3),
                "{n}: sensitivity {sens} vs {want_sens}"
            );
            let grad = [0.7, -1.3];
            let want = pixel_losses_backward_reference(&p, &t, grad, 2.0);
            let got = pixel_losses_backward(&client, &p, &t, grad, 2.0);
            let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let err = crate::max_abs_diff(&want, &got);
            assert!(
                err <= 1e-5 * scale,
                "{n}: gradient off by {err} (scale {scale})"
            );
        }
    }

    #[test]
    fn the_backward_reference_is_the_derivative_of_the_forward() {
        let (p, t) = batch(64, 9);
        let grad = [1.0, 1.0];
        let g = pixel_losses_backward_reference(&p, &t, grad, 2.0);
        let total = |p: &[f32]| {
            let (m, s) = pixel_losses_reference(p, &t, 2.0);
            m + s
        };
        for i in [0, 17, 63] {
            let h = 1e-2;
            let (mut up, mut down) = (p.clone(), p.clone());
            up[i] += h;
            down[i] -= h;
            // The step as f32 stored it.
            let numeric = (total(&up) - total(&down)) / f64::from(up[i] - down[i]);
            assert!(
                (numeric - f64::from(g[i])).abs() < 1e-4 * (1e-3 + numeric.abs()) + 1e-7,
                "logit {i}: numeric {numeric} vs {}",
                g[i]
            );
        }
    }
}
