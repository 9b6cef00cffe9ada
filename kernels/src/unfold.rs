//! The columns of a 2-D convolution ("im2col", Chellapilla, Puri & Simard, "High Performance
//! Convolutional Neural Networks for Document Processing", IWFHR 2006) in one launch, and their
//! adjoint ("col2im", the input gradient's gather) in one launch.
//!
//! A convolution with a `[O, C, k, k]` kernel is then one matrix product,
//! `weight.reshape([O, C·k·k]) × columns[n]`. Built from tensor operations instead, the columns
//! took a padding copy, k² strided slices and a k²-way concatenation forward, and as many
//! zero-filled tensors, slice-assignments and additions backward: about 65 launches per 3 × 3
//! convolution and 200 for the TransUNet's 7 × 7 stem, a third of a training step's launches.
//!
//! Layout: `x` is `[N, C, H, W]`; the columns are `[N, C·k·k, Ho·Wo]` with rows ordered
//! `(c, dy, dx)`, the order of the weight's own `[O, C, k, k]` layout, so the weight needs no
//! permutation. Zero padding `p` on each side, stride `s`: `Ho = (H + 2p − k) / s + 1`.
//! The backward pass gathers (each input element sums the at most k² column entries that read
//! it) rather than scattering, so it needs no atomics and sums in a fixed order.

use cubecl::prelude::*;

/// The geometry of an unfolding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unfold {
    /// `[N, C, H, W]` of the input.
    pub input: [usize; 4],
    /// The kernel's side k.
    pub kernel: usize,
    /// The stride s.
    pub stride: usize,
    /// Zero padding p on each side.
    pub padding: usize,
}

impl Unfold {
    /// `[Ho, Wo]`, the output's spatial size.
    pub fn output_size(&self) -> [usize; 2] {
        let [_, _, h, w] = self.input;
        let out = |d: usize| (d + 2 * self.padding - self.kernel) / self.stride + 1;
        [out(h), out(w)]
    }

    /// `[N, C·k·k, Ho·Wo]`, the columns' shape.
    pub fn columns_shape(&self) -> [usize; 3] {
        let [n, c, _, _] = self.input;
        let [ho, wo] = self.output_size();
        [n, c * self.kernel * self.kernel, ho * wo]
    }

    fn columns_len(&self) -> usize {
        self.columns_shape().iter().product()
    }

    fn input_len(&self) -> usize {
        self.input.iter().product()
    }

    /// The input index that column entry `(n, (c, dy, dx), (oy, ox))` reads, if not padding.
    fn source(
        &self,
        n: usize,
        c: usize,
        dy: usize,
        dx: usize,
        oy: usize,
        ox: usize,
    ) -> Option<usize> {
        let [_, channels, h, w] = self.input;
        let iy = (oy * self.stride + dy).checked_sub(self.padding)?;
        let ix = (ox * self.stride + dx).checked_sub(self.padding)?;
        (iy < h && ix < w).then(|| ((n * channels + c) * h + iy) * w + ix)
    }
}

/// Plain CPU reference of the columns.
pub fn unfold_reference(x: &[f32], u: Unfold) -> Vec<f32> {
    assert_eq!(x.len(), u.input_len(), "x must be [N, C, H, W]");
    let [n, c, _, _] = u.input;
    let [ho, wo] = u.output_size();
    let k = u.kernel;
    let mut out = Vec::with_capacity(u.columns_len());
    for b in 0..n {
        for ch in 0..c {
            for dy in 0..k {
                for dx in 0..k {
                    for oy in 0..ho {
                        for ox in 0..wo {
                            out.push(u.source(b, ch, dy, dx, oy, ox).map_or(0.0, |i| x[i]));
                        }
                    }
                }
            }
        }
    }
    out
}

