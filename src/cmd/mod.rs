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

/// Run `body` on a new main runtime with a background runtime beside it (see
/// [`background_runtime`]); `body` gets the background runtime's handle. The background
/// runtime is shut down first: its tasks use listeners bound on the main one.
pub(crate) fn block_on_with_background<T, Fut>(
    cfg: &crate::config::BackgroundConfig,
    body: impl FnOnce(tokio::runtime::Handle) -> Fut,
) -> Result<T>
where
    Fut: std::future::Future<Output = Result<T>>,
{
    let background = background_runtime(cfg)?;
    let rt = runtime()?;
    let result = rt.block_on(body(background.handle().clone()));
    background.shutdown_timeout(std::time::Duration::from_secs(5));
    drop(rt);
    result
}

/// The runtime for background work beside the proxy (see
/// [`crate::config::BackgroundConfig`]): its threads, async workers and blocking pool
/// alike, are named `tally-bg` and run at `cfg.nice`; threads they start inherit it.
pub(crate) fn background_runtime(
    cfg: &crate::config::BackgroundConfig,
) -> Result<tokio::runtime::Runtime> {
    if cfg.nice > 19 {
        anyhow::bail!(
            "config.invalid: background.nice is {}, but nice values run from 0 to 19 (10 is the default)",
            cfg.nice
        );
    }
    let nice = i32::from(cfg.nice);
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.enable_all()
        .thread_name("tally-bg")
        .on_thread_start(move || {
            if nice > 0 {
                lower_thread_priority(nice);
            }
        });
    if let Some(n) = cfg.threads {
        b.worker_threads(n.max(1));
    }
    Ok(b.build()?)
}

/// Set the calling thread's nice value (on Linux each thread has its own, addressed by
/// its thread id). Raising it needs no privilege; a failure only leaves the thread at the
/// proxy's priority, so it is logged, not fatal.
fn lower_thread_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice) {
        tracing::warn!(
            error = %e,
            nice,
            "cannot lower the priority of a background thread; it competes with the proxy"
        );
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

#[cfg(test)]
mod tests {
    use super::background_runtime;
    use crate::config::BackgroundConfig;

    fn own_nice() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap_or(-100)
    }

    #[test]
    fn background_threads_run_at_the_configured_nice_value() {
        let before = own_nice();
        let cfg = BackgroundConfig {
            threads: Some(1),
            nice: 7,
        };
        let rt = background_runtime(&cfg).expect("runtime");
        let (worker, blocking, started) = rt.block_on(async {
            let worker = tokio::spawn(async { own_nice() }).await.expect("task");
            let blocking = tokio::task::spawn_blocking(own_nice).await.expect("task");
            // A thread a background thread starts (the ledger's do) inherits its value.
            let started =
                tokio::task::spawn_blocking(|| std::thread::spawn(own_nice).join().unwrap_or(-100))
                    .await
                    .expect("task");
            (worker, blocking, started)
        });
        assert_eq!((worker, blocking, started), (7, 7, 7));
        // The calling thread (the proxy's side) is left as it was.
        assert_eq!(own_nice(), before);
        rt.shutdown_background();
    }

    #[test]
    fn nice_zero_leaves_background_threads_at_the_default() {
        let cfg = BackgroundConfig {
            threads: Some(1),
            nice: 0,
        };
        let rt = background_runtime(&cfg).expect("runtime");
        let base = own_nice();
        let worker = rt.block_on(async { tokio::spawn(async { own_nice() }).await });
        assert_eq!(worker.expect("task"), base);
        rt.shutdown_background();
    }

    #[test]
    fn a_nice_value_out_of_range_is_refused_with_the_setting_named() {
        let cfg = BackgroundConfig {
            threads: None,
            nice: 20,
        };
        let err = background_runtime(&cfg).expect_err("20 is out of range");
        assert!(err.to_string().contains("background.nice"), "{err}");
    }
}
