//! The engine must never depend on GUI crates: the app depends on the engine, not the reverse.

use anyhow::bail;

/// Crates the engine's dependency tree must not contain.
const FORBIDDEN_IN_ENGINE: &[&str] = &["egui", "eframe", "winit", "egui-winit", "egui-wgpu", "rfd"];

/// Runs `cargo tree` for the engine (all features, normal and build edges) and fails on GUI crates.
pub fn check() -> anyhow::Result<()> {
    println!("xtask: checking that the engine has no GUI dependency");
    for crate_name in ["stillmotion-engine", "stillmotion-kernels"] {
        let tree = super::cargo::output(&mut super::cargo::command(&[
            "tree",
            "-p",
            crate_name,
            "--all-features",
            "-e",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ]))?;
        let found = forbidden_in(&tree);
        if !found.is_empty() {
            bail!(
                "{crate_name} depends on GUI crates {found:?}; move that code to app/ (see ARCHITECTURE.md)"
            );
        }
    }
    Ok(())
}

/// Names of forbidden crates in `cargo tree --format {p}` output (`name vX.Y.Z (...)` per line).
fn forbidden_in(tree: &str) -> Vec<String> {
    let mut found: Vec<String> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| FORBIDDEN_IN_ENGINE.contains(name))
        .map(str::to_owned)
        .collect();
    found.sort();
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_gui_crates_by_exact_name_only() {
        let tree = "stillmotion-engine v0.1.0 (/w/engine)\ncandle-core v0.11.1\negui v0.37.0\n\
                    egui_plot_like v1.0.0\nwinit v0.30.0\negui v0.37.0 (*)\n";
        assert_eq!(forbidden_in(tree), ["egui", "winit"]);
        assert!(forbidden_in("candle-core v0.11.1\nimage v0.25.10\n").is_empty());
    }
}
