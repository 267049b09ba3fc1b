//! The `plugind` command line.

use clap::{Parser, Subcommand};

use plugind::lambda_cli::LambdaCommand;
use plugind::mcp::cli::McpCommand;
use plugind::package::cli::PluginCommand;
use plugind::settings::Settings;

/// mimalloc instead of glibc malloc: under load glibc keeps freed memory in
/// its per-thread arenas (the daemon's heap stayed at the size of its
/// busiest minute), and its malloc/free were the largest user-space cost of
/// a dispatch. mimalloc purges freed pages back to the system shortly after
/// they empty and allocates with less work per call; the figures are in
/// docs/benchmarks.md ("Memory").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// plugind: a serverless-first plugin daemon for Dify.
///
/// Settings are read from the environment, then from a `.env` file in the
/// working folder; `plugind serve --help` lists every one with its default.
#[derive(Parser)]
#[command(name = "plugind", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon. Every setting is read from the environment (and from a
    /// `.env` file in the working folder, if present) or from its flag.
    Serve(Box<Settings>),
    /// Build, inspect, sign and verify .difypkg plugin packages.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Build a plugin's AWS Lambda artifact, or build and deploy it as a
    /// function, outside the daemon (for operators who ship functions from CI).
    Lambda {
        #[command(subcommand)]
        command: LambdaCommand,
    },
    /// Manage MCP servers and their access tokens in the daemon's database.
    Mcp {
        #[command(subcommand)]
        command: McpCommand,
        #[command(flatten)]
        settings: Box<Settings>,
    },
    /// Check what `plugind serve` needs (settings, database, storage, uv and
    /// Python, ports, Dify's inner API, AWS when serverless), one line per
    /// check; exits 0 only when every check passes. Settings are read from
    /// the environment and `.env`, as `serve` reads them.
    Doctor(plugind::doctor::DoctorArgs),
}

fn main() {
    if let Err(e) = run() {
        eprintln!("plugind: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    // The sandbox steps the daemon runs between itself and a plugin: they
    // read no settings and no .env.
    let mut args = std::env::args_os().skip(1);
    match args.next().as_deref().and_then(|a| a.to_str()) {
        Some(plugind::runtime::sandbox::EXEC_SUBCOMMAND) => {
            let why = plugind::runtime::sandbox::run_from_env();
            eprintln!("plugind sandbox-exec: {why}");
            std::process::exit(126);
        }
        Some(plugind::runtime::sandbox::KILL_SUBCOMMAND) => {
            let uid = args.next().unwrap_or_default();
            let why = plugind::runtime::sandbox::kill_uid(&uid.to_string_lossy());
            eprintln!("plugind sandbox-kill: {why}");
            std::process::exit(1);
        }
        _ => {}
    }
    // A missing .env is normal; a malformed one is not.
    if let Err(e) = dotenvy::dotenv() {
        if !e.not_found() {
            anyhow::bail!("cannot read .env: {e}");
        }
    }
    // Before any thread exists: the environment is the process's.
    plugind::settings::unset_empty_variables(plugind::settings::variable_names());
    match Cli::parse().command {
        Command::Serve(settings) => {
            check(&settings);
            let runtime = tokio::runtime::Runtime::new()?;
            let telemetry = {
                let _inside = runtime.enter();
                plugind::telemetry::init_daemon(&settings).map_err(anyhow::Error::msg)?
            };
            let served = runtime.block_on(plugind::serve::run(*settings));
            telemetry.shutdown();
            served
        }
        Command::Plugin { command } => plugind::package::cli::run(command),
        Command::Lambda { command } => {
            plugind::telemetry::init("warn", plugind::settings::LogFormat::Text)
                .map_err(anyhow::Error::msg)?;
            Ok(tokio::runtime::Runtime::new()?.block_on(plugind::lambda_cli::run(command))?)
        }
        Command::Mcp { command, settings } => {
            check(&settings);
            tokio::runtime::Runtime::new()?.block_on(plugind::mcp::cli::run(command, &settings))
        }
        Command::Doctor(args) => {
            let code = tokio::runtime::Runtime::new()?.block_on(plugind::doctor::main(args));
            std::process::exit(code)
        }
    }
}

/// Stops with exit code 2 and a message naming the variable when settings
/// are inconsistent (clap already refused malformed single values).
fn check(settings: &Settings) {
    if let Err(message) = settings.validate() {
        eprintln!("plugind: invalid settings: {message}");
        std::process::exit(2);
    }
}