/// Plain CPU reference of the adjoint: the gradient for `x` given the columns' gradient.
/// Each input element sums its column entries over `(dy, dx)` in order, as the kernel does.
pub fn fold_reference(columns: &[f32], u: Unfold) -> Vec<f32> {
    assert_eq!(
        columns.len(),
        u.columns_len(),
        "columns must be [N, C·k·k, Ho·Wo]"
    );
    let [n, c, h, w] = u.input;
    let [ho, wo] = u.output_size();
    let (k, s, p) = (u.kernel, u.stride, u.padding);
    let mut out = Vec::with_capacity(u.input_len());
    for b in 0..n {
        for ch in 0..c {
            for iy in 0..h {
                for ix in 0..w {
                    let mut sum = 0.0f32;
                    for dy in 0..k {
                        for dx in 0..k {
                            let (Some(sy), Some(sx)) =
                                ((iy + p).checked_sub(dy), (ix + p).checked_sub(dx))
                            else {
                                continue;
                            };
                            let (oy, ox) = (sy / s, sx / s);
                            if sy.is_multiple_of(s) && sx.is_multiple_of(s) && oy < ho && ox < wo {
                                let row = (ch * k + dy) * k + dx;
                                sum += columns[(b * c * k * k + row) * ho * wo + oy * wo + ox];
                            }
                        }
                    }
                    out.push(sum);
                }
            }
        }
    }
    out
}

/// One unit per output position of one `(n, c)` plane: it writes that position's k² column
/// entries (for each `(dy, dx)` consecutive units write consecutive addresses), so the index
/// arithmetic is paid once per position instead of once per entry.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn unfold_kernel(
    x: &Array<f32>,
    columns: &mut Array<f32>,
    positions: u32,
    height: u32,
    width: u32,
    out_width: u32,
    out_plane: u32,
    kernel: u32,
    stride: u32,
    padding: u32,
) {
    let i = ABSOLUTE_POS;
    if i < positions as usize {
        let j = i as u32;
        // The (n, c) plane; the columns of plane q start at row q·k², since rows are (c, dy, dx).
        let q = j / out_plane;
        let p = j % out_plane;
        let oy = p / out_width;
        let ox = p % out_width;
        let plane = q * height * width;
        let mut out = q * kernel * kernel * out_plane + p;
        for dy in 0..kernel {
            // Unsigned arithmetic: a position left of or above the padding wraps to a huge
            // value and fails the bound check like one beyond the edge.
            let iy = oy * stride + dy - padding;
            for dx in 0..kernel {
                let ix = ox * stride + dx - padding;
                let mut v = f32::new(0.0);
                if iy < height && ix < width {
                    v = x[(plane + iy * width + ix) as usize];
                }
                columns[out as usize] = v;
                out += out_plane;
            }
        }
    }
}

/// One unit per input element: the sum of the column entries that read it.
#[cube(launch)]
// `is_multiple_of` has no cube expansion; `%` does.
#[allow(clippy::too_many_arguments, clippy::manual_is_multiple_of)]
pub fn fold_kernel(
    columns: &Array<f32>,
    grad: &mut Array<f32>,
    total: u32,
    channels: u32,
    height: u32,
    width: u32,
    out_height: u32,
    out_width: u32,
    kernel: u32,
    stride: u32,
    padding: u32,
) {
    let i = ABSOLUTE_POS;
    if i < total as usize {
        let j = i as u32;
        let ix = j % width;
        let iy = (j / width) % height;
        let c = (j / (width * height)) % channels;
        let n = j / (width * height * channels);
        let out_plane = out_height * out_width;
        let rows = channels * kernel * kernel;
        let mut sum = f32::new(0.0);
        for dy in 0..kernel {
            for dx in 0..kernel {
                // The output position whose window puts (dy, dx) on (iy, ix), if any.
                let ty = iy + padding;
                let tx = ix + padding;
                if ty >= dy && tx >= dx {
                    let sy = ty - dy;
                    let sx = tx - dx;
                    if sy % stride == 0 && sx % stride == 0 {
                        let oy = sy / stride;
                        let ox = sx / stride;
                        if oy < out_height && ox < out_width {
                            let row = (c * kernel + dy) * kernel + dx;
                            sum += columns
                                [((n * rows + row) * out_plane + oy * out_width + ox) as usize];
                        }
                    }
                }
            }
        }
        grad[i] = sum;
    }
}

/// The columns of the `x` buffer on the device.
pub fn launch_unfold<R: Runtime>(
    client: &ComputeClient<R>,
    x: cubecl::server::Handle,
    u: Unfold,
) -> cubecl::server::Handle {
    let total = u.columns_len();
    let out = client.empty(total.max(1) * 4);
    let [n, c, h, w] = u.input;
    let [ho, wo] = u.output_size();
    let positions = n * c * ho * wo;
    let threads = 256;
    unfold_kernel::launch::<R>(
        client,
        crate::cube_count_for(positions, threads),
        CubeDim::new_1d(threads),
        unsafe { ArrayArg::from_raw_parts(x, u.input_len()) },
        unsafe { ArrayArg::from_raw_parts(out.clone(), total) },
        positions as u32,
        h as u32,
        w as u32,
        wo as u32,
        (ho * wo) as u32,
        u.kernel as u32,
        u.stride as u32,
        u.padding as u32,
    );
    out
}

