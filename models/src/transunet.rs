//! TransUNet (Chen et al. 2021) as the seed configured it (`transunet_pytorch`, MIT): a ResNet-style
//! CNN encoder, a ViT over the deepest feature map, and a U-Net decoder with skip connections.
//!
//! Module and field names follow the reference implementation so that its weights map one to one.
//! One deliberate difference: attention energy is divided by √d_k (the seed multiplied, a defect).

use burn::config::Config;
use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::conv::Conv2dConfig;
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Initializer, LayerNorm, LayerNormConfig,
    Linear, LinearConfig, PaddingConfig2d,
};
use burn::tensor::Tensor;
use burn::tensor::activation::{gelu, relu, softmax};
use burn::tensor::backend::AutodiffBackend;

use crate::backend::ModelBackend;
use crate::batch_norm::{batch_norm, batch_norm_relu};
use crate::conv::{ConvImpl, ConvLayer};
use crate::dropout::dropout;
use crate::upsample::upsample2x_bilinear;

/// The seed configuration: `img_dim=128, in_channels=1, out_channels=128, head_num=4,
/// mlp_dim=512, block_num=8, patch_dim=16, class_num=1` (66 870 129 trainable parameters).
#[derive(Config, Debug)]
pub struct TransUNetConfig {
    /// Input height and width.
    #[config(default = 128)]
    pub img_dim: usize,
    /// Input channels.
    #[config(default = 1)]
    pub in_channels: usize,
    /// Width of the first convolution; the encoder doubles it three times.
    #[config(default = 128)]
    pub out_channels: usize,
    /// Attention heads.
    #[config(default = 4)]
    pub head_num: usize,
    /// Hidden width of the transformer MLP.
    #[config(default = 512)]
    pub mlp_dim: usize,
    /// Transformer blocks.
    #[config(default = 8)]
    pub block_num: usize,
    /// Total downsampling before the ViT (the ViT sees `img_dim / patch_dim` squared tokens).
    #[config(default = 16)]
    pub patch_dim: usize,
    /// Output channels (logits).
    #[config(default = 1)]
    pub class_num: usize,
    /// Dropout in the transformer.
    #[config(default = 0.1)]
    pub dropout: f64,
    /// How convolutions compute (see [`ConvImpl`]).
    #[config(default = "ConvImpl::Im2col")]
    pub conv: ConvImpl,
}

