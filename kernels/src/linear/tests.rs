use candle_core::{DType, Device, Tensor};

use super::*;

fn e4m3(values: &[f32], shape: (usize, usize)) -> Tensor {
    Tensor::from_vec(values.to_vec(), shape, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F8E4M3)
        .unwrap()
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap()
}

#[test]
fn the_fp8_switch_is_off_unless_asked_for() {
    let cpu = Kernels::cpu();
    assert!(!cpu.fp8_matmul());
    assert!(cpu.with_fp8_matmul(true).fp8_matmul());
    let options = crate::KernelOptions::default();
    assert!(!options.fp8_matmul);
    let on = crate::KernelOptions {
        fp8_matmul: true,
        ..Default::default()
    };
    assert!(Kernels::for_device(&Device::Cpu, &on).unwrap().fp8_matmul());
}

#[test]
fn fp8_reference_matches_a_hand_computed_product() {
    // amax 3.5: x scale 3.5 / 448 = 1/128, x as e4m3 [128, −256, 64, 448].
    let x = Tensor::new(&[[1.0_f32, -2.0, 0.5, 3.5]], &Device::Cpu).unwrap();
    let w = e4m3(&[1.0, 1.0, 1.0, 1.0, 0.5, -1.0, 2.0, 0.0], (2, 4));
    let bias = Tensor::new(&[0.25_f32, -1.0], &Device::Cpu).unwrap();
    let weight = Fp8Weight {
        weight: &w,
        scale: 0.25,
        input_scale: None,
    };
    let y = linear_fp8_reference(&x, weight, Some(&bias), Epilogue::None, DType::F32).unwrap();
    // 384 / 128 · 0.25 + 0.25 and 448 / 128 · 0.25 − 1.
    assert_eq!(rows(&y), [[1.0, -0.125]]);
    let gelu = |v: f32| 0.5 * v * (1.0 + (0.797_884_6 * (v + 0.044_715 * v * v * v)).tanh());
    let y = linear_fp8_reference(&x, weight, Some(&bias), Epilogue::GeluTanh, DType::F32).unwrap();
    for (got, want) in rows(&y)[0].iter().zip([gelu(1.0), gelu(-0.125)]) {
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
    // A file input scale replaces the dynamic one: x / 0.5 = [2, −4, 1, 7].
    let weight = Fp8Weight {
        input_scale: Some(0.5),
        ..weight
    };
    let y = linear_fp8_reference(&x, weight, None, Epilogue::None, DType::F32).unwrap();
    assert_eq!(rows(&y), [[0.75, 0.875]]);
}

#[test]
fn linear_fp8_on_the_cpu_is_the_reference_over_any_leading_dims() {
    let values: Vec<f32> = (0..2 * 3 * 32)
        .map(|i| ((i * 7 % 23) as f32 - 11.0) / 5.0)
        .collect();
    let x = Tensor::from_vec(values, (2, 3, 32), &Device::Cpu).unwrap();
    let wv: Vec<f32> = (0..16 * 32)
        .map(|i| ((i * 5 % 17) as f32 - 8.0) * 3.0)
        .collect();
    let w = e4m3(&wv, (16, 32));
    let weight = Fp8Weight {
        weight: &w,
        scale: 0.01,
        input_scale: None,
    };
    let y = linear_fp8(
        &Kernels::cpu(),
        &x,
        weight,
        None,
        Epilogue::None,
        DType::BF16,
    )
    .unwrap();
    assert_eq!((y.dims(), y.dtype()), (&[2, 3, 16][..], DType::BF16));
    let flat = linear_fp8_reference(
        &x.reshape((6, 32)).unwrap(),
        weight,
        None,
        Epilogue::None,
        DType::BF16,
    )
    .unwrap();
    assert_eq!(rows(&y.reshape((6, 16)).unwrap()), rows(&flat));
}

/// Deterministic standard normal values (Box–Muller over a 64-bit LCG).
fn gaussian(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let mut uniform = || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 11) as f64 + 0.5) / (1_u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u, v) = (uniform(), uniform());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        })
        .collect()
}

fn rel_l2(a: &Tensor, b: &Tensor) -> f64 {
    let flat = |t: &Tensor| {
        t.to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
    };
    let (a, b) = (flat(a), flat(b));
    let diff: f64 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
    (diff / b.iter().map(|y| y * y).sum::<f64>()).sqrt()
}

