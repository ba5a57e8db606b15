//! The exact CPU convolution: one candle conv2d per temporal tap over the frames it sees,
//! summed in float32.

use candle_core::{D, Tensor};

use super::ConvGeometry;
use crate::KernelError;

/// See [`super::conv3d_frames`]; `weight` is `(k, c, kt, kh, kw)`.
pub fn conv3d_frames(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    geometry: ConvGeometry,
) -> Result<Tensor, KernelError> {
    let [pt, ph, pw] = geometry.pre_padding;
    let [qt, qh, qw] = geometry.post_padding;
    let [st, sh, sw] = geometry.stride;
    if sh != sw {
        return Err(super::bad(format!(
            "the reference takes one spatial stride, got {sh}×{sw}"
        )));
    }
    let x = x
        .pad_with_zeros(0, pt, qt)?
        .pad_with_zeros(D::Minus2, ph, qh)?
        .pad_with_zeros(D::Minus1, pw, qw)?;
    let (t, ..) = x.dims4()?;
    let (k, _, kt, ..) = weight.dims5()?;
    let out_t = (t - kt) / st + 1;
    let mut sum: Option<Tensor> = None;
    for tap in 0..kt {
        let index: Vec<u32> = (0..out_t)
            .map(|j| u32::try_from(j * st + tap).unwrap_or(u32::MAX))
            .collect();
        let frames = x.index_select(&Tensor::new(index, x.device())?, 0)?;
        let w = weight.narrow(2, tap, 1)?.squeeze(2)?.contiguous()?;
        let y = frames.conv2d(&w, 0, sh, 1, 1)?;
        sum = Some(match sum {
            Some(acc) => (acc + y)?,
            None => y,
        });
    }
    let y = sum.ok_or_else(|| super::bad("a kernel with no temporal tap".to_owned()))?;
    Ok(match bias {
        Some(bias) => y.broadcast_add(&bias.reshape((1, k, 1, 1))?)?,
        None => y,
    })
}
