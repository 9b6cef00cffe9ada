//! The 3D GAN's convolutions on the host (the CPU backend): stride-1 3-D convolution with a
//! cubic kernel and its two gradients, and the kernel-2 stride-2 transposed convolution of the
//! generator's decoder with its two gradients.
//!
//! A convolution unfolds a block of whole output depth planes into columns (rows ordered
//! `(c, dz, dy, dx)`, the weight's own `[O, C, k, k, k]` order, so the weight is read in place)
//! and multiplies: `y[n][:, block] = W · columns`. Blocks are sized so the columns stay near
//! 16 MiB whatever the volume: the whole columns of the reference generator's second
//! convolution would be 2.5 GB at batch 5. The columns of one block are copied row by row in
//! parallel; the product runs on all cores inside `sgemm` (see [`crate::gemm`]).
//!
//! The input gradient is, where the input has fewer channels than the output, the columns'
//! gradient `Wᵀ · grad` folded back onto the input; otherwise itself a convolution: of the
//! output's gradient, with the kernel flipped in space and its channel axes swapped, and
//! padding `k − 1 − p` ("full" where the forward is `valid`). Each form's columns have the
//! smaller side's channels times `k³` rows. The weight gradient sums `grad[n][:, block] · columnsᵀ` over blocks
//! in a fixed order. Every sum runs in an order fixed by the geometry alone, so results do not
//! depend on the machine's thread count.

use rayon::prelude::*;

use crate::gemm::{Mat, gemm, gemm_strided};

/// Columns per block, in values (16 MiB of `f32`; 16 KiB in tests, so they cross blocks).
const BLOCK_VALUES: usize = if cfg!(test) { 1 << 12 } else { 1 << 22 };

/// A stride-1 3-D convolution with a cubic kernel and equal zero padding on every side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv3dGeometry {
    /// `[N, C, D, H, W]` of the input.
    pub input: [usize; 5],
    /// Output channels O.
    pub out_channels: usize,
    /// The kernel's side k.
    pub kernel: usize,
    /// Zero padding p on each side of each spatial axis.
    pub padding: usize,
}

impl Conv3dGeometry {
    /// `[Do, Ho, Wo]`, each `len + 2p − k + 1`.
    pub fn output_size(&self) -> [usize; 3] {
        let [_, _, d, h, w] = self.input;
        let out = |len: usize| len + 2 * self.padding + 1 - self.kernel;
        [out(d), out(h), out(w)]
    }

    /// `[N, O, Do, Ho, Wo]`.
    pub fn output_shape(&self) -> [usize; 5] {
        let [d, h, w] = self.output_size();
        [self.input[0], self.out_channels, d, h, w]
    }

    /// `[O, C, k, k, k]`.
    pub fn weight_shape(&self) -> [usize; 5] {
        let k = self.kernel;
        [self.out_channels, self.input[1], k, k, k]
    }

    /// Rows of the columns: `C · k³`.
    fn rows(&self) -> usize {
        self.input[1] * self.kernel.pow(3)
    }

    /// Whether the convolution is a plain product over channels (1 × 1 × 1, no padding).
    fn pointwise(&self) -> bool {
        self.kernel == 1 && self.padding == 0
    }

    /// The convolution that maps the output's gradient to the input's.
    fn adjoint(&self) -> Self {
        let [n, c, ..] = self.input;
        let [d, h, w] = self.output_size();
        Self {
            input: [n, self.out_channels, d, h, w],
            out_channels: c,
            kernel: self.kernel,
            padding: self.kernel - 1 - self.padding,
        }
    }

    /// Output depth planes per block of columns.
    fn planes_per_block(&self) -> usize {
        let [d, h, w] = self.output_size();
        (BLOCK_VALUES / (self.rows() * h * w).max(1)).clamp(1, d.max(1))
    }

    fn check(&self, what: &str, len: usize, shape: [usize; 5]) {
        assert!(
            self.kernel >= 1 && self.padding < self.kernel,
            "{self:?}: padding must be below the kernel side"
        );
        assert_eq!(
            len,
            shape.iter().product::<usize>(),
            "{what} must be {shape:?} for {self:?}"
        );
    }
}

