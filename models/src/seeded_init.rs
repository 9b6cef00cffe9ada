//! Seeded parameter initialisation and stable parameter ids: the same seed gives the same
//! weights, and the same weights the same files (and cache digests), in every run.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Initialises every parameter as burn's layers do (uniform in ±1/√fan_in, Kaiming's uniform
/// with gain 1/√3, biases with the same bound as their weights; normalisation scales 1 and
/// shifts 0, running means 0 and variances 1; the TransUNet's positional embedding uniform in [0, 1) and class token standard
/// normal, as the reference) from a seeded generator.
pub(crate) struct SeededInit {
    rng: ChaCha8Rng,
    /// The kind of layer being visited (`Struct:Linear`, `Struct:Up2xLayer`, …).
    layer: String,
    /// The field being visited (`weight`, `gamma`, `embedding`, …).
    field: String,
    /// The last weight's fan-in, for the bias after it.
    fan_in: usize,
}

impl SeededInit {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            layer: String::new(),
            field: String::new(),
            fan_in: 1,
        }
    }

    /// A standard normal draw (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u: f64 = self.rng.random_range(f64::EPSILON..1.0);
        let v: f64 = self.rng.random();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

impl<B: Backend> burn::module::ModuleMapper<B> for SeededInit {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        if container_type.starts_with("Struct:") {
            self.layer = container_type.to_string();
        }
        self.field = name.to_string();
    }

    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<B, D>>,
    ) -> burn::module::Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let shape = tensor.dims();
        if D > 1 {
            let rest: usize = shape[2..].iter().product();
            self.fan_in = match self.layer.as_str() {
                // `[in, out]`.
                "Struct:Linear" => shape[0],
                // Transposed convolution `[in, out, k, k, k]`: burn's fan-in is `out · k³`.
                "Struct:Up2xLayer" => shape[1] * rest,
                // Convolution `[out, in, k, k, k]`.
                _ => shape[1] * rest,
            };
        }
        let n = shape.iter().product::<usize>();
        let values: Vec<f32> = match (self.layer.as_str(), self.field.as_str()) {
            ("Struct:BatchNorm" | "Struct:LayerNorm", "gamma") => vec![1.0; n],
            ("Struct:BatchNorm" | "Struct:LayerNorm", "beta") => vec![0.0; n],
            // burn maps the running statistics like parameters: a random "variance" would make
            // inference NaN.
            ("Struct:BatchNorm", "running_mean") => vec![0.0; n],
            ("Struct:BatchNorm", "running_var") => vec![1.0; n],
            ("Struct:Vit", "embedding") => (0..n).map(|_| self.rng.random::<f32>()).collect(),
            ("Struct:Vit", "cls_token") => (0..n).map(|_| self.normal() as f32).collect(),
            _ => {
                let bound = 1.0 / (self.fan_in.max(1) as f64).sqrt();
                (0..n)
                    .map(|_| self.rng.random_range(-bound..bound) as f32)
                    .collect()
            }
        };
        let device = tensor.device();
        let fresh = Tensor::<B, D>::from_data(TensorData::new(values, shape), &device);
        let fresh = if tensor.is_require_grad() {
            fresh.require_grad()
        } else {
            fresh
        };
        burn::module::Param::from_mapped_value(id, fresh, mapper)
    }
}

/// Numbers parameters in traversal order from a start. burn draws parameter ids at random and
/// writes them into every record, so without this the same weights would give different files
/// (and cache digests) in every run. Only for saving: giving the live autodiff
/// models fixed ids changed the resume test's losses in the last bit (two trainers in one
/// process then share ids).
pub(crate) struct SequentialIds(pub(crate) u64);

impl<B: Backend> burn::module::ModuleMapper<B> for SequentialIds {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<B, D>>,
    ) -> burn::module::Param<Tensor<B, D>> {
        let (_, tensor, mapper) = param.consume();
        self.0 += 1;
        burn::module::Param::from_mapped_value(burn::module::ParamId::from(self.0), tensor, mapper)
    }
}
