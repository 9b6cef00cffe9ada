//! The networks covflow trains, generic over the burn backend: the TransUNet with its layers
//! (convolution, ×2 upsampling on our kernels) and losses, the 3D GAN's discriminator and 3-D
//! max-pooling, the backend extension ([`ModelBackend`]) that registers our kernels as burn
//! autodiff ops, and the training loops.
//! No engine here: stages call into this crate.

#[macro_use]
mod device;
mod backend;
mod batch_norm;
mod checkpoint;
mod conv;
mod conv3d;
mod conv_check;
mod dropout;
mod export;
mod fused_adam;
mod gan;
mod gan_noise;
mod gan_ops;
mod gan_run;
mod gan_train;
mod gemm;
mod generator;
mod host_conv;
mod host_conv3d;
mod host_pool3d;
mod host_up2x;
mod losses;
mod patch_adversary;
mod seeded_init;
mod seg_run;
mod seg_train;
mod train;
mod transunet;
mod upsample;

pub use backend::{ModelBackend, conv2d_implicit_gemm};
pub use batch_norm::{
    BatchNormForward, BatchNormInputs, BatchNormSaved, batch_norm, batch_norm_relu,
};
pub use conv::{ConvImpl, ConvLayer, conv2d_im2col};
pub use conv_check::{ConvCheck, ConvShape, check_conv, transunet_conv_shapes};
pub use conv3d::{Conv3dLayer, Up2xLayer, conv3d_im2col, up2x_matmul};
pub use device::DeviceNotBuilt;
pub use dropout::{dropout, with_seeded_dropout};
pub use export::{WeightsError, load_transunet_safetensors, save_transunet_safetensors};
pub use fused_adam::FusedAdam;
pub use gan::{Adversary, Discriminator, DiscriminatorConfig, max_pool3d, max_pool3d_plain};
pub use gan_noise::{NoiseAugment, NoisePlan, add_noise, plan_noise};
pub use gan_ops::{Activation, Conv3dGeometry, Up2xGeometry, conv3d, up2x};
pub use gan_run::{
    GanError, GanFiles, GanOutcome, conv_for, heal_volumes, snapshot_iterations, snapshot_name,
    train_gan,
};
pub use gan_train::{
    CheckpointError, GanData, GanLosses, GanRecipe, GanSample, GanTrainer, generator_config, heal,
    load_generator, save_generator,
};
pub use generator::{Generator, GeneratorConfig};
pub use losses::{contrastive, mse, mse_and_sensitivity, sensitivity_bce};
pub use patch_adversary::{cell_grid, lung_share_per_cell};
pub use seg_run::{SegError, SegOutcome, SegWeights, predict_volumes, train_segmenter};
pub use seg_train::{Phase, Plateau, SegData, SegEpoch, SegRecipe, SegSlice, SegTrainer};
pub use train::{BenchOptimizer, LossConfig, SegmentationLearner, TrainingBench, bench_training};
pub use transunet::{TransUNet, TransUNetConfig, TransUNetOutput, trainable_params};
pub use upsample::{
    interpolation_matrix, upsample2x_backward_matrix, upsample2x_bilinear, upsample2x_matrix,
};

pub mod bench;