/// The range of output positions `o` whose input position `o + d − p` lies in `0..len`.
fn valid(out: usize, len: usize, d: usize, p: usize) -> std::ops::Range<usize> {
    let first = p.saturating_sub(d).min(out);
    let end = (len + p).saturating_sub(d).min(out);
    first.min(end)..end
}

/// The columns of output planes `planes` of one volume `x: [C, D, H, W]` into `out`
/// (`C·k³ × planes.len()·Ho·Wo`, overwritten).
fn unfold_block(x: &[f32], g: &Conv3dGeometry, planes: std::ops::Range<usize>, out: &mut [f32]) {
    let [_, _, d, h, w] = g.input;
    let [_, ho, wo] = g.output_size();
    let (k, p) = (g.kernel, g.padding);
    let row_len = planes.len() * ho * wo;
    out.par_chunks_mut(row_len)
        .with_min_len(8)
        .enumerate()
        .for_each(|(r, row)| {
            let (c, dz, dy, dx) = (r / (k * k * k), r / (k * k) % k, r / k % k, r % k);
            let volume = &x[c * d * h * w..][..d * h * w];
            let (ys, xs) = (valid(ho, h, dy, p), valid(wo, w, dx, p));
            for (i, oz) in planes.clone().enumerate() {
                let plane_out = &mut row[i * ho * wo..][..ho * wo];
                let iz = oz + dz;
                if iz < p || iz - p >= d || xs.is_empty() {
                    plane_out.fill(0.0);
                    continue;
                }
                let plane_in = &volume[(iz - p) * h * w..][..h * w];
                plane_out[..ys.start * wo].fill(0.0);
                plane_out[ys.end * wo..].fill(0.0);
                for oy in ys.clone() {
                    let src = &plane_in[(oy + dy - p) * w..][..w];
                    let dst = &mut plane_out[oy * wo..][..wo];
                    dst[..xs.start].fill(0.0);
                    dst[xs.end..].fill(0.0);
                    let from = xs.start + dx - p;
                    dst[xs.clone()].copy_from_slice(&src[from..from + xs.len()]);
                }
            }
        });
}

/// Calls `each(n, planes, columns)` for every block of every volume of `x`, in order.
fn for_each_block(
    x: &[f32],
    g: &Conv3dGeometry,
    mut each: impl FnMut(usize, usize, usize, &[f32]),
) {
    let [n, c, d, h, w] = g.input;
    let [od, ho, wo] = g.output_size();
    let per = g.planes_per_block();
    let mut columns = vec![0.0f32; g.rows() * per * ho * wo];
    for b in 0..n {
        let volume = &x[b * c * d * h * w..][..c * d * h * w];
        for z0 in (0..od).step_by(per) {
            let planes = z0..(z0 + per).min(od);
            let len = g.rows() * planes.len() * ho * wo;
            unfold_block(volume, g, planes.clone(), &mut columns[..len]);
            each(b, z0, planes.len(), &columns[..len]);
        }
    }
}

/// The convolution of `x: [N, C, D, H, W]` with `weight: [O, C, k, k, k]` plus `bias: [O]`:
/// `[N, O, Do, Ho, Wo]`, values in order.
pub(crate) fn conv3d_forward(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    g: Conv3dGeometry,
) -> Vec<f32> {
    g.check("x", x.len(), g.input);
    g.check("the weight", weight.len(), g.weight_shape());
    let [n, o, od, ho, wo] = g.output_shape();
    let (plane, volume) = (ho * wo, od * ho * wo);
    let mut y = vec![0.0f32; n * o * volume];
    if let Some(b) = bias {
        assert_eq!(
            b.len(),
            o,
            "the bias must have one value per output channel"
        );
        y.par_chunks_mut(volume)
            .enumerate()
            .for_each(|(i, out)| out.fill(b[i % o]));
    }
    let w = Mat::new(weight, o, g.rows());
    if g.pointwise() {
        let c = g.input[1];
        for (out, xs) in y.chunks_mut(o * volume).zip(x.chunks(c * volume)) {
            gemm(w, Mat::new(xs, c, volume), 1.0, out);
        }
        return y;
    }
    for_each_block(x, &g, |b, z0, planes, columns| {
        let out = &mut y[b * o * volume + z0 * plane..];
        let cols = Mat::new(columns, g.rows(), planes * plane);
        gemm_strided(w, cols, 1.0, out, volume);
    });
    y
}

