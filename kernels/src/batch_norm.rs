//! Batch normalisation in training mode, fused with the ReLU that follows it (Ioffe & Szegedy,
//! "Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate
//! Shift", ICML 2015, Algorithm 1 and the gradient of §3), forward and backward.
//!
//! burn's `BatchNorm` composes the same arithmetic from about fifteen tensor operations forward
//! (a transposing copy, two means, a square, a subtraction, a division, the running statistics'
//! six scalar operations…) and its autodiff adds about thirty backward, each a kernel launch;
//! the TransUNet has 22 of them. Here a layer is four launches: per-channel statistics (one
//! cube per channel, two passes: mean, then the mean squared deviation, which keeps the biased
//! variance accurate where a one-pass Σx² − (Σx)²/M would cancel), the normalisation, then
//! backward the per-channel sums Σg and Σg·x̂ and the input gradient
//! `dx = γ/σ · (g − Σg/M − x̂·Σg·x̂/M)`, with `g` the output gradient masked by the ReLU.
//!
//! Layout: a contiguous `[N, C, S]` tensor (S: the spatial sizes multiplied); statistics over
//! the M = N·S values of each channel. Variance is biased (divided by M), for the normalisation
//! and the running estimate alike, as burn's `BatchNorm` does.

use cubecl::prelude::*;

/// Units per cube of the per-channel reductions; a power of two for the tree.
const THREADS: u32 = 256;

/// The shape `[N, C, S]` of a batch-normalised tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelLayout {
    /// Batch size N.
    pub batch: usize,
    /// Channels C.
    pub channels: usize,
    /// Spatial elements per channel and sample, S.
    pub spatial: usize,
}

impl ChannelLayout {
    /// All elements, N·C·S.
    pub fn len(&self) -> usize {
        self.batch * self.channels * self.spatial
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values of one channel, N·S: the M of the statistics.
    pub fn per_channel(&self) -> usize {
        self.batch * self.spatial
    }

    fn channel_values<'a>(&self, x: &'a [f32], c: usize) -> impl Iterator<Item = &'a f32> {
        let (cs, s) = (self.channels * self.spatial, self.spatial);
        (0..self.batch).flat_map(move |n| &x[n * cs + c * s..n * cs + (c + 1) * s])
    }
}

/// A layer's batch statistics and its running estimates after this batch.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchStats {
    /// Per-channel mean.
    pub mean: Vec<f32>,
    /// Per-channel biased variance.
    pub var: Vec<f32>,
    /// `running_mean · (1 − momentum) + mean · momentum`.
    pub running_mean: Vec<f32>,
    /// `running_var · (1 − momentum) + var · momentum`.
    pub running_var: Vec<f32>,
}

/// Plain CPU reference of the statistics.
pub fn batch_stats_reference(
    x: &[f32],
    layout: ChannelLayout,
    running_mean: &[f32],
    running_var: &[f32],
    momentum: f32,
) -> BatchStats {
    assert_eq!(x.len(), layout.len(), "x must be [N, C, S]");
    let m = layout.per_channel() as f64;
    let mut s = BatchStats {
        mean: Vec::new(),
        var: Vec::new(),
        running_mean: Vec::new(),
        running_var: Vec::new(),
    };
    for c in 0..layout.channels {
        // Sums in f64: the reference is the accurate value the kernel's tree is held to.
        let mean = (layout
            .channel_values(x, c)
            .map(|&v| f64::from(v))
            .sum::<f64>()
            / m) as f32;
        let var = (layout
            .channel_values(x, c)
            .map(|&v| f64::from(v - mean) * f64::from(v - mean))
            .sum::<f64>()
            / m) as f32;
        s.mean.push(mean);
        s.var.push(var);
        s.running_mean
            .push(running_mean[c] * (1.0 - momentum) + mean * momentum);
        s.running_var
            .push(running_var[c] * (1.0 - momentum) + var * momentum);
    }
    s
}

