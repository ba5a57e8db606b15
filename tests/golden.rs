//! Runs every golden case (committed, and those in `STILLMOTION_GOLDEN_DIRS`) on the CPU in
//! float32 and fails with a table of every tensor outside its tolerance.

use std::fmt::Write as _;

use candle_core::Device;
use stillmotion_tests::golden::{self, Case, Metrics};
use stillmotion_tests::runners;

struct Row {
    component: String,
    case: String,
    tensor: String,
    result: Result<Metrics, String>,
    rel_l2_limit: f64,
    max_abs_limit: Option<f64>,
}

impl Row {
    fn passed(&self) -> bool {
        match &self.result {
            Ok(m) => {
                m.rel_l2 <= self.rel_l2_limit && self.max_abs_limit.is_none_or(|l| m.max_abs <= l)
            }
            Err(_) => false,
        }
    }
}

fn check_case(case: &Case, device: &Device) -> Vec<Row> {
    let tolerance = &case.manifest.tolerance;
    let row = |tensor: &str, result| Row {
        component: case.manifest.component.clone(),
        case: case.name.clone(),
        tensor: tensor.to_owned(),
        result,
        rel_l2_limit: tolerance.rel_l2,
        max_abs_limit: tolerance.max_abs,
    };
    let expected_path = case.file(&case.manifest.expected);
    let expected = match candle_core::safetensors::load(&expected_path, device) {
        Ok(expected) if !expected.is_empty() => expected,
        Ok(_) => {
            return vec![row(
                "-",
                Err("expected.safetensors holds no tensor".to_owned()),
            )];
        }
        Err(error) => return vec![row("-", Err(format!("loading expected: {error}")))],
    };
    let outputs = match runners::run(case, device) {
        Ok(outputs) => outputs,
        Err(error) => return vec![row("-", Err(format!("{error:#}")))],
    };
    let mut names: Vec<_> = expected.keys().cloned().collect();
    names.sort();
    names
        .iter()
        .map(|name| {
            let result = match outputs.get(name) {
                Some(actual) => {
                    golden::compare(actual, &expected[name]).map_err(|e| format!("{e:#}"))
                }
                None => Err("the runner produced no such output".to_owned()),
            };
            row(name, result)
        })
        .collect()
}

/// The CPU unless `STILLMOTION_GOLDEN_DEVICE=cuda` (a build with `--features cuda` on a GPU
/// machine): then every case runs on CUDA in the cases' float32, against the same tolerances.
fn golden_device() -> Device {
    match std::env::var("STILLMOTION_GOLDEN_DEVICE").as_deref() {
        Ok("cuda") => {
            Device::new_cuda(0).expect("STILLMOTION_GOLDEN_DEVICE=cuda needs a CUDA build and GPU")
        }
        _ => Device::Cpu,
    }
}

#[test]
fn golden_cases_match_the_reference() {
    let roots = golden::case_roots();
    let cases = golden::discover(&roots).unwrap();
    assert!(!cases.is_empty(), "no golden cases found in {roots:?}");
    let device = golden_device();
    let rows: Vec<Row> = cases
        .iter()
        .flat_map(|case| check_case(case, &device))
        .collect();

    let mut table = String::from("component | case | tensor | max_abs | rel_l2 | tolerance | ok\n");
    for row in &rows {
        let (max_abs, rel_l2) = match &row.result {
            Ok(m) => (format!("{:.3e}", m.max_abs), format!("{:.3e}", m.rel_l2)),
            Err(error) => ("-".to_owned(), error.clone()),
        };
        let limit = row
            .max_abs_limit
            .map_or(format!("rel_l2 ≤ {:.0e}", row.rel_l2_limit), |l| {
                format!("rel_l2 ≤ {:.0e}, max_abs ≤ {l:.0e}", row.rel_l2_limit)
            });
        let ok = if row.passed() { "yes" } else { "NO" };
        writeln!(
            table,
            "{} | {} | {} | {max_abs} | {rel_l2} | {limit} | {ok}",
            row.component, row.case, row.tensor
        )
        .unwrap();
    }
    println!("{table}");
    let failed = rows.iter().filter(|row| !row.passed()).count();
    assert_eq!(
        failed,
        0,
        "{failed} of {} tensors outside tolerance:\n{table}",
        rows.len()
    );
}