/// The gradient for the weight `[O, C, k, k, k]` given the output's `grad: [N, O, Do, Ho, Wo]`.
pub(crate) fn conv3d_weight_grad(x: &[f32], grad: &[f32], g: Conv3dGeometry) -> Vec<f32> {
    g.check("x", x.len(), g.input);
    g.check("the gradient", grad.len(), g.output_shape());
    let [_, o, od, ho, wo] = g.output_shape();
    let (plane, volume) = (ho * wo, od * ho * wo);
    let mut dw = vec![0.0f32; o * g.rows()];
    if g.pointwise() {
        let c = g.input[1];
        for (gs, xs) in grad.chunks(o * volume).zip(x.chunks(c * volume)) {
            gemm(
                Mat::new(gs, o, volume),
                Mat::new(xs, c, volume).t(),
                1.0,
                &mut dw,
            );
        }
        return dw;
    }
    for_each_block(x, &g, |b, z0, planes, columns| {
        let gs = Mat::strided(
            &grad[b * o * volume + z0 * plane..],
            o,
            planes * plane,
            volume,
        );
        let cols = Mat::new(columns, g.rows(), planes * plane);
        gemm(gs, cols.t(), 1.0, &mut dw);
    });
    dw
}

/// The gradient for the bias `[O]`: the output's gradient summed over volumes and positions.
pub(crate) fn conv3d_bias_grad(grad: &[f32], g: Conv3dGeometry) -> Vec<f32> {
    let [n, o, ..] = g.output_shape();
    let volume: usize = g.output_size().iter().product();
    (0..o)
        .into_par_iter()
        .map(|c| {
            (0..n)
                .map(|b| grad[(b * o + c) * volume..][..volume].iter().sum::<f32>())
                .sum()
        })
        .collect()
}

/// The gradient for `x: [N, C, D, H, W]` given the output's `grad` (module documentation).
pub(crate) fn conv3d_input_grad(grad: &[f32], weight: &[f32], g: Conv3dGeometry) -> Vec<f32> {
    g.check("the gradient", grad.len(), g.output_shape());
    g.check("the weight", weight.len(), g.weight_shape());
    let [o, c, ..] = g.weight_shape();
    if g.pointwise() {
        let volume: usize = g.output_size().iter().product();
        let mut dx = vec![0.0f32; g.input.iter().product()];
        for (out, gs) in dx.chunks_mut(c * volume).zip(grad.chunks(o * volume)) {
            gemm(
                Mat::new(weight, o, c).t(),
                Mat::new(gs, o, volume),
                0.0,
                out,
            );
        }
        dx
    } else if c < o {
        folded_input_grad(grad, weight, g)
    } else {
        adjoint_input_grad(grad, weight, g)
    }
}

/// The input gradient as the adjoint convolution of `grad`: its columns have `O·k³` rows, so
/// this is the cheaper form where the input has at least as many channels as the output.
fn adjoint_input_grad(grad: &[f32], weight: &[f32], g: Conv3dGeometry) -> Vec<f32> {
    let [o, c, k, ..] = g.weight_shape();
    let k3 = k * k * k;
    // [C, O, k, k, k], each kernel reversed in space.
    let mut flipped = vec![0.0f32; weight.len()];
    for (i, v) in flipped.iter_mut().enumerate() {
        let (ci, oi, s) = (i / (o * k3), i / k3 % o, i % k3);
        *v = weight[(oi * c + ci) * k3 + (k3 - 1 - s)];
    }
    conv3d_forward(grad, &flipped, None, g.adjoint())
}