/// Plain CPU reference of the normalisation with the channel's `mean` and `var` (the batch's
/// in training, the running estimates in inference): `(x − μ) / √(σ² + ε) · γ + β`, then the
/// ReLU where `relu`.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_apply_reference(
    x: &[f32],
    layout: ChannelLayout,
    mean: &[f32],
    var: &[f32],
    gamma: &[f32],
    beta: &[f32],
    epsilon: f32,
    relu: bool,
) -> Vec<f32> {
    assert_eq!(x.len(), layout.len(), "x must be [N, C, S]");
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = (i / layout.spatial) % layout.channels;
            let y = (v - mean[c]) / (var[c] + epsilon).sqrt() * gamma[c] + beta[c];
            if relu { y.max(0.0) } else { y }
        })
        .collect()
}

/// The gradients of the fused layer: input, γ and β.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNormGrads {
    /// ∂L/∂x, `[N, C, S]`.
    pub x: Vec<f32>,
    /// ∂L/∂γ per channel: Σ g·x̂.
    pub gamma: Vec<f32>,
    /// ∂L/∂β per channel: Σ g.
    pub beta: Vec<f32>,
}

/// Plain CPU reference of the backward pass in training mode, given the forward's input `x`,
/// output `y` (for the ReLU's mask), batch statistics and the output gradient `grad`.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward_reference(
    x: &[f32],
    y: &[f32],
    grad: &[f32],
    layout: ChannelLayout,
    mean: &[f32],
    var: &[f32],
    gamma: &[f32],
    epsilon: f32,
    relu: bool,
) -> BatchNormGrads {
    assert!(
        x.len() == layout.len() && y.len() == x.len() && grad.len() == x.len(),
        "x, y and grad must be [N, C, S]"
    );
    let m = layout.per_channel() as f32;
    let g = |i: usize| {
        if relu && y[i] <= 0.0 { 0.0 } else { grad[i] }
    };
    let (cs, s) = (layout.channels * layout.spatial, layout.spatial);
    let index = |n: usize, c: usize, k: usize| n * cs + c * s + k;
    let mut out = BatchNormGrads {
        x: vec![0.0; x.len()],
        gamma: vec![0.0; layout.channels],
        beta: vec![0.0; layout.channels],
    };
    for c in 0..layout.channels {
        let inv_std = 1.0 / (var[c] + epsilon).sqrt();
        let (mut sum_g, mut sum_gx) = (0.0f64, 0.0f64);
        for n in 0..layout.batch {
            for k in 0..s {
                let i = index(n, c, k);
                sum_g += f64::from(g(i));
                sum_gx += f64::from(g(i) * ((x[i] - mean[c]) * inv_std));
            }
        }
        let (sum_g, sum_gx) = (sum_g as f32, sum_gx as f32);
        out.beta[c] = sum_g;
        out.gamma[c] = sum_gx;
        for n in 0..layout.batch {
            for k in 0..s {
                let i = index(n, c, k);
                let xhat = (x[i] - mean[c]) * inv_std;
                out.x[i] = gamma[c] * inv_std * (g(i) - sum_g / m - xhat * sum_gx / m);
            }
        }
    }
    out
}

/// One cube per channel: the channel's mean and biased variance, two passes over its N·S
/// values, and the running estimates after this batch.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn batch_stats_kernel(
    x: &Array<f32>,
    running_mean: &Array<f32>,
    running_var: &Array<f32>,
    mean_out: &mut Array<f32>,
    var_out: &mut Array<f32>,
    running_mean_out: &mut Array<f32>,
    running_var_out: &mut Array<f32>,
    batch: u32,
    channels: u32,
    spatial: u32,
    momentum: f32,
) {
    let c = CUBE_POS as u32;
    let unit = UNIT_POS as usize;
    let count = (batch * spatial) as f32;
    let mut sums = SharedMemory::<f32>::new(THREADS as usize);
    let mut squares = SharedMemory::<f32>::new(THREADS as usize);

    let mut a = f32::new(0.0);
    for n in 0..batch {
        let base = (n * channels + c) * spatial;
        let mut k = UNIT_POS;
        while k < spatial {
            a += x[(base + k) as usize];
            k += THREADS;
        }
    }
    sums[unit] = a;
    sync_cube();
    crate::pseudo_mask::tree(&mut sums, 0u32);
    let mean = sums[0usize] / count;

    let mut b = f32::new(0.0);
    for n in 0..batch {
        let base = (n * channels + c) * spatial;
        let mut k = UNIT_POS;
        while k < spatial {
            let d = x[(base + k) as usize] - mean;
            b += d * d;
            k += THREADS;
        }
    }
    squares[unit] = b;
    sync_cube();
    crate::pseudo_mask::tree(&mut squares, 0u32);
    if unit == 0 {
        let var = squares[0usize] / count;
        let ci = c as usize;
        mean_out[ci] = mean;
        var_out[ci] = var;
        running_mean_out[ci] = running_mean[ci] * (1.0 - momentum) + mean * momentum;
        running_var_out[ci] = running_var[ci] * (1.0 - momentum) + var * momentum;
    }
}

