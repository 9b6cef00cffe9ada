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
//! own competing for the same cores. It splits the output among threads, so results do not
//! depend on the thread count; left alone it would sum each entry in an order that depends on
//! the CPU (its K-blocks follow the L1, and some shapes sum SIMD lanes of the instruction set's
//! width), so [`gemm_strided`] fixes the order: a trained model's digest is the same on every
//! x86-64 CPU with FMA.

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

/// The longest stretch of the inner dimension one `gemm` call sums. `gemm` cuts K into blocks of
/// at least 512 sized by the CPU's L1, so a call of at most 512 is one block on every CPU, summed
/// in order; the stretches are then added in order too.
const K_STRETCH: usize = 512;

/// `c = a · b + beta · c`, where `c` is row-major `a.rows × b.cols` with rows `ldc` apart.
///
/// Every output entry is summed in the same order on every x86-64 CPU with FMA: the inner
/// dimension in stretches of [`K_STRETCH`], each one `gemm` block of fused multiply-adds from
/// zero, added to the entry in turn; and no operand pair is left contiguous along K, where
/// `gemm` would sum SIMD lanes horizontally, lanes as wide as the instruction set.
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
    if m == 1 || n == 1 {
        return through_two(a, b, beta, c, ldc);
    }
    if k == 0 {
        for row in c.chunks_mut(ldc).take(m) {
            row[..n]
                .iter_mut()
                .for_each(|v| *v = if beta == 0.0 { 0.0 } else { *v * beta });
        }
        return;
    }
    let copy;
    let (a, b) = if a.col_stride == 1 && b.row_stride == 1 {
        copy = k_outer(if m * k <= k * n { a.t() } else { b });
        if m * k <= k * n {
            (copy.view().t(), b)
        } else {
            (a, copy.view())
        }
    } else {
        (a, b)
    };
    for start in (0..k).step_by(K_STRETCH) {
        let len = K_STRETCH.min(k - start);
        let scale = if start == 0 { beta } else { 1.0 };
        product(
            a.columns(start, len),
            b.t().columns(start, len).t(),
            scale,
            c,
            ldc,
        );
    }
}

/// A matrix–vector product as a product of width 2 (the row or column read twice, through a
/// zero stride) into a scratch output: `gemm` has matrix–vector kernels whose rows past the
/// last full SIMD lane take a scalar path, and where that starts depends on the lane width.
fn through_two(a: Mat, b: Mat, beta: f32, c: &mut [f32], ldc: usize) {
    let (m, n) = (a.rows, b.cols);
    let (a2, b2) = (
        if m == 1 { a.repeated_row() } else { a },
        if n == 1 { b.t().repeated_row().t() } else { b },
    );
    let (m2, n2) = (a2.rows, b2.cols);
    let mut scratch = vec![0.0f32; m2 * n2];
    if beta != 0.0 {
        for i in 0..m2 {
            for j in 0..n2 {
                scratch[i * n2 + j] = c[i.min(m - 1) * ldc + j.min(n - 1)];
            }
        }
    }
    gemm_strided(a2, b2, beta, &mut scratch, n2);
    for i in 0..m {
        c[i * ldc..i * ldc + n].copy_from_slice(&scratch[i * n2..i * n2 + n]);
    }
}

/// An owned copy of `x` (`K × r`) laid out with K outer, its rows at least 2 apart.
struct KOuter {
    values: Vec<f32>,
    rows: usize,
    cols: usize,
    stride: usize,
}

impl KOuter {
    fn view(&self) -> Mat<'_> {
        Mat::strided(&self.values, self.rows, self.cols, self.stride)
    }
}

/// `x` copied row-major with rows at least 2 apart, so the copy is not contiguous along its rows'
/// index (a single column would otherwise be).
fn k_outer(x: Mat) -> KOuter {
    let stride = x.cols.max(2);
    let mut values = vec![0.0; x.rows * stride];
    for (r, row) in values.chunks_mut(stride).enumerate() {
        for (col, v) in row[..x.cols].iter_mut().enumerate() {
            *v = x.values[r * x.row_stride + col * x.col_stride];
        }
    }
    KOuter {
        values,
        rows: x.rows,
        cols: x.cols,
        stride,
    }
}

impl<'a> Mat<'a> {
    /// A one-row matrix as two equal rows, read in place.
    fn repeated_row(self) -> Self {
        Self {
            rows: 2,
            row_stride: 0,
            ..self
        }
    }

    /// Columns `start .. start + len`, read in place.
    fn columns(self, start: usize, len: usize) -> Self {
        let offset = if len == 0 { 0 } else { start * self.col_stride };
        Self {
            values: &self.values[offset.min(self.values.len())..],
            cols: len,
            ..self
        }
    }
}

/// One `gemm` call: `c = a · b + scale · c` (c not read when `scale` is 0).
fn product(a: Mat, b: Mat, scale: f32, c: &mut [f32], ldc: usize) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert!(a.values.len() >= a.extent() && b.values.len() >= b.extent());
    // SAFETY: every index each operand's strides reach is inside its slice (asserted above and
    // by the caller for the output), and the output's rows are disjoint (ldc ≥ n).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            scale != 0.0,
            a.values.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.values.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            scale,
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

    /// The order every entry is summed in, written out: stretches of `K_STRETCH` fused
    /// multiply-adds from zero, each added to the entry in turn (the first to `beta · c`).
    fn fixed_order(a: &Mat, b: &Mat, beta: f32, c: f32, i: usize, j: usize) -> f32 {
        let at = |r: usize, col: usize| a.values[r * a.row_stride + col * a.col_stride];
        let bt = |r: usize, col: usize| b.values[r * b.row_stride + col * b.col_stride];
        let mut total = if beta == 0.0 { 0.0 } else { beta * c };
        for start in (0..a.cols).step_by(K_STRETCH) {
            let mut acc = 0.0f32;
            for k in start..(start + K_STRETCH).min(a.cols) {
                acc = at(i, k).mul_add(bt(k, j), acc);
            }
            total = if start == 0 && beta == 0.0 {
                acc
            } else {
                total + acc
            };
        }
        total
    }

    /// Products bit for bit in the fixed order, on the shapes where `gemm` would otherwise pick
    /// an order by CPU: a long K (several of its blocks), small outputs and matrix–vector
    /// products with both operands contiguous along K (its horizontal kernels).
    #[test]
    fn products_sum_in_the_fixed_order_whatever_the_shape() {
        let k = 2 * K_STRETCH + 300;
        for (m, n) in [(24, 40), (2, 81), (1, 300), (300, 1), (1, 1), (70, 70)] {
            let a = covflow_kernels::random_unit(m * k, (m * 31 + n) as u64);
            let b = covflow_kernels::random_unit(k * n, (n * 17 + m) as u64);
            let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            // Row-major a with transposed b: both contiguous along K.
            for (x, y) in [
                (Mat::new(&a, m, k), Mat::new(&b, k, n)),
                (Mat::new(&a, m, k), Mat::new(&bt, n, k).t()),
            ] {
                for beta in [0.0, 1.0] {
                    let start = covflow_kernels::random_unit(m * n, 9);
                    let mut c = start.clone();
                    gemm_strided(x, y, beta, &mut c, n);
                    for i in 0..m {
                        for j in 0..n {
                            let want = fixed_order(&x, &y, beta, start[i * n + j], i, j);
                            assert_eq!(
                                c[i * n + j].to_bits(),
                                want.to_bits(),
                                "{m}×{k}×{n}, beta {beta}, entry ({i}, {j})"
                            );
                        }
                    }
                }
            }
        }
    }

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
