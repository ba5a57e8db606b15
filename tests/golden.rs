//! Runs every golden case (committed, and those in `STILLMOTION_GOLDEN_DIRS`) and fails with a
//! table of every tensor outside its tolerance. The device is the CPU unless
//! `STILLMOTION_GOLDEN_DEVICE=cuda`; the precision is f32 unless `STILLMOTION_GOLDEN_DTYPE` says
//! `bf16` or `f16` (models then compute in it, against that precision's bounds).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a failure to set up is a test failure"
)]

use candle_core::Device;
use stillmotion_tests::golden::{self, Case, Precision, Row};

/// The CPU unless `STILLMOTION_GOLDEN_DEVICE=cuda` (a build with `--features cuda` on a GPU
/// machine).
fn golden_device() -> Device {
    match std::env::var("STILLMOTION_GOLDEN_DEVICE").as_deref() {
        Ok("cuda") => {
            Device::new_cuda(0).expect("STILLMOTION_GOLDEN_DEVICE=cuda needs a CUDA build and GPU")
        }
        _ => Device::Cpu,
    }
}

/// Runs `cases` and compares their outputs.
fn check(cases: &[Case], device: &Device, precision: Precision) -> Vec<Row> {
    cases
        .iter()
        .flat_map(|case| golden::check_case(case, device, precision))
        .collect()
}

/// Prints the table and fails naming every tensor outside its bound.
fn assert_pass(rows: &[Row], device: &Device, precision: Precision) {
    let table = golden::table(rows);
    println!("{table}");
    let failed = rows.iter().filter(|row| !row.passed()).count();
    assert_eq!(
        failed,
        0,
        "{failed} of {} tensors outside tolerance ({} run on {device:?}):\n{table}",
        rows.len(),
        precision.name()
    );
}

#[test]
fn golden_cases_match_the_reference() {
    let roots = golden::case_roots();
    let cases = golden::discover(&roots).unwrap();
    assert!(!cases.is_empty(), "no golden cases found in {roots:?}");
    let precision = Precision::from_env().unwrap();
    let device = golden_device();
    assert_pass(&check(&cases, &device, precision), &device, precision);
}

/// The half-precision path on the CPU in every run of the suite: one small case per model
/// (DiT, VAE, umT5, RIFE) asked for in bf16, against the half-precision bounds. The DiT and
/// umT5 compute in bf16; the VAE and RIFE in f16, as every CPU bf16 run does (candle 0.11's CPU
/// convolutions have no bf16 kernel). The GPU run (`STILLMOTION_GOLDEN_DTYPE=bf16`,
/// TESTING.md) covers every case in bf16.
#[test]
fn small_cases_match_the_reference_in_half_precision_on_the_cpu() {
    let picked = [
        ("wan_dit_i2v_int_t", Precision::Bf16),
        ("umt5_comfyui_file_masked", Precision::Bf16),
        ("vae21_official", Precision::F16),
        ("rife-astronaut-64x64-t050", Precision::F16),
    ];
    let roots = golden::case_roots();
    let cases: Vec<Case> = picked
        .iter()
        .map(|(name, _)| {
            let dir = roots
                .iter()
                .map(|root| root.join(name))
                .find(|d| d.is_dir());
            golden::load_case(&dir.unwrap_or_else(|| panic!("case {name} not in {roots:?}")))
                .unwrap()
        })
        .collect();
    let rows = check(&cases, &Device::Cpu, Precision::Bf16);
    assert_pass(&rows, &Device::Cpu, Precision::Bf16);
    for (name, precision) in picked {
        let case_rows: Vec<&Row> = rows.iter().filter(|row| row.case == name).collect();
        assert!(
            case_rows.iter().all(|row| row.precision == precision),
            "{name}"
        );
        // It really computed in half precision: its largest error is far above f32's (~1e-6).
        let worst = case_rows
            .iter()
            .filter_map(|row| row.result.as_ref().ok())
            .map(|m| m.rel_l2)
            .fold(0.0, f64::max);
        assert!(
            worst > 1e-4,
            "{name}: rel L2 {worst:.2e} is f32's, not half precision's"
        );
    }
}
