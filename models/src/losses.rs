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
}