fn conv(i: usize, o: usize, k: usize, stride: usize, pad: usize, bias: bool) -> Conv2dConfig {
    Conv2dConfig::new([i, o], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(bias)
}

/// ResNet bottleneck with a strided 3×3 and a projected shortcut.
#[derive(Module, Debug)]
pub struct EncoderBottleneck<B: ModelBackend> {
    downsample_conv: ConvLayer<B>,
    downsample_norm: BatchNorm<B>,
    conv1: ConvLayer<B>,
    norm1: BatchNorm<B>,
    conv2: ConvLayer<B>,
    norm2: BatchNorm<B>,
    conv3: ConvLayer<B>,
    norm3: BatchNorm<B>,
}

impl<B: ModelBackend> EncoderBottleneck<B> {
    fn new(i: usize, o: usize, stride: usize, imp: ConvImpl, device: &B::Device) -> Self {
        let width = o;
        Self {
            downsample_conv: ConvLayer::new(&conv(i, o, 1, stride, 0, false), imp, device),
            downsample_norm: BatchNormConfig::new(o).init(device),
            conv1: ConvLayer::new(&conv(i, width, 1, 1, 0, false), imp, device),
            norm1: BatchNormConfig::new(width).init(device),
            conv2: ConvLayer::new(&conv(width, width, 3, 2, 1, false), imp, device),
            norm2: BatchNormConfig::new(width).init(device),
            conv3: ConvLayer::new(&conv(width, o, 1, 1, 0, false), imp, device),
            norm3: BatchNormConfig::new(o).init(device),
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let shortcut = batch_norm(
            &self.downsample_norm,
            self.downsample_conv.forward(x.clone()),
        );
        let y = batch_norm_relu(&self.norm1, self.conv1.forward(x));
        let y = batch_norm_relu(&self.norm2, self.conv2.forward(y));
        let y = batch_norm(&self.norm3, self.conv3.forward(y));
        relu(y + shortcut)
    }
}

/// Bilinear ×2, concatenation with the skip, two 3×3 conv + BN + ReLU.
#[derive(Module, Debug)]
pub struct DecoderBottleneck<B: ModelBackend> {
    conv1: ConvLayer<B>,
    norm1: BatchNorm<B>,
    conv2: ConvLayer<B>,
    norm2: BatchNorm<B>,
}

impl<B: ModelBackend> DecoderBottleneck<B> {
    fn new(i: usize, o: usize, imp: ConvImpl, device: &B::Device) -> Self {
        Self {
            conv1: ConvLayer::new(&conv(i, o, 3, 1, 1, true), imp, device),
            norm1: BatchNormConfig::new(o).init(device),
            conv2: ConvLayer::new(&conv(o, o, 3, 1, 1, true), imp, device),
            norm2: BatchNormConfig::new(o).init(device),
        }
    }

    fn forward(&self, x: Tensor<B, 4>, skip: Option<Tensor<B, 4>>) -> Tensor<B, 4> {
        let x = upsample2x_bilinear(x);
        let x = match skip {
            Some(s) => Tensor::cat(vec![s, x], 1),
            None => x,
        };
        let x = batch_norm_relu(&self.norm1, self.conv1.forward(x));
        batch_norm_relu(&self.norm2, self.conv2.forward(x))
    }
}

/// Multi-head self-attention with one fused qkv projection (no biases), as in the reference.
#[derive(Module, Debug)]
pub struct MultiHeadAttention<B: ModelBackend> {
    qkv_layer: Linear<B>,
    out_attention: Linear<B>,
    head_num: usize,
}

impl<B: ModelBackend> MultiHeadAttention<B> {
    fn new(dim: usize, head_num: usize, device: &B::Device) -> Self {
        Self {
            qkv_layer: LinearConfig::new(dim, 3 * dim)
                .with_bias(false)
                .init(device),
            out_attention: LinearConfig::new(dim, dim).with_bias(false).init(device),
            head_num,
        }
    }

    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, t, e] = x.dims();
        let h = self.head_num;
        let d = e / h;
        // The reference splits the projection as `(d k h)`: head index fastest, then q/k/v.
        let qkv = self
            .qkv_layer
            .forward(x)
            .reshape([b, t, d, 3, h])
            .permute([3, 0, 4, 1, 2]); // [3, b, h, t, d]
        let q = qkv.clone().narrow(0, 0, 1).reshape([b, h, t, d]);
        let k = qkv.clone().narrow(0, 1, 1).reshape([b, h, t, d]);
        let v = qkv.narrow(0, 2, 1).reshape([b, h, t, d]);
        let energy = q.matmul(k.transpose()) / (d as f64).sqrt();
        let attention = softmax(energy, 3);
        let y = attention.matmul(v).swap_dims(1, 2).reshape([b, t, e]);
        self.out_attention.forward(y)
    }
}

/// Post-norm transformer block: attention, residual, LayerNorm, MLP, residual, LayerNorm.
#[derive(Module, Debug)]
pub struct TransformerBlock<B: ModelBackend> {
    multi_head_attention: MultiHeadAttention<B>,
    mlp_in: Linear<B>,
    mlp_out: Linear<B>,
    layer_norm1: LayerNorm<B>,
    layer_norm2: LayerNorm<B>,
    dropout: Dropout,
}

