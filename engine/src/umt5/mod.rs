//! umT5 text encoder (umt5-xxl as Wan2.2 uses it) and its tokenizers.
//!
//! Architecture: token embedding → N pre-norm blocks → final norm. Each block is
//! self-attention (no 1/√d scaling, its *own* bucketed relative position bias, padding keys
//! masked) and a gated-GELU(tanh) feed-forward, both with residuals around T5's scale-only RMS
//! norm. Unlike T5 (and candle's `t5`), every layer has a position bias, not only layer 0.
//!
//! References, which agree to float32 rounding: transformers' `UMT5EncoderModel`
//! (`transformers/models/umt5/modeling_umt5.py`) and the official Wan2.2 `T5Encoder`
//! (`wan/modules/t5.py`). The Wan pipeline (`T5EncoderModel.__call__`) keeps the states of the
//! real tokens only; the DiT then zero-pads them to `text_len` = 512: [`pad_context`].

mod cache;
mod clean;
mod config;
mod encoder;
mod linear;
mod model;
mod spm;
pub mod tokenizer;
pub mod weights;

use candle_core::{D, Tensor};

pub use cache::{EncoderFingerprint, Encoding, EncodingCache};
pub use clean::{clean_prompt, html_unescape};
pub use config::Config;
pub use encoder::{TextEncoder, encode_tokens};
pub use model::Umt5Encoder;
pub use tokenizer::{PromptTokenizer, PromptTokens};
pub use weights::Checkpoint;

/// `[len, d_model]` states of the real tokens → `[text_len, d_model]`, zero-padded (or cut to
/// `text_len`), as the Wan DiT receives its context.
pub fn pad_context(states: &Tensor, text_len: usize) -> candle_core::Result<Tensor> {
    let len = states.dim(0)?;
    if len >= text_len {
        return states.narrow(0, 0, text_len);
    }
    states.pad_with_zeros(D::Minus2, 0, text_len - len)
}
