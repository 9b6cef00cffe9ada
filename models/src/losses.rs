//! The three losses of the pseudo-mask training (docs/method.md, stage 7).

use burn::tensor::activation::sigmoid;
use burn::tensor::{Tensor, TensorData, backend::Backend};

/// Enhanced supervised contrastive loss on L2-normalised features `[N, D]` with a class per row.
///
/// `S = exp(F·Fᵀ/τ)`; for row `i`, `pos = w·Σ_{j≠i, same class} S_ij`,
/// `neg = Σ_{other class} S_ij`; the loss is `mean_i −log(pos/(pos+neg))`.
/// The batch must hold at least two rows of each class present (else `pos` is empty): the seed
/// sampled one class only, which made this loss ≈ 0.
pub fn contrastive<B: Backend>(
    features: Tensor<B, 2>,
    labels: &[u8],
    temperature: f64,
    positive_weight: f64,
) -> Tensor<B, 1> {
    let [n, _] = features.dims();
    assert_eq!(n, labels.len(), "one label per feature row");
    let device = features.device();
    let norm = features
        .clone()
        .powf_scalar(2.0)
        .sum_dim(1)
        .sqrt()
        .clamp_min(1e-12);
    let f = features / norm;
    // Cosines are ≤ 1, so subtracting 1/τ keeps exp() ≤ 1 without changing any ratio.
    let logits = f.clone().matmul(f.transpose()).sub_scalar(1.0) / temperature;
    let s = logits.exp();
    let mut same = vec![0f32; n * n];
    let mut other = vec![0f32; n * n];
    for i in 0..n {
        for j in 0..n {
            if i != j && labels[i] == labels[j] {
                same[i * n + j] = 1.0;
            } else if labels[i] != labels[j] {
                other[i * n + j] = 1.0;
            }
        }
    }
    let same = Tensor::<B, 2>::from_data(TensorData::new(same, [n, n]), &device);
    let other = Tensor::<B, 2>::from_data(TensorData::new(other, [n, n]), &device);
    let pos = (s.clone() * same).sum_dim(1) * positive_weight;
    let neg = (s * other).sum_dim(1);
    let ratio = pos.clone() / (pos + neg).clamp_min(1e-30);
    ratio.clamp_min(1e-30).log().neg().mean()
}

/// Sensitivity-enhanced BCE: `BCE(p, t)·(1 + β·(1 − σ(p))·t)`, averaged. Missed lesion pixels
/// (target 1, low predicted probability) weigh up to `1 + β` times more.
pub fn sensitivity_bce<B: Backend>(
    logits: Tensor<B, 4>,
    target: Tensor<B, 4>,
    beta: f64,
) -> Tensor<B, 1> {
    // Stable BCE with logits: max(p, 0) − p·t + log(1 + e^{−|p|}).
    let bce = logits.clone().clamp_min(0.0) - logits.clone() * target.clone()
        + logits.clone().abs().neg().exp().log1p();
    let weight = (sigmoid(logits).neg().add_scalar(1.0) * target * beta).add_scalar(1.0);
    (bce * weight).mean()
}

/// Mean squared error between the predicted probability and the pseudo-mask.
pub fn mse<B: Backend>(logits: Tensor<B, 4>, target: Tensor<B, 4>) -> Tensor<B, 1> {
    (sigmoid(logits) - target).powf_scalar(2.0).mean()
}

