//! The `tally` command: CLI wiring only. Each subcommand's work lives in `cmd/`, and the
//! behaviour in the crates (events, enforcer, simulator).

mod cmd;
mod config;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// tally: an inline enforcer for AI API traffic, with a ledger of every decision and
/// token, SQL over the history, and reconciliation against provider bills.
#[derive(Parser, Debug)]
#[command(name = "tally", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone)]
struct GlobalArgs {
    /// Configuration file (YAML). Default: ./tally.yaml if it exists.
    #[arg(long, short = 'c', global = true, env = "TALLY_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory of the embedded mode (event log, tables).
    #[arg(long, global = true, env = "TALLY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Log output format.
    #[arg(long, global = true, env = "TALLY_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// Log filter, e.g. `info` or `tally_enforcer=debug` (RUST_LOG syntax).
    #[arg(long, global = true, env = "TALLY_LOG_FILTER", default_value = "info")]
    log_filter: String,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run tally embedded: the proxy writing events to the local log in the data directory.
    ///
    /// With --dev, the provider simulator runs in-process on 127.0.0.1:9090, every
    /// upstream points at it, and keys of the form `dev-<tenant>-<anything>` are accepted:
    /// no provider account or configuration needed.
    Up(cmd::up::UpArgs),
    /// Run only the enforcer (proxy) against the configured event log.
    Enforcer(cmd::up::UpArgs),
    /// Run the provider simulator (OpenAI, Anthropic and Gemini wire formats).
    Simulate {
        /// Address to listen on.
        #[arg(long, env = "TALLY_SIMULATOR_LISTEN", default_value = "127.0.0.1:9090")]
        listen: SocketAddr,
    },
    /// Inspect the local event log.
    #[command(subcommand)]
    Log(cmd::log::LogCommand),
    /// Manage gateway API keys.
    #[command(subcommand)]
    Keys(cmd::keys::KeysCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cmd::init_tracing(
        cli.global.log_format == LogFormat::Json,
        &cli.global.log_filter,
    );
    let result = match cli.command {
        Command::Up(args) => cmd::up::run(&cli.global, args, true),
        Command::Enforcer(args) => cmd::up::run(&cli.global, args, false),
        Command::Simulate { listen } => cmd::simulate::run(&cli.global, listen),
        Command::Log(c) => cmd::log::run(&cli.global, c),
        Command::Keys(c) => cmd::keys::run(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
