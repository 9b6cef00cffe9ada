//! One checked wrapper around the `gemm` crate's matrix product for the host convolutions:
//! operands are read through strides (a transpose or a block of a wider matrix is never
//! copied), and every extent is asserted against the slice it reads before the one `unsafe`
//! call.
//!
//! Why `gemm` and not `matrixmultiply` (burn-ndarray's): the convolutions' products are
//! skinny (a few output channels against 10⁵ positions, or a long inner dimension between two
//! short ones), where `matrixmultiply` packs the whole wide operand and ran at 1–9 GFlop/s on
//! the 2-core machine against `gemm`'s 9–45 (BENCHMARKS.md, "3D GAN on the host"); and `gemm`
//! runs on rayon's pool, which the rest of the CPU backend uses, instead of a second pool of its
//! own competing for the same cores. It splits the output among threads and sums each entry's
//! products in an order fixed by the shape and the cache sizes, so results do not depend on
//! the thread count.

/// A `rows × cols` matrix in a slice: entry `(r, c)` at `r · row_stride + c · col_stride`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    values: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Mat<'a> {
    /// A row-major matrix.
    pub(crate) fn new(values: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::strided(values, rows, cols, cols)
    }

    /// A row-major block whose rows lie `row_stride` apart (the leading columns of each row of
    /// a wider matrix).
    pub(crate) fn strided(values: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        Self {
            values,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }

    /// The transpose, read in place.
    pub(crate) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// One past the largest index the matrix reads (0 when empty).
    fn extent(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            return 0;
        }
        (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride + 1
    }
}

/// `c = a · b + beta · c`, where `c` is row-major `a.rows × b.cols` with rows `ldc` apart.
pub(crate) fn gemm_strided(a: Mat, b: Mat, beta: f32, c: &mut [f32], ldc: usize) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "inner dimensions differ");
    assert!(ldc >= n, "output rows overlap");
    assert!(
        a.values.len() >= a.extent() && b.values.len() >= b.extent(),
        "an operand is shorter than its shape"
    );
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        c.len() > (m - 1) * ldc + n - 1,
        "the output is shorter than its shape"
    );
    // SAFETY: every index each operand's strides reach is inside its slice (asserted above),
    // and the output's rows are disjoint (ldc ≥ n).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            beta != 0.0,
            a.values.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.values.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            beta,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
}

/// `c = a · b + beta · c`, `c` row-major `a.rows × b.cols`.
pub(crate) fn gemm(a: Mat, b: Mat, beta: f32, c: &mut [f32]) {
    let n = b.cols;
    gemm_strided(a, b, beta, c, n);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every combination of transposed operands and a strided block, against plain loops.
    #[test]
    fn strided_products_match_plain_loops() {
        let (m, k, n) = (5, 7, 6);
        let a = covflow_kernels::random_unit(m * k, 1);
        let b = covflow_kernels::random_unit(k * n, 2);
        let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let want: Vec<f32> = (0..m * n)
            .map(|i| (0..k).map(|j| a[i / n * k + j] * b[j * n + i % n]).sum())
            .collect();
        let operands = [
            (Mat::new(&a, m, k), Mat::new(&b, k, n)),
            (Mat::new(&at, k, m).t(), Mat::new(&b, k, n)),
            (Mat::new(&a, m, k), Mat::new(&bt, n, k).t()),
            (Mat::new(&at, k, m).t(), Mat::new(&bt, n, k).t()),
        ];
        for (x, y) in operands {
            // Into the middle columns of a wider output that already holds ones (beta = 1).
            let ldc = n + 3;
            let mut c = vec![1.0f32; m * ldc];
            gemm_strided(x, y, 1.0, &mut c[2..], ldc);
            for i in 0..m * n {
                let got = c[2 + i / n * ldc + i % n];
                assert!((got - 1.0 - want[i]).abs() < 1e-5, "{got} vs {}", want[i]);
            }
            assert_eq!(c[0], 1.0, "untouched column");
        }
    }
}
