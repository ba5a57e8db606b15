//! The `stillmotion` binary: the desktop app, and (as the engine lands) the headless CLI.

use clap::Parser;

/// Stillmotion: turn a still image and a prompt into a short video.
#[derive(Debug, Parser)]
#[command(name = "stillmotion", version, about)]
struct Cli {
    /// Open this image as the source when the window starts.
    #[arg(long)]
    image: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,wgpu=warn,naga=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    stillmotion_app::gui::run(stillmotion_app::gui::StartOptions { image: cli.image })
}
