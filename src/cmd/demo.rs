//! `tally demo`: a self-contained tour. Starts the embedded stack as `tally up --dev`
//! does (proxy, event log, ledger, SQL over HTTP and the Postgres wire, the provider
//! simulator in-process), writes a policy file, drives a mixed workload through the proxy
//! (`workload`), then prints where the tokens went (`tally usage`), why one real request
//! was blocked (`tally why`) and a reconciliation against the simulator's provider
//! reports (`tally reconcile --pull`), with the discrepancies the simulator was told to
//! inject. Then it keeps serving until Ctrl-C (or exits with `--exit`). Wiring only: the
//! reports are the crates' own.

mod workload;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tally_enforcer::config::{OnClientAbort, RouteConfig};
use tally_enforcer::pricing::PriceTable;
use tally_events::Timestamp;
use tally_events::log::SegmentLog;
use tally_queries::{Dimension, Principal, Since};
use tally_reconcile::config::{Account, ReconcileConfig};
use tally_reconcile::import::{self, Period, PullConfig, PullProvider};
use tally_reconcile::matcher::{Cause, Inputs, Reconciliation, reconcile};
use tally_reconcile::report::{self, ReportFormat};
use tally_reconcile::{ReconStore, gateway, runs};
use tally_simulator::reports::{Credit, PriceChange, ReportsConfig};
use tally_simulator::{Provider, SimConfig};

use super::up::{DEV_ADMIN_TOKEN, Stack, StackOptions};
use crate::GlobalArgs;
use crate::config::TallyConfig;

/// The log filter of the demo unless `--log-filter` is given: warnings only, so the
/// reports stay readable.
pub(crate) const LOG_FILTER: &str = "warn,deltalake_core=error";
/// The data directory when `--data-dir` is not given.
const DEFAULT_DATA_DIR: &str = "./tally-demo";
/// The file that marks a data directory as the demo's own (so a rerun may wipe it).
const MARKER: &str = ".tally-demo";
/// The admin key the reconciler pulls the simulator's reports with.
const REPORTS_ADMIN_KEY: &str = "sk-admin-demo";
/// The service credit the simulator's cost report carries.
const CREDIT_USD: f64 = 0.01;

#[derive(Args, Debug, Clone)]
pub(crate) struct DemoArgs {
    /// Exit right after printing the reports (default: keep serving until Ctrl-C, so the
    /// printed psql and HTTP commands work).
    #[arg(long)]
    exit: bool,
    /// Proxy listen address (`127.0.0.1:0` picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    proxy_listen: SocketAddr,
    /// Admin/SQL HTTP listen address.
    #[arg(long, default_value = "127.0.0.1:8081")]
    admin_listen: SocketAddr,
    /// Postgres wire protocol listen address.
    #[arg(long, default_value = "127.0.0.1:5433")]
    postgres_listen: SocketAddr,
    /// Provider simulator listen address.
    #[arg(long, default_value = "127.0.0.1:9090")]
    simulator_listen: SocketAddr,
}

pub(crate) fn run(global: &GlobalArgs, args: DemoArgs) -> Result<()> {
    let started = Instant::now();
    let data_dir = global
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    check_ports(&args)?;
    prepare_data_dir(&data_dir)?;
    let now = Timestamp::now();
    let mut cfg = demo_config(&data_dir, &args, now)?;
    let steps = Steps::new(6);
    steps.next("starting the stack: proxy, event log, ledger, SQL servers, provider simulator");
    let background_cfg = cfg.background.clone();
    super::block_on_with_background(&background_cfg, |background| async move {
        let opts = StackOptions {
            dev_simulator: Some(args.simulator_listen),
            metrics_tenant_label: true,
            background: Some(background),
        };
        let stack = Stack::start(&mut cfg, &opts).await?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let tour = Tour {
            data_dir: &data_dir,
            cfg: &cfg,
            proxy: format!("http://{}", stack.proxy_addr),
            simulator: format!(
                "http://{}",
                stack
                    .simulator_addr
                    .context("the demo's simulator did not start")?
            ),
            admin_addr: stack.admin_addr,
            pg_addr: stack.pg_addr,
            tables_root: stack.tables_root.clone(),
            engine: stack.engine.clone(),
            log: stack.log.clone(),
            ledger: stack.ledger.clone(),
            state: Some(stack.state.clone()),
            steps: &steps,
            now,
        };
        let serving = stack.serve_until(
            async move {
                let _ = stop_rx.await;
            },
            Duration::from_secs(5),
        );
        let exit = args.exit;
        let show = async move {
            let result = tour.run(started).await;
            if result.is_ok() && !exit {
                println!("\nThe stack keeps serving: press Ctrl-C to stop.");
                super::up::shutdown_signal().await;
            }
            let _ = stop_tx.send(());
            result
        };
        let (served, shown) = tokio::join!(serving, show);
        shown?;
        served?;
        eprintln!(
            "tally demo stopped; the tables stay in {}",
            data_dir.display()
        );
        Ok(())
    })
}

