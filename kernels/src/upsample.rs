//! Bilinear ×2 upsampling of image planes with `align_corners = true` (PyTorch's
//! `nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)`, the TransUNet decoder's),
//! and its backward.
//!
//! Output pixel `o` samples input position `o·(n − 1)/(2n − 1)` along each axis. The backward is
//! written as a gather, not a scatter: input pixel `i` sums the output gradients of the few
//! output pixels whose samples lie within one pixel of it, weighted by the same linear "hat", so
//! every thread writes only its own value and no atomics are needed.

use cubecl::prelude::*;

/// The two input indices output index `o` reads on an axis of `n` inputs (align_corners: the
/// sample sits at `o·(n − 1)/(2n − 1)`), and the weight of the second.
fn taps(o: usize, n: usize) -> (usize, usize, f32) {
    let f = if n <= 1 {
        0.0
    } else {
        o as f32 * ((n - 1) as f32 / (2 * n - 1) as f32)
    };
    let i0 = (f.floor() as usize).min(n - 1);
    (i0, (i0 + 1).min(n - 1), f - i0 as f32)
}

/// Plain CPU reference of the forward pass: `planes` planes of `h × w` → `2h × 2w`.
///
/// ```
/// let y = covflow_kernels::upsample2x_reference(&[0.0, 3.0], 1, 1, 2);
/// assert_eq!(y, vec![0.0, 1.0, 2.0, 3.0, 0.0, 1.0, 2.0, 3.0]);
/// ```
pub fn upsample2x_reference(input: &[f32], planes: usize, h: usize, w: usize) -> Vec<f32> {
    let (oh, ow) = (2 * h, 2 * w);
    let mut out = vec![0f32; planes * oh * ow];
    for p in 0..planes {
        let src = &input[p * h * w..(p + 1) * h * w];
        for oy in 0..oh {
            let (y0, y1, ty) = taps(oy, h);
            for ox in 0..ow {
                let (x0, x1, tx) = taps(ox, w);
                let v = |y: usize, x: usize| src[y * w + x];
                out[(p * oh + oy) * ow + ox] = (1.0 - ty)
                    * ((1.0 - tx) * v(y0, x0) + tx * v(y0, x1))
                    + ty * ((1.0 - tx) * v(y1, x0) + tx * v(y1, x1));
            }
        }
    }
    out
}

/// Plain CPU reference of the backward pass: the gradient for the `h × w` input planes from the
/// gradient of the `2h × 2w` output (a scatter of each output gradient onto its four inputs).
pub fn upsample2x_backward_reference(grad: &[f32], planes: usize, h: usize, w: usize) -> Vec<f32> {
    let (oh, ow) = (2 * h, 2 * w);
    let mut out = vec![0f32; planes * h * w];
    for p in 0..planes {
        for oy in 0..oh {
            let (y0, y1, ty) = taps(oy, h);
            for ox in 0..ow {
                let (x0, x1, tx) = taps(ox, w);
                let g = grad[(p * oh + oy) * ow + ox];
                let base = p * h * w;
                out[base + y0 * w + x0] += g * (1.0 - ty) * (1.0 - tx);
                out[base + y0 * w + x1] += g * (1.0 - ty) * tx;
                out[base + y1 * w + x0] += g * ty * (1.0 - tx);
                out[base + y1 * w + x1] += g * ty * tx;
            }
        }
    }
    out
}

/// One output pixel per unit.
#[cube(launch)]
pub fn upsample2x_kernel(input: &Array<f32>, output: &mut Array<f32>, h: u32, w: u32) {
    if ABSOLUTE_POS >= output.len() {
        terminate!();
    }
    let ow = 2 * w;
    let oh = 2 * h;
    let idx = ABSOLUTE_POS as u32;
    let ox = idx % ow;
    let oy = (idx / ow) % oh;
    let plane = idx / (ow * oh);
    let sy = f32::cast_from(h - 1) / f32::cast_from(oh - 1);
    let sx = f32::cast_from(w - 1) / f32::cast_from(ow - 1);
    let fy = f32::cast_from(oy) * sy;
    let fx = f32::cast_from(ox) * sx;
    let y0 = u32::min(u32::cast_from(f32::floor(fy)), h - 1);
    let x0 = u32::min(u32::cast_from(f32::floor(fx)), w - 1);
    let y1 = u32::min(y0 + 1, h - 1);
    let x1 = u32::min(x0 + 1, w - 1);
    let ty = fy - f32::cast_from(y0);
    let tx = fx - f32::cast_from(x0);
    let base = plane * h * w;
    let v00 = input[(base + y0 * w + x0) as usize];
    let v01 = input[(base + y0 * w + x1) as usize];
    let v10 = input[(base + y1 * w + x0) as usize];
    let v11 = input[(base + y1 * w + x1) as usize];
    output[ABSOLUTE_POS] =
        (1.0 - ty) * ((1.0 - tx) * v00 + tx * v01) + ty * ((1.0 - tx) * v10 + tx * v11);
}

/// Weight of input index `i` in the sample at `f` (the linear hat), computed like the forward.
#[cube]
fn hat(f: f32, i: u32, n: u32) -> f32 {
    let i0 = u32::min(u32::cast_from(f32::floor(f)), n - 1);
    let i1 = u32::min(i0 + 1, n - 1);
    let t = f - f32::cast_from(i0);
    let mut wgt = 0.0f32;
    if i0 == i {
        wgt += 1.0 - t;
    }
    if i1 == i {
        wgt += t;
    }
    wgt
}

