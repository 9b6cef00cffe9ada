//! 2-D convolution on the host (the CPU backend): im2col columns, their adjoint, and the three
//! matrix products of a convolution's forward and backward passes.
//!
//! The columns equal `covflow_kernels::unfold`'s references bit for bit (they are copies; each
//! input element's gradient is summed over `(dy, dx)` in the same order), built row by row with
//! slice copies over the `(n, c)` planes in parallel: the plain references spent about a sixth
//! of a CPU training step. The products call [`crate::gemm`] with the operands' strides,
//! so a transposed operand is read in place: through burn-ndarray's `matmul` every call copied
//! both operands and its output (a quarter of a CPU training step, BENCHMARKS.md).

use covflow_kernels::unfold::Unfold;
use rayon::prelude::*;

use crate::gemm::{Mat, gemm};

/// `y[n] = W · columns(x)[n]` for `x: [N, C, H, W]` (values in order) and `W: [O, C·k·k]`:
/// `[N, O, Ho·Wo]` in order.
pub(crate) fn conv_forward(x: &[f32], weight: &[f32], out_channels: usize, u: Unfold) -> Vec<f32> {
    let columns = unfold(x, u);
    let [_, rows, plane] = u.columns_shape();
    let w = Mat::new(weight, out_channels, rows);
    let mut y = vec![0.0f32; u.input[0] * out_channels * plane];
    for (y, cols) in y
        .chunks_mut(out_channels * plane)
        .zip(columns.chunks(rows * plane))
    {
        gemm(w, Mat::new(cols, rows, plane), 0.0, y);
    }
    y
}

/// The gradient for `x` given `grad: [N, O, Ho·Wo]`: `fold(Wᵀ · grad[n])`.
pub(crate) fn conv_input_grad(
    grad: &[f32],
    weight: &[f32],
    out_channels: usize,
    u: Unfold,
) -> Vec<f32> {
    let [n, rows, plane] = u.columns_shape();
    let w = Mat::new(weight, out_channels, rows);
    let mut columns = vec![0.0f32; n * rows * plane];
    for (cols, g) in columns
        .chunks_mut(rows * plane)
        .zip(grad.chunks(out_channels * plane))
    {
        gemm(w.t(), Mat::new(g, out_channels, plane), 0.0, cols);
    }
    fold(&columns, u)
}

/// The gradient for `W: [O, C·k·k]` given `grad: [N, O, Ho·Wo]`: `Σₙ grad[n] · columns(x)[n]ᵀ`,
/// summed over the batch in order.
pub(crate) fn conv_weight_grad(
    x: &[f32],
    grad: &[f32],
    out_channels: usize,
    u: Unfold,
) -> Vec<f32> {
    let columns = unfold(x, u);
    let [_, rows, plane] = u.columns_shape();
    let mut dw = vec![0.0f32; out_channels * rows];
    for (b, (g, cols)) in grad
        .chunks(out_channels * plane)
        .zip(columns.chunks(rows * plane))
        .enumerate()
    {
        let beta = if b == 0 { 0.0 } else { 1.0 };
        gemm(
            Mat::new(g, out_channels, plane),
            Mat::new(cols, rows, plane).t(),
            beta,
            &mut dw,
        );
    }
    dw
}

/// The range of output positions `o` whose input position `o·s + d − p` lies in `0..len`.
fn valid(out: usize, len: usize, d: usize, u: &Unfold) -> std::ops::Range<usize> {
    let (s, p) = (u.stride, u.padding);
    // o·s + d ≥ p  ⇔  o ≥ ⌈(p − d) / s⌉;  o·s + d − p < len  ⇔  o < ⌈(len + p − d) / s⌉.
    let first = p.saturating_sub(d).div_ceil(s);
    let end = (len + p).saturating_sub(d).div_ceil(s).min(out);
    first.min(end)..end
}

/// `covflow_kernels::unfold::unfold_reference`, fast.
pub(crate) fn unfold(x: &[f32], u: Unfold) -> Vec<f32> {
    let [_, _, h, w] = u.input;
    let [ho, wo] = u.output_size();
    let (k, s, p) = (u.kernel, u.stride, u.padding);
    let mut out = vec![0.0f32; u.columns_shape().iter().product()];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(k * k * ho * wo)
        .zip(x.par_chunks(h * w))
        .for_each(|(rows, plane)| {
            for dy in 0..k {
                let ys = valid(ho, h, dy, &u);
                for dx in 0..k {
                    let xs = valid(wo, w, dx, &u);
                    let row = &mut rows[(dy * k + dx) * ho * wo..][..ho * wo];
                    for oy in ys.clone() {
                        let src = &plane[(oy * s + dy - p) * w..][..w];
                        let dst = &mut row[oy * wo..][..wo];
                        if s == 1 {
                            let from = xs.start + dx - p;
                            dst[xs.clone()].copy_from_slice(&src[from..from + xs.len()]);
                        } else {
                            for ox in xs.clone() {
                                dst[ox] = src[ox * s + dx - p];
                            }
                        }
                    }
                }
            }
        });
    out
}

