//! The generator decoder's transposed convolution (kernel 2, stride 2) on the host, with its
//! gradients.
//!
//! Each input voxel paints its own 2 × 2 × 2 output block, so the transposed convolution is one
//! product per volume, `Wᵀ · x[n]` (`[O·8, D·H·W]`, rows ordered `(o, a, b, e)` as the weight's
//! `[C, O, 2, 2, 2]`), whose row `(o, a, b, e)` is scattered to output voxels
//! `(2z + a, 2y + b, 2x + e)`. Backward gathers the output's gradient into the same layout,
//! and then both gradients are single products. Through burn's reshapes and permutations the
//! shuffle cost three copies each way on the CPU backend.

use rayon::prelude::*;

use crate::gemm::{Mat, gemm};

/// `x: [N, C, D, H, W]` and `weight: [C, O, 2, 2, 2]` of a ×2 transposed convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Up2xGeometry {
    /// `[N, C, D, H, W]` of the input.
    pub input: [usize; 5],
    /// Output channels O.
    pub out_channels: usize,
}

impl Up2xGeometry {
    /// `[N, O, 2D, 2H, 2W]`.
    pub fn output_shape(&self) -> [usize; 5] {
        let [n, _, d, h, w] = self.input;
        [n, self.out_channels, 2 * d, 2 * h, 2 * w]
    }

    /// `[C, O, 2, 2, 2]`.
    pub fn weight_shape(&self) -> [usize; 5] {
        [self.input[1], self.out_channels, 2, 2, 2]
    }

    fn voxels(&self) -> usize {
        self.input[2..].iter().product()
    }
}

/// Output volume `[2D, 2H, 2W]` of one channel from its blocks' layout `[8, D, H, W]` (rows
/// `(a, b, e)`): voxel `(2z + a, 2y + b, 2x + e)` takes row `(a, b, e)` at `(z, y, x)`.
fn scatter_blocks(g: &Up2xGeometry, rows: &[f32], volume: &mut [f32]) {
    let [_, _, d, h, w] = g.input;
    for (s, row) in rows.chunks(d * h * w).enumerate() {
        let (a, b, e) = (s / 4, s / 2 % 2, s % 2);
        for z in 0..d {
            for y in 0..h {
                let line = &mut volume[((2 * z + a) * 2 * h + 2 * y + b) * 2 * w..][..2 * w];
                let src = &row[(z * h + y) * w..][..w];
                for (x, v) in src.iter().enumerate() {
                    line[2 * x + e] = *v;
                }
            }
        }
    }
}

/// The inverse of [`scatter_blocks`].
fn gather_blocks(g: &Up2xGeometry, volume: &[f32], rows: &mut [f32]) {
    let [_, _, d, h, w] = g.input;
    for (s, row) in rows.chunks_mut(d * h * w).enumerate() {
        let (a, b, e) = (s / 4, s / 2 % 2, s % 2);
        for z in 0..d {
            for y in 0..h {
                let line = &volume[((2 * z + a) * 2 * h + 2 * y + b) * 2 * w..][..2 * w];
                let dst = &mut row[(z * h + y) * w..][..w];
                for (x, v) in dst.iter_mut().enumerate() {
                    *v = line[2 * x + e];
                }
            }
        }
    }
}

/// The transposed convolution of `x` with `weight` plus `bias: [O]`: `[N, O, 2D, 2H, 2W]`.
pub(crate) fn up2x_forward(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    g: Up2xGeometry,
) -> Vec<f32> {
    let [n, c, ..] = g.input;
    let o = g.out_channels;
    let v = g.voxels();
    assert_eq!(x.len(), n * c * v, "x must be {:?}", g.input);
    assert_eq!(
        weight.len(),
        c * o * 8,
        "the weight must be {:?}",
        g.weight_shape()
    );
    let mut blocks = vec![0.0f32; n * o * 8 * v];
    for (out, xs) in blocks.chunks_mut(o * 8 * v).zip(x.chunks(c * v)) {
        gemm(Mat::new(weight, c, o * 8).t(), Mat::new(xs, c, v), 0.0, out);
    }
    let mut y = vec![0.0f32; n * o * 8 * v];
    y.par_chunks_mut(8 * v)
        .zip(blocks.par_chunks(8 * v))
        .enumerate()
        .for_each(|(i, (volume, rows))| {
            scatter_blocks(&g, rows, volume);
            if let Some(b) = bias {
                volume.iter_mut().for_each(|t| *t += b[i % o]);
            }
        });
    y
}

