//! What model files a user has: fingerprints read from file headers alone (no tensor data is
//! read), and a scan of a models folder (ours or a ComfyUI `models/` tree) that says, per
//! preset, which files are present, missing or unusable and why.

pub mod content_hash;
pub mod extra_paths;
pub mod fingerprint;
pub mod scan;
pub mod sources;

pub use fingerprint::{Family, Fingerprint, Format, Noise, Role, Size, fingerprint};
pub use scan::{Need, PresetStatus, ScanReport, Status, scan};
