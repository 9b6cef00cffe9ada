//! The networks covflow trains, generic over the burn backend.

mod conv;
mod losses;
mod train;
mod transunet;
mod upsample;

pub use conv::{ConvImpl, ConvLayer, conv2d_im2col};
pub use losses::{contrastive, mse, sensitivity_bce};
pub use train::{LossConfig, SegmentationLearner, TrainingBench, bench_training};
pub use transunet::{TransUNet, TransUNetConfig, TransUNetOutput, trainable_params};
pub use upsample::{
    UpsampleBackend, interpolation_matrix, upsample2x_backward_matrix, upsample2x_bilinear,
    upsample2x_matrix,
};
