//! RIFE frame interpolation (v4.25/v4.26 IFNet), ported from saibyo 0.14.0's
//! `saibyo/modules/interpolation/ifnet.py` (itself Practical-RIFE's `IFNet_HDv3`,
//! <https://github.com/hzwer/Practical-RIFE>).
//!
//! Architecture: a Head encodes each frame into 4 feature channels at full resolution. Five
//! IFBlocks then estimate, coarse to fine (frames downscaled by 16, 8, 4, 2, 1 ÷ the network
//! scale), two flows from the wanted timestep back to each frame and a blend mask. Each block
//! reads both frames and their features warped by the flow so far, the timestep as a
//! constant plane, and the previous block's mask and 8 feature channels; it downsamples
//! twice with strided convolutions, runs 8 ResConvs (`leaky(conv(x) · β + x)` with a learned
//! per-channel β), and upsamples with a transposed convolution and PixelShuffle(2). The output
//! is both frames warped (bilinear, border, `align_corners=True`: [`stillmotion_kernels::warp`])
//! and blended by `sigmoid(mask)`. Frames are padded to a multiple of 64 ÷ network scale.
//!
//! [`weights`] reads the checkpoints, [`model`] is the network, [`pair`] runs frame pairs
//! (frames up and down as bytes, converted and padded on the device, per-frame features,
//! batches of pairs and timesteps sized from a memory budget), [`interpolate`] drives a clip
//! by a multiplier and [`retime`] to a target fps (both streamed: bounded memory for any
//! length), [`scene_cut`] decides which pairs not to morph. On CUDA the network runs in f16
//! (weights, activations and warps), on the CPU in f32; original frames pass through as
//! they came.

pub mod interpolate;
pub mod model;
pub mod pair;
pub mod retime;
pub mod scene_cut;
pub mod timing;
mod up_conv;
pub mod weights;

pub use interpolate::{
    InterpolationContext, InterpolationSettings, PairProgress, interpolate, interpolate_stream,
};
pub use model::{Config, IfNet, IfNetOutput};
pub use pair::{
    ACTIVATION_PLANES, FrameLayout, MAX_BATCH, PixelRounding, PreparedFrame, Rife, frames_to_rgb8,
    network_scale_for, to_rgb8,
};
pub use retime::{RetimeSummary, Retiming, max_frames_held, retime, retime_stream};
pub use scene_cut::{DEFAULT_SCENE_CUT_BELOW, frame_similarity, histogram_overlap};
pub use stillmotion_kernels::warp::{backward_warp, backward_warp_with};
pub use timing::{RifeStage, StageClock};
pub use weights::{RifeCheckpoint, read_checkpoint};
