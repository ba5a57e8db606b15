//! The initial latent noise: injected (a tensor from a file or another tool) or seeded.
//!
//! Seeds are not portable between tools (torch's generators differ per device); our seeded
//! noise is reproducible across our own runs and machines: ChaCha8 from the seed, standard
//! normal samples in row-major order, drawn on the CPU and then moved to the device.

use candle_core::{DType, Device, Shape, Tensor};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use crate::EngineError;

/// Where the starting noise of a run comes from.
#[derive(Clone, Debug)]
pub enum InitialNoise {
    /// This exact tensor (its shape must be the latent shape).
    Injected(Tensor),
    /// Standard normal noise from this seed.
    Seeded(u64),
}

/// The starting noise of `shape` (f32) on `device`.
///
/// # Errors
/// [`EngineError::Sampler`] when injected noise has another shape; tensor errors otherwise.
pub fn initial_noise(
    noise: &InitialNoise,
    shape: impl Into<Shape>,
    device: &Device,
) -> Result<Tensor, EngineError> {
    let shape = shape.into();
    match noise {
        InitialNoise::Injected(tensor) => {
            if tensor.shape() != &shape {
                return Err(EngineError::Sampler {
                    problem: format!(
                        "injected noise has shape {:?} but the latents are {:?}: export noise for the same size and frame count",
                        tensor.dims(),
                        shape.dims()
                    ),
                });
            }
            Ok(tensor.to_dtype(DType::F32)?.to_device(device)?)
        }
        InitialNoise::Seeded(seed) => {
            let mut rng = ChaCha8Rng::seed_from_u64(*seed);
            let values: Vec<f32> = (0..shape.elem_count())
                .map(|_| StandardNormal.sample(&mut rng))
                .collect();
            Ok(Tensor::from_vec(values, shape, &Device::Cpu)?.to_device(device)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_noise_is_reproducible_and_standard() {
        let device = Device::Cpu;
        let a = initial_noise(&InitialNoise::Seeded(7), (4, 16, 16), &device).unwrap();
        let b = initial_noise(&InitialNoise::Seeded(7), (4, 16, 16), &device).unwrap();
        let c = initial_noise(&InitialNoise::Seeded(8), (4, 16, 16), &device).unwrap();
        let same: f32 = (&a - &b)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        let diff: f32 = (&a - &c)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(same, 0.0);
        assert!(diff > 1.0);
        let mean: f32 = a.mean_all().unwrap().to_scalar().unwrap();
        let var: f32 = a.sqr().unwrap().mean_all().unwrap().to_scalar().unwrap();
        assert!(mean.abs() < 0.1 && (var - 1.0).abs() < 0.1, "{mean} {var}");
    }

    #[test]
    fn injected_noise_must_have_the_latent_shape() {
        let device = Device::Cpu;
        let t = Tensor::zeros((2, 3), DType::F32, &device).unwrap();
        let noise = InitialNoise::Injected(t);
        assert!(initial_noise(&noise, (2, 3), &device).is_ok());
        assert!(initial_noise(&noise, (3, 2), &device).is_err());
    }
}
