//! `tally-loadgen`: the load generator of the proxy benchmark (bench/proxy/run.sh).
//!
//! Three modes, each printing one JSON object on stdout:
//!
//! * `rate`: open loop at a constant arrival rate. Request `i` is scheduled at
//!   `start + i / rate` by a pacing thread, whatever happened to the requests before it,
//!   and its latency is measured from that scheduled time to the end of the response body,
//!   so a stalled server is charged for every request that should have been sent during
//!   the stall (no coordinated omission). The time from the scheduled moment to the actual
//!   send is reported separately (`send_lag_*`).
//! * `closed`: closed loop, `concurrency` workers each sending the next request as soon
//!   as the previous one finished: the maximum throughput at that concurrency. With
//!   `--requests N`, exactly N requests and no warm-up: the rate is over the whole run
//!   (bench/kafka/run.sh counts every request's event downstream).
//! * `streams`: opens `count` streaming requests over HTTP/2 (`streams_per_conn` per
//!   connection), waits until every response head arrived, prints the result and holds
//!   the streams open for `hold_secs` so another process can read the server's memory.
//!
//! HTTP/1.1 keep-alive connections (TCP_NODELAY) for `rate` and `closed`; responses are
//! read to the end. Non-2xx responses and transport errors are counted as errors and
//! left out of the latency figures.

use std::io::Read as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "Load generator of the proxy benchmark (bench/proxy/run.sh)")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Open loop at a constant arrival rate; latency from each request's scheduled time.
    Rate {
        #[command(flatten)]
        req: RequestArgs,
        /// Requests per second.
        #[arg(long)]
        rate: f64,
        /// Measured seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Seconds at the same rate before measuring (not recorded).
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
        /// Requests in flight at most (connections); later ones wait, and the wait
        /// counts in their latency.
        #[arg(long, default_value_t = 1000)]
        max_connections: usize,
        /// After the last scheduled send, wait at most this long for answers; requests
        /// still unanswered then (and any taking longer than this) count as errors.
        #[arg(long, default_value_t = 10.0)]
        timeout_secs: f64,
    },
    /// Closed loop with a fixed number of concurrent requests: maximum throughput.
    Closed {
        #[command(flatten)]
        req: RequestArgs,
        /// Requests in flight at any time (one connection each).
        #[arg(long)]
        concurrency: usize,
        /// Measured seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Seconds of the same load before measuring (not recorded).
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
        /// Send exactly this many requests, all measured (no warm-up; `--duration` is
        /// ignored), then stop.
        #[arg(long)]
        requests: Option<u64>,
    },
    /// Hold many streaming requests open at once over HTTP/2.
    Streams {
        #[command(flatten)]
        req: RequestArgs,
        /// Streams to open.
        #[arg(long)]
        count: usize,
        /// Streams multiplexed on one HTTP/2 connection (at most the server's limit).
        #[arg(long, default_value_t = 500)]
        streams_per_conn: usize,
        /// Seconds to keep the streams open once all are open.
        #[arg(long, default_value_t = 10.0)]
        hold_secs: f64,
        /// Give up waiting for the response heads after this many seconds.
        #[arg(long, default_value_t = 120.0)]
        open_timeout_secs: f64,
    },
}

