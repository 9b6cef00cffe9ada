//! The im2col columns and their adjoint on the host, for backends without our kernels (the CPU).
//!
//! The same results as `covflow_kernels::unfold`'s references, bit for bit (the columns are
//! copies; each input element's gradient is summed over `(dy, dx)` in the same order), but row
//! by row with slice copies and over the `(n, c)` planes in parallel: the plain references spent
//! about a sixth of a CPU training step here.

use covflow_kernels::unfold::Unfold;
use rayon::prelude::*;

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

    #[test]
    fn equal_to_the_references_bit_for_bit() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut random = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                })
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
