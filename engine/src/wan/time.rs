//! Sinusoidal timestep embedding and per-token timesteps.
//!
//! The official forward embeds a timestep per token (`t` is expanded to `[batch, seq_len]`) and
//! runs the time MLP on every row. Rows with the same timestep give the same embedding, so we
//! embed each distinct value once and gather: one row per sample when a sample's timesteps are
//! all equal (T2V, I2V), a small table plus a per-token index for TI2V (timestep 0 on latent
//! frame 0). The tests prove the gathered result equals the per-token one.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use super::config::TimeEmbedding;
use crate::EngineError;

/// `[cos(t·f_j) | sin(t·f_j)]` with `f_j = 10000^(−j/half)`, as float32 rows of `freq_dim`.
///
/// `Float64` is the official `sinusoidal_embedding_1d` (float64 throughout, rounded at the
/// end); `Float32` is diffusers' `get_timestep_embedding(flip_sin_to_cos=True, shift=0)`.
pub fn sinusoid(values: &[f64], freq_dim: usize, precision: TimeEmbedding) -> Vec<f32> {
    let half = freq_dim / 2;
    let mut out = Vec::with_capacity(values.len() * freq_dim);
    for &t in values {
        match precision {
            TimeEmbedding::Float64 => {
                let args: Vec<f64> = (0..half)
                    .map(|j| t * 10_000_f64.powf(-(j as f64) / half as f64))
                    .collect();
                out.extend(args.iter().map(|a| a.cos() as f32));
                out.extend(args.iter().map(|a| a.sin() as f32));
            }
            TimeEmbedding::Float32 => {
                let log_period = -(10_000_f64.ln()) as f32;
                let t = t as f32;
                let args: Vec<f32> = (0..half)
                    .map(|j| t * ((log_period * j as f32) / half as f32).exp())
                    .collect();
                out.extend(args.iter().map(|a| a.cos()));
                out.extend(args.iter().map(|a| a.sin()));
            }
        }
    }
    out
}

/// Timesteps of a batch, reduced to their distinct values.
#[derive(Clone, Debug, PartialEq)]
pub struct Timesteps {
    /// Distinct timestep values to embed.
    pub values: Vec<f64>,
    /// `None`: one value per sample (`values[b]` for every token of sample `b`). `Some`: the
    /// index into `values` of every token, `[batch · tokens]`, row-major.
    pub token_index: Option<Vec<u32>>,
}

impl Timesteps {
    /// From `t` = `[batch]` or `[batch, tokens]` (any numeric dtype; integer timesteps are
    /// exact in float64, as in the official code).
    pub fn from_tensor(t: &Tensor, batch: usize, tokens: usize) -> Result<Self, EngineError> {
        let values = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let shape_ok = match t.rank() {
            1 => values.len() == batch,
            2 => t.dims() == [batch, tokens],
            _ => false,
        };
        if !shape_ok {
            return Err(EngineError::BadModelInput {
                problem: format!(
                    "timesteps have shape {:?}; expected [{batch}] or [{batch}, {tokens}] (one per token)",
                    t.dims()
                ),
            });
        }
        if t.rank() == 1 {
            return Ok(Self {
                values,
                token_index: None,
            });
        }
        let rows: Vec<&[f64]> = values.chunks(tokens).collect();
        if rows
            .iter()
            .all(|row| row.iter().all(|v| v.to_bits() == row[0].to_bits()))
        {
            return Ok(Self {
                values: rows.iter().map(|row| row[0]).collect(),
                token_index: None,
            });
        }
        let mut distinct: Vec<f64> = Vec::new();
        let mut seen: HashMap<u64, u32> = HashMap::new();
        let index = values
            .iter()
            .map(|v| {
                *seen.entry(v.to_bits()).or_insert_with(|| {
                    distinct.push(*v);
                    (distinct.len() - 1) as u32
                })
            })
            .collect();
        Ok(Self {
            values: distinct,
            token_index: Some(index),
        })
    }

    /// The sinusoid of every distinct value, `[values, freq_dim]` float32.
    pub fn sinusoid(
        &self,
        freq_dim: usize,
        precision: TimeEmbedding,
        device: &Device,
    ) -> Result<Tensor, EngineError> {
        let rows = sinusoid(&self.values, freq_dim, precision);
        Ok(Tensor::from_vec(
            rows,
            (self.values.len(), freq_dim),
            device,
        )?)
    }
}

/// Per-sample or per-token conditioning (`parts` vectors of `width`) held as one row per
/// distinct timestep and expanded only when a part is used.
#[derive(Clone, Debug)]
pub struct PerToken {
    /// `[rows, parts, width]`: rows are samples (no index) or distinct timesteps (index).
    table: Tensor,
    /// Row of every token, `[batch · tokens]` u32, when a sample's tokens differ.
    index: Option<Tensor>,
    batch: usize,
    tokens: usize,
}