/// The input gradient from the columns' gradient buffer on the device.
pub fn launch_fold<R: Runtime>(
    client: &ComputeClient<R>,
    columns: cubecl::server::Handle,
    u: Unfold,
) -> cubecl::server::Handle {
    let total = u.input_len();
    let out = client.empty(total.max(1) * 4);
    let [_, c, h, w] = u.input;
    let [ho, wo] = u.output_size();
    let threads = 256;
    fold_kernel::launch::<R>(
        client,
        crate::cube_count_for(total, threads),
        CubeDim::new_1d(threads),
        unsafe { ArrayArg::from_raw_parts(columns, u.columns_len()) },
        unsafe { ArrayArg::from_raw_parts(out.clone(), total) },
        total as u32,
        c as u32,
        h as u32,
        w as u32,
        ho as u32,
        wo as u32,
        u.kernel as u32,
        u.stride as u32,
        u.padding as u32,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cubecl::wgpu::{WgpuDevice, WgpuRuntime};

    /// The TransUNet's convolutions (7 × 7 stem, strided 3 × 3 and 1 × 1, padded 3 × 3) and odd
    /// sizes where a window falls off the edge.
    const CASES: [Unfold; 5] = [
        Unfold {
            input: [2, 1, 16, 16],
            kernel: 7,
            stride: 2,
            padding: 3,
        },
        Unfold {
            input: [2, 3, 9, 11],
            kernel: 3,
            stride: 2,
            padding: 1,
        },
        Unfold {
            input: [1, 4, 8, 8],
            kernel: 1,
            stride: 2,
            padding: 0,
        },
        Unfold {
            input: [3, 2, 7, 5],
            kernel: 3,
            stride: 1,
            padding: 1,
        },
        Unfold {
            input: [1, 2, 6, 6],
            kernel: 2,
            stride: 3,
            padding: 0,
        },
    ];

    #[test]
    fn wgpu_unfold_and_fold_match_the_references_on_random_tensors() {
        let client = WgpuRuntime::client(&WgpuDevice::default());
        let up = |v: &[f32]| client.create_from_slice(f32::as_bytes(v));
        let down = |h| f32::from_bytes(&client.read_one_unchecked(h)).to_vec();
        for (seed, u) in CASES.into_iter().enumerate() {
            let x = crate::random_hu(u.input_len(), seed as u64 + 1);
            let cols = down(launch_unfold(&client, up(&x), u));
            // Data movement only: exactly equal.
            assert_eq!(cols, unfold_reference(&x, u), "{u:?}: columns");
            let g = crate::random_hu(u.columns_len(), seed as u64 + 100);
            let got = down(launch_fold(&client, up(&g), u));
            // The same additions in the same order: exactly equal too.
            assert_eq!(got, fold_reference(&g, u), "{u:?}: fold");
        }
    }

    #[test]
    fn fold_is_the_adjoint_of_unfold() {
        // <unfold(x), g> = <x, fold(g)> for every x and g: fold is unfold's exact transpose,
        // which is what makes it the input gradient.
        for (seed, u) in CASES.into_iter().enumerate() {
            let x: Vec<f32> = crate::random_hu(u.input_len(), seed as u64 + 7)
                .iter()
                .map(|v| v / 1000.0)
                .collect();
            let g: Vec<f32> = crate::random_hu(u.columns_len(), seed as u64 + 70)
                .iter()
                .map(|v| v / 1000.0)
                .collect();
            let dot = |a: &[f32], b: &[f32]| -> f64 {
                a.iter()
                    .zip(b)
                    .map(|(p, q)| f64::from(*p) * f64::from(*q))
                    .sum()
            };
            let lhs = dot(&unfold_reference(&x, u), &g);
            let rhs = dot(&x, &fold_reference(&g, u));
            assert!(
                (lhs - rhs).abs() < 1e-3 * lhs.abs().max(1.0),
                "{u:?}: {lhs} vs {rhs}"
            );
        }
    }
}
