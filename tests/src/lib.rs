//! Stillmotion's end-to-end tests and the golden-case harness.
//!
//! A golden case is a folder with a `case.toml` manifest, weights, inputs and the outputs the
//! reference implementation (PyTorch) produced for them; `tests/golden/README.md` documents the
//! format. [`golden::discover`] finds every case in `tests/golden/` and in the folders listed in
//! `STILLMOTION_GOLDEN_DIRS`; the `golden` test runs each through its component runner and
//! compares every expected tensor with [`golden::compare`].

pub mod compare;
pub mod golden;
pub mod runners;
