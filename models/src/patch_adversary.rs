//! The local adversary's arithmetic ([`crate::Adversary::Patch`]): which cell of the
//! discriminator's last feature map sees how much lung, and the least-squares verdicts weighted
//! by it.
//!
//! The original discriminator averages its last feature map over the whole volume, so a
//! generator can win by dimming every voxel of a heavily infected lung a little. A patch
//! discriminator gives each cell (a 22-voxel-wide receptive field, one every 8 voxels) its own
//! logit; cells outside the lung (air, the crop's margin, the body wall) carry no information
//! about lesions, so each cell's squared error counts by the share of lung it sees. The losses
//! are least squares on the logits (LSGAN: real cells toward 1, generated toward 0), which keep
//! a gradient where a saturated sigmoid would not.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// Cells of the discriminator's last feature map along one axis of `n` voxels: three valid
/// 3-wide convolutions, each followed by a 2-wide pool (odd sizes floored).
fn cells_along(n: usize) -> usize {
    (0..3).fold(n, |n, _| n.saturating_sub(2) / 2)
}

/// The discriminator's cell grid for a volume of `shape` (depth, height, width).
pub fn cell_grid(shape: [usize; 3]) -> [usize; 3] {
    shape.map(cells_along)
}

/// One axis of the trunk's geometry applied to a mean instead of a convolution and a maximum:
/// a valid 3-wide box mean, then the mean of each pair (the last of an odd count dropped).
fn box_then_pair(values: &[f32], [d, h, w]: [usize; 3], axis: usize) -> (Vec<f32>, [usize; 3]) {
    let mut out_shape = [d, h, w];
    out_shape[axis] = out_shape[axis].saturating_sub(2) / 2;
    let [od, oh, ow] = out_shape;
    let stride = [h * w, w, 1][axis];
    let mut out = vec![0.0; od * oh * ow];
    for z in 0..od {
        for y in 0..oh {
            for x in 0..ow {
                let mut at = [z, y, x];
                // Output cell c covers inputs 2c .. 2c + 3 (two box means of three).
                at[axis] *= 2;
                let base = at[0] * h * w + at[1] * w + at[2];
                let sum: f32 = (0..4)
                    .map(|k| {
                        let weight = [1.0, 2.0, 2.0, 1.0][k];
                        weight * values[base + k * stride]
                    })
                    .sum();
                out[z * oh * ow + y * ow + x] = sum / 6.0;
            }
        }
    }
    (out, out_shape)
}

/// The share of lung each cell of the discriminator's last feature map sees: the lung mask
/// (`[D, H, W]` row-major, 0 or 1) carried through the trunk's geometry with means in place of
/// convolutions and maxima, so a cell wholly inside the lung reads 1, one wholly outside 0.
/// Cells in the row-major order of [`cell_grid`].
pub fn lung_share_per_cell(lung: &[f32], shape: [usize; 3]) -> Vec<f32> {
    let (mut values, mut dims) = (lung.to_vec(), shape);
    for _ in 0..3 {
        for axis in 0..3 {
            (values, dims) = box_then_pair(&values, dims, axis);
        }
    }
    values
}

/// The lung shares of a batch of lung masks as a `[N, cells]` tensor.
pub fn cell_weights<'a, B: Backend>(
    lungs: impl Iterator<Item = &'a [f32]>,
    shape: [usize; 3],
    device: &B::Device,
) -> Tensor<B, 2> {
    let cells: usize = cell_grid(shape).iter().product();
    let mut flat = Vec::new();
    for lung in lungs {
        flat.extend(lung_share_per_cell(lung, shape));
    }
    let n = flat.len() / cells.max(1);
    Tensor::from_data(TensorData::new(flat, [n, cells]), device)
}

/// `Σ w (logit − target)² / Σ w` over every cell of the batch: the least-squares verdict where
/// the lung is.
pub fn weighted_least_squares<B: Backend>(
    logits: Tensor<B, 2>,
    target: f32,
    weights: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let total = weights.clone().sum().clamp_min(1e-6);
    ((logits - target).powi_scalar(2) * weights).sum() / total
}

