//! Subcommand implementations: each wires crates together for one CLI command. No
//! business logic lives here.

pub(crate) mod admin_listener;
pub(crate) mod config;
pub(crate) mod demo;
pub(crate) mod enforcer;
pub(crate) mod export;
pub(crate) mod keys;
pub(crate) mod ledger;
pub(crate) mod ledger_group;
pub(crate) mod log;
pub(crate) mod policy;
pub(crate) mod query;
pub(crate) mod reconcile;
pub(crate) mod serve;
pub(crate) mod simulate;
pub(crate) mod up;

use anyhow::Result;

use crate::GlobalArgs;
use crate::config::TallyConfig;

/// Load the configuration and apply global flags.
pub(crate) fn load_config(global: &GlobalArgs) -> Result<TallyConfig> {
    let mut cfg = TallyConfig::load(global.config.as_deref())?;
    if let Some(d) = &global.data_dir {
        cfg.data_dir = d.clone();
    }
    Ok(cfg)
}

/// Set up logging: human-readable text or one JSON object per line, to stderr.
pub(crate) fn init_tracing(json: bool, filter: &str) {
    // The Delta kernel logs an ERROR when it probes a table that does not exist yet (the
    // ledger then creates it); real failures surface as ledger errors, so mute the probe.
    let mut filter = filter.to_owned();
    if !filter.contains("buoyant_kernel") {
        filter.push_str(",buoyant_kernel::snapshot::builder=off");
    }
    // delta-rs warns on every MERGE (the reconciler's idempotent imports) that one of its
    // own metrics is missing: noise for users, so only its errors show.
    if !filter.contains("deltalake_core") {
        filter.push_str(",deltalake_core::operations::merge=error");
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().with_current_span(true).init();
    } else {
        // Colours only on a terminal (and never with NO_COLOR): log files stay plain text.
        use std::io::IsTerminal;
        let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        builder.with_target(false).with_ansi(ansi).init();
    }
}

/// A multi-threaded tokio runtime.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
