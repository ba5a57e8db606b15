//! Running cases through their runners and tabulating each tensor against its bound.

use std::fmt::Write as _;

use candle_core::Device;

use super::compare::{Metrics, compare};
use super::manifest::{Case, Limits};
use super::precision::Precision;
use crate::runners;

/// One compared tensor (or a case that failed before any comparison: tensor `-`).
#[derive(Debug)]
pub struct Row {
    pub component: String,
    pub case: String,
    pub tensor: String,
    /// The precision the component computed in (f32 for those that always do).
    pub precision: Precision,
    pub result: Result<Metrics, String>,
    pub limits: Limits,
}

impl Row {
    #[must_use]
    pub fn passed(&self) -> bool {
        match &self.result {
            Ok(m) => {
                m.rel_l2 <= self.limits.rel_l2 && self.limits.max_abs.is_none_or(|l| m.max_abs <= l)
            }
            Err(_) => false,
        }
    }
}

/// Runs `case` on `device`, asking for `requested` (components that cannot compute in it run
/// in f32, with their f32 bounds), and compares every expected tensor.
pub fn check_case(case: &Case, device: &Device, requested: Precision) -> Vec<Row> {
    let component = case.manifest.component.as_str();
    let dtype = runners::dtype_for(component, requested.dtype(), device);
    let precision = Precision::of(dtype).unwrap_or_default();
    let limits = case.manifest.tolerance.limits(precision);
    let row = |tensor: &str, result| Row {
        component: component.to_owned(),
        case: case.name.clone(),
        tensor: tensor.to_owned(),
        precision,
        result,
        limits,
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
    let outputs = match runners::run(case, device, dtype) {
        Ok(outputs) => outputs,
        Err(error) => return vec![row("-", Err(format!("{error:#}")))],
    };
    let mut names: Vec<_> = expected.keys().cloned().collect();
    names.sort();
    names
        .iter()
        .map(|name| {
            let result = match outputs.get(name) {
                Some(actual) => compare(actual, &expected[name]).map_err(|e| format!("{e:#}")),
                None => Err("the runner produced no such output".to_owned()),
            };
            row(name, result)
        })
        .collect()
}

/// The results table: component, case, tensor, dtype, errors, bound, verdict.
#[must_use]
pub fn table(rows: &[Row]) -> String {
    let mut table =
        String::from("component | case | tensor | dtype | max_abs | rel_l2 | tolerance | ok\n");
    for row in rows {
        let (max_abs, rel_l2) = match &row.result {
            Ok(m) => (format!("{:.3e}", m.max_abs), format!("{:.3e}", m.rel_l2)),
            Err(error) => ("-".to_owned(), error.clone()),
        };
        let rel = row.limits.rel_l2;
        let limit = row
            .limits
            .max_abs
            .map_or(format!("rel_l2 ≤ {rel:.0e}"), |l| {
                format!("rel_l2 ≤ {rel:.0e}, max_abs ≤ {l:.0e}")
            });
        let ok = if row.passed() { "yes" } else { "NO" };
        // Writing to a String cannot fail.
        let _ = writeln!(
            table,
            "{} | {} | {} | {} | {max_abs} | {rel_l2} | {limit} | {ok}",
            row.component,
            row.case,
            row.tensor,
            row.precision.name()
        );
    }
    table
}
