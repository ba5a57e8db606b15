//! Wan2.2 diffusion transformer (`WanModel` in the official `wan/modules/model.py`,
//! <https://github.com/Wan-Video/Wan2.2>; `WanTransformer3DModel` in diffusers).
//!
//! One model for the family, chosen by [`Config`]: I2V-A14B experts (36 channels in: noise 16,
//! mask 4, image latent 16; 16 out), T2V-A14B (16 in), TI2V-5B (48 in/out, per-token timesteps).
//!
//! Latents `[B, C, F, H, W]` are cut into 1×2×2 patches and embedded by a matmul (the Conv3d
//! with kernel = stride). A sinusoidal timestep embedding (float64, as the official code does)
//! goes through an MLP and a 6-way projection that modulates every block: shift/scale/gate
//! around self-attention and the FFN, each block adding its own `modulation` table. The text
//! context is zero-padded to `text_len` and embedded by a GELU(tanh) MLP. Each block: LayerNorm
//! → self-attention (RMSNorm on q and k across heads, 3-axis RoPE, theta 10 000) → cross-
//! attention to the text (optional affine LayerNorm `norm3` first) → LayerNorm → GELU(tanh) FFN.
//! The head applies a modulated LayerNorm and a linear layer; unpatchify restores the latent.
//!
//! Weight names are the original Wan / ComfyUI keys; [`weights`] maps prefixed and diffusers
//! layouts onto them. Sampling lives elsewhere (`crate::sampling`); the model knows no sigmas.

pub mod attention;
mod block;
pub mod config;
mod linear;
mod load;
pub mod lora;
pub mod lora_mode;
pub mod lora_requant;
mod lora_side;
#[cfg(test)]
mod lora_side_tests;
pub mod model;
pub mod rope;
mod streamed;
#[cfg(test)]
mod test_support;
pub mod time;
pub mod weights;

pub use crate::gguf::QuantizedMatmul;
pub use config::{Config, ModelType, TimeEmbedding};
pub use load::LoraLoad;
pub use lora::{LoraPlacement, LoraReport, LoraSpec};
pub use lora_mode::LoraMode;
pub use lora_requant::LoraRequantize;
pub use model::WanModel;