/// One unit per element: the normalisation (and ReLU).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_apply_kernel(
    x: &Array<f32>,
    mean: &Array<f32>,
    var: &Array<f32>,
    gamma: &Array<f32>,
    beta: &Array<f32>,
    y: &mut Array<f32>,
    n: u32,
    channels: u32,
    spatial: u32,
    epsilon: f32,
    #[comptime] relu: bool,
) {
    let i = ABSOLUTE_POS;
    if i < n as usize {
        let c = ((i as u32 / spatial) % channels) as usize;
        let v = (x[i] - mean[c]) / f32::sqrt(var[c] + epsilon) * gamma[c] + beta[c];
        if relu {
            y[i] = f32::max(v, 0.0);
        } else {
            y[i] = v;
        }
    }
}

/// The gradient that reaches the normalisation's output: `grad`, zero where the ReLU cut.
#[cube]
fn masked(grad: f32, y: f32, #[comptime] relu: bool) -> f32 {
    let mut g = grad;
    if relu && y <= 0.0 {
        g = 0.0;
    }
    g
}

/// One cube per channel: `dbeta[c] = Σ g`, `dgamma[c] = Σ g·x̂`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_grad_sums_kernel(
    x: &Array<f32>,
    y: &Array<f32>,
    grad: &Array<f32>,
    mean: &Array<f32>,
    var: &Array<f32>,
    dgamma: &mut Array<f32>,
    dbeta: &mut Array<f32>,
    batch: u32,
    channels: u32,
    spatial: u32,
    epsilon: f32,
    #[comptime] relu: bool,
) {
    let c = CUBE_POS as u32;
    let ci = c as usize;
    let unit = UNIT_POS as usize;
    let mu = mean[ci];
    let inv_std = 1.0 / f32::sqrt(var[ci] + epsilon);
    let mut sum_g = SharedMemory::<f32>::new(THREADS as usize);
    let mut sum_gx = SharedMemory::<f32>::new(THREADS as usize);
    let mut a = f32::new(0.0);
    let mut b = f32::new(0.0);
    for n in 0..batch {
        let base = (n * channels + c) * spatial;
        let mut k = UNIT_POS;
        while k < spatial {
            let i = (base + k) as usize;
            let g = masked(grad[i], y[i], relu);
            a += g;
            b += g * ((x[i] - mu) * inv_std);
            k += THREADS;
        }
    }
    sum_g[unit] = a;
    sum_gx[unit] = b;
    sync_cube();
    crate::pseudo_mask::tree(&mut sum_g, 0u32);
    crate::pseudo_mask::tree(&mut sum_gx, 0u32);
    if unit == 0 {
        dbeta[ci] = sum_g[0usize];
        dgamma[ci] = sum_gx[0usize];
    }
}

