//! One JSON object per result line, and the error measure every parity line uses.

use std::fmt::Write as _;

use candle_core::{DType, Device, Tensor};

/// Relative L2 error ‖a − b‖ / ‖b‖ in float64 on the CPU.
pub fn rel_l2(a: &Tensor, b: &Tensor) -> anyhow::Result<f64> {
    let flat = |t: &Tensor| -> anyhow::Result<Vec<f64>> {
        Ok(t.to_device(&Device::Cpu)?
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?)
    };
    let (a, b) = (flat(a)?, flat(b)?);
    anyhow::ensure!(
        a.len() == b.len(),
        "lengths {} and {} differ",
        a.len(),
        b.len()
    );
    let diff: f64 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
    let norm: f64 = b.iter().map(|y| y * y).sum();
    Ok((diff / norm.max(f64::MIN_POSITIVE)).sqrt())
}

/// Cosine similarity of two tensors' flattened values, in float64 on the CPU.
pub fn cosine(a: &Tensor, b: &Tensor) -> anyhow::Result<f64> {
    let flat = |t: &Tensor| -> anyhow::Result<Vec<f64>> {
        Ok(t.to_device(&Device::Cpu)?
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?)
    };
    let (a, b) = (flat(a)?, flat(b)?);
    let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    Ok(dot / (norm(&a) * norm(&b)).max(f64::MIN_POSITIVE))
}

/// Relative L1 error Σ|a − b| / Σ|b| (SageAttention's measure), in float64 on the CPU.
pub fn rel_l1(a: &Tensor, b: &Tensor) -> anyhow::Result<f64> {
    let diff = (a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?
        .abs()?
        .sum_all()?
        .to_scalar::<f64>()?;
    let norm = b
        .to_dtype(DType::F64)?
        .abs()?
        .sum_all()?
        .to_scalar::<f64>()?;
    Ok(diff / norm.max(f64::MIN_POSITIVE))
}

/// Bound on the GPU 8-bit attention kernel against its CPU emulation (same quantization; what
/// differs is exp2's last bits flipping an e4m3 rounding now and then).
pub const INT8_EMULATION_BOUND: f64 = 1e-2;
/// Bound on the 8-bit attention against exact float32 attention on random inputs (flat
/// attention over Gaussian keys is its worst case: e4m3 keeps 3 mantissa bits).
pub const INT8_EXACT_BOUND: f64 = 6e-2;

/// Bound on the relative L2 error of a bf16 kernel against the float32 reference.
pub const BF16_BOUND: f64 = 1e-2;
/// Bound for a whole bf16 network (errors of 2 blocks add up) against float32.
pub const DIT_BOUND: f64 = 2e-2;

/// Parity results: each is printed; any past its bound fails the run at the end.
#[derive(Default)]
pub struct Checks {
    failures: Vec<String>,
}

impl Checks {
    pub fn check(&mut self, name: &str, rel_l2: f64, bound: f64) {
        let pass = rel_l2 <= bound;
        Line::new("parity")
            .text("kernel", name)
            .num("rel_l2", rel_l2)
            .num("bound", bound)
            .text("result", if pass { "pass" } else { "FAIL" })
            .print();
        if !pass {
            self.failures
                .push(format!("{name}: {rel_l2:.3e} > {bound:.0e}"));
        }
    }

    pub fn finish(self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.failures.is_empty(),
            "parity failures: {}",
            self.failures.join("; ")
        );
        Ok(())
    }
}

/// A result line being built.
pub struct Line {
    fields: Vec<(String, String)>,
}

impl Line {
    pub fn new(kind: &str) -> Self {
        Self {
            fields: vec![("kind".to_owned(), quote(kind))],
        }
    }

    pub fn text(mut self, key: &str, value: &str) -> Self {
        self.fields.push((key.to_owned(), quote(value)));
        self
    }

    pub fn int(mut self, key: &str, value: usize) -> Self {
        self.fields.push((key.to_owned(), value.to_string()));
        self
    }

    pub fn num(mut self, key: &str, value: f64) -> Self {
        let shown = if value.is_finite() {
            format!("{value:.6e}")
        } else {
            "null".to_owned()
        };
        self.fields.push((key.to_owned(), shown));
        self
    }

    pub fn print(self) {
        let body: Vec<String> = self
            .fields
            .iter()
            .map(|(k, v)| format!("{}: {v}", quote(k)))
            .collect();
        println!("{{{}}}", body.join(", "));
    }
}

fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
