//! 2 × 2 × 2 max-pooling on the host over all cores, equal to the kernels' CPU references
//! (the first largest voxel of each window wins), which the CPU backend ran single-threaded
//! with index arithmetic per voxel, or as burn's 2-D pooling and a maximum over depth pairs
//! (five passes and their gradients).

use rayon::prelude::*;

/// The offset, within a window's four input rows `(dz, dy)` in row-major order, of the first
/// largest of the eight voxels of output column `x`: the kernels' canonical winner.
#[inline]
fn winner(rows: [&[f32]; 4], x: usize) -> (usize, usize) {
    let mut best = (0, 2 * x);
    for (r, row) in rows.iter().enumerate() {
        for i in [2 * x, 2 * x + 1] {
            if row[i] > rows[best.0][best.1] {
                best = (r, i);
            }
        }
    }
    best
}

/// The four input rows of output row `(z, y)` of one volume of `[d, h, w]`, as offsets.
fn window_rows([_, h, w]: [usize; 3], z: usize, y: usize) -> [usize; 4] {
    let row = |dz: usize, dy: usize| ((2 * z + dz) * h + 2 * y + dy) * w;
    [row(0, 0), row(0, 1), row(1, 0), row(1, 1)]
}

/// [`covflow_kernels::max_pool3d_reference`] over `[N, C, D, H, W]`, an output row at a time.
pub(crate) fn max_pool3d(x: &[f32], shape: [usize; 5]) -> Vec<f32> {
    let dims = [shape[2], shape[3], shape[4]];
    let [od, oh, ow] = covflow_kernels::pooled_shape(dims);
    let len: usize = dims.iter().product();
    let mut out = vec![0.0f32; shape[0] * shape[1] * od * oh * ow];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(ow).enumerate().for_each(|(r, line)| {
        let (v, z, y) = (r / (od * oh), r / oh % od, r % oh);
        let volume = &x[v * len..][..len];
        let rows = window_rows(dims, z, y).map(|o| &volume[o..][..dims[2]]);
        for (xo, out) in line.iter_mut().enumerate() {
            let (row, i) = winner(rows, xo);
            *out = rows[row][i];
        }
    });
    out
}

/// [`covflow_kernels::max_pool3d_backward_reference`] over `[N, C, D, H, W]`, a volume per task.
pub(crate) fn max_pool3d_backward(x: &[f32], grad: &[f32], shape: [usize; 5]) -> Vec<f32> {
    let dims = [shape[2], shape[3], shape[4]];
    let [od, oh, ow] = covflow_kernels::pooled_shape(dims);
    let (len, pooled) = (dims.iter().product::<usize>(), od * oh * ow);
    let mut out = vec![0.0f32; x.len()];
    if pooled == 0 {
        return out;
    }
    out.par_chunks_mut(len)
        .zip(x.par_chunks(len).zip(grad.par_chunks(pooled)))
        .for_each(|(dx, (volume, g))| {
            for (r, g) in g.chunks(ow).enumerate() {
                let offsets = window_rows(dims, r / oh, r % oh);
                let rows = offsets.map(|o| &volume[o..][..dims[2]]);
                for (xo, g) in g.iter().enumerate() {
                    let (row, i) = winner(rows, xo);
                    dx[offsets[row] + i] = *g;
                }
            }
        });
    out
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

    #[test]
    /// Odd sizes, and values with ties (ReLU zeros): the first largest voxel takes the gradient.
    fn pooling_equals_the_kernels_references() {
        let shapes = [
            [2, 3, 4, 6, 8],
            [1, 2, 5, 7, 6],
            [1, 1, 3, 3, 3],
            [2, 2, 6, 5, 9],
        ];
        for (i, shape) in shapes.into_iter().enumerate() {
            let planes = shape[0] * shape[1];
            let dims = [shape[2], shape[3], shape[4]];
            let x = random(shape.iter().product(), 40 + i as u64);
            let x: Vec<f32> = if i == 3 {
                x.iter().map(|v| v.max(0.0).round()).collect()
            } else {
                x
            };
            let y = max_pool3d(&x, shape);
            assert_eq!(y, covflow_kernels::max_pool3d_reference(&x, planes, dims));
            let g = random(y.len(), 50 + i as u64);
            assert_eq!(
                max_pool3d_backward(&x, &g, shape),
                covflow_kernels::max_pool3d_backward_reference(&x, &g, planes, dims)
            );
        }
    }
}
