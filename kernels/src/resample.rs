//! Trilinear resampling of a 3-D volume to a new grid, fused with the CT intensity window.
//!
//! Voxel centres are aligned (`src = (dst + 0.5) · in/out − 0.5`, clamped to the volume), as
//! scipy's `zoom(grid_mode=True)` and skimage's `resize` do; with `window = Some((lo, hi))` each
//! output is `clamp((v − lo) / (hi − lo), 0, 1)` in the same pass, so the volume is read once and
//! written once. No anti-aliasing prefilter here: downsampling by more than 2× along an axis
//! should be preceded by a low-pass (see the issue notes).

use cubecl::prelude::*;

/// Shape `[d0, d1, d2]` of a row-major volume (`index = (i0·d1 + i1)·d2 + i2`).
pub type Shape3 = [usize; 3];

/// Plain CPU reference: what the kernel must compute.
///
/// ```
/// use covflow_kernels::resample_window_reference;
/// // 1-D ramp 0, 10, 20, 30 along the last axis, halved: samples at 0.5 and 2.5.
/// let v = [0.0, 10.0, 20.0, 30.0];
/// let out = resample_window_reference(&v, [1, 1, 4], [1, 1, 2], None);
/// assert_eq!(out, vec![5.0, 25.0]);
/// ```
pub fn resample_window_reference(
    input: &[f32],
    shape: Shape3,
    out_shape: Shape3,
    window: Option<(f32, f32)>,
) -> Vec<f32> {
    let [d0, d1, d2] = shape;
    let [o0, o1, o2] = out_shape;
    let src = |o: usize, d: usize, n: usize| -> (usize, usize, f32) {
        let s = ((o as f32 + 0.5) * (d as f32 / n as f32) - 0.5).clamp(0.0, (d - 1) as f32);
        let i0 = s.floor() as usize;
        let i1 = (i0 + 1).min(d - 1);
        (i0, i1, s - i0 as f32)
    };
    let at = |a: usize, b: usize, c: usize| input[(a * d1 + b) * d2 + c];
    let mut out = Vec::with_capacity(o0 * o1 * o2);
    for x in 0..o0 {
        let (a0, a1, ta) = src(x, d0, o0);
        for y in 0..o1 {
            let (b0, b1, tb) = src(y, d1, o1);
            for z in 0..o2 {
                let (c0, c1, tc) = src(z, d2, o2);
                let lerp = |p: f32, q: f32, t: f32| p + (q - p) * t;
                let v = lerp(
                    lerp(
                        lerp(at(a0, b0, c0), at(a0, b0, c1), tc),
                        lerp(at(a0, b1, c0), at(a0, b1, c1), tc),
                        tb,
                    ),
                    lerp(
                        lerp(at(a1, b0, c0), at(a1, b0, c1), tc),
                        lerp(at(a1, b1, c0), at(a1, b1, c1), tc),
                        tb,
                    ),
                    ta,
                );
                out.push(match window {
                    Some((lo, hi)) => ((v - lo) / (hi - lo)).clamp(0.0, 1.0),
                    None => v,
                });
            }
        }
    }
    out
}

#[cube]
fn source_coordinate(o: u32, d: u32, n: u32) -> f32 {
    let s = (f32::cast_from(o) + 0.5) * (f32::cast_from(d) / f32::cast_from(n)) - 0.5;
    f32::clamp(s, 0.0, f32::cast_from(d - 1))
}

