//! Kernel checks and timings on a device: each kernel against its CPU reference at MosMed sizes,
//! its time, its effective bandwidth and that bandwidth as a share of a plain copy's, measured in
//! the same run (`covflow bench kernels`, and `scripts/gpu-check.sh` on a GPU).

use std::time::Instant;

use cubecl::prelude::*;

use crate::blur::{blur_axis_kernel, blur_axis_reference, gaussian_weights};
use crate::ccl::{label_components_reference, launch_label_components};
use crate::morphology::{Morph, ellipsoid_offsets, launch_morph, morph_reference};
use crate::resample::{resample_window_kernel, resample_window_reference};
use crate::upsample::{
    launch_upsample2x, launch_upsample2x_backward, upsample2x_backward_reference,
    upsample2x_reference,
};

/// Device-to-device copy, the bandwidth reference.
#[cube(launch)]
pub fn copy_kernel(input: &Array<f32>, output: &mut Array<f32>) {
    if ABSOLUTE_POS < output.len() {
        output[ABSOLUTE_POS] = input[ABSOLUTE_POS];
    }
}

/// One line of the report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KernelReport {
    /// Kernel name.
    pub kernel: String,
    /// Problem size, in words.
    pub size: String,
    /// Largest absolute difference from the CPU reference (NaN when not checked); for the mask
    /// kernels, the number of voxels that differ.
    pub max_error: f32,
    /// Median time of one launch, milliseconds.
    pub ms: f64,
    /// Bytes read once plus bytes written, per second.
    pub gb_per_s: f64,
    /// `gb_per_s` as a share of the copy's, measured in the same run.
    pub percent_of_copy: f64,
}

fn median_ms<R: Runtime>(client: &ComputeClient<R>, reps: usize, mut launch: impl FnMut()) -> f64 {
    launch();
    let _ = cubecl::future::block_on(client.sync());
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            launch();
            let _ = cubecl::future::block_on(client.sync());
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    times[times.len() / 2]
}

