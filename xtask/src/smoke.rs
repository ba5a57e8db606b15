//! GUI smoke test: start the real `stillmotion` binary under Xvfb, wait for its window, take a
//! screenshot (kept at `<target>/smoke/main-window.png` for people to look at), and fail if the
//! window never appears or the screenshot is blank.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

const DISPLAY: &str = ":97";
const WINDOW_TITLE: &str = "Stillmotion";

/// Kills the child process when dropped, so a failing smoke test leaves nothing running.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the smoke test against a built binary; returns the screenshot's path.
pub fn run(binary: &Path, out_dir: &Path) -> anyhow::Result<PathBuf> {
    if !binary.is_file() {
        bail!("no app binary at {}; build it first", binary.display());
    }
    std::fs::create_dir_all(out_dir)?;
    let _xvfb = KillOnDrop(
        Command::new("Xvfb")
            .args([DISPLAY, "-screen", "0", "1280x800x24", "-nolisten", "tcp"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting Xvfb (apt-get install xvfb)")?,
    );
    wait_for("the X server", Duration::from_secs(10), || {
        x11(Command::new("xwininfo").arg("-root")).is_ok()
    })?;
    let log_path = out_dir.join("app.log");
    let log = std::fs::File::create(&log_path)?;
    let _app = KillOnDrop(
        Command::new(binary)
            .env("DISPLAY", DISPLAY)
            .env_remove("WAYLAND_DISPLAY")
            .env("XDG_CONFIG_HOME", out_dir.join("config"))
            .env("XDG_DATA_HOME", out_dir.join("data"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?,
    );
    wait_for("the Stillmotion window", Duration::from_secs(90), || {
        x11(Command::new("xwininfo").args(["-root", "-tree"]))
            .is_ok_and(|tree| tree.contains(&format!("\"{WINDOW_TITLE}\"")))
    })
    .with_context(|| format!("the app log is {}", log_path.display()))?;
    // Give the first frames time to render before the capture.
    std::thread::sleep(Duration::from_secs(3));
    let screenshot = out_dir.join("main-window.png");
    x11(Command::new("import")
        .args(["-window", "root"])
        .arg(&screenshot))
    .context("taking the screenshot (apt-get install imagemagick)")?;
    let colours = x11(Command::new("identify")
        .args(["-format", "%k"])
        .arg(&screenshot))?;
    let distinct: u32 = colours
        .trim()
        .parse()
        .context("reading identify's colour count")?;
    if distinct < 8 {
        bail!(
            "the screenshot has only {distinct} colours: the window did not draw; see {}",
            log_path.display()
        );
    }
    Ok(screenshot)
}

fn x11(command: &mut Command) -> anyhow::Result<String> {
    super::cargo::output(command.env("DISPLAY", DISPLAY))
}

fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!("{what} did not appear within {} s", limit.as_secs())
}