/// Step lines on stderr: the progress of the run, whether or not it is a terminal.
struct Steps {
    total: usize,
    done: std::sync::atomic::AtomicUsize,
    started: Instant,
}

impl Steps {
    fn new(total: usize) -> Steps {
        Steps {
            total,
            done: std::sync::atomic::AtomicUsize::new(0),
            started: Instant::now(),
        }
    }

    fn next(&self, what: &str) {
        let n = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        eprintln!(
            "[{n}/{}] {what} ({:.1} s)",
            self.total,
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// Everything the tour needs from the running stack.
struct Tour<'a> {
    data_dir: &'a Path,
    cfg: &'a TallyConfig,
    proxy: String,
    simulator: String,
    admin_addr: SocketAddr,
    pg_addr: Option<SocketAddr>,
    tables_root: String,
    engine: Arc<tally_queries::QueryEngine>,
    log: Arc<SegmentLog>,
    ledger: tally_ledger::LedgerHandle,
    /// Dropped once the traffic is in the log (the stack's shutdown waits for it).
    state: Option<Arc<tally_enforcer::ProxyState>>,
    steps: &'a Steps,
    now: Timestamp,
}

impl Tour<'_> {
    async fn run(mut self, started: Instant) -> Result<()> {
        let plan = workload::plan();
        self.steps.next(&format!(
            "sending {} requests: 4 tenants, 5 keys, OpenAI / Anthropic / Gemini formats, streaming and not",
            plan.len()
        ));
        let bar = ProgressBar::new(plan.len() as u64);
        if let Ok(style) =
            ProgressStyle::with_template("      [{bar:40}] {pos}/{len} requests  {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        let tick = {
            let bar = bar.clone();
            Arc::new(move |what: &str| {
                bar.inc(1);
                bar.set_message(what.to_owned());
            })
        };
        let http = workload::Http::new();
        let outcome = workload::run(&http, &self.proxy, &self.simulator, plan, tick).await?;
        bar.finish_and_clear();
        eprintln!(
            "      {} sent through the gateway ({} client retries), {} answered, {} denied, {} streams abandoned, {} upstream errors; {} sent around it",
            outcome.sent,
            outcome.client_retries,
            outcome.ok,
            outcome.denied_rate_limit.len()
                + outcome.denied_budget.len()
                + outcome.denied_access.len()
                + outcome.denied_other as usize,
            outcome.aborted,
            outcome.upstream_errors,
            outcome.bypass,
        );
        if let Some(state) = self.state.take() {
            settle(&state, &self.log, &self.ledger).await;
        }

        self.steps
            .next("where did my tokens go? (tally usage --by tenant,model)");
        let admin = Principal::Admin;
        let usage = tally_queries::usage_report(
            &self.engine,
            &[Dimension::Tenant, Dimension::Model],
            Since::parse("1d")?,
            &admin,
        )
        .await
        .context("the usage report")?;
        println!("\n== Where did my tokens go? ==\n");
        print!("{}", usage.render_text());

        self.steps.next("why was this request blocked? (tally why)");
        let denied = outcome
            .denied_budget
            .first()
            .or(outcome.denied_rate_limit.first())
            .or(outcome.denied_access.first())
            .cloned()
            .context("the workload was not denied anything; the policy file did not load")?;
        let why = tally_queries::why(&self.engine, &denied, &admin)
            .await
            .context("the why report")?;
        println!("\n== Why was request {denied} blocked? ==\n");
        print!("{}", why.render_text());
        if let Some(other) = outcome.denied_rate_limit.first() {
            println!("  (a rate-limit denial to try: tally why {other})");
        }
        if let Some(other) = outcome.denied_access.first() {
            println!("  (an access-rule denial to try: tally why {other})");
        }

        self.steps.next(
            "reconciling with the provider's usage and cost reports (tally reconcile --provider openai --pull)",
        );
        let (period, r) = self.reconcile().await?;
        println!(
            "\n== Does the bill line up? OpenAI, {} ==\n",
            period_text(&period)
        );
        print!("{}", report::render(&r, ReportFormat::Markdown));
        self.explain(&r, &outcome);

        self.steps.next("done");
        self.print_next_steps(&period, &denied);
        println!("\nThe demo took {:.1} s.", started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Pull the simulator's OpenAI reports, match them with the gateway's usage and
    /// store the run, as `tally reconcile --provider openai --pull` does.
    async fn reconcile(&self) -> Result<(Period, Reconciliation)> {
        let rules = &self.cfg.reconcile;
        let period = demo_period(self.now, Timestamp::now());
        let store = ReconStore::open(&self.tables_root, Vec::<(String, String)>::new())?;
        let mut pc = PullConfig::new(PullProvider::OpenAi);
        pc.base_url = Some(self.simulator.clone());
        pc.admin_key = Some(REPORTS_ADMIN_KEY.to_owned());
        pc.initial_backoff = Duration::from_millis(200);
        pc.max_backoff = Duration::from_secs(2);
        pc.request_timeout = Duration::from_secs(20);
        let pulled = import::pull(&store, pc, period)
            .await
            .context("pulling the simulator's OpenAI usage and cost reports")?;
        eprintln!(
            "      pulled {} page(s): {} usage and {} cost row(s)",
            pulled.pages,
            pulled.usage.inserted + pulled.usage.replaced,
            pulled.costs.inserted + pulled.costs.replaced
        );
        let (gw, minutes) = gateway::gateway_side(
            &self.engine,
            "openai",
            period.start,
            period.end,
            rules.bucket_seconds,
        )
        .await?;
        let provider_usage = store
            .read_usage(Some("openai"), Some(period.start), Some(period.end))
            .await?;
        let provider_costs = store
            .read_costs(Some("openai"), Some(period.start), Some(period.end))
            .await?;
        let inputs = Inputs {
            provider: "openai".to_owned(),
            start: period.start.as_micros(),
            end: period.end.as_micros(),
            gateway: gw,
            minutes,
            provider_usage,
            provider_costs,
        };
        let r = reconcile(&inputs, rules, &PriceTable::built_in());
        runs::store(&store, &r)
            .await
            .context("storing the reconciliation run")?;
        Ok((period, r))
    }

    /// What the simulator was told to do, and which cause the reconciler found for it.
    fn explain(&self, r: &Reconciliation, outcome: &workload::Outcome) {
        let found = |cause: Cause| {
            let n = r.of(cause).count();
            let money: i64 = r.of(cause).map(|f| f.money_micros).sum();
            if n == 0 {
                "NOT FOUND".to_owned()
            } else {
                format!(
                    "found: {} ({n} finding(s), {})",
                    cause.as_str(),
                    report::dollars(money)
                )
            }
        };
        let day = self.now.to_datetime().format("%Y-%m-%d");
        println!("\nInjected discrepancies and what the reconciler made of them:");
        let rows = [
            (
                format!(
                    "{} requests sent straight to the provider with a key the gateway never saw",
                    outcome.bypass
                ),
                Cause::BypassTraffic,
            ),
            (
                format!(
                    "the provider bills aborted streams in full ({} streams abandoned by their reader)",
                    outcome.aborted
                ),
                Cause::AbortedStreamBilled,
            ),
            (
                format!(
                    "the usage report shows 0 cached tokens ({} calls with a cached prompt prefix)",
                    workload::CACHE_MODEL
                ),
                Cause::CachedTokenReporting,
            ),
            (
                format!(
                    "the provider's price of {} went up; tally's price table still has the old one",
                    workload::REPRICED_MODEL
                ),
                Cause::StalePriceTable,
            ),
            (
                format!("a ${CREDIT_USD:.2} service credit on {day}"),
                Cause::ProviderCredit,
            ),
        ];
        for (what, cause) in rows {
            println!("  - {what}: {}", found(cause));
        }
        println!(
            "  - {} upstream errors (the gateway retried each, then the client): providers do not bill errors, so they add nothing to the bill",
            outcome.upstream_errors
        );
    }

    fn print_next_steps(&self, period: &Period, denied: &str) {
        let dir = self.data_dir.display();
        let admin = self.admin_addr;
        println!("\n== Explore further ==\n");
        println!("(`tally` is `cargo run --release --` or target/release/tally)\n");
        println!(
            "  tally sql --data-dir {dir} \"SELECT tenant, count(*) AS requests, sum(input_tokens + output_tokens) AS tokens, sum(cost_micros) AS cost_micros FROM usage GROUP BY tenant ORDER BY cost_micros DESC\""
        );
        println!(
            "  tally sql --data-dir {dir} \"SELECT rule, count(*) FROM decisions GROUP BY rule\""
        );
        println!(
            "  tally sql --data-dir {dir} \"SELECT cause, count(*), sum(money_micros) FROM discrepancies GROUP BY cause\""
        );
        println!("  tally usage --data-dir {dir} --by tenant,key,status --since 1d");
        println!("  tally why --data-dir {dir} {denied}");
        println!("\nWhile the demo runs:");
        println!(
            "  OPENAI_ADMIN_KEY={REPORTS_ADMIN_KEY} tally reconcile --data-dir {dir} --provider openai --period {} --pull --base-url {} --rules {}",
            period_text(period),
            self.simulator,
            self.data_dir.join("reconcile.yaml").display()
        );
        if let Some(pg) = self.pg_addr {
            println!(
                "  PGPASSWORD={DEV_ADMIN_TOKEN} psql \"host={} port={} user=admin dbname=tally\" -c 'SELECT * FROM spend_daily'",
                pg.ip(),
                pg.port()
            );
        }
        println!(
            "  curl -s 'http://{admin}/v1/usage?by=tenant,model&since=1d' -H 'authorization: Bearer {DEV_ADMIN_TOKEN}'"
        );
        println!(
            "  curl -s http://{admin}/v1/why/{denied} -H 'authorization: Bearer {DEV_ADMIN_TOKEN}'"
        );
        println!(
            "  curl -s http://{}/v1/chat/completions -H 'authorization: Bearer dev-acme-1' -H 'content-type: application/json' -d '{{\"model\":\"gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'",
            self.proxy.trim_start_matches("http://")
        );
    }
}

/// Wait until every request of the workload has its events in the durable log (nothing
/// in flight, no append for a while) and the ledger has committed them all, so the
/// reports read settled tables.
async fn settle(
    state: &tally_enforcer::ProxyState,
    log: &SegmentLog,
    ledger: &tally_ledger::LedgerHandle,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = (u64::MAX, log.stats().durable_end);
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        let now = (
            state.sink.stats().appended.load(Ordering::Relaxed),
            log.stats().durable_end,
        );
        let idle = state.stats.in_flight.load(Ordering::Relaxed) == 0;
        if now != last || !idle {
            last = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_millis(300) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    while Instant::now() < deadline {
        match ledger.status().await {
            Ok(s) if s.tables.iter().all(|t| t.lag_events == Some(0)) => return,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reading the ledger status"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracing::warn!("the ledger had not caught up after 30 s; the reports may miss the last events");
}

/// The UTC days from the demo's start to now (a run across midnight covers both).
fn demo_period(start: Timestamp, end: Timestamp) -> Period {
    const DAY: i64 = 86_400_000_000;
    let first = start.as_micros().div_euclid(DAY) * DAY;
    let last = end.as_micros().div_euclid(DAY) * DAY + DAY;
    Period {
        start: Timestamp::from_micros(first),
        end: Timestamp::from_micros(last),
    }
}

/// `2026-11-30` or `2026-11-30..2026-12-01`, as `--period` takes it.
fn period_text(p: &Period) -> String {
    let first = p.start.to_datetime().format("%Y-%m-%d").to_string();
    let last = Timestamp::from_micros(p.end.as_micros() - 1)
        .to_datetime()
        .format("%Y-%m-%d")
        .to_string();
    if first == last {
        first
    } else {
        format!("{first}..{last}")
    }
}

/// Refuse a port another process holds before anything starts, with what to do.
fn check_ports(args: &DemoArgs) -> Result<()> {
    let ports = [
        (args.proxy_listen, "--proxy-listen"),
        (args.admin_listen, "--admin-listen"),
        (args.postgres_listen, "--postgres-listen"),
        (args.simulator_listen, "--simulator-listen"),
    ];
    for (addr, flag) in ports {
        if addr.port() == 0 {
            continue;
        }
        if let Err(e) = std::net::TcpListener::bind(addr) {
            bail!(
                "demo.port_busy: cannot listen on {addr} ({e}). Is `tally up` or another demo running? Stop it, or pick another port with {flag} (127.0.0.1:0 picks a free one)"
            );
        }
    }
    Ok(())
}

/// A fresh data directory: create it, or wipe one an earlier demo created (it holds the
/// marker file). Anything else is refused, so the demo never deletes someone's data.
fn prepare_data_dir(dir: &Path) -> Result<()> {
    let marker = dir.join(MARKER);
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .with_context(|| format!("demo.data_dir: cannot read {}", dir.display()))?
            .next()
            .is_none();
        if marker.exists() {
            std::fs::remove_dir_all(dir).with_context(|| {
                format!(
                    "demo.data_dir: cannot remove the previous demo's {}",
                    dir.display()
                )
            })?;
        } else if !empty {
            bail!(
                "demo.data_dir: {} exists and was not created by `tally demo`; pass --data-dir with a new directory, or remove it",
                dir.display()
            );
        }
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("demo.data_dir: cannot create {}", dir.display()))?;
    std::fs::write(
        &marker,
        "Created by `tally demo`; the next `tally demo` with this data directory replaces it.\n",
    )
    .with_context(|| format!("demo.data_dir: cannot write {}", marker.display()))?;
    Ok(())
}

/// The policy file the demo enforces.
const POLICY: &str = r#"# Written by `tally demo`. Check it with `tally policy check`.
rules:
  - name: hobby-plan-models
    match: tenant == "hobby" && model == "gpt-4o"
    action: deny
    reason: the hobby plan includes gpt-4o-mini only; upgrade the plan to use gpt-4o
  - name: search-per-key-rpm
    match: tenant == "search"
    action: rate-limit
    limit: 12
    window: 1m
    key: key_id
  - name: labs-daily-budget
    match: tenant == "labs"
    action: usage-cap
    limit_usd: 0.02
    period: day
"#;

/// The stack's configuration: `up --dev` plus the demo's policy file, retries, streams
/// cancelled when their reader leaves, and a simulator with small latency, some errors
/// and report discrepancies. Writes `policies.yaml` and `reconcile.yaml` into `dir`.
fn demo_config(dir: &Path, args: &DemoArgs, now: Timestamp) -> Result<TallyConfig> {
    let mut cfg = TallyConfig {
        data_dir: dir.to_path_buf(),
        ..TallyConfig::default()
    };
    cfg.proxy.listen = args.proxy_listen;
    cfg.admin.listen = args.admin_listen;
    cfg.postgres.listen = args.postgres_listen;
    let policy = dir.join("policies.yaml");
    std::fs::write(&policy, POLICY)
        .with_context(|| format!("demo.data_dir: cannot write {}", policy.display()))?;
    cfg.proxy.policy_file = Some(policy);
    // Stop generating when the reader leaves: what was streamed is estimated.
    cfg.proxy.on_client_abort = OnClientAbort::Cancel;
    for provider in ["openai", "anthropic", "gemini"] {
        cfg.proxy.routes.insert(
            provider.to_owned(),
            RouteConfig {
                upstream: provider.to_owned(),
                max_attempts: 2,
                backoff_ms: 20,
                ..RouteConfig::default()
            },
        );
    }
    let day = now.to_datetime().format("%Y-%m-%d").to_string();
    let an_hour_ago = Timestamp::from_micros(now.as_micros() - 3_600_000_000)
        .to_datetime()
        .to_rfc3339();
    cfg.simulator = SimConfig {
        latency_ms: 15,
        ttft_ms: 10,
        inter_chunk_ms: 3,
        error_rate: 0.06,
        seed: 2026,
        reports: ReportsConfig {
            bill_aborted_in_full: true,
            zero_cached_tokens: true,
            price_changes: vec![PriceChange {
                model: workload::REPRICED_MODEL.to_owned(),
                effective_from: an_hour_ago,
                input: 0.12,
                cached_input: None,
                cache_write: None,
                output: 0.48,
            }],
            credits: vec![Credit {
                provider: Provider::Openai,
                date: day,
                amount_usd: CREDIT_USD,
                description: "Service credit: elevated error rates".to_owned(),
            }],
            ..ReportsConfig::default()
        },
        ..SimConfig::default()
    };
    cfg.reconcile = ReconcileConfig {
        accounts: vec![Account {
            provider: "openai".to_owned(),
            upstream: "openai".to_owned(),
            api_key_ids: workload::OPENAI_KEYS
                .iter()
                .map(|k| tally_simulator::api_key_id(Provider::Openai, k))
                .collect(),
            project_ids: Vec::new(),
        }],
        ..ReconcileConfig::default()
    };
    let rules = dir.join("reconcile.yaml");
    let text = format!(
        "# Written by `tally demo`: the provider keys the gateway uses (any other key is bypass traffic).\n{}",
        serde_yaml_ng::to_string(&cfg.reconcile).context("writing the reconcile rules")?
    );
    std::fs::write(&rules, text)
        .with_context(|| format!("demo.data_dir: cannot write {}", rules.display()))?;
    Ok(cfg)
}