impl PerToken {
    /// `table` is `[values, parts, width]`, one row per value of `steps`.
    pub fn new(
        table: Tensor,
        steps: &Timesteps,
        batch: usize,
        tokens: usize,
    ) -> Result<Self, EngineError> {
        let index = match &steps.token_index {
            None => None,
            Some(index) => Some(Tensor::from_slice(index, index.len(), table.device())?),
        };
        Ok(Self {
            table,
            index,
            batch,
            tokens,
        })
    }

    /// Applies `f` to the table (cheap: one row per distinct timestep).
    pub fn map(
        &self,
        f: impl FnOnce(&Tensor) -> candle_core::Result<Tensor>,
    ) -> Result<Self, EngineError> {
        Ok(Self {
            table: f(&self.table)?,
            index: self.index.clone(),
            batch: self.batch,
            tokens: self.tokens,
        })
    }

    /// Part `i` as `[entries, width]` with the number of consecutive tokens each entry covers:
    /// one entry per sample covering all its tokens, or one per token.
    pub fn part_rows(&self, i: usize) -> Result<(Tensor, usize), EngineError> {
        let part = self.table.narrow(1, i, 1)?.squeeze(1)?.contiguous()?;
        match &self.index {
            None => Ok((part, self.tokens)),
            Some(index) => Ok((part.index_select(index, 0)?, 1)),
        }
    }

    /// Part `i`, broadcastable against `[batch, tokens, width]`.
    pub fn part(&self, i: usize) -> Result<Tensor, EngineError> {
        let part = self.table.narrow(1, i, 1)?;
        match &self.index {
            None => Ok(part),
            Some(index) => {
                let width = part.dim(2)?;
                Ok(part
                    .squeeze(1)?
                    .contiguous()?
                    .index_select(index, 0)?
                    .reshape((self.batch, self.tokens, width))?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinusoid_matches_the_official_formula() {
        // freq_dim 4: half 2, frequencies 1 and 10000^(-1/2) = 0.01.
        let row = sinusoid(&[3.0], 4, TimeEmbedding::Float64);
        let expected = [3.0_f64.cos(), 0.03_f64.cos(), 3.0_f64.sin(), 0.03_f64.sin()];
        for (a, e) in row.iter().zip(expected) {
            assert_eq!(*a, e as f32);
        }
        // The float32 path is diffusers' formula: close to, not equal to, the float64 one.
        let f64_rows = sinusoid(&[999.0, 937.5], 256, TimeEmbedding::Float64);
        let f32_rows = sinusoid(&[999.0, 937.5], 256, TimeEmbedding::Float32);
        let max = f64_rows
            .iter()
            .zip(&f32_rows)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(max > 0.0 && max < 1e-3, "{max}");
    }

    #[test]
    fn equal_timesteps_collapse_to_one_row_per_sample() {
        let dev = Device::Cpu;
        let t = Tensor::new(&[[5_i64, 5, 5], [7, 7, 7]], &dev).unwrap();
        let steps = Timesteps::from_tensor(&t, 2, 3).unwrap();
        assert_eq!(
            steps,
            Timesteps {
                values: vec![5.0, 7.0],
                token_index: None
            }
        );
        let t1 = Tensor::new(&[5.0_f32, 7.0], &dev).unwrap();
        assert_eq!(Timesteps::from_tensor(&t1, 2, 3).unwrap(), steps);
        assert!(Timesteps::from_tensor(&t1, 3, 3).is_err());
        let ti2v = Tensor::new(&[[0.0_f32, 0.0, 875.0, 875.0]], &dev).unwrap();
        let steps = Timesteps::from_tensor(&ti2v, 1, 4).unwrap();
        assert_eq!(steps.values, [0.0, 875.0]);
        assert_eq!(steps.token_index.as_deref(), Some(&[0, 0, 1, 1][..]));
    }

    /// Gathering embedded distinct rows equals embedding every token's timestep, the
    /// official per-token computation, for both the collapsed and the indexed form.
    #[test]
    fn gathered_rows_equal_per_token_embedding() {
        let dev = Device::Cpu;
        let (batch, tokens, freq_dim) = (2, 5, 8);
        for per_token in [
            vec![3.0_f32, 3.0, 3.0, 3.0, 3.0, 9.5, 9.5, 9.5, 9.5, 9.5],
            vec![0.0_f32, 0.0, 3.0, 3.0, 3.0, 0.0, 9.5, 9.5, 3.0, 9.5],
        ] {
            let t = Tensor::from_vec(per_token.clone(), (batch, tokens), &dev).unwrap();
            let steps = Timesteps::from_tensor(&t, batch, tokens).unwrap();
            let table = steps
                .sinusoid(freq_dim, TimeEmbedding::Float64, &dev)
                .unwrap();
            let rows = steps.values.len();
            let table = table.reshape((rows, 1, freq_dim)).unwrap();
            let gathered = PerToken::new(table, &steps, batch, tokens)
                .unwrap()
                .part(0)
                .unwrap()
                .broadcast_as((batch, tokens, freq_dim))
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let values: Vec<f64> = per_token.iter().map(|&v| f64::from(v)).collect();
            let naive = sinusoid(&values, freq_dim, TimeEmbedding::Float64);
            assert_eq!(gathered, naive);
        }
    }
}
