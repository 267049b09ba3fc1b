//! The `plugind` command line.

use clap::{Parser, Subcommand};

use plugind::settings::Settings;

/// plugind: a serverless-first plugin daemon for Dify.
#[derive(Parser)]
#[command(name = "plugind", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon. Every setting is read from the environment (and from a
    /// `.env` file in the working folder, if present) or from its flag.
    Serve(Box<Settings>),
}

fn main() -> anyhow::Result<()> {
    // A missing .env is normal; a malformed one is not.
    if let Err(e) = dotenvy::dotenv() {
        if !e.not_found() {
            anyhow::bail!("cannot read .env: {e}");
        }
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(settings) => {
            if let Err(message) = settings.validate() {
                eprintln!("plugind: invalid settings: {message}");
                std::process::exit(2);
            }
            plugind::telemetry::init(&settings.log_level, settings.log_output_format)
                .map_err(anyhow::Error::msg)?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(plugind::serve::run(*settings))
        }
    }
}