/// The FP8 GEMM's error on inputs shaped like the DiT's, against the exact product with the
/// weight as stored and against today's path (weight dequantized to bf16, bf16 GEMM with
/// float32 accumulation). The weight's own e4m3 error is common to both paths; what differs
/// is e4m3 on the activation (3 mantissa bits: about 3.6% RMS per value, less after the sum
/// averages it) against bf16 on the weight and the output.
#[test]
fn fp8_gemm_error_against_the_dequantize_path_on_realistic_inputs() {
    let (m, k, n) = (128, 1024, 256);
    let dev = Device::Cpu;
    // A Wan-like weight (std 0.02) stored as ComfyUI's fp8_scaled does: scale = amax / 448.
    let w = Tensor::from_vec(gaussian(n * k, 1), (n, k), &dev)
        .unwrap()
        .affine(0.02, 0.0)
        .unwrap();
    let amax = w
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let scale = f64::from(amax / 448.0);
    let stored = w
        .affine(1.0 / scale, 0.0)
        .unwrap()
        .to_dtype(DType::F8E4M3)
        .unwrap();
    let exact_w = stored
        .to_dtype(DType::F32)
        .unwrap()
        .affine(scale, 0.0)
        .unwrap();
    let bf16_w = dequantize(&Kernels::cpu(), &stored, scale, DType::BF16).unwrap();
    let normal = Tensor::from_vec(gaussian(m * k, 2), (m, k), &dev).unwrap();
    // Eight channels 30× larger: the outlier channels transformer activations have.
    let boost: Vec<f32> = (0..k)
        .map(|c| if c % 128 == 5 { 30.0 } else { 1.0 })
        .collect();
    let boost = Tensor::from_vec(boost, k, &dev).unwrap();
    let inputs = [
        ("normed", normal.clone(), 0.05),
        (
            "outlier channels",
            normal.broadcast_mul(&boost).unwrap(),
            0.05,
        ),
        (
            "gelu (FFN down)",
            normal.affine(3.0, 0.0).unwrap().gelu().unwrap(),
            0.05,
        ),
    ];
    for (name, x, fp8_bound) in inputs {
        let x = x.to_dtype(DType::BF16).unwrap();
        let x32 = x.to_dtype(DType::F32).unwrap();
        let exact = x32.matmul(&exact_w.t().unwrap()).unwrap();
        let today = x32
            .matmul(&bf16_w.to_dtype(DType::F32).unwrap().t().unwrap())
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let weight = Fp8Weight {
            weight: &stored,
            scale,
            input_scale: None,
        };
        let fp8 = linear_fp8_reference(&x, weight, None, Epilogue::None, DType::BF16).unwrap();
        let (today_err, fp8_err, between) = (
            rel_l2(&today, &exact),
            rel_l2(&fp8, &exact),
            rel_l2(&fp8, &today),
        );
        println!(
            "{name}: rel L2 vs exact: dequantize+bf16 {today_err:.2e}, fp8 {fp8_err:.2e}; fp8 vs dequantize+bf16 {between:.2e}"
        );
        assert!(today_err < 5e-3, "{name}: {today_err}");
        assert!(fp8_err < fp8_bound, "{name}: {fp8_err}");
        assert!(
            fp8_err > today_err,
            "{name}: e4m3 activations cost more than bf16"
        );
    }
}