impl<B: ModelBackend> TransformerBlock<B> {
    fn new(dim: usize, heads: usize, mlp: usize, dropout: f64, device: &B::Device) -> Self {
        Self {
            multi_head_attention: MultiHeadAttention::new(dim, heads, device),
            mlp_in: LinearConfig::new(dim, mlp).init(device),
            mlp_out: LinearConfig::new(mlp, dim).init(device),
            layer_norm1: LayerNormConfig::new(dim).init(device),
            layer_norm2: LayerNormConfig::new(dim).init(device),
            dropout: DropoutConfig::new(dropout).init(),
        }
    }

    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let a = dropout(&self.dropout, self.multi_head_attention.forward(x.clone()));
        let x = self.layer_norm1.forward(x + a);
        let m = dropout(&self.dropout, gelu(self.mlp_in.forward(x.clone())));
        let m = dropout(&self.dropout, self.mlp_out.forward(m));
        self.layer_norm2.forward(x + m)
    }
}

/// ViT over a feature map, patch size 1: every pixel of the map is a token.
#[derive(Module, Debug)]
pub struct Vit<B: ModelBackend> {
    projection: Linear<B>,
    embedding: Param<Tensor<B, 2>>,
    cls_token: Param<Tensor<B, 3>>,
    blocks: Vec<TransformerBlock<B>>,
    dropout: Dropout,
}

impl<B: ModelBackend> Vit<B> {
    fn new(c: &TransUNetConfig, tokens: usize, dim: usize, device: &B::Device) -> Self {
        Self {
            projection: LinearConfig::new(dim, dim).init(device),
            // Uniform [0, 1) and standard normal, as the reference initialises them.
            embedding: Initializer::Uniform { min: 0.0, max: 1.0 }.init([tokens + 1, dim], device),
            cls_token: Initializer::Normal {
                mean: 0.0,
                std: 1.0,
            }
            .init([1, 1, dim], device),
            blocks: (0..c.block_num)
                .map(|_| TransformerBlock::new(dim, c.head_num, c.mlp_dim, c.dropout, device))
                .collect(),
            dropout: DropoutConfig::new(c.dropout).init(),
        }
    }

    /// `[B, C, H, W]` → tokens `[B, H·W, C]` (the class token is used for nothing but kept, as in
    /// the reference, so that its weights and parameter count match).
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, c, h, w] = x.dims();
        let t = h * w;
        let patches = x.reshape([b, c, t]).swap_dims(1, 2);
        let projected = self.projection.forward(patches);
        let cls = self.cls_token.val().expand([b, 1, c]);
        let tokens = Tensor::cat(vec![cls, projected], 1)
            + self.embedding.val().narrow(0, 0, t + 1).unsqueeze::<3>();
        let mut x = dropout(&self.dropout, tokens);
        for block in &self.blocks {
            x = block.forward(x);
        }
        x.slice([0..b, 1..t + 1])
    }
}

/// The TransUNet.
#[derive(Module, Debug)]
pub struct TransUNet<B: ModelBackend> {
    conv1: ConvLayer<B>,
    norm1: BatchNorm<B>,
    encoder1: EncoderBottleneck<B>,
    encoder2: EncoderBottleneck<B>,
    encoder3: EncoderBottleneck<B>,
    vit: Vit<B>,
    conv2: ConvLayer<B>,
    norm2: BatchNorm<B>,
    decoder1: DecoderBottleneck<B>,
    decoder2: DecoderBottleneck<B>,
    decoder3: DecoderBottleneck<B>,
    decoder4: DecoderBottleneck<B>,
    head: ConvLayer<B>,
    vit_img_dim: usize,
}

/// The network's outputs for one batch.
pub struct TransUNetOutput<B: ModelBackend> {
    /// Per-pixel logits `[B, class_num, H, W]`.
    pub logits: Tensor<B, 4>,
    /// The bottleneck feature map after the ViT and its 3×3 conv, `[B, 4·out_channels, H/16, W/16]`
    /// (512 channels in the seed configuration): what the
    /// contrastive loss looks at (through a projection head).
    pub bottleneck: Tensor<B, 4>,
}