/// One unit per element: the input gradient from the channel sums.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_grad_input_kernel(
    x: &Array<f32>,
    y: &Array<f32>,
    grad: &Array<f32>,
    mean: &Array<f32>,
    var: &Array<f32>,
    gamma: &Array<f32>,
    dgamma: &Array<f32>,
    dbeta: &Array<f32>,
    dx: &mut Array<f32>,
    n: u32,
    channels: u32,
    spatial: u32,
    per_channel: f32,
    epsilon: f32,
    #[comptime] relu: bool,
) {
    let i = ABSOLUTE_POS;
    if i < n as usize {
        let c = ((i as u32 / spatial) % channels) as usize;
        let inv_std = 1.0 / f32::sqrt(var[c] + epsilon);
        let xhat = (x[i] - mean[c]) * inv_std;
        let g = masked(grad[i], y[i], relu);
        dx[i] = gamma[c] * inv_std * (g - dbeta[c] / per_channel - xhat * dgamma[c] / per_channel);
    }
}

/// Device buffers of one channel vector each.
pub struct ChannelBuffers {
    /// Per-channel mean (batch or running).
    pub mean: cubecl::server::Handle,
    /// Per-channel variance (batch or running).
    pub var: cubecl::server::Handle,
}

/// The statistics of `x` (`[N, C, S]` on the device): `(batch, running after this batch)`.
pub fn launch_batch_stats<R: Runtime>(
    client: &ComputeClient<R>,
    x: cubecl::server::Handle,
    layout: ChannelLayout,
    running: ChannelBuffers,
    momentum: f32,
) -> (ChannelBuffers, ChannelBuffers) {
    let c = layout.channels;
    let out = || client.empty(c * 4);
    let (mean, var, rm, rv) = (out(), out(), out(), out());
    batch_stats_kernel::launch::<R>(
        client,
        CubeCount::Static(c as u32, 1, 1),
        CubeDim::new_1d(THREADS),
        unsafe { ArrayArg::from_raw_parts(x, layout.len()) },
        unsafe { ArrayArg::from_raw_parts(running.mean, c) },
        unsafe { ArrayArg::from_raw_parts(running.var, c) },
        unsafe { ArrayArg::from_raw_parts(mean.clone(), c) },
        unsafe { ArrayArg::from_raw_parts(var.clone(), c) },
        unsafe { ArrayArg::from_raw_parts(rm.clone(), c) },
        unsafe { ArrayArg::from_raw_parts(rv.clone(), c) },
        layout.batch as u32,
        c as u32,
        layout.spatial as u32,
        momentum,
    );
    (
        ChannelBuffers { mean, var },
        ChannelBuffers { mean: rm, var: rv },
    )
}

/// The affine parameters of a layer on the device.
pub struct Affine {
    /// γ, `[C]`.
    pub gamma: cubecl::server::Handle,
    /// β, `[C]`.
    pub beta: cubecl::server::Handle,
}

/// The normalised (and rectified) `x` with the given statistics: a new `[N, C, S]` buffer.
pub fn launch_batch_norm_apply<R: Runtime>(
    client: &ComputeClient<R>,
    x: cubecl::server::Handle,
    layout: ChannelLayout,
    stats: &ChannelBuffers,
    affine: &Affine,
    epsilon: f32,
    relu: bool,
) -> cubecl::server::Handle {
    let (n, c) = (layout.len(), layout.channels);
    let y = client.empty(n * 4);
    let threads = 256;
    batch_norm_apply_kernel::launch::<R>(
        client,
        crate::cube_count_for(n, threads),
        CubeDim::new_1d(threads),
        unsafe { ArrayArg::from_raw_parts(x, n) },
        unsafe { ArrayArg::from_raw_parts(stats.mean.clone(), c) },
        unsafe { ArrayArg::from_raw_parts(stats.var.clone(), c) },
        unsafe { ArrayArg::from_raw_parts(affine.gamma.clone(), c) },
        unsafe { ArrayArg::from_raw_parts(affine.beta.clone(), c) },
        unsafe { ArrayArg::from_raw_parts(y.clone(), n) },
        n as u32,
        c as u32,
        layout.spatial as u32,
        epsilon,
        relu,
    );
    y
}

/// The forward pass's tensors that the backward pass reads.
pub struct SavedForward {
    /// The input x.
    pub x: cubecl::server::Handle,
    /// The output y (its sign is the ReLU's mask).
    pub y: cubecl::server::Handle,
    /// The batch statistics.
    pub stats: ChannelBuffers,
    /// γ.
    pub gamma: cubecl::server::Handle,
}