#[derive(Args, Debug, Clone)]
struct RequestArgs {
    /// Target URL (http:// only).
    #[arg(long)]
    url: String,
    /// Request body (POST); `@FILE` reads it from a file. Without it: GET.
    #[arg(long)]
    body: Option<String>,
    /// Extra request header, `name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Worker threads of the client runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// A request template, cloned for every request.
#[derive(Clone, Debug)]
struct Template {
    uri: hyper::Uri,
    body: Option<Bytes>,
    headers: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
}

impl Template {
    fn from_args(a: &RequestArgs) -> Result<Template> {
        let uri: hyper::Uri = a.url.parse().context("--url")?;
        if uri.scheme_str() != Some("http") {
            bail!("--url must be http://");
        }
        let body = match a.body.as_deref() {
            None => None,
            Some(b) => Some(Bytes::from(match b.strip_prefix('@') {
                Some(path) => {
                    let mut s = Vec::new();
                    std::fs::File::open(path)
                        .and_then(|mut f| f.read_to_end(&mut s))
                        .with_context(|| format!("reading {path}"))?;
                    s
                }
                None => b.as_bytes().to_vec(),
            })),
        };
        let mut headers = Vec::new();
        for h in &a.headers {
            let Some((name, value)) = h.split_once(':') else {
                bail!("--header {h:?}: expected `name: value`");
            };
            headers.push((name.trim().parse()?, value.trim().parse()?));
        }
        Ok(Template { uri, body, headers })
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let mut b = Request::builder().uri(self.uri.clone());
        if let Some(authority) = self.uri.authority() {
            b = b.header(hyper::header::HOST, authority.as_str());
        }
        for (k, v) in &self.headers {
            b = b.header(k, v);
        }
        let (method, body) = match &self.body {
            Some(body) => (hyper::Method::POST, body.clone()),
            None => (hyper::Method::GET, Bytes::new()),
        };
        if self.body.is_some() && !self.headers.iter().any(|(k, _)| k == "content-type") {
            b = b.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        b.method(method)
            .body(Full::new(body))
            .unwrap_or_else(|_| Request::new(Full::new(Bytes::new())))
    }
}

type H1Client = Client<HttpConnector, Full<Bytes>>;

fn h1_client() -> H1Client {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(100_000)
        .build(http)
}

/// Send one request and read its response to the end; `Ok(true)` for a 2xx.
/// What one exchange returned: a 2xx or not, and the proxy's own overhead header
/// (`x-tally-overhead-ms`) in microseconds when the response carries it.
struct Answer {
    ok: bool,
    overhead_us: Option<u64>,
}

/// Send one request and read its response to the end.
async fn exchange(client: &H1Client, t: &Template) -> Result<Answer> {
    let resp = client.request(t.request()).await?;
    let ok = resp.status().is_success();
    let overhead_us = resp
        .headers()
        .get("x-tally-overhead-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|ms| (ms * 1000.0).round() as u64);
    resp.into_body().collect().await?;
    Ok(Answer { ok, overhead_us })
}

/// Counts a request in flight until dropped (also when its timeout cancels it).
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn enter(count: &'a AtomicU64, max: &AtomicU64) -> InFlight<'a> {
        let n = count.fetch_add(1, Ordering::Relaxed) + 1;
        max.fetch_max(n, Ordering::Relaxed);
        InFlight(count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Latencies in microseconds plus error and request counts.
#[derive(Debug, Default)]
struct Recorder {
    latencies_us: Vec<u64>,
    lags_us: Vec<u64>,
    overheads_us: Vec<u64>,
    errors: u64,
}

/// The `q` quantile (0.0–1.0) of sorted values, nearest rank; 0 when empty.
fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Summary statistics of a set of microsecond values, as JSON fields with `prefix`.
fn summary(prefix: &str, values: &mut [u64]) -> serde_json::Map<String, serde_json::Value> {
    values.sort_unstable();
    let mean = if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<u64>() as f64 / values.len() as f64
    };
    let mut m = serde_json::Map::new();
    for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
        m.insert(format!("{prefix}{name}_us"), json!(quantile(values, q)));
    }
    m.insert(
        format!("{prefix}max_us"),
        json!(values.last().copied().unwrap_or(0)),
    );
    m.insert(format!("{prefix}mean_us"), json!(mean.round()));
    m
}

/// The scheduled send time of request `i` at `rate` requests per second.
fn scheduled(start: Instant, i: u64, rate: f64) -> Instant {
    start + Duration::from_secs_f64(i as f64 / rate)
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?)
}

fn run_rate(
    req: &RequestArgs,
    rate: f64,
    duration: f64,
    warmup: f64,
    max_connections: usize,
    timeout_secs: f64,
) -> Result<serde_json::Value> {
    if rate <= 0.0 || duration <= 0.0 || warmup < 0.0 || max_connections == 0 {
        bail!("--rate, --duration and --max-connections must be positive");
    }
    let timeout = Duration::from_secs_f64(timeout_secs);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let t = Arc::new(Template::from_args(req)?);
    let rt = runtime(req.threads)?;
    let client = h1_client();
    let rec = Arc::new(Mutex::new(Recorder::default()));
    let warm_n = (warmup * rate).round() as u64;
    let total_n = warm_n + (duration * rate).round() as u64;
    let in_flight = Arc::new(AtomicU64::new(0));
    let max_in_flight = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + Duration::from_millis(20);
    let handle = rt.handle().clone();
    let mut tasks = Vec::with_capacity(total_n as usize);
    // The pacing thread: sleeps (not spins, to leave the CPU to the servers) until each
    // request's scheduled time and hands the request to the runtime.
    for i in 0..total_n {
        let at = scheduled(start, i, rate);
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        let (client, t, rec, slots) = (client.clone(), t.clone(), rec.clone(), slots.clone());
        let (in_flight, max_in_flight) = (in_flight.clone(), max_in_flight.clone());
        tasks.push(handle.spawn(async move {
            let result = tokio::time::timeout(timeout, async {
                let _slot = slots.acquire().await;
                let sent = Instant::now();
                let _counted = InFlight::enter(&in_flight, &max_in_flight);
                exchange(&client, &t).await.map(|a| (a, sent))
            })
            .await;
            let done = Instant::now();
            if i < warm_n {
                return;
            }
            let mut r = rec.lock().unwrap_or_else(|e| e.into_inner());
            match result {
                Ok(Ok((a, sent))) if a.ok => {
                    r.latencies_us.push((done - at).as_micros() as u64);
                    r.overheads_us.extend(a.overhead_us);
                    r.lags_us
                        .push(sent.saturating_duration_since(at).as_micros() as u64);
                }
                _ => r.errors += 1,
            }
        }));
    }
    let paced = start.elapsed().as_secs_f64();
    // Requests still waiting after the timeout are errors (their own timeout fires too).
    rt.block_on(async {
        let all = async {
            for task in tasks {
                let _ = task.await;
            }
        };
        let _ = tokio::time::timeout(timeout + Duration::from_secs(1), all).await;
    });
    let mut r = std::mem::take(&mut *rec.lock().unwrap_or_else(|e| e.into_inner()));
    let mut out = serde_json::Map::new();
    out.insert("mode".into(), json!("rate"));
    out.insert("rate".into(), json!(rate));
    out.insert("requests".into(), json!(total_n - warm_n));
    out.insert("ok".into(), json!(r.latencies_us.len()));
    out.insert(
        "errors".into(),
        json!((total_n - warm_n).saturating_sub(r.latencies_us.len() as u64)),
    );
    out.insert(
        "achieved_rate".into(),
        json!((total_n as f64 / paced * 10.0).round() / 10.0),
    );
    out.insert(
        "max_in_flight".into(),
        json!(max_in_flight.load(Ordering::Relaxed)),
    );
    out.extend(summary("", &mut r.latencies_us));
    out.extend(summary("send_lag_", &mut r.lags_us));
    if !r.overheads_us.is_empty() {
        out.extend(summary("proxy_overhead_", &mut r.overheads_us));
    }
    Ok(serde_json::Value::Object(out))
}

fn run_closed(
    req: &RequestArgs,
    concurrency: usize,
    duration: f64,
    warmup: f64,
) -> Result<serde_json::Value> {
    if concurrency == 0 || duration <= 0.0 || warmup < 0.0 {
        bail!("--concurrency and --duration must be positive");
    }
    let t = Arc::new(Template::from_args(req)?);
    let rt = runtime(req.threads)?;
    let client = h1_client();
    let measure_from = Instant::now() + Duration::from_secs_f64(warmup);
    let measure_to = measure_from + Duration::from_secs_f64(duration);
    let recs = rt.block_on(async {
        let mut workers = Vec::new();
        for _ in 0..concurrency {
            let (client, t) = (client.clone(), t.clone());
            workers.push(tokio::spawn(async move {
                let mut r = Recorder::default();
                loop {
                    let begin = Instant::now();
                    if begin >= measure_to {
                        break;
                    }
                    let result =
                        tokio::time::timeout(Duration::from_secs(30), exchange(&client, &t)).await;
                    let done = Instant::now();
                    if begin < measure_from || done > measure_to {
                        continue;
                    }
                    match result {
                        Ok(Ok(a)) if a.ok => r.latencies_us.push((done - begin).as_micros() as u64),
                        _ => r.errors += 1,
                    }
                }
                r
            }));
        }
        let mut all = Recorder::default();
        for w in workers {
            if let Ok(r) = w.await {
                all.latencies_us.extend(r.latencies_us);
                all.errors += r.errors;
            }
        }
        all
    });
    let mut r = recs;
    let mut out = serde_json::Map::new();
    out.insert("mode".into(), json!("closed"));
    out.insert("concurrency".into(), json!(concurrency));
    out.insert("ok".into(), json!(r.latencies_us.len()));
    out.insert("errors".into(), json!(r.errors));
    out.insert(
        "req_per_s".into(),
        json!((r.latencies_us.len() as f64 / duration).round()),
    );
    out.extend(summary("", &mut r.latencies_us));
    Ok(serde_json::Value::Object(out))
}

/// The closed loop for a fixed number of requests: `concurrency` workers take the next
/// request number until `n` are taken; the rate is `ok` over the whole run.
fn run_closed_count(req: &RequestArgs, concurrency: usize, n: u64) -> Result<serde_json::Value> {
    if concurrency == 0 || n == 0 {
        bail!("--concurrency and --requests must be positive");
    }
    let t = Arc::new(Template::from_args(req)?);
    let rt = runtime(req.threads)?;
    let client = h1_client();
    let taken = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut r = rt.block_on(async {
        let mut workers = Vec::new();
        for _ in 0..concurrency {
            let (client, t, taken) = (client.clone(), t.clone(), taken.clone());
            workers.push(tokio::spawn(async move {
                let mut r = Recorder::default();
                while taken.fetch_add(1, Ordering::Relaxed) < n {
                    let begin = Instant::now();
                    let result =
                        tokio::time::timeout(Duration::from_secs(30), exchange(&client, &t)).await;
                    match result {
                        Ok(Ok(a)) if a.ok => {
                            r.latencies_us.push(begin.elapsed().as_micros() as u64)
                        }
                        _ => r.errors += 1,
                    }
                }
                r
            }));
        }
        let mut all = Recorder::default();
        for w in workers {
            if let Ok(r) = w.await {
                all.latencies_us.extend(r.latencies_us);
                all.errors += r.errors;
            }
        }
        all
    });
    let elapsed = start.elapsed().as_secs_f64();
    let mut out = serde_json::Map::new();
    out.insert("mode".into(), json!("closed"));
    out.insert("concurrency".into(), json!(concurrency));
    out.insert("requests".into(), json!(n));
    out.insert("ok".into(), json!(r.latencies_us.len()));
    out.insert("errors".into(), json!(r.errors));
    out.insert(
        "elapsed_s".into(),
        json!((elapsed * 1000.0).round() / 1000.0),
    );
    out.insert(
        "req_per_s".into(),
        json!((r.latencies_us.len() as f64 / elapsed).round()),
    );
    out.extend(summary("", &mut r.latencies_us));
    Ok(serde_json::Value::Object(out))
}

fn run_streams(
    req: &RequestArgs,
    count: usize,
    per_conn: usize,
    hold_secs: f64,
    open_timeout_secs: f64,
) -> Result<serde_json::Value> {
    if count == 0 || per_conn == 0 {
        bail!("--count and --streams-per-conn must be positive");
    }
    let t = Arc::new(Template::from_args(req)?);
    let rt = runtime(req.threads)?;
    let host = t.uri.host().unwrap_or("127.0.0.1").to_owned();
    let port = t.uri.port_u16().unwrap_or(80);
    rt.block_on(async move {
        let started = Instant::now();
        let conns = count.div_ceil(per_conn);
        let mut senders = Vec::with_capacity(conns);
        for _ in 0..conns {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .max_concurrent_reset_streams(0)
                .handshake(TokioIo::new(tcp))
                .await?;
            tokio::spawn(conn);
            senders.push(sender);
        }
        let opened = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (hold_tx, hold_rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::with_capacity(count);
        for i in 0..count {
            let mut sender = senders[i % conns].clone();
            let (t, opened, failed) = (t.clone(), opened.clone(), failed.clone());
            let mut hold_rx = hold_rx.clone();
            tasks.push(tokio::spawn(async move {
                let result = async {
                    sender.ready().await?;
                    let mut request = t.request();
                    // HTTP/2 requests carry the authority in the URI, not a Host header.
                    request.headers_mut().remove(hyper::header::HOST);
                    sender.send_request(request).await
                }
                .await;
                match result {
                    Ok(resp) if resp.status().is_success() => {
                        opened.fetch_add(1, Ordering::Relaxed);
                        // Keep the response body (the stream) open until released.
                        let _body = resp.into_body();
                        let _ = hold_rx.wait_for(|released| *released).await;
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        let deadline = Instant::now() + Duration::from_secs_f64(open_timeout_secs);
        loop {
            let done = opened.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed);
            if done as usize >= count || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let open_secs = started.elapsed().as_secs_f64();
        let result = json!({
            "mode": "streams",
            "requested": count,
            "open": opened.load(Ordering::Relaxed),
            "failed": failed.load(Ordering::Relaxed),
            "connections": conns,
            "open_secs": (open_secs * 100.0).round() / 100.0,
        });
        // Announce before holding, so the caller can measure while the streams are open.
        println!("{result}");
        tokio::time::sleep(Duration::from_secs_f64(hold_secs)).await;
        let _ = hold_tx.send(true);
        for task in tasks {
            task.abort();
        }
        Ok::<_, anyhow::Error>(json!({"mode": "streams", "released": true}))
    })
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let out = match cli.mode {
        Mode::Rate {
            req,
            rate,
            duration,
            warmup,
            max_connections,
            timeout_secs,
        } => run_rate(&req, rate, duration, warmup, max_connections, timeout_secs)?,
        Mode::Closed {
            req,
            concurrency,
            duration,
            warmup,
            requests: None,
        } => run_closed(&req, concurrency, duration, warmup)?,
        Mode::Closed {
            req,
            concurrency,
            requests: Some(n),
            ..
        } => run_closed_count(&req, concurrency, n)?,
        Mode::Streams {
            req,
            count,
            streams_per_conn,
            hold_secs,
            open_timeout_secs,
        } => run_streams(&req, count, streams_per_conn, hold_secs, open_timeout_secs)?,
    };
    println!("{out}");
    Ok(())
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn quantile_is_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), 50);
        assert_eq!(quantile(&v, 0.99), 99);
        assert_eq!(quantile(&v, 1.0), 100);
        assert_eq!(quantile(&v, 0.0), 1);
        assert_eq!(quantile(&[], 0.5), 0);
        assert_eq!(quantile(&[7], 0.99), 7);
    }

    #[test]
    fn schedule_is_evenly_spaced_from_start() {
        let start = Instant::now();
        assert_eq!(scheduled(start, 0, 2000.0), start);
        assert_eq!(
            scheduled(start, 2000, 2000.0) - start,
            Duration::from_secs(1)
        );
        assert_eq!(
            scheduled(start, 3, 2000.0) - start,
            Duration::from_micros(1500)
        );
    }

    #[test]
    fn template_reads_headers_and_body() {
        let t = Template::from_args(&RequestArgs {
            url: "http://127.0.0.1:1/v1/chat/completions".into(),
            body: Some("{}".into()),
            headers: vec!["authorization: Bearer k".into()],
            threads: 1,
        })
        .expect("template");
        let r = t.request();
        assert_eq!(r.method(), hyper::Method::POST);
        assert_eq!(r.headers()["authorization"], "Bearer k");
        assert_eq!(r.headers()["content-type"], "application/json");
        assert_eq!(r.headers()["host"], "127.0.0.1:1");
        assert!(
            Template::from_args(&RequestArgs {
                url: "https://x/".into(),
                body: None,
                headers: vec![],
                threads: 1,
            })
            .is_err()
        );
    }
}