/// Checks and times every kernel on `client`'s device.
pub fn bench_kernels<R: Runtime>(client: &ComputeClient<R>, reps: usize) -> Vec<KernelReport> {
    let mut reports = Vec::new();
    let threads = 256u32;

    // The copy reference: a MosMed volume's worth of float32, 512 × 512 × 41.
    let n = 512 * 512 * 41;
    let data = crate::random_hu(n, 1);
    let src = client.create_from_slice(f32::as_bytes(&data));
    let dst = client.empty(n * 4);
    let copy_ms = median_ms(client, reps, || {
        copy_kernel::launch::<R>(
            client,
            crate::cube_count_for(n, threads),
            CubeDim::new_1d(threads),
            unsafe { ArrayArg::from_raw_parts(src.clone(), n) },
            unsafe { ArrayArg::from_raw_parts(dst.clone(), n) },
        );
    });
    let copied = f32::from_bytes(&client.read_one_unchecked(dst.clone())).to_vec();
    let copy_err = if copied == data { 0.0 } else { f32::INFINITY };
    let copy_gbs = (2 * n * 4) as f64 / (copy_ms * 1e-3) / 1e9;
    reports.push(KernelReport {
        kernel: "copy".into(),
        size: "512x512x41".into(),
        max_error: copy_err,
        ms: copy_ms,
        gb_per_s: copy_gbs,
        percent_of_copy: 100.0,
    });

    // Resample + window, as the preprocessing uses it: a MosMed study to the model's grid, and
    // an upsampling of the same volume (more output than input).
    for (shape, out) in [
        ([41usize, 512, 512], [32usize, 128, 128]),
        ([41, 512, 512], [64, 512, 512]),
    ] {
        let n_in = shape.iter().product::<usize>();
        let n_out = out.iter().product::<usize>();
        let input = crate::random_hu(n_in, 2);
        let inh = client.create_from_slice(f32::as_bytes(&input));
        let outh = client.empty(n_out * 4);
        let ms = median_ms(client, reps, || {
            resample_window_kernel::launch::<R>(
                client,
                crate::cube_count_for(n_out, threads),
                CubeDim::new_1d(threads),
                unsafe { ArrayArg::from_raw_parts(inh.clone(), n_in) },
                unsafe { ArrayArg::from_raw_parts(outh.clone(), n_out) },
                shape[0] as u32,
                shape[1] as u32,
                shape[2] as u32,
                out[0] as u32,
                out[1] as u32,
                out[2] as u32,
                -1000.0,
                400.0,
                1,
            );
        });
        let got = f32::from_bytes(&client.read_one_unchecked(outh)).to_vec();
        let want = resample_window_reference(&input, shape, out, Some((-1000.0, 400.0)));
        let err = crate::max_abs_diff(&want, &got);
        let gbs = ((n_in + n_out) * 4) as f64 / (ms * 1e-3) / 1e9;
        reports.push(KernelReport {
            kernel: "resample+window".into(),
            size: format!(
                "{}x{}x{} -> {}x{}x{}",
                shape[0], shape[1], shape[2], out[0], out[1], out[2]
            ),
            max_error: err,
            ms,
            gb_per_s: gbs,
            percent_of_copy: 100.0 * gbs / copy_gbs,
        });
    }
    // The anti-aliasing prefilter along each axis of a MosMed volume (σ for a 4× shrink).
    let shape = [41usize, 512, 512];
    let strides = [512 * 512, 512, 1];
    let w = gaussian_weights(1.5);
    let wh = client.create_from_slice(f32::as_bytes(&w));
    let outh = client.empty(n * 4);
    for axis in 0..3 {
        let ms = median_ms(client, reps, || {
            blur_axis_kernel::launch::<R>(
                client,
                crate::cube_count_for(n, threads),
                CubeDim::new_1d(threads),
                unsafe { ArrayArg::from_raw_parts(src.clone(), n) },
                unsafe { ArrayArg::from_raw_parts(wh.clone(), w.len()) },
                unsafe { ArrayArg::from_raw_parts(outh.clone(), n) },
                shape[axis] as u32,
                strides[axis] as u32,
            );
        });
        let got = f32::from_bytes(&client.read_one_unchecked(outh.clone())).to_vec();
        let want = blur_axis_reference(&data, shape, axis, &w);
        let err = crate::max_abs_diff(&want, &got);
        let gbs = (2 * n * 4) as f64 / (ms * 1e-3) / 1e9;
        reports.push(KernelReport {
            kernel: format!("gaussian blur axis {axis} (13 taps)"),
            size: "41x512x512".into(),
            max_error: err,
            ms,
            gb_per_s: gbs,
            percent_of_copy: 100.0 * gbs / copy_gbs,
        });
    }
    // The TransUNet decoder's ×2 upsampling and its backward at the first decoder stage's size
    // (batch 8, 1024 channels of 8 × 8 → 16 × 16), as training runs them.
    let (planes, h, w2) = (8 * 1024, 8, 8);
    let small: Vec<f32> = crate::random_hu(planes * h * w2, 5)
        .iter()
        .map(|v| v / 1000.0)
        .collect();
    let big: Vec<f32> = crate::random_hu(4 * small.len(), 6)
        .iter()
        .map(|v| v / 1000.0)
        .collect();
    let small_h = client.create_from_slice(f32::as_bytes(&small));
    let big_h = client.create_from_slice(f32::as_bytes(&big));
    for backward in [false, true] {
        let mut out = None;
        let ms = median_ms(client, reps, || {
            out = Some(if backward {
                launch_upsample2x_backward(client, big_h.clone(), planes, h, w2)
            } else {
                launch_upsample2x(client, small_h.clone(), planes, h, w2)
            });
        });
        let got = f32::from_bytes(&client.read_one_unchecked(out.expect("launched"))).to_vec();
        let want = if backward {
            upsample2x_backward_reference(&big, planes, h, w2)
        } else {
            upsample2x_reference(&small, planes, h, w2)
        };
        let gbs = ((small.len() + big.len()) * 4) as f64 / (ms * 1e-3) / 1e9;
        reports.push(KernelReport {
            kernel: format!(
                "upsample x2 bilinear{}",
                if backward { " backward" } else { "" }
            ),
            size: format!("8x1024x{h}x{w2} <-> 8x1024x{}x{}", 2 * h, 2 * w2),
            max_error: crate::max_abs_diff(&want, &got),
            ms,
            gb_per_s: gbs,
            percent_of_copy: 100.0 * gbs / copy_gbs,
        });
    }

    // Connected components of a blobby mask (white noise smoothed, thresholded at its median:
    // large tangled components, the hard case), init + 3 merges + compress, as the lung mask runs.
    let mut field = data.clone();
    for axis in 0..3 {
        field = blur_axis_reference(&field, shape, axis, &w);
    }
    let mut sorted = field.clone();
    sorted.sort_by(f32::total_cmp);
    let median = sorted[n / 2];
    let mask: Vec<u8> = field.iter().map(|v| (*v < median) as u8).collect();
    let words: Vec<u32> = mask.iter().map(|&m| m as u32).collect();
    let mask_h = client.create_from_slice(u32::as_bytes(&words));
    let labels_h = client.empty(n * 4);
    let ms = median_ms(client, reps, || {
        launch_label_components(client, &mask_h, &labels_h, shape, [true; 3])
    });
    let got = u32::from_bytes(&client.read_one_unchecked(labels_h)).to_vec();
    let want = label_components_reference(&mask, shape, [true; 3]);
    let wrong = got.iter().zip(&want).filter(|(a, b)| a != b).count();
    // Bytes: the mask read and the labels written once per pass (5 passes).
    let gbs = (5 * 2 * n * 4) as f64 / (ms * 1e-3) / 1e9;
    reports.push(KernelReport {
        kernel: "connected components (3-D, 6-conn.)".into(),
        size: format!(
            "41x512x512, {} components",
            want.iter()
                .enumerate()
                .filter(|(i, l)| **l == *i as u32)
                .count()
        ),
        max_error: wrong as f32,
        ms,
        gb_per_s: gbs,
        percent_of_copy: 100.0 * gbs / copy_gbs,
    });

    // Dilation by the lung mask's closing element at MosMed's in-plane spacing (5 mm / 0.7 mm).
    let se = ellipsoid_offsets([0.0, 5.0 / 0.7, 5.0 / 0.7]);
    let flat: Vec<i32> = se.iter().flatten().copied().collect();
    let off_h = client.create_from_slice(i32::as_bytes(&flat));
    let out_h = client.empty(n * 4);
    let ms = median_ms(client, reps, || {
        launch_morph(
            client,
            &mask_h,
            &off_h,
            se.len(),
            &out_h,
            shape,
            Morph::Dilate,
        )
    });
    let got: Vec<u8> = u32::from_bytes(&client.read_one_unchecked(out_h))
        .iter()
        .map(|&v| v as u8)
        .collect();
    let want = morph_reference(&mask, shape, &se, Morph::Dilate);
    let wrong = got.iter().zip(&want).filter(|(a, b)| a != b).count();
    let gbs = (2 * n * 4) as f64 / (ms * 1e-3) / 1e9;
    reports.push(KernelReport {
        kernel: format!("dilate ({}-voxel disk)", se.len()),
        size: "41x512x512".into(),
        max_error: wrong as f32,
        ms,
        gb_per_s: gbs,
        percent_of_copy: 100.0 * gbs / copy_gbs,
    });

    // The GAN discriminator's first pooling of one volume: 32 channels of the 30 × 126 × 126
    // that its first valid convolution leaves of a 32 × 128 × 128 crop (61 MB; the reference
    // batch of 5 would exceed WebGPU's largest buffer).
    let (planes, dims) = (32, [30usize, 126, 126]);
    let n_in = planes * dims.iter().product::<usize>();
    let n_out = planes * crate::pooled_shape(dims).iter().product::<usize>();
    let x = crate::random_hu(n_in, 7);
    let g = crate::random_hu(n_out, 8);
    let (xh, gh) = (
        client.create_from_slice(f32::as_bytes(&x)),
        client.create_from_slice(f32::as_bytes(&g)),
    );
    for backward in [false, true] {
        let mut out = None;
        let ms = median_ms(client, reps, || {
            out = Some(if backward {
                crate::launch_max_pool3d_backward(client, xh.clone(), gh.clone(), planes, dims)
            } else {
                crate::launch_max_pool3d(client, xh.clone(), planes, dims)
            });
        });
        let got = f32::from_bytes(&client.read_one_unchecked(out.expect("launched"))).to_vec();
        let (want, bytes) = if backward {
            let w = crate::max_pool3d_backward_reference(&x, &g, planes, dims);
            (w, (2 * n_in + n_out) * 4)
        } else {
            (
                crate::max_pool3d_reference(&x, planes, dims),
                (n_in + n_out) * 4,
            )
        };
        let gbs = bytes as f64 / (ms * 1e-3) / 1e9;
        reports.push(KernelReport {
            kernel: format!("max-pool 3-D{}", if backward { " backward" } else { "" }),
            size: "32x30x126x126".into(),
            max_error: crate::max_abs_diff(&want, &got[..want.len()]),
            ms,
            gb_per_s: gbs,
            percent_of_copy: 100.0 * gbs / copy_gbs,
        });
    }

    // The augmentation of one reference batch: 8 of 32 slices of 5 volumes, 128 × 128, 10
    // octaves. Compute-bound: its bandwidth is only the fields written.
    let fields: Vec<_> = (0..40u64)
        .map(|k| {
            let f = crate::perlin::Fractal {
                scale: 10.0 + k as f32 / 2.0,
                octaves: 10,
                persistence: if k % 2 == 0 { 0.5 } else { -0.5 },
                lacunarity: 2.0,
            };
            (crate::perlin::Permutation::seeded(k), f)
        })
        .collect();
    let mut out = None;
    let ms = median_ms(client, reps, || {
        out = Some(crate::perlin::launch_fractal_slices(
            client, &fields, 128, 128,
        ));
    });
    let got = f32::from_bytes(&client.read_one_unchecked(out.expect("launched"))).to_vec();
    let want = crate::perlin::fractal_slices(&fields, 128, 128);
    let gbs = (want.len() * 4) as f64 / (ms * 1e-3) / 1e9;
    reports.push(KernelReport {
        kernel: "perlin fBm (10 octaves)".into(),
        size: "40x128x128".into(),
        max_error: crate::max_abs_diff(&want, &got),
        ms,
        gb_per_s: gbs,
        percent_of_copy: 100.0 * gbs / copy_gbs,
    });

    // The pseudo-mask pass over one reference crop (32 × 128 × 128): ranges, then the fused pass.
    let dims = [32usize, 128, 128];
    let n_v = dims.iter().product::<usize>();
    let scan: Vec<f32> = crate::random_hu(n_v, 9).iter().map(|v| v / 1e3).collect();
    let twin: Vec<f32> = crate::random_hu(n_v, 10).iter().map(|v| v / 1e3).collect();
    let lung: Vec<f32> = scan.iter().map(|v| f32::from(*v > 0.0)).collect();
    let up = |v: &[f32]| client.create_from_slice(f32::as_bytes(v));
    let (sh, th, lh) = (up(&scan), up(&twin), up(&lung));
    let mut out = None;
    let ms = median_ms(client, reps, || {
        out = Some(crate::launch_pseudo_mask(
            client,
            sh.clone(),
            th.clone(),
            lh.clone(),
            dims,
        ));
    });
    let (diff, _) = out.expect("launched");
    let got = f32::from_bytes(&client.read_one_unchecked(diff)).to_vec();
    let (want, _) = crate::pseudo_mask_reference(&scan, &twin, &lung, dims);
    // Scan and twin read twice (ranges, then the pass), the lung once, the difference written.
    let gbs = (6 * n_v * 4) as f64 / (ms * 1e-3) / 1e9;
    reports.push(KernelReport {
        kernel: "pseudo-mask pass (ranges + fused)".into(),
        size: "32x128x128".into(),
        max_error: crate::max_abs_diff(&want, &got),
        ms,
        gb_per_s: gbs,
        percent_of_copy: 100.0 * gbs / copy_gbs,
    });

    // The evaluation's per-slice counts over one reference crop (32 × 128 × 128).
    let score: Vec<f32> = scan.iter().map(|v| v.abs()).collect();
    let lesion: Vec<f32> = twin.iter().map(|v| f32::from(*v > 0.5)).collect();
    let (sc, le, lu) = (up(&score), up(&lesion), up(&lung));
    let mut out = None;
    let ms = median_ms(client, reps, || {
        out = Some(crate::launch_slice_counts(
            client,
            sc.clone(),
            le.clone(),
            lu.clone(),
            dims,
            0.2,
        ));
    });
    let got = u32::from_bytes(&client.read_one_unchecked(out.expect("launched"))).to_vec();
    let want: Vec<u32> = crate::slice_counts_reference(&score, &lesion, &lung, dims, 0.2)
        .into_iter()
        .flatten()
        .collect();
    // The score read twice (maximum, then counts), the masks once.
    let gbs = (4 * n_v * 4) as f64 / (ms * 1e-3) / 1e9;
    reports.push(KernelReport {
        kernel: "slice counts (max + confusion)".into(),
        size: "32x128x128".into(),
        max_error: want.iter().zip(&got).filter(|(a, b)| a != b).count() as f32,
        ms,
        gb_per_s: gbs,
        percent_of_copy: 100.0 * gbs / copy_gbs,
    });

    // One Adam step of a 4 M-element parameter tensor (the TransUNet's largest are 1–9 M).
    let n_a = 1 << 22;
    let param: Vec<f32> = crate::random_hu(n_a, 13).iter().map(|v| v * 1e-3).collect();
    let grad: Vec<f32> = crate::random_hu(n_a, 14).iter().map(|v| v * 1e-4).collect();
    let m: Vec<f32> = crate::random_hu(n_a, 15).iter().map(|v| v * 1e-5).collect();
    let v: Vec<f32> = crate::random_hu(n_a, 16)
        .iter()
        .map(|v| (v * 1e-6).abs())
        .collect();
    let s = crate::AdamScalars::new(5e-5, 0.9, 0.999, 1e-5, 7);
    let (ph, gh, mh, vh) = (up(&param), up(&grad), up(&m), up(&v));
    let mut out = None;
    let ms = median_ms(client, reps, || {
        out = Some(crate::launch_adam(
            client,
            ph.clone(),
            gh.clone(),
            mh.clone(),
            vh.clone(),
            n_a,
            s,
            false,
        ));
    });
    let (p2, _, _) = out.expect("launched");
    let got = f32::from_bytes(&client.read_one_unchecked(p2)).to_vec();
    let (want, _, _) = crate::adam_reference(&param, &grad, &m, &v, s, false);
    // Parameter, gradient and both moments read; parameter and moments written.
    let gbs = (7 * n_a * 4) as f64 / (ms * 1e-3) / 1e9;
    reports.push(KernelReport {
        kernel: "Adam step".into(),
        size: "4194304".into(),
        max_error: crate::max_abs_diff(&want, &got),
        ms,
        gb_per_s: gbs,
        percent_of_copy: 100.0 * gbs / copy_gbs,
    });

    // The segmenter's pixel losses on the reference batch (8 slices of 128²): forward (partial
    // sums; the error is the relative error of the two means) and backward.
    let n_l = 8 * 128 * 128;
    let logits: Vec<f32> = crate::random_hu(n_l, 11)
        .iter()
        .map(|v| v / 200.0)
        .collect();
    let target: Vec<f32> = crate::random_hu(n_l, 12)
        .iter()
        .map(|v| f32::from(*v > 500.0))
        .collect();
    let (lh, th) = (up(&logits), up(&target));
    let mut out = None;
    let ms = median_ms(client, reps, || {
        out = Some(crate::launch_pixel_losses(
            client,
            lh.clone(),
            th.clone(),
            n_l,
            2.0,
        ));
    });
    let partials = f32::from_bytes(&client.read_one_unchecked(out.expect("launched"))).to_vec();
    let (want_m, want_s) = crate::pixel_losses_reference(&logits, &target, 2.0);
    let sum = |k: usize| {
        partials
            .iter()
            .skip(k)
            .step_by(2)
            .map(|&v| f64::from(v))
            .sum::<f64>()
    };
    let err = ((sum(0) / n_l as f64 - want_m).abs() / want_m)
        .max((sum(1) / n_l as f64 - want_s).abs() / want_s);
    let gbs = (2 * n_l * 4) as f64 / (ms * 1e-3) / 1e9;
    reports.push(KernelReport {
        kernel: "pixel losses (MSE + sensitivity)".into(),
        size: "8x128x128".into(),
        max_error: err as f32,
        ms,
        gb_per_s: gbs,
        percent_of_copy: 100.0 * gbs / copy_gbs,
    });
    let gh = up(&[0.7, 1.3]);
    let mut out = None;
    let ms = median_ms(client, reps, || {
        out = Some(crate::launch_pixel_losses_backward(
            client,
            lh.clone(),
            th.clone(),
            gh.clone(),
            n_l,
            2.0,
        ));
    });
    let got = f32::from_bytes(&client.read_one_unchecked(out.expect("launched")))[..n_l].to_vec();
    let want = crate::pixel_losses_backward_reference(&logits, &target, [0.7, 1.3], 2.0);
    let gbs = (3 * n_l * 4) as f64 / (ms * 1e-3) / 1e9;
    reports.push(KernelReport {
        kernel: "pixel losses backward".into(),
        size: "8x128x128".into(),
        max_error: crate::max_abs_diff(&want, &got),
        ms,
        gb_per_s: gbs,
        percent_of_copy: 100.0 * gbs / copy_gbs,
    });
    // BatchNorm + ReLU at the seed TransUNet's largest layer (the stem's output, batch 8:
    // 8 × 128 × 64²): training forward (statistics, then normalisation) and backward.
    {
        use crate::batch_norm::*;
        let layout = ChannelLayout {
            batch: 8,
            channels: 128,
            spatial: 64 * 64,
        };
        let (n_b, c) = (layout.len(), layout.channels);
        let x: Vec<f32> = crate::random_hu(n_b, 17)
            .iter()
            .map(|v| v / 500.0)
            .collect();
        let g: Vec<f32> = crate::random_hu(n_b, 18).iter().map(|v| v / 1e4).collect();
        let ones = vec![1.0f32; c];
        let zeros = vec![0.0f32; c];
        let (xh, gh) = (up(&x), up(&g));
        let affine = Affine {
            gamma: up(&ones),
            beta: up(&zeros),
        };
        let mut out = None;
        let ms = median_ms(client, reps, || {
            let running = ChannelBuffers {
                mean: up(&zeros),
                var: up(&ones),
            };
            let (batch, _) = launch_batch_stats(client, xh.clone(), layout, running, 0.1);
            let y =
                launch_batch_norm_apply(client, xh.clone(), layout, &batch, &affine, 1e-5, true);
            out = Some((batch, y));
        });
        let (batch, yh) = out.expect("launched");
        let want = batch_stats_reference(&x, layout, &zeros, &ones, 0.1);
        let want_y = batch_norm_apply_reference(
            &x, layout, &want.mean, &want.var, &ones, &zeros, 1e-5, true,
        );
        let got_y = f32::from_bytes(&client.read_one_unchecked(yh.clone())).to_vec();
        // x read twice for the statistics and once for the output, y written.
        let gbs = (4 * n_b * 4) as f64 / (ms * 1e-3) / 1e9;
        reports.push(KernelReport {
            kernel: "BatchNorm+ReLU forward".into(),
            size: "8x128x64x64".into(),
            max_error: crate::max_abs_diff(&want_y, &got_y),
            ms,
            gb_per_s: gbs,
            percent_of_copy: 100.0 * gbs / copy_gbs,
        });
        let saved = SavedForward {
            x: xh,
            y: yh,
            stats: batch,
            gamma: affine.gamma,
        };
        let mut out = None;
        let ms = median_ms(client, reps, || {
            out = Some(launch_batch_norm_backward(
                client,
                &saved,
                gh.clone(),
                layout,
                1e-5,
                true,
            ));
        });
        let (dx, _, _) = out.expect("launched");
        let want_g = batch_norm_backward_reference(
            &x, &want_y, &g, layout, &want.mean, &want.var, &ones, 1e-5, true,
        );
        let got = f32::from_bytes(&client.read_one_unchecked(dx)).to_vec();
        // x, y and the gradient read twice, the input gradient written.
        let gbs = (7 * n_b * 4) as f64 / (ms * 1e-3) / 1e9;
        reports.push(KernelReport {
            kernel: "BatchNorm+ReLU backward".into(),
            size: "8x128x64x64".into(),
            max_error: crate::max_abs_diff(&want_g.x, &got),
            ms,
            gb_per_s: gbs,
            percent_of_copy: 100.0 * gbs / copy_gbs,
        });
    }

    // The columns of the seed decoder's widest 3 × 3 convolution at batch 8 (256 channels of
    // 32², 9 × more columns than input) and their adjoint; both exact.
    {
        use crate::unfold::*;
        let u = Unfold {
            input: [8, 256, 32, 32],
            kernel: 3,
            stride: 1,
            padding: 1,
        };
        let n_x: usize = u.input.iter().product();
        let n_c: usize = u.columns_shape().iter().product();
        let x = crate::random_hu(n_x, 19);
        let xh = up(&x);
        let mut out = None;
        let ms = median_ms(client, reps, || {
            out = Some(launch_unfold(client, xh.clone(), u))
        });
        let got = f32::from_bytes(&client.read_one_unchecked(out.expect("launched"))).to_vec();
        let want = unfold_reference(&x, u);
        let gbs = ((n_x + n_c) * 4) as f64 / (ms * 1e-3) / 1e9;
        reports.push(KernelReport {
            kernel: "unfold (im2col)".into(),
            size: "8x256x32x32 k3".into(),
            max_error: want.iter().zip(&got).filter(|(a, b)| a != b).count() as f32,
            ms,
            gb_per_s: gbs,
            percent_of_copy: 100.0 * gbs / copy_gbs,
        });
        let cols = crate::random_hu(n_c, 20);
        let ch = up(&cols);
        let mut out = None;
        let ms = median_ms(client, reps, || {
            out = Some(launch_fold(client, ch.clone(), u))
        });
        let got = f32::from_bytes(&client.read_one_unchecked(out.expect("launched"))).to_vec();
        let want = fold_reference(&cols, u);
        let gbs = ((n_x + n_c) * 4) as f64 / (ms * 1e-3) / 1e9;
        reports.push(KernelReport {
            kernel: "fold (col2im)".into(),
            size: "8x256x32x32 k3".into(),
            max_error: want.iter().zip(&got).filter(|(a, b)| a != b).count() as f32,
            ms,
            gb_per_s: gbs,
            percent_of_copy: 100.0 * gbs / copy_gbs,
        });
    }

    reports
}