/// The lung-weighted share of cells whose logit is on the side of `real` (above ½ for real
/// healthy volumes, below for generated ones): the adversary's accuracy.
pub fn weighted_accuracy<B: Backend>(
    logits: &Tensor<B, 2>,
    weights: &Tensor<B, 2>,
    real: bool,
) -> f64 {
    let logits: Vec<f32> = logits
        .to_data()
        .convert::<f32>()
        .to_vec()
        .unwrap_or_default();
    let weights: Vec<f32> = weights
        .to_data()
        .convert::<f32>()
        .to_vec()
        .unwrap_or_default();
    let (mut right, mut total) = (0.0f64, 0.0f64);
    for (l, w) in logits.iter().zip(&weights) {
        total += *w as f64;
        if (*l > 0.5) == real {
            right += *w as f64;
        }
    }
    if total > 0.0 { right / total } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};

    type B = NdArray;

    /// The cells a voxel at `at` falls in, along each axis: cell c's receptive field is
    /// voxels 8c ..= 8c + 21 (pool, conv, pool, conv, pool, conv unrolled by hand).
    fn sees(cell: usize, at: usize) -> bool {
        (8 * cell..=8 * cell + 21).contains(&at)
    }

    #[test]
    fn the_cell_grid_follows_valid_convolutions_and_floored_pools() {
        assert_eq!(cell_grid([32, 64, 64]), [2, 6, 6]);
        assert_eq!(cell_grid([32, 128, 128]), [2, 14, 14]);
        assert_eq!(cell_grid([33, 40, 47]), [2, 3, 4]);
        assert_eq!(cell_grid([21, 22, 29]), [0, 1, 1]);
    }

    /// A lung of one voxel is seen by exactly the cells whose receptive field holds it; a
    /// whole lung reads 1 everywhere, no lung 0.
    #[test]
    fn each_cell_sees_the_lung_inside_its_receptive_field() {
        let shape = [33, 40, 47];
        let [d, h, w] = shape;
        let grid = cell_grid(shape);
        let len = d * h * w;
        assert!(
            lung_share_per_cell(&vec![1.0; len], shape)
                .iter()
                .all(|s| (s - 1.0).abs() < 1e-5)
        );
        assert!(
            lung_share_per_cell(&vec![0.0; len], shape)
                .iter()
                .all(|&s| s == 0.0)
        );
        for at in [
            [0, 0, 0],
            [9, 17, 30],
            [21, 39, 46],
            [16, 23, 8],
            [32, 8, 24],
        ] {
            let mut lung = vec![0.0; len];
            lung[at[0] * h * w + at[1] * w + at[2]] = 1.0;
            let share = lung_share_per_cell(&lung, shape);
            for cz in 0..grid[0] {
                for cy in 0..grid[1] {
                    for cx in 0..grid[2] {
                        let s = share[(cz * grid[1] + cy) * grid[2] + cx];
                        let inside = sees(cz, at[0]) && sees(cy, at[1]) && sees(cx, at[2]);
                        assert_eq!(
                            s > 0.0,
                            inside,
                            "voxel {at:?}, cell {:?}: {s}",
                            [cz, cy, cx]
                        );
                    }
                }
            }
        }
    }

    /// Values against the sums written out, and the gradient of the weighted loss against
    /// its closed form 2 w (l − t) / Σ w.
    #[test]
    fn the_weighted_verdicts_match_their_definitions() {
        let device = Default::default();
        let logits = [0.9f32, 0.2, -0.4, 1.3, 0.6, 0.0];
        let weights = [1.0f32, 0.5, 0.0, 0.25, 1.0, 0.75];
        let l =
            Tensor::<Autodiff<B>, 2>::from_data(TensorData::new(logits.to_vec(), [2, 3]), &device)
                .require_grad();
        let w =
            Tensor::<Autodiff<B>, 2>::from_data(TensorData::new(weights.to_vec(), [2, 3]), &device);
        let total: f32 = weights.iter().sum();
        let want: f32 = logits
            .iter()
            .zip(&weights)
            .map(|(l, w)| w * (l - 1.0).powi(2))
            .sum::<f32>()
            / total;
        let loss = weighted_least_squares(l.clone(), 1.0, w.clone());
        let got: f32 = loss.clone().into_scalar();
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        let grads = loss.backward();
        let g: Vec<f32> = l.grad(&grads).unwrap().into_data().to_vec().unwrap();
        for k in 0..6 {
            let want = 2.0 * weights[k] * (logits[k] - 1.0) / total;
            assert!((g[k] - want).abs() < 1e-6, "{k}: {} vs {want}", g[k]);
        }
        // Above ½ and called real: 0.9 (w 1), 1.3 (0.25), 0.6 (1) of 3.5.
        let real = weighted_accuracy(&l, &w, true);
        assert!((real - 2.25 / 3.5).abs() < 1e-9, "{real}");
        assert!((weighted_accuracy(&l, &w, false) - 1.25 / 3.5).abs() < 1e-9);
    }
}