/// One input pixel per unit: gathers the output gradients that its four-neighbour samples used.
#[cube(launch)]
pub fn upsample2x_backward_kernel(grad: &Array<f32>, output: &mut Array<f32>, h: u32, w: u32) {
    if ABSOLUTE_POS >= output.len() {
        terminate!();
    }
    let ow = 2 * w;
    let oh = 2 * h;
    let idx = ABSOLUTE_POS as u32;
    let x = idx % w;
    let y = (idx / w) % h;
    let plane = idx / (w * h);
    let sy = f32::cast_from(h - 1) / f32::cast_from(oh - 1);
    let sx = f32::cast_from(w - 1) / f32::cast_from(ow - 1);
    // Samples step by just under ½ pixel, so output 2i − 2 … 2i + 3 covers every sample within
    // one pixel of input i.
    let mut oy_lo = 0u32;
    if 2 * y > 2 {
        oy_lo = 2 * y - 2;
    }
    let oy_hi = u32::min(2 * y + 3, oh - 1);
    let mut ox_lo = 0u32;
    if 2 * x > 2 {
        ox_lo = 2 * x - 2;
    }
    let ox_hi = u32::min(2 * x + 3, ow - 1);
    let mut acc = 0.0f32;
    for oy in oy_lo..oy_hi + 1 {
        let wy = hat(f32::cast_from(oy) * sy, y, h);
        if wy != 0.0 {
            for ox in ox_lo..ox_hi + 1 {
                let wx = hat(f32::cast_from(ox) * sx, x, w);
                acc += wy * wx * grad[((plane * oh + oy) * ow + ox) as usize];
            }
        }
    }
    output[ABSOLUTE_POS] = acc;
}

/// Launches the forward on `input` (a device buffer of `planes·h·w` floats) into a new buffer.
pub fn launch_upsample2x<R: Runtime>(
    client: &ComputeClient<R>,
    input: cubecl::server::Handle,
    planes: usize,
    h: usize,
    w: usize,
) -> cubecl::server::Handle {
    let n_in = planes * h * w;
    let n_out = 4 * n_in;
    let out = client.empty(n_out * 4);
    upsample2x_kernel::launch::<R>(
        client,
        crate::cube_count_for(n_out, 256),
        CubeDim::new_1d(256),
        unsafe { ArrayArg::from_raw_parts(input, n_in) },
        unsafe { ArrayArg::from_raw_parts(out.clone(), n_out) },
        h as u32,
        w as u32,
    );
    out
}

/// Launches the backward on `grad` (a device buffer of `planes·2h·2w` floats) into a new buffer.
pub fn launch_upsample2x_backward<R: Runtime>(
    client: &ComputeClient<R>,
    grad: cubecl::server::Handle,
    planes: usize,
    h: usize,
    w: usize,
) -> cubecl::server::Handle {
    let n_in = planes * h * w;
    let out = client.empty(n_in * 4);
    upsample2x_backward_kernel::launch::<R>(
        client,
        crate::cube_count_for(n_in, 256),
        CubeDim::new_1d(256),
        unsafe { ArrayArg::from_raw_parts(grad, 4 * n_in) },
        unsafe { ArrayArg::from_raw_parts(out.clone(), n_in) },
        h as u32,
        w as u32,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cubecl::wgpu::{WgpuDevice, WgpuRuntime};

    #[test]
    fn wgpu_forward_and_backward_match_the_references() {
        let client = WgpuRuntime::client(&WgpuDevice::default());
        for (planes, h, w) in [(3, 5, 7), (2, 8, 8), (1, 1, 4), (4, 16, 3)] {
            let x: Vec<f32> = crate::random_hu(planes * h * w, 11)
                .iter()
                .map(|v| v / 1000.0)
                .collect();
            let g: Vec<f32> = crate::random_hu(planes * 4 * h * w, 12)
                .iter()
                .map(|v| v / 1000.0)
                .collect();
            let y = launch_upsample2x(
                &client,
                client.create_from_slice(f32::as_bytes(&x)),
                planes,
                h,
                w,
            );
            let y = f32::from_bytes(&client.read_one_unchecked(y)).to_vec();
            let err = crate::max_abs_diff(&upsample2x_reference(&x, planes, h, w), &y);
            assert!(err < 1e-5, "forward {planes}×{h}×{w}: {err}");
            let gx = launch_upsample2x_backward(
                &client,
                client.create_from_slice(f32::as_bytes(&g)),
                planes,
                h,
                w,
            );
            let gx = f32::from_bytes(&client.read_one_unchecked(gx)).to_vec();
            let err = crate::max_abs_diff(&upsample2x_backward_reference(&g, planes, h, w), &gx);
            assert!(err < 1e-4, "backward {planes}×{h}×{w}: {err}");
        }
    }

    /// The backward is the forward's adjoint: ⟨U x, g⟩ = ⟨x, Uᵀ g⟩ for random x and g.
    #[test]
    fn backward_reference_is_the_adjoint_of_the_forward() {
        let (planes, h, w) = (2, 6, 9);
        let x: Vec<f32> = crate::random_hu(planes * h * w, 3)
            .iter()
            .map(|v| v / 1000.0)
            .collect();
        let g: Vec<f32> = crate::random_hu(planes * 4 * h * w, 4)
            .iter()
            .map(|v| v / 1000.0)
            .collect();
        let ux = upsample2x_reference(&x, planes, h, w);
        let utg = upsample2x_backward_reference(&g, planes, h, w);
        let lhs: f64 = ux
            .iter()
            .zip(&g)
            .map(|(a, b)| (*a as f64) * (*b as f64))
            .sum();
        let rhs: f64 = x
            .iter()
            .zip(&utg)
            .map(|(a, b)| (*a as f64) * (*b as f64))
            .sum();
        assert!(
            (lhs - rhs).abs() < 1e-3 * lhs.abs().max(1.0),
            "{lhs} vs {rhs}"
        );
    }
}