/// The layer with a LoRA on the fly, on the CPU, against `x·Wᵀ + b + (x·downᵀ)·upᵀ` written
/// out in float64 then the epilogue; plain and float8 weights, with and without GELU, over
/// leading dims.
#[test]
fn a_low_rank_addend_is_added_before_the_bias_and_the_epilogue() {
    let cpu = Device::Cpu;
    let (k, n, r) = (32, 24, 3);
    let ramp = |count: usize, phase: f32, amp: f32| -> Vec<f32> {
        (0..count)
            .map(|i| (i as f32 * 0.61 + phase).sin() * amp)
            .collect()
    };
    let x = Tensor::from_vec(ramp(2 * 5 * k, 0.0, 1.5), (2, 5, k), &cpu).unwrap();
    let w = Tensor::from_vec(ramp(n * k, 1.0, 0.2), (n, k), &cpu).unwrap();
    let b = Tensor::from_vec(ramp(n, 2.0, 0.5), n, &cpu).unwrap();
    let down = Tensor::from_vec(ramp(r * k, 3.0, 0.3), (r, k), &cpu).unwrap();
    let up = Tensor::from_vec(ramp(n * r, 4.0, 0.4), (n, r), &cpu).unwrap();
    let low_rank = LowRank {
        down: &down,
        up: &up,
    };
    let gelu = |v: f64| 0.5 * v * (1.0 + (0.797_884_560_8 * (v + 0.044_715 * v * v * v)).tanh());
    let f64s = |t: &Tensor| -> Vec<Vec<f64>> {
        t.to_dtype(DType::F32)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
            .iter()
            .map(|row| row.iter().map(|&v| f64::from(v)).collect())
            .collect()
    };
    let expected = |weight: &[Vec<f64>], xs: &[Vec<f64>], epilogue: Epilogue| -> Vec<Vec<f64>> {
        let (d, u, bias) = (f64s(&down), f64s(&up), b.to_vec1::<f32>().unwrap());
        xs.iter()
            .map(|row| {
                let low: Vec<f64> = d
                    .iter()
                    .map(|dr| dr.iter().zip(row).map(|(a, c)| a * c).sum())
                    .collect();
                (0..n)
                    .map(|j| {
                        let base: f64 = weight[j].iter().zip(row).map(|(a, c)| a * c).sum();
                        let delta: f64 = u[j].iter().zip(&low).map(|(a, c)| a * c).sum();
                        let y = base + delta + f64::from(bias[j]);
                        if epilogue == Epilogue::GeluTanh {
                            gelu(y)
                        } else {
                            y
                        }
                    })
                    .collect()
            })
            .collect()
    };
    let xs = f64s(&x.reshape((10, k)).unwrap());
    let close = |got: &Tensor, want: &[Vec<f64>], bound: f64| {
        assert_eq!(got.dims(), &[2, 5, n]);
        let got = f64s(&got.reshape((10, n)).unwrap());
        let (mut err, mut norm) = (0.0, 0.0);
        for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
            err += (g - w) * (g - w);
            norm += w * w;
        }
        let rel = (err / norm).sqrt();
        assert!(rel < bound, "rel L2 {rel:.2e}");
        rel
    };
    for epilogue in [Epilogue::None, Epilogue::GeluTanh] {
        let want = expected(&f64s(&w), &xs, epilogue);
        let y = linear_low_rank(&Kernels::cpu(), &x, &w, Some(&b), low_rank, epilogue).unwrap();
        close(&y, &want, 1e-6);
        // Without the addend the result moves well past that: the test can fail.
        let without = linear(&Kernels::cpu(), &x, &w, Some(&b), epilogue).unwrap();
        assert!(rel_l2_f64(&f64s(&without.reshape((10, n)).unwrap()), &want) > 1e-2);

        // Float8 weights: the FP8 reference (x quantized too) plus the same delta.
        let scale = 0.2 / 448.0;
        let stored = (&w / scale).unwrap().to_dtype(DType::F8E4M3).unwrap();
        let weight = Fp8Weight {
            weight: &stored,
            scale,
            input_scale: None,
        };
        let y = linear_fp8_low_rank(
            &Kernels::cpu(),
            &x,
            weight,
            Some(&b),
            low_rank,
            epilogue,
            DType::F32,
        )
        .unwrap();
        let base = linear_fp8_reference(&x, weight, Some(&b), Epilogue::None, DType::F32).unwrap();
        let delta = low_rank.delta(&x).unwrap();
        let mut unfused = (base + delta).unwrap();
        if epilogue == Epilogue::GeluTanh {
            unfused = unfused.gelu().unwrap();
        }
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            unfused.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        // And near the float64 sum with the float8 weight (x's e4m3 error aside).
        let dequantized = f64s(
            &stored
                .to_dtype(DType::F32)
                .unwrap()
                .affine(scale, 0.0)
                .unwrap(),
        );
        close(&y, &expected(&dequantized, &xs, epilogue), 0.1);
    }
    // Factors of another layer's shape are refused by name.
    let wrong = LowRank {
        down: &up,
        up: &down,
    };
    let err = linear_low_rank(&Kernels::cpu(), &x, &w, Some(&b), wrong, Epilogue::None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("low-rank factors"), "{err}");
}

fn rel_l2_f64(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    let (mut err, mut norm) = (0.0, 0.0);
    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
        err += (x - y) * (x - y);
        norm += y * y;
    }
    (err / norm).sqrt()
}