/// The backward pass: `(dx, dgamma, dbeta)` buffers for the output gradient `grad`.
pub fn launch_batch_norm_backward<R: Runtime>(
    client: &ComputeClient<R>,
    saved: &SavedForward,
    grad: cubecl::server::Handle,
    layout: ChannelLayout,
    epsilon: f32,
    relu: bool,
) -> (
    cubecl::server::Handle,
    cubecl::server::Handle,
    cubecl::server::Handle,
) {
    let (n, c) = (layout.len(), layout.channels);
    let arr = |h: &cubecl::server::Handle, len: usize| unsafe {
        ArrayArg::from_raw_parts(h.clone(), len)
    };
    let (dgamma, dbeta) = (client.empty(c * 4), client.empty(c * 4));
    batch_norm_grad_sums_kernel::launch::<R>(
        client,
        CubeCount::Static(c as u32, 1, 1),
        CubeDim::new_1d(THREADS),
        arr(&saved.x, n),
        arr(&saved.y, n),
        arr(&grad, n),
        arr(&saved.stats.mean, c),
        arr(&saved.stats.var, c),
        arr(&dgamma, c),
        arr(&dbeta, c),
        layout.batch as u32,
        c as u32,
        layout.spatial as u32,
        epsilon,
        relu,
    );
    let dx = client.empty(n * 4);
    let threads = 256;
    batch_norm_grad_input_kernel::launch::<R>(
        client,
        crate::cube_count_for(n, threads),
        CubeDim::new_1d(threads),
        arr(&saved.x, n),
        arr(&saved.y, n),
        arr(&grad, n),
        arr(&saved.stats.mean, c),
        arr(&saved.stats.var, c),
        arr(&saved.gamma, c),
        arr(&dgamma, c),
        arr(&dbeta, c),
        arr(&dx, n),
        n as u32,
        c as u32,
        layout.spatial as u32,
        layout.per_channel() as f32,
        epsilon,
        relu,
    );
    (dx, dgamma, dbeta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cubecl::wgpu::{WgpuDevice, WgpuRuntime};

    fn relative_error(want: &[f32], got: &[f32]) -> f32 {
        let scale = want.iter().map(|v| v.abs()).fold(1e-6, f32::max);
        crate::max_abs_diff(want, got) / scale
    }

    #[test]
    fn wgpu_forward_and_backward_match_the_reference_on_random_tensors() {
        let client = WgpuRuntime::client(&WgpuDevice::default());
        let up = |v: &[f32]| client.create_from_slice(f32::as_bytes(v));
        let down = |h| f32::from_bytes(&client.read_one_unchecked(h)).to_vec();
        // A channel smaller than a cube, one of many cubes' worth, a single sample, odd sizes;
        // values offset far from zero so that a one-pass variance would show its cancellation.
        for (layout, seed, relu) in [
            (
                ChannelLayout {
                    batch: 2,
                    channels: 3,
                    spatial: 7,
                },
                1u64,
                true,
            ),
            (
                ChannelLayout {
                    batch: 2,
                    channels: 5,
                    spatial: 1024,
                },
                2,
                false,
            ),
            (
                ChannelLayout {
                    batch: 1,
                    channels: 16,
                    spatial: 300,
                },
                3,
                true,
            ),
            (
                ChannelLayout {
                    batch: 3,
                    channels: 2,
                    spatial: 4097,
                },
                4,
                true,
            ),
        ] {
            let (n, c) = (layout.len(), layout.channels);
            let x: Vec<f32> = crate::random_hu(n, seed)
                .iter()
                .map(|v| v / 100.0 + 40.0)
                .collect();
            let grad: Vec<f32> = crate::random_hu(n, seed + 10)
                .iter()
                .map(|v| v / 1e3)
                .collect();
            let params = |s: u64, k: f32, o: f32| -> Vec<f32> {
                crate::random_hu(c, s).iter().map(|v| v * k + o).collect()
            };
            let (rm, rv) = (params(seed + 20, 1e-3, 0.0), params(seed + 30, 1e-4, 1.0));
            let (gamma, beta) = (params(seed + 40, 1e-3, 1.0), params(seed + 50, 1e-3, 0.0));
            let (eps, momentum) = (1e-5, 0.1);

            let want = batch_stats_reference(&x, layout, &rm, &rv, momentum);
            let running = ChannelBuffers {
                mean: up(&rm),
                var: up(&rv),
            };
            let (batch, next) = launch_batch_stats(&client, up(&x), layout, running, momentum);
            let affine = Affine {
                gamma: up(&gamma),
                beta: up(&beta),
            };
            let y = launch_batch_norm_apply(&client, up(&x), layout, &batch, &affine, eps, relu);
            let want_y = batch_norm_apply_reference(
                &x, layout, &want.mean, &want.var, &gamma, &beta, eps, relu,
            );
            let got_y = down(y.clone());
            let want_g = batch_norm_backward_reference(
                &x, &want_y, &grad, layout, &want.mean, &want.var, &gamma, eps, relu,
            );
            let saved = SavedForward {
                x: up(&x),
                y,
                stats: batch,
                gamma: affine.gamma,
            };
            let (dx, dgamma, dbeta) =
                launch_batch_norm_backward(&client, &saved, up(&grad), layout, eps, relu);
            for (name, want, got, tol) in [
                (
                    "mean",
                    want.mean.clone(),
                    down(saved.stats.mean.clone()),
                    1e-6,
                ),
                ("var", want.var.clone(), down(saved.stats.var.clone()), 1e-5),
                ("running mean", want.running_mean, down(next.mean), 1e-6),
                ("running var", want.running_var, down(next.var), 1e-6),
                ("y", want_y, got_y, 1e-5),
                ("dx", want_g.x, down(dx), 1e-5),
                ("dgamma", want_g.gamma, down(dgamma), 1e-5),
                ("dbeta", want_g.beta, down(dbeta), 1e-5),
            ] {
                let err = relative_error(&want, &got);
                assert!(
                    err < tol,
                    "{layout:?}: {name} off by {err} (relative to its largest)"
                );
            }
        }
    }

    #[test]
    fn reference_gradient_matches_finite_differences() {
        // The backward reference is what the kernels are held to, so it is itself checked
        // against the forward reference's central differences (f32 at a coarse step: a loose
        // tolerance, but a wrong or missing term is off by far more).
        let layout = ChannelLayout {
            batch: 2,
            channels: 2,
            spatial: 5,
        };
        let n = layout.len();
        let x: Vec<f32> = crate::random_hu(n, 7).iter().map(|v| v / 1000.0).collect();
        let w: Vec<f32> = crate::random_hu(n, 8).iter().map(|v| v / 3000.0).collect();
        let (gamma, beta) = (vec![1.3, 0.7], vec![0.1, -0.2]);
        let loss = |x: &[f32]| -> f32 {
            let s = batch_stats_reference(x, layout, &[0.0; 2], &[1.0; 2], 0.1);
            let y =
                batch_norm_apply_reference(x, layout, &s.mean, &s.var, &gamma, &beta, 1e-5, true);
            y.iter().zip(&w).map(|(a, b)| a * b).sum()
        };
        let s = batch_stats_reference(&x, layout, &[0.0; 2], &[1.0; 2], 0.1);
        let y = batch_norm_apply_reference(&x, layout, &s.mean, &s.var, &gamma, &beta, 1e-5, true);
        let g =
            batch_norm_backward_reference(&x, &y, &w, layout, &s.mean, &s.var, &gamma, 1e-5, true);
        let h = 1e-3;
        for i in 0..n {
            let (mut up, mut down) = (x.clone(), x.clone());
            up[i] += h;
            down[i] -= h;
            let numeric = (loss(&up) - loss(&down)) / (2.0 * h);
            assert!(
                (numeric - g.x[i]).abs() < 2e-3,
                "dx[{i}]: finite difference {numeric}, reference {}",
                g.x[i]
            );
        }
    }
}
