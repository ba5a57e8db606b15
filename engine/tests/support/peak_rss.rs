//! The process's memory as Linux reports it in `/proc/self/status`, in MiB: shared by the
//! memory tests and the `vae_decode_memory` example (each includes this file by path).

/// `key`'s value (`"VmHWM:"` for the peak resident size, `"VmRSS:"` for the current one), or
/// `None` where the system does not report it.
pub fn status_mib(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
}

/// The peak resident size so far (`VmHWM`).
pub fn peak_mib() -> Option<f64> {
    status_mib("VmHWM:")
}