impl TransUNetConfig {
    /// Builds the network on `device` with fresh weights.
    pub fn init<B: ModelBackend>(&self, device: &B::Device) -> TransUNet<B> {
        let oc = self.out_channels;
        let vit_img_dim = self.img_dim / self.patch_dim;
        let imp = self.conv;
        TransUNet {
            conv1: ConvLayer::new(&conv(self.in_channels, oc, 7, 2, 3, false), imp, device),
            norm1: BatchNormConfig::new(oc).init(device),
            encoder1: EncoderBottleneck::new(oc, oc * 2, 2, imp, device),
            encoder2: EncoderBottleneck::new(oc * 2, oc * 4, 2, imp, device),
            encoder3: EncoderBottleneck::new(oc * 4, oc * 8, 2, imp, device),
            vit: Vit::new(self, vit_img_dim * vit_img_dim, oc * 8, device),
            conv2: ConvLayer::new(&conv(oc * 8, oc * 4, 3, 1, 1, true), imp, device),
            norm2: BatchNormConfig::new(oc * 4).init(device),
            decoder1: DecoderBottleneck::new(oc * 8, oc * 2, imp, device),
            decoder2: DecoderBottleneck::new(oc * 4, oc, imp, device),
            decoder3: DecoderBottleneck::new(oc * 2, oc / 2, imp, device),
            decoder4: DecoderBottleneck::new(oc / 2, oc / 8, imp, device),
            head: ConvLayer::new(&conv(oc / 8, self.class_num, 1, 1, 0, true), imp, device),
            vit_img_dim,
        }
    }
}

impl<B: ModelBackend> TransUNet<B> {
    /// Logits and bottleneck features of a batch `[B, in_channels, img_dim, img_dim]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> TransUNetOutput<B> {
        let x1 = batch_norm_relu(&self.norm1, self.conv1.forward(x));
        let x2 = self.encoder1.forward(x1.clone());
        let x3 = self.encoder2.forward(x2.clone());
        let x4 = self.encoder3.forward(x3.clone());
        let tokens = self.vit.forward(x4);
        let [b, t, c] = tokens.dims();
        debug_assert_eq!(t, self.vit_img_dim * self.vit_img_dim);
        let map = tokens
            .swap_dims(1, 2)
            .reshape([b, c, self.vit_img_dim, self.vit_img_dim]);
        let bottleneck = batch_norm_relu(&self.norm2, self.conv2.forward(map));
        let y = self.decoder1.forward(bottleneck.clone(), Some(x3));
        let y = self.decoder2.forward(y, Some(x2));
        let y = self.decoder3.forward(y, Some(x1));
        let y = self.decoder4.forward(y, None);
        TransUNetOutput {
            logits: self.head.forward(y),
            bottleneck,
        }
    }
}

/// Trainable parameters of a module: the tensors that take gradients. burn's `num_params` also
/// counts BatchNorm running statistics (17 472 of them in the seed TransUNet); PyTorch's
/// `sum(p.numel() for p in model.parameters())` does not.
pub fn trainable_params<B: AutodiffBackend, M: Module<B>>(module: &M) -> usize {
    struct Count(usize);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Count {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let t = param.val();
            if t.is_require_grad() {
                self.0 += t.shape().num_elements();
            }
        }
    }
    let mut c = Count(0);
    module.visit(&mut c);
    c.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};

    #[test]
    fn seed_configuration_has_the_reference_parameter_count() {
        let model: TransUNet<Autodiff<NdArray>> = TransUNetConfig::new().init(&Default::default());
        assert_eq!(trainable_params(&model), 66_870_129);
        // The difference is exactly the BatchNorm running mean and variance.
        assert_eq!(model.num_params() - 66_870_129, 17_472);
    }

    #[test]
    fn small_configuration_keeps_shapes() {
        let device = Default::default();
        let cfg = TransUNetConfig::new()
            .with_img_dim(32)
            .with_out_channels(16)
            .with_mlp_dim(32)
            .with_block_num(1);
        let model: TransUNet<NdArray> = cfg.init(&device);
        let x = Tensor::<NdArray, 4>::ones([2, 1, 32, 32], &device);
        let out = model.forward(x);
        assert_eq!(out.logits.dims(), [2, 1, 32, 32]);
        assert_eq!(out.bottleneck.dims(), [2, 64, 2, 2]);
    }
}