/// The input gradient as the columns' gradient `Wᵀ · grad` folded back onto the input: its
/// columns have `C·k³` rows, the cheaper form where the input has fewer channels than the
/// output (the discriminator's first convolution, with one input channel, has 32 outputs).
fn folded_input_grad(grad: &[f32], weight: &[f32], g: Conv3dGeometry) -> Vec<f32> {
    let [n, c, d, h, w] = g.input;
    let [od, ho, wo] = g.output_size();
    let o = g.out_channels;
    let (plane, volume, rows) = (ho * wo, od * ho * wo, g.rows());
    let per = g.planes_per_block();
    let wt = Mat::new(weight, o, rows).t();
    let mut columns = vec![0.0f32; rows * per * plane];
    let mut dx = vec![0.0f32; n * c * d * h * w];
    for b in 0..n {
        let sample = &mut dx[b * c * d * h * w..][..c * d * h * w];
        for z0 in (0..od).step_by(per) {
            let planes = z0..(z0 + per).min(od);
            let len = planes.len() * plane;
            let gs = Mat::strided(&grad[b * o * volume + z0 * plane..], o, len, volume);
            gemm(wt, gs, 0.0, &mut columns[..rows * len]);
            fold_block(&columns[..rows * len], &g, planes, sample);
        }
    }
    dx
}