/// [`mse`] and [`sensitivity_bce`] together, by the backend's fused kernel where it has one
/// ([`crate::ModelBackend::pixel_losses`]: one launch forward, one backward).
pub fn mse_and_sensitivity<B: crate::ModelBackend>(
    logits: Tensor<B, 4>,
    target: Tensor<B, 4>,
    beta: f64,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let both =
        Tensor::<B, 1>::from_primitive(burn::tensor::TensorPrimitive::Float(B::pixel_losses(
            logits.into_primitive().tensor(),
            target.into_primitive().tensor(),
            beta,
        )));
    (both.clone().narrow(0, 0, 1), both.narrow(0, 1, 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type B = NdArray;

    fn t2(v: Vec<f32>, shape: [usize; 2]) -> Tensor<B, 2> {
        Tensor::from_data(TensorData::new(v, shape), &Default::default())
    }

    #[test]
    fn contrastive_matches_a_hand_computation() {
        let f = vec![1.0, 0.0, 0.6, 0.8, 0.0, 1.0, -0.6, 0.8];
        let labels = [0u8, 0, 1, 1];
        let (tau, w) = (0.5, 1.5);
        let got: f32 = contrastive(t2(f.clone(), [4, 2]), &labels, tau, w).into_scalar();
        let row = |i: usize| [f[2 * i], f[2 * i + 1]];
        let mut want = 0.0f64;
        for i in 0..4 {
            let (mut pos, mut neg) = (0.0f64, 0.0f64);
            for j in 0..4 {
                if i == j {
                    continue;
                }
                let dot = (row(i)[0] * row(j)[0] + row(i)[1] * row(j)[1]) as f64;
                let s = (dot / tau).exp();
                if labels[i] == labels[j] {
                    pos += w * s;
                } else {
                    neg += s;
                }
            }
            want += -(pos / (pos + neg)).ln();
        }
        want /= 4.0;
        assert!((got as f64 - want).abs() < 1e-5, "{got} vs {want}");
    }

    #[test]
    fn sensitivity_weighs_missed_lesions() {
        let d = Default::default();
        let logits = Tensor::<B, 4>::from_data(TensorData::new(vec![-2.0f32], [1, 1, 1, 1]), &d);
        let hit = Tensor::<B, 4>::from_data(TensorData::new(vec![0.0f32], [1, 1, 1, 1]), &d);
        let miss = Tensor::<B, 4>::from_data(TensorData::new(vec![1.0f32], [1, 1, 1, 1]), &d);
        let l0: f32 = sensitivity_bce(logits.clone(), hit, 2.0).into_scalar();
        let l1: f32 = sensitivity_bce(logits, miss, 2.0).into_scalar();
        let p = 1.0 / (1.0 + 2f32.exp());
        assert!((l0 - (-(1.0 - p).ln())).abs() < 1e-5);
        assert!((l1 - (-(p.ln())) * (1.0 + 2.0 * (1.0 - p))).abs() < 1e-4);
    }

    /// Values and logit gradients of `a·mse + b·sensitivity`, fused (`fused`) or composed.
    use burn::tensor::ElementConversion;

    fn fused_or_plain<A>(
        logits: &[f32],
        target: &[f32],
        dims: [usize; 4],
        fused: bool,
    ) -> (Vec<f32>, Vec<f32>)
    where
        A: burn::tensor::backend::AutodiffBackend + crate::ModelBackend,
    {
        let device = Default::default();
        let l = Tensor::<A, 4>::from_data(TensorData::new(logits.to_vec(), dims), &device)
            .require_grad();
        let t = Tensor::<A, 4>::from_data(TensorData::new(target.to_vec(), dims), &device);
        let (m, s) = if fused {
            mse_and_sensitivity(l.clone(), t, 2.0)
        } else {
            (
                mse(l.clone(), t.clone()),
                sensitivity_bce(l.clone(), t, 2.0),
            )
        };
        let values = vec![
            m.clone().into_scalar().elem(),
            s.clone().into_scalar().elem(),
        ];
        let grads = (m * 0.7 + s * 1.3).backward();
        let g = l.grad(&grads).unwrap().into_data().to_vec().unwrap();
        (values, g)
    }

    fn random_batch(dims: [usize; 4]) -> (Vec<f32>, Vec<f32>) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let n: usize = dims.iter().product();
        let logits = (0..n).map(|_| rng.random_range(-8.0..8.0)).collect();
        let target = (0..n)
            .map(|_| {
                if rng.random::<f32>() < 0.3 {
                    rng.random()
                } else {
                    0.0
                }
            })
            .collect();
        (logits, target)
    }

    fn relative_error(a: &[f32], b: &[f32]) -> f32 {
        let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs() / scale)
            .fold(0.0, f32::max)
    }

    #[test]
    fn wgpu_fused_losses_have_the_composed_losses_values_and_gradients() {
        type Gpu = burn::backend::Autodiff<burn::backend::Wgpu>;
        const { assert!(<Gpu as crate::ModelBackend>::LOSS_KERNEL) };
        let dims = [3, 1, 40, 37];
        let (p, t) = random_batch(dims);
        let (fused_v, fused_g) = fused_or_plain::<Gpu>(&p, &t, dims, true);
        let (plain_v, plain_g) = fused_or_plain::<Gpu>(&p, &t, dims, false);
        assert!(
            relative_error(&plain_v, &fused_v) < 1e-5,
            "{plain_v:?} vs {fused_v:?}"
        );
        let err = relative_error(&plain_g, &fused_g);
        assert!(
            err < 1e-4,
            "gradients differ by {err} (relative to the largest)"
        );
    }

    #[test]
    fn without_a_kernel_the_pair_is_the_composed_losses() {
        type Cpu = burn::backend::Autodiff<NdArray>;
        const { assert!(!<Cpu as crate::ModelBackend>::LOSS_KERNEL) };
        let dims = [2, 1, 9, 11];
        let (p, t) = random_batch(dims);
        assert_eq!(
            fused_or_plain::<Cpu>(&p, &t, dims, true),
            fused_or_plain::<Cpu>(&p, &t, dims, false)
        );
        // The provided backward (host reference) is the composed gradient too.
        let (l, tt) = (
            Tensor::<NdArray, 4>::from_data(TensorData::new(p.clone(), dims), &Default::default()),
            Tensor::<NdArray, 4>::from_data(TensorData::new(t.clone(), dims), &Default::default()),
        );
        let g = Tensor::<NdArray, 1>::from_data(
            TensorData::new(vec![0.7f32, 1.3], [2]),
            &Default::default(),
        );
        let host = <NdArray as crate::ModelBackend>::pixel_losses_backward(
            l.into_primitive().tensor(),
            tt.into_primitive().tensor(),
            g.into_primitive().tensor(),
            2.0,
        );
        let host: Vec<f32> =
            Tensor::<NdArray, 4>::from_primitive(burn::tensor::TensorPrimitive::Float(host))
                .into_data()
                .to_vec()
                .unwrap();
        let (_, plain_g) = fused_or_plain::<Cpu>(&p, &t, dims, false);
        assert!(relative_error(&plain_g, &host) < 1e-5);
    }
}