/// One output voxel per unit.
#[cube(launch)]
pub fn resample_window_kernel(
    input: &Array<f32>,
    output: &mut Array<f32>,
    d0: u32,
    d1: u32,
    d2: u32,
    o0: u32,
    o1: u32,
    o2: u32,
    lo: f32,
    hi: f32,
    window: u32,
) {
    if ABSOLUTE_POS >= output.len() {
        terminate!();
    }
    let idx = ABSOLUTE_POS as u32;
    let z = idx % o2;
    let y = (idx / o2) % o1;
    let x = idx / (o1 * o2);

    let sa = source_coordinate(x, d0, o0);
    let sb = source_coordinate(y, d1, o1);
    let sc = source_coordinate(z, d2, o2);
    let a0 = u32::cast_from(f32::floor(sa));
    let b0 = u32::cast_from(f32::floor(sb));
    let c0 = u32::cast_from(f32::floor(sc));
    let a1 = u32::min(a0 + 1, d0 - 1);
    let b1 = u32::min(b0 + 1, d1 - 1);
    let c1 = u32::min(c0 + 1, d2 - 1);
    let ta = sa - f32::cast_from(a0);
    let tb = sb - f32::cast_from(b0);
    let tc = sc - f32::cast_from(c0);

    let r00 = (a0 * d1 + b0) * d2;
    let r01 = (a0 * d1 + b1) * d2;
    let r10 = (a1 * d1 + b0) * d2;
    let r11 = (a1 * d1 + b1) * d2;
    let v000 = input[(r00 + c0) as usize];
    let v001 = input[(r00 + c1) as usize];
    let v010 = input[(r01 + c0) as usize];
    let v011 = input[(r01 + c1) as usize];
    let v100 = input[(r10 + c0) as usize];
    let v101 = input[(r10 + c1) as usize];
    let v110 = input[(r11 + c0) as usize];
    let v111 = input[(r11 + c1) as usize];

    let v00 = v000 + (v001 - v000) * tc;
    let v01 = v010 + (v011 - v010) * tc;
    let v10 = v100 + (v101 - v100) * tc;
    let v11 = v110 + (v111 - v110) * tc;
    let v0 = v00 + (v01 - v00) * tb;
    let v1 = v10 + (v11 - v10) * tb;
    let mut v = v0 + (v1 - v0) * ta;
    if window == 1 {
        v = f32::clamp((v - lo) / (hi - lo), 0.0, 1.0);
    }
    output[ABSOLUTE_POS] = v;
}

/// Runs the kernel on any cubecl runtime and returns the output (synchronously).
pub fn resample_window<R: Runtime>(
    client: &ComputeClient<R>,
    input: &[f32],
    shape: Shape3,
    out_shape: Shape3,
    window: Option<(f32, f32)>,
) -> Vec<f32> {
    let n_out = out_shape.iter().product::<usize>();
    assert_eq!(
        input.len(),
        shape.iter().product::<usize>(),
        "input length must match its shape"
    );
    let input_handle = client.create_from_slice(f32::as_bytes(input));
    let output_handle = client.empty(n_out * size_of::<f32>());
    let threads = 256u32;
    let (lo, hi) = window.unwrap_or((0.0, 1.0));
    resample_window_kernel::launch::<R>(
        client,
        crate::cube_count_for(n_out, threads),
        CubeDim::new_1d(threads),
        unsafe { ArrayArg::from_raw_parts(input_handle, input.len()) },
        unsafe { ArrayArg::from_raw_parts(output_handle.clone(), n_out) },
        shape[0] as u32,
        shape[1] as u32,
        shape[2] as u32,
        out_shape[0] as u32,
        out_shape[1] as u32,
        out_shape[2] as u32,
        lo,
        hi,
        u32::from(window.is_some()),
    );
    let bytes = client.read_one_unchecked(output_handle);
    f32::from_bytes(&bytes).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cubecl::wgpu::{WgpuDevice, WgpuRuntime};

    /// The kernel on wgpu (Mesa's lavapipe on CPU-only machines) against the CPU reference, on
    /// fresh random volumes, up- and down-sampling, with and without the window.
    #[test]
    fn wgpu_kernel_matches_the_cpu_reference() {
        let client = WgpuRuntime::client(&WgpuDevice::default());
        for (seed, shape, out, window) in [
            (1, [9, 17, 5], [4, 8, 11], Some((-1000.0, 400.0))),
            (2, [16, 16, 3], [32, 8, 3], None),
            (3, [1, 7, 2], [3, 3, 5], Some((-1000.0, 400.0))),
        ] {
            let input = crate::random_hu(shape.iter().product(), seed);
            let want = resample_window_reference(&input, shape, out, window);
            let got = resample_window(&client, &input, shape, out, window);
            assert_eq!(got.len(), want.len());
            let scale = if window.is_some() { 1.0 } else { 3000.0 };
            let err = crate::max_abs_diff(&want, &got) / scale;
            assert!(
                err < 1e-5,
                "shape {shape:?} → {out:?}: max relative error {err}"
            );
        }
    }

    #[test]
    fn reference_keeps_constants_and_identity() {
        let v = crate::random_hu(4 * 5 * 6, 9);
        assert_eq!(resample_window_reference(&v, [4, 5, 6], [4, 5, 6], None), v);
        let c = vec![-300.0; 24];
        let out = resample_window_reference(&c, [2, 3, 4], [5, 1, 7], Some((-1000.0, 400.0)));
        assert!(out.iter().all(|x| (x - 0.5).abs() < 1e-6));
    }
}