/// `covflow_kernels::unfold::fold_reference`, fast.
pub(crate) fn fold(columns: &[f32], u: Unfold) -> Vec<f32> {
    let [_, _, h, w] = u.input;
    let [ho, wo] = u.output_size();
    let (k, s, p) = (u.kernel, u.stride, u.padding);
    let mut out = vec![0.0f32; u.input.iter().product()];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(h * w)
        .zip(columns.par_chunks(k * k * ho * wo))
        .for_each(|(plane, rows)| {
            // Row by row in (dy, dx) order: every element gets its terms in the reference's order.
            for dy in 0..k {
                let ys = valid(ho, h, dy, &u);
                for dx in 0..k {
                    let xs = valid(wo, w, dx, &u);
                    let row = &rows[(dy * k + dx) * ho * wo..][..ho * wo];
                    for oy in ys.clone() {
                        let dst = &mut plane[(oy * s + dy - p) * w..][..w];
                        let src = &row[oy * wo..][..wo];
                        for ox in xs.clone() {
                            dst[ox * s + dx - p] += src[ox];
                        }
                    }
                }
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use covflow_kernels::unfold::{fold_reference, unfold_reference};

    /// A plain triple loop: `y[n][o][q] = Σ_r W[o][r] · cols[n][r][q]`.
    fn product(w: &[f32], cols: &[f32], o: usize, u: Unfold) -> Vec<f32> {
        let [n, rows, plane] = u.columns_shape();
        let mut y = vec![0.0f32; n * o * plane];
        for b in 0..n {
            for oc in 0..o {
                for q in 0..plane {
                    y[(b * o + oc) * plane + q] = (0..rows)
                        .map(|r| w[oc * rows + r] * cols[(b * rows + r) * plane + q])
                        .sum();
                }
            }
        }
        y
    }

    fn close(a: &[f32], b: &[f32], what: &str) {
        let scale = a.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        let err = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
            / scale;
        assert!(err < 1e-5, "{what}: off by {err} (relative)");
    }

    #[test]
    fn products_match_plain_loops_and_are_adjoint() {
        let mut seed = 0;
        let mut random = |n: usize| -> Vec<f32> {
            seed += 1;
            covflow_kernels::random_unit(n, seed)
                .iter()
                .map(|v| v - 0.5)
                .collect()
        };
        for (input, kernel, stride, padding, o) in [
            ([2, 1, 16, 16], 7, 2, 3, 4),
            ([2, 3, 9, 11], 3, 2, 1, 5),
            ([3, 4, 8, 8], 3, 1, 1, 3),
            ([2, 6, 8, 8], 1, 2, 0, 2),
        ] {
            let u = Unfold {
                input,
                kernel,
                stride,
                padding,
            };
            let [n, rows, plane] = u.columns_shape();
            let x = random(input.iter().product());
            let w = random(o * rows);
            let g = random(n * o * plane);
            let cols = unfold_reference(&x, u);
            close(
                &product(&w, &cols, o, u),
                &conv_forward(&x, &w, o, u),
                "forward",
            );
            // dx = fold(Wᵀ g) and dW = Σ g colsᵀ, by their defining identity
            // <g, W·cols(x)> = <fold(Wᵀg), x> = <Σ g·colsᵀ, W>.
            let dot = |a: &[f32], b: &[f32]| -> f64 {
                a.iter()
                    .zip(b)
                    .map(|(p, q)| f64::from(*p) * f64::from(*q))
                    .sum()
            };
            let lhs = dot(&g, &product(&w, &cols, o, u));
            let via_x = dot(&conv_input_grad(&g, &w, o, u), &x);
            let via_w = dot(&conv_weight_grad(&x, &g, o, u), &w);
            for (name, v) in [("dx", via_x), ("dW", via_w)] {
                assert!(
                    (lhs - v).abs() < 1e-4 * lhs.abs().max(1.0),
                    "{u:?} {name}: {lhs} vs {v}"
                );
            }
        }
    }

    #[test]
    fn equal_to_the_references_bit_for_bit() {
        let mut seed = 0;
        let mut random = |n: usize| -> Vec<f32> {
            seed += 1;
            covflow_kernels::random_unit(n, seed)
                .iter()
                .map(|v| v - 0.5)
                .collect()
        };
        for (input, kernel, stride, padding) in [
            ([2, 1, 16, 16], 7, 2, 3),
            ([2, 3, 9, 11], 3, 2, 1),
            ([1, 4, 8, 8], 1, 2, 0),
            ([3, 2, 7, 5], 3, 1, 1),
            ([1, 2, 6, 6], 2, 3, 0),
            ([2, 2, 5, 4], 5, 1, 4),
            ([1, 1, 3, 3], 3, 1, 0),
        ] {
            let u = Unfold {
                input,
                kernel,
                stride,
                padding,
            };
            let x = random(input.iter().product());
            assert_eq!(unfold(&x, u), unfold_reference(&x, u), "{u:?}: columns");
            let g = random(u.columns_shape().iter().product());
            let (fast, plain) = (fold(&g, u), fold_reference(&g, u));
            assert!(
                fast.iter()
                    .zip(&plain)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{u:?}: fold"
            );
        }
    }
}
