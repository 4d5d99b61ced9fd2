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
    /// Log filter (RUST_LOG syntax), e.g. `info` or `warn,tally_enforcer=debug`. The default
    /// logs tally at info and its dependencies at warn.
    #[arg(
        long,
        global = true,
        env = "TALLY_LOG_FILTER",
        default_value = DEFAULT_LOG_FILTER
    )]
    log_filter: String,
}

/// tally at info, its dependencies at warn.
const DEFAULT_LOG_FILTER: &str = "warn,tally=info,tally_events=info,tally_enforcer=info,tally_ledger=info,tally_queries=info,tally_simulator=info";

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
    /// A self-contained tour: the embedded stack and the provider simulator, a mixed
    /// workload, then where the tokens went, why a request was blocked, and a
    /// reconciliation against the provider's reports. Serves until Ctrl-C (or --exit).
    /// Data goes to ./tally-demo unless --data-dir says otherwise; the next run replaces it.
    Demo(cmd::demo::DemoArgs),
    /// Run the provider simulator (OpenAI, Anthropic and Gemini wire formats).
    Simulate {
        /// Address to listen on.
        #[arg(long, env = "TALLY_SIMULATOR_LISTEN", default_value = "127.0.0.1:9090")]
        listen: SocketAddr,
    },
    /// Inspect the local event log.
    #[command(subcommand)]
    Log(cmd::log::LogCommand),
    /// Run SQL over the usage history (tables plus events not yet committed).
    ///
    /// Tables: usage, decisions, corrections; views: requests, usage_hourly, spend_daily,
    /// denials, usage_corrected (see docs/schema.md). Read-only.
    Sql {
        /// The query, e.g. "SELECT tenant, sum(cost_micros) FROM usage GROUP BY tenant".
        query: String,
        /// Output format: table, csv, json (lines), json-array, parquet, arrow.
        #[arg(long, default_value = "table")]
        format: tally_queries::Format,
        #[command(flatten)]
        access: cmd::query::Access,
    },
    /// Why was this request blocked (or not)? Its decision trace and usage.
    Why {
        /// The `x-tally-request-id` of the request (several: one report each).
        #[arg(required = true, num_args = 1..)]
        request_ids: Vec<String>,
        /// Print JSON (an array when several ids are given).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        access: cmd::query::Access,
    },
    /// Where did my tokens go? Tokens and cost by dimension, and what was lost to
    /// denials, failures, aborts and retries.
    Usage {
        /// Dimensions: tenant, key, model, route, status, provider, day (comma-separated).
        #[arg(long, default_value = "tenant,model")]
        by: String,
        /// Period: 30m, 24h, 7d, 2w, an RFC 3339 time or a YYYY-MM-DD day.
        #[arg(long, default_value = "7d")]
        since: String,
        /// Print JSON (same as `--format json`).
        #[arg(long)]
        json: bool,
        /// `text`, `json`, or `html`: a self-contained page with charts (daily spend per
        /// model, top keys by spend) to open in a browser, offline.
        #[arg(long, default_value = "text", value_parser = ["text", "json", "html"])]
        format: String,
        #[command(flatten)]
        access: cmd::query::Access,
    },
    /// The biggest spenders or token users.
    Top {
        /// `spend` or `tokens`.
        #[arg(long, default_value = "spend")]
        by: String,
        /// tenant, key, model, route, status, provider or day.
        #[arg(long, default_value = "tenant")]
        dimension: String,
        #[arg(long, default_value_t = 10)]
        limit: usize,
        #[arg(long, default_value = "7d")]
        since: String,
        #[command(flatten)]
        access: cmd::query::Access,
    },
    /// The ledger (event log → Delta tables).
    #[command(subcommand)]
    Ledger(cmd::ledger::LedgerCommand),
    /// Policies (access rules, rate limits, usage caps).
    #[command(subcommand)]
    Policy(cmd::policy::PolicyCommand),
    /// Manage gateway API keys.
    #[command(subcommand)]
    Keys(cmd::keys::KeysCommand),
    /// The configuration: reference of every setting, check a file, print the defaults.
    #[command(subcommand)]
    Config(cmd::config::ConfigCommand),
    /// Reconcile gateway usage with a provider's usage and cost reports for a period.
    ///
    /// Exits with status 3 when unexplained differences exceed tolerance, so it can gate
    /// a scheduled job.
    Reconcile(cmd::reconcile::ReconcileArgs),
    /// Billing export of a period: CSV or JSONL line items, Stripe meter events or
    /// CloudEvents, from the committed tables; `--close` freezes a period.
    Export(cmd::export::ExportArgs),
    /// The query servers alone (split mode): admin HTTP API with /healthz and /readyz,
    /// and the Postgres wire protocol, over the tables at ledger.tables_uri. Read-only.
    Serve(cmd::serve::ServeArgs),
    /// Split mode: the proxy alone. Events go to Kafka (with a local outage spool) when
    /// `kafka:` is configured, else to the local event log for `tally ledger run`.
    Enforcer(cmd::enforcer::EnforcerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Several crates enable different rustls backends; pick one for the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // `tally demo` prints its reports on stdout: per-request logs would bury them.
    let log_filter = match cli.command {
        Command::Demo(_) if cli.global.log_filter == DEFAULT_LOG_FILTER => cmd::demo::LOG_FILTER,
        _ => cli.global.log_filter.as_str(),
    };
    cmd::init_tracing(cli.global.log_format == LogFormat::Json, log_filter);
    let result = match cli.command {
        Command::Up(args) => cmd::up::run(&cli.global, args),
        Command::Demo(args) => cmd::demo::run(&cli.global, args),
        Command::Simulate { listen } => cmd::simulate::run(&cli.global, listen),
        Command::Log(c) => cmd::log::run(&cli.global, c),
        Command::Keys(c) => cmd::keys::run(c),
        Command::Sql {
            query,
            format,
            access,
        } => cmd::query::sql(&cli.global, query, format, access),
        Command::Why {
            request_ids,
            json,
            access,
        } => cmd::query::why(&cli.global, request_ids, json, access),
        Command::Usage {
            by,
            since,
            json,
            format,
            access,
        } => {
            let format = if json { "json".to_owned() } else { format };
            cmd::query::usage(&cli.global, by, since, &format, access)
        }
        Command::Top {
            by,
            dimension,
            limit,
            since,
            access,
        } => cmd::query::top(&cli.global, by, dimension, limit, since, access),
        Command::Ledger(c) => cmd::ledger::run(&cli.global, c),
        Command::Policy(c) => cmd::policy::run(&cli.global, c),
        Command::Config(c) => cmd::config::run(c),
        Command::Export(args) => cmd::export::run(&cli.global, args),
        Command::Serve(args) => cmd::serve::run(&cli.global, args),
        Command::Enforcer(args) => cmd::enforcer::run(&cli.global, args),
        Command::Reconcile(args) => match cmd::reconcile::run(&cli.global, args) {
            Ok(0) => Ok(()),
            Ok(code) => return ExitCode::from(u8::try_from(code).unwrap_or(1)),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
