//! One 14B DiT block's operations at a given token count, each timed alone on its real shapes,
//! in the order `wan/block.rs` runs them: where a forward's time goes besides the GEMMs and the
//! attention (the glue), without a profiler. The sum is compared with a whole forward's time
//! per block by the reader (`dit` mode).

use candle_core::{DType, Device, Tensor};
use stillmotion_kernels::Kernels;
use stillmotion_kernels::attention::attention;
use stillmotion_kernels::glue::{self, Modulation};
use stillmotion_kernels::linear::{Epilogue, linear};

use crate::report::Line;
use crate::{randn, time};

const DIM: usize = 5120;
const FFN: usize = 13_824;
const HEADS: usize = 40;
const HEAD_DIM: usize = 128;
const TEXT: usize = 512;
const EPS: f32 = 1e-6;
const ITERATIONS: usize = 10;

/// Times each operation of one block on `tokens` tokens and prints a `block-part` line each,
/// then their sum.
pub fn run(device: &Device, kernels: &Kernels, tokens: usize) -> anyhow::Result<()> {
    let x = randn(&[1, tokens, DIM], device, DType::F32)?;
    let y = randn(&[1, tokens, DIM], device, DType::BF16)?;
    let h = randn(&[1, tokens, DIM], device, DType::BF16)?;
    let table = || randn(&[1, DIM], device, DType::F32);
    let (shift, scale, gate) = (table()?, table()?, table()?);
    let (norm_w, norm_b) = (table()?.squeeze(0)?, table()?.squeeze(0)?);
    let modulation = || Modulation {
        shift: &shift,
        scale: &scale,
        rows_per_entry: tokens,
    };
    let weight = |n: usize, k: usize| -> anyhow::Result<(Tensor, Tensor)> {
        Ok((
            (randn(&[n, k], device, DType::F32)? * 0.02)?.to_dtype(DType::BF16)?,
            randn(&[n], device, DType::BF16)?,
        ))
    };
    let (w_dd, b_dd) = weight(DIM, DIM)?;
    let (w_up, b_up) = weight(FFN, DIM)?;
    let (w_down, b_down) = weight(DIM, FFN)?;
    let hidden = randn(&[1, tokens, FFN], device, DType::BF16)?;
    let heads = randn(&[1, tokens, HEADS, HEAD_DIM], device, DType::BF16)?;
    let text_heads = randn(&[1, TEXT, HEADS, HEAD_DIM], device, DType::BF16)?;
    let context = randn(&[1, TEXT, DIM], device, DType::BF16)?;
    let rms_w = table()?.squeeze(0)?;
    let half = HEAD_DIM / 2;
    let cos = randn(&[tokens, half], device, DType::F32)?;
    let sin = randn(&[tokens, half], device, DType::F32)?;

    let mut total = 0.0;
    let mut part = |name: &str, count: usize, f: &mut dyn FnMut() -> anyhow::Result<()>| {
        let seconds = time(device, ITERATIONS, &mut *f)?;
        total += seconds * count as f64;
        Line::new("block-part")
            .int("tokens", tokens)
            .text("part", name)
            .int("per_block", count)
            .num("ms", seconds * 1e3)
            .print();
        anyhow::Ok(())
    };
    part("norm1: residual + norm + modulation", 1, &mut || {
        glue::residual_norm(
            kernels,
            (&x, &y, Some((&gate, tokens))),
            None,
            Some(modulation()),
            EPS,
            DType::BF16,
        )?;
        Ok(())
    })?;
    part(
        "linear 5120→5120 (q, k, v, o; cross q, o)",
        6,
        &mut || {
            linear(kernels, &h, &w_dd, Some(&b_dd), Epilogue::None)?;
            Ok(())
        },
    )?;
    part("q/k RMS norm + RoPE", 2, &mut || {
        glue::rms_norm_rope(kernels, &heads, &rms_w, EPS, (&cos, &sin))?;
        Ok(())
    })?;
    part("self-attention (backend in use)", 1, &mut || {
        attention(kernels, &heads, &heads, &heads)?;
        Ok(())
    })?;
    part("norm3: residual + affine norm", 1, &mut || {
        glue::residual_norm(
            kernels,
            (&x, &y, Some((&gate, tokens))),
            Some((&norm_w, &norm_b)),
            None,
            EPS,
            DType::BF16,
        )?;
        Ok(())
    })?;
    part("cross q RMS norm", 1, &mut || {
        glue::rms_norm(kernels, &h, &rms_w, EPS)?;
        Ok(())
    })?;
    part("cross k, v: linear of the text (512 rows)", 2, &mut || {
        linear(kernels, &context, &w_dd, Some(&b_dd), Epilogue::None)?;
        Ok(())
    })?;
    part("cross-attention (512 keys)", 1, &mut || {
        attention(kernels, &heads, &text_heads, &text_heads)?;
        Ok(())
    })?;
    part("norm2: residual + norm + modulation", 1, &mut || {
        glue::residual_norm(
            kernels,
            (&x, &y, None),
            None,
            Some(modulation()),
            EPS,
            DType::BF16,
        )?;
        Ok(())
    })?;
    part("ffn.0: linear 5120→13824 + GELU", 1, &mut || {
        linear(kernels, &h, &w_up, Some(&b_up), Epilogue::GeluTanh)?;
        Ok(())
    })?;
    part("ffn.2: linear 13824→5120", 1, &mut || {
        linear(kernels, &hidden, &w_down, Some(&b_down), Epilogue::None)?;
        Ok(())
    })?;
    Line::new("block-part")
        .int("tokens", tokens)
        .text("part", "sum per block")
        .num("ms", total * 1e3)
        .print();
    Ok(())
}