/// Adds the columns of output planes `planes` (`C·k³ × planes.len()·Ho·Wo`) onto the input
/// positions they were read from, one task per input channel: the adjoint of [`unfold_block`].
fn fold_block(columns: &[f32], g: &Conv3dGeometry, planes: std::ops::Range<usize>, x: &mut [f32]) {
    let [_, _, d, h, w] = g.input;
    let [_, ho, wo] = g.output_size();
    let (k, p) = (g.kernel, g.padding);
    let row_len = planes.len() * ho * wo;
    x.par_chunks_mut(d * h * w)
        .zip(columns.par_chunks(k * k * k * row_len))
        .for_each(|(volume, rows)| {
            for (t, row) in rows.chunks(row_len).enumerate() {
                let (dz, dy, dx) = (t / (k * k), t / k % k, t % k);
                let (ys, xs) = (valid(ho, h, dy, p), valid(wo, w, dx, p));
                for (i, oz) in planes.clone().enumerate() {
                    let iz = oz + dz;
                    if iz < p || iz - p >= d || xs.is_empty() {
                        continue;
                    }
                    let plane_in = &mut volume[(iz - p) * h * w..][..h * w];
                    let plane_cols = &row[i * ho * wo..][..ho * wo];
                    for oy in ys.clone() {
                        let dst = &mut plane_in[(oy + dy - p) * w..][..w];
                        let src = &plane_cols[oy * wo..][..wo];
                        let from = xs.start + dx - p;
                        for (a, b) in dst[from..from + xs.len()].iter_mut().zip(&src[xs.clone()]) {
                            *a += b;
                        }
                    }
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain loops of the definition: `y[n][o][z][y][x] = b[o] + Σ W[o][c][a][b][e] ·
    /// x[n][c][z + a − p][y + b − p][x + e − p]`, zero outside.
    pub(crate) fn conv3d_reference(x: &[f32], w: &[f32], b: &[f32], g: Conv3dGeometry) -> Vec<f32> {
        let [n, c, d, h, wd] = g.input;
        let [_, o, od, ho, wo] = g.output_shape();
        let (k, p) = (g.kernel as isize, g.padding as isize);
        let mut y = Vec::with_capacity(n * o * od * ho * wo);
        let at = |v: isize, len: usize| (v >= 0 && v < len as isize).then_some(v as usize);
        for bn in 0..n {
            for oc in 0..o {
                for (z, yy, xx) in (0..od * ho * wo).map(|i| (i / (ho * wo), i / wo % ho, i % wo)) {
                    let mut s = f64::from(b[oc]);
                    for ci in 0..c {
                        for t in 0..(k * k * k) as usize {
                            let (a, bb, e) =
                                (t as isize / (k * k), t as isize / k % k, t as isize % k);
                            let (Some(iz), Some(iy), Some(ix)) = (
                                at(z as isize + a - p, d),
                                at(yy as isize + bb - p, h),
                                at(xx as isize + e - p, wd),
                            ) else {
                                continue;
                            };
                            let wv = w[(oc * c + ci) * (k * k * k) as usize + t];
                            let xv = x[(((bn * c + ci) * d + iz) * h + iy) * wd + ix];
                            s += f64::from(wv) * f64::from(xv);
                        }
                    }
                    y.push(s as f32);
                }
            }
        }
        y
    }

    fn random(n: usize, seed: u64) -> Vec<f32> {
        covflow_kernels::random_unit(n, seed)
            .iter()
            .map(|v| v - 0.5)
            .collect()
    }

    fn close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        let err = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
            / scale;
        assert!(err < 1e-5, "{what}: off by {err} (relative)");
    }

    fn dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(p, q)| f64::from(*p) * f64::from(*q))
            .sum()
    }

    /// Odd shapes, `same` and `valid`, k = 1, 3, 5, and a block size forced below a volume.
    const GEOMETRIES: [([usize; 5], usize, usize, usize); 7] = [
        ([1, 2, 9, 4, 4], 3, 3, 1),
        ([2, 3, 5, 6, 7], 4, 3, 1),
        ([1, 2, 4, 4, 4], 3, 1, 0),
        ([1, 2, 7, 6, 5], 2, 5, 2),
        ([2, 3, 6, 5, 6], 2, 3, 0),
        ([1, 1, 3, 9, 4], 5, 3, 1),
        ([2, 4, 3, 3, 3], 3, 5, 2),
    ];

    #[test]
    fn forward_matches_the_definition_on_random_volumes() {
        for (i, (input, o, k, p)) in GEOMETRIES.into_iter().enumerate() {
            let g = Conv3dGeometry {
                input,
                out_channels: o,
                kernel: k,
                padding: p,
            };
            let seed = 10 * i as u64;
            let x = random(input.iter().product(), seed);
            let w = random(g.weight_shape().iter().product(), seed + 1);
            let b = random(o, seed + 2);
            let want = conv3d_reference(&x, &w, &b, g);
            close(
                &conv3d_forward(&x, &w, Some(&b), g),
                &want,
                &format!("{g:?}"),
            );
        }
    }

    /// ⟨g, conv(x, W)⟩ = ⟨dx, x⟩ = ⟨dW, W⟩ for a bias-free convolution, and the bias gradient
    /// is the plain sum; together with the forward test this fixes both gradients.
    #[test]
    fn gradients_satisfy_the_adjoint_identities() {
        for (i, (input, o, k, p)) in GEOMETRIES.into_iter().enumerate() {
            let g = Conv3dGeometry {
                input,
                out_channels: o,
                kernel: k,
                padding: p,
            };
            let seed = 100 + 10 * i as u64;
            let x = random(input.iter().product(), seed);
            let w = random(g.weight_shape().iter().product(), seed + 1);
            let grad = random(g.output_shape().iter().product(), seed + 2);
            let y = conv3d_reference(&x, &w, &vec![0.0; o], g);
            let lhs = dot(&grad, &y);
            let via_x = dot(&conv3d_input_grad(&grad, &w, g), &x);
            let via_w = dot(&conv3d_weight_grad(&x, &grad, g), &w);
            for (name, v) in [("dx", via_x), ("dW", via_w)] {
                assert!(
                    (lhs - v).abs() < 1e-4 * lhs.abs().max(1.0),
                    "{g:?} {name}: {lhs} vs {v}"
                );
            }
            let db = conv3d_bias_grad(&grad, g);
            let volume: usize = g.output_size().iter().product();
            for (c, v) in db.iter().enumerate() {
                let want: f64 = (0..input[0])
                    .flat_map(|b| &grad[(b * o + c) * volume..][..volume])
                    .map(|v| f64::from(*v))
                    .sum();
                assert!((f64::from(*v) - want).abs() < 1e-4, "{g:?} db[{c}]");
            }
        }
    }

    /// The tests above cross blocks: one plane per block, and several planes per block.
    #[test]
    fn the_geometries_cover_one_and_several_planes_per_block() {
        let per: Vec<(usize, usize)> = GEOMETRIES
            .iter()
            .map(|&(input, o, k, p)| {
                let g = Conv3dGeometry {
                    input,
                    out_channels: o,
                    kernel: k,
                    padding: p,
                };
                (g.planes_per_block(), g.output_size()[0])
            })
            .collect();
        assert!(per.iter().any(|&(p, d)| p == 1 && d > 1), "{per:?}");
        assert!(per.iter().any(|&(p, d)| p > 1 && p < d), "{per:?}");
    }
}
