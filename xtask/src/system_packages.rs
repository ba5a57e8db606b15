//! Debian/Ubuntu packages the build and the tests need, installed when missing.

use std::process::Command;

use anyhow::bail;

/// What the build and tests need beyond Rust:
/// - ffmpeg-next (libav bindings): clang and libclang for bindgen, pkg-config, libav*-dev;
/// - the video tests: `ffmpeg`/`ffprobe` as an independent judge of our files;
/// - the GUI smoke test: an X server (Xvfb), a software Vulkan driver for wgpu, and
///   x11-utils/imagemagick to find the window and take its screenshot.
pub const REQUIRED: &[&str] = &[
    "clang",
    "libclang-dev",
    "pkg-config",
    "libavcodec-dev",
    "libavformat-dev",
    "libavutil-dev",
    "libavfilter-dev",
    "libswscale-dev",
    "libswresample-dev",
    "ffmpeg",
    "xvfb",
    "xauth",
    "mesa-vulkan-drivers",
    "libvulkan1",
    "libxkbcommon-x11-0",
    "libx11-xcb1",
    "libxcursor1",
    "libxrandr2",
    "libxi6",
    "x11-utils",
    "imagemagick",
];

/// Installs the missing packages with apt-get when running as root; otherwise fails with the
/// exact command to run. On systems without dpkg it says it cannot check and carries on.
pub fn ensure(packages: &[&str]) -> anyhow::Result<()> {
    let Some(missing) = missing(packages) else {
        println!(
            "xtask: not a Debian/Ubuntu system (no dpkg-query); make sure these are installed: {}",
            packages.join(" ")
        );
        return Ok(());
    };
    if missing.is_empty() {
        return Ok(());
    }
    let install_line = format!(
        "apt-get install -y --no-install-recommends {}",
        missing.join(" ")
    );
    if !is_root() {
        bail!(
            "missing system packages; install them with:\n    sudo apt-get update && sudo {install_line}"
        );
    }
    println!("xtask: installing {}", missing.join(" "));
    for args in [
        vec!["update", "-qq"],
        [
            &["install", "-y", "-qq", "--no-install-recommends"][..],
            &missing,
        ]
        .concat(),
    ] {
        super::cargo::run(
            Command::new("apt-get")
                .args(&args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    let still_missing = self::missing(packages).unwrap_or_default();
    if !still_missing.is_empty() {
        bail!(
            "apt-get ran but these are still missing: {}",
            still_missing.join(" ")
        );
    }
    Ok(())
}

/// Packages not installed, or `None` where dpkg-query does not exist.
fn missing<'a>(packages: &[&'a str]) -> Option<Vec<&'a str>> {
    let output = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${db:Status-Status}\n"])
        .args(packages)
        .output()
        .ok()?;
    // dpkg-query exits non-zero when some package is unknown; its stdout still lists the rest.
    let listed = String::from_utf8_lossy(&output.stdout);
    Some(not_installed(packages, &listed))
}

fn not_installed<'a>(packages: &[&'a str], dpkg_listing: &str) -> Vec<&'a str> {
    packages
        .iter()
        .copied()
        .filter(|package| {
            !dpkg_listing.lines().any(|line| {
                let mut words = line.split_whitespace();
                let name = words.next().unwrap_or_default();
                // Multi-arch packages are listed as name:arch.
                let name = name.split(':').next().unwrap_or_default();
                name == *package && words.next() == Some("installed")
            })
        })
        .collect()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_dpkg_status_lines() {
        let listing = "clang installed\nffmpeg config-files\nlibx11-xcb1:amd64 installed\n";
        assert_eq!(
            not_installed(&["clang", "ffmpeg", "libx11-xcb1", "xvfb"], listing),
            ["ffmpeg", "xvfb"]
        );
    }
}