/// `[dx, dW, db]` of [`up2x_forward`] given the output's gradient; `dx` only where `need_x`.
pub(crate) fn up2x_backward(
    x: &[f32],
    weight: &[f32],
    grad: &[f32],
    g: Up2xGeometry,
    need_x: bool,
) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    let [n, c, ..] = g.input;
    let o = g.out_channels;
    let v = g.voxels();
    assert_eq!(
        grad.len(),
        n * o * 8 * v,
        "the gradient must be {:?}",
        g.output_shape()
    );
    let mut blocks = vec![0.0f32; grad.len()];
    blocks
        .par_chunks_mut(8 * v)
        .zip(grad.par_chunks(8 * v))
        .for_each(|(rows, volume)| gather_blocks(&g, volume, rows));
    let db: Vec<f32> = (0..o)
        .into_par_iter()
        .map(|oc| {
            (0..n)
                .map(|b| blocks[(b * o + oc) * 8 * v..][..8 * v].iter().sum::<f32>())
                .sum()
        })
        .collect();
    let mut dw = vec![0.0f32; c * o * 8];
    for (gs, xs) in blocks.chunks(o * 8 * v).zip(x.chunks(c * v)) {
        gemm(Mat::new(xs, c, v), Mat::new(gs, o * 8, v).t(), 1.0, &mut dw);
    }
    let dx = need_x.then(|| {
        let mut dx = vec![0.0f32; n * c * v];
        for (out, gs) in dx.chunks_mut(c * v).zip(blocks.chunks(o * 8 * v)) {
            gemm(Mat::new(weight, c, o * 8), Mat::new(gs, o * 8, v), 0.0, out);
        }
        dx
    });
    (dx, dw, db)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        covflow_kernels::random_unit(n, seed)
            .iter()
            .map(|v| v - 0.5)
            .collect()
    }

    /// Plain loops of the definition: `y[n][o][2z + a][2y + b][2x + e] = b[o] + Σ_c
    /// x[n][c][z][y][x] · W[c][o][a][b][e]`.
    fn reference(x: &[f32], w: &[f32], bias: &[f32], g: Up2xGeometry) -> Vec<f32> {
        let [n, c, d, h, wd] = g.input;
        let o = g.out_channels;
        let mut y = vec![0.0f32; g.output_shape().iter().product()];
        for (i, out) in y.iter_mut().enumerate() {
            let (xx, yy, zz) = (
                i % (2 * wd),
                i / (2 * wd) % (2 * h),
                i / (4 * wd * h) % (2 * d),
            );
            let (oc, b) = (i / (8 * d * h * wd) % o, i / (8 * d * h * wd * o));
            let s = (zz % 2) * 4 + (yy % 2) * 2 + xx % 2;
            let mut acc = f64::from(bias[oc]);
            for ci in 0..c {
                let xv = x[(((b * c + ci) * d + zz / 2) * h + yy / 2) * wd + xx / 2];
                acc += f64::from(xv) * f64::from(w[(ci * o + oc) * 8 + s]);
            }
            *out = acc as f32;
        }
        let _ = n;
        y
    }

    fn dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(p, q)| f64::from(*p) * f64::from(*q))
            .sum()
    }

    #[test]
    fn up2x_and_its_gradients_match_the_definition_on_random_volumes() {
        for (i, (input, o)) in [
            ([2, 3, 2, 3, 4], 5),
            ([1, 4, 3, 2, 2], 2),
            ([3, 1, 1, 1, 5], 1),
        ]
        .into_iter()
        .enumerate()
        {
            let g = Up2xGeometry {
                input,
                out_channels: o,
            };
            let seed = 20 * i as u64;
            let x = random(input.iter().product(), seed);
            let w = random(g.weight_shape().iter().product(), seed + 1);
            let b = random(o, seed + 2);
            let y = up2x_forward(&x, &w, Some(&b), g);
            let want = reference(&x, &w, &b, g);
            let err = y
                .iter()
                .zip(&want)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0, f32::max);
            assert!(err < 1e-5, "{g:?}: forward off by {err}");
            // ⟨grad, y − b⟩ = ⟨dx, x⟩ = ⟨dW, W⟩ and db sums the gradient per channel.
            let grad = random(y.len(), seed + 3);
            let lhs = dot(&grad, &reference(&x, &w, &vec![0.0; o], g));
            let (dx, dw, db) = up2x_backward(&x, &w, &grad, g, true);
            for (name, v) in [("dx", dot(&dx.unwrap(), &x)), ("dW", dot(&dw, &w))] {
                assert!(
                    (lhs - v).abs() < 1e-4 * lhs.abs().max(1.0),
                    "{g:?} {name}: {lhs} vs {v}"
                );
            }
            let volume = 8 * input[2..].iter().product::<usize>();
            for (c, v) in db.iter().enumerate() {
                let want: f32 = (0..input[0])
                    .flat_map(|n| &grad[(n * o + c) * volume..][..volume])
                    .sum();
                assert!((v - want).abs() < 1e-4, "{g:?} db[{c}]");
            }
        }
    }
}
