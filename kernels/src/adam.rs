//! One Adam update of a parameter tensor in one launch (Kingma & Ba, "Adam: A Method for
//! Stochastic Optimization", ICLR 2015, Algorithm 1, with the bias corrections folded into the
//! step as burn's `Adam` folds them): new first and second moments and the new parameter, each
//! element independent.
//!
//! burn's `Adam` spends thirteen launches per parameter tensor on the same arithmetic (a scalar
//! multiply, an add, a square, a square root, a division…, each its own kernel); the TransUNet
//! has 205 parameter tensors. The reference below is burn's formula term for term, in the same
//! f32 operations and order, so the fused update equals burn's to rounding.

use cubecl::prelude::*;

/// The step's scalars, computed once on the host as burn computes them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamScalars {
    /// The learning rate.
    pub lr: f32,
    /// β₁.
    pub beta_1: f32,
    /// β₂.
    pub beta_2: f32,
    /// `√(1 − β₂ᵗ) / (1 − β₁ᵗ)`.
    pub combined: f32,
    /// `ε · √(1 − β₂ᵗ)`.
    pub epsilon: f32,
}

impl AdamScalars {
    /// The scalars of step `time` (1-based) with burn's arithmetic.
    pub fn new(lr: f64, beta_1: f32, beta_2: f32, epsilon: f32, time: i32) -> Self {
        let bias_correction2_sqrt = (1.0 - beta_2.powi(time)).sqrt();
        Self {
            lr: lr as f32,
            beta_1,
            beta_2,
            combined: bias_correction2_sqrt / (1.0 - beta_1.powi(time)),
            epsilon: epsilon * bias_correction2_sqrt,
        }
    }
}

/// Plain CPU reference: `(parameter, m, v)` after one step; `first` when there are no moments
/// yet (they start at zero).
pub fn adam_reference(
    param: &[f32],
    grad: &[f32],
    m: &[f32],
    v: &[f32],
    s: AdamScalars,
    first: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = param.len();
    let (mut p2, mut m2, mut v2) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    for i in 0..n {
        let g = grad[i];
        let (mi, vi) = if first {
            (g * (1.0 - s.beta_1), (g * g) * (1.0 - s.beta_2))
        } else {
            (
                m[i] * s.beta_1 + g * (1.0 - s.beta_1),
                v[i] * s.beta_2 + (g * g) * (1.0 - s.beta_2),
            )
        };
        let update = (mi * s.combined) / (vi.sqrt() + s.epsilon);
        p2[i] = param[i] - update * s.lr;
        m2[i] = mi;
        v2[i] = vi;
    }
    (p2, m2, v2)
}

/// One unit per element.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn adam_kernel(
    param: &Array<f32>,
    grad: &Array<f32>,
    m: &Array<f32>,
    v: &Array<f32>,
    out_param: &mut Array<f32>,
    out_m: &mut Array<f32>,
    out_v: &mut Array<f32>,
    n: u32,
    lr: f32,
    beta_1: f32,
    beta_2: f32,
    combined: f32,
    epsilon: f32,
    first: u32,
) {
    let i = ABSOLUTE_POS;
    if i < n as usize {
        let g = grad[i];
        let mut mi = g * (1.0 - beta_1);
        let mut vi = (g * g) * (1.0 - beta_2);
        if first == 0 {
            // IEEE addition commutes exactly: the same sums as the reference's.
            mi += m[i] * beta_1;
            vi += v[i] * beta_2;
        }
        let update = (mi * combined) / (f32::sqrt(vi) + epsilon);
        out_param[i] = param[i] - update * lr;
        out_m[i] = mi;
        out_v[i] = vi;
    }
}

/// One Adam step on device buffers of `n` elements: `(parameter, m, v)` handles. `m` and `v` are
/// read only when `first` is false (pass the gradient's handle otherwise).
#[allow(clippy::too_many_arguments)]
pub fn launch_adam<R: Runtime>(
    client: &ComputeClient<R>,
    param: cubecl::server::Handle,
    grad: cubecl::server::Handle,
    m: cubecl::server::Handle,
    v: cubecl::server::Handle,
    n: usize,
    s: AdamScalars,
    first: bool,
) -> (
    cubecl::server::Handle,
    cubecl::server::Handle,
    cubecl::server::Handle,
) {
    let (p2, m2, v2) = (
        client.empty(n * 4),
        client.empty(n * 4),
        client.empty(n * 4),
    );
    let threads = 256;
    adam_kernel::launch::<R>(
        client,
        crate::cube_count_for(n, threads),
        CubeDim::new_1d(threads),
        unsafe { ArrayArg::from_raw_parts(param, n) },
        unsafe { ArrayArg::from_raw_parts(grad, n) },
        unsafe { ArrayArg::from_raw_parts(m, n) },
        unsafe { ArrayArg::from_raw_parts(v, n) },
        unsafe { ArrayArg::from_raw_parts(p2.clone(), n) },
        unsafe { ArrayArg::from_raw_parts(m2.clone(), n) },
        unsafe { ArrayArg::from_raw_parts(v2.clone(), n) },
        n as u32,
        s.lr,
        s.beta_1,
        s.beta_2,
        s.combined,
        s.epsilon,
        u32::from(first),
    );
    (p2, m2, v2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cubecl::wgpu::{WgpuDevice, WgpuRuntime};

    #[test]
    fn wgpu_step_matches_the_reference_on_random_tensors() {
        let client = WgpuRuntime::client(&WgpuDevice::default());
        let up = |v: &[f32]| client.create_from_slice(f32::as_bytes(v));
        let down = |h| f32::from_bytes(&client.read_one_unchecked(h)).to_vec();
        // Sizes below, at and above a cube, and of many cubes.
        for (n, seed) in [(1usize, 1u64), (256, 2), (1000, 3), (70_001, 4)] {
            let scaled = |s: u64, k: f32| -> Vec<f32> {
                crate::random_hu(n, s).iter().map(|x| x * k).collect()
            };
            let param = scaled(seed, 1e-3);
            let grad = scaled(seed + 10, 1e-4);
            let m = scaled(seed + 20, 1e-5);
            let v: Vec<f32> = scaled(seed + 30, 1e-6).iter().map(|x| x.abs()).collect();
            for (time, first) in [(1, true), (7, false)] {
                let s = AdamScalars::new(5e-5, 0.9, 0.999, 1e-5, time);
                let (wp, wm, wv) = adam_reference(&param, &grad, &m, &v, s, first);
                let (p2, m2, v2) =
                    launch_adam(&client, up(&param), up(&grad), up(&m), up(&v), n, s, first);
                for (name, want, got) in [
                    ("param", wp, down(p2)),
                    ("m", wm, down(m2)),
                    ("v", wv, down(v2)),
                ] {
                    let err = want
                        .iter()
                        .zip(&got)
                        .map(|(a, b)| (a - b).abs() / a.abs().max(1e-12))
                        .fold(0.0, f32::max);
                    assert!(
                        err < 1e-5,
                        "n {n}, step {time}: {name} off by {err} (relative)"
                    );
                }
            }
        }
    }
}
