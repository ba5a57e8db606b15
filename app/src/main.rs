//! The `stillmotion` binary: the desktop app, and the headless CLI (`stillmotion render …`).

use clap::Parser;
use stillmotion_app::cli;
use stillmotion_engine::pipeline::PipelineRunner;

/// Stillmotion: turn a still image and a prompt into a short video.
#[derive(Debug, Parser)]
#[command(name = "stillmotion", version, about, after_help = cli::EXIT_CODES_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Option<Subcommand>,
    /// Open this image as the source when the window starts.
    #[arg(long)]
    image: Option<std::path::PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum Subcommand {
    /// Render one recipe headless: image + prompt → video.
    #[command(after_help = cli::EXIT_CODES_HELP)]
    Render(Box<cli::RenderArgs>),
    /// Interpolate an existing clip (video file or PNG-frame folder) with RIFE.
    #[command(after_help = cli::EXIT_CODES_HELP)]
    Interpolate(cli::InterpolateArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,wgpu=warn,naga=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Subcommand::Render(args)) => match args.runner() {
            Ok(runner) => std::process::ExitCode::from(cli::run_render(&args, runner)),
            Err(error) => {
                eprintln!("stillmotion render: {error:#}");
                std::process::ExitCode::from(cli::exit_code::BAD_INPUT)
            }
        },
        Some(Subcommand::Interpolate(args)) => {
            std::process::ExitCode::from(cli::run_interpolate(&args, PipelineRunner::new()))
        }
        None => {
            let options = stillmotion_app::gui::StartOptions {
                image: cli.image,
                ..Default::default()
            };
            match stillmotion_app::gui::run(options, PipelineRunner::new()) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("stillmotion: {error:#}");
                    std::process::ExitCode::from(cli::exit_code::FAILED)
                }
            }
        }
    }
}
