//! Shared harness for proxy tests: the simulator and the proxy on loopback, with a real
//! segment log in a temporary directory, and helpers to read back events.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_enforcer::{EventSink, ProxyConfig, ProxyState};
use tally_events::log::{
    EventLog, FsyncPolicy, LogConfig, LogError, Position, Receipt, Record, SegmentLog,
};
use tally_events::{DecisionEvent, Event, UsageEvent};
use tally_simulator::{SimConfig, SimHandle};
use tokio::sync::oneshot;

pub struct Harness {
    pub proxy: String,
    pub sim: SimHandle,
    pub log: Arc<SegmentLog>,
    pub state: Arc<ProxyState>,
    _dir: tempfile::TempDir,
    _stop: oneshot::Sender<()>,
}

pub async fn harness(tweak: impl FnOnce(&mut ProxyConfig)) -> Harness {
    harness_with_log(tweak, |log| log as Arc<dyn EventLog>).await
}

/// [`harness`] with the proxy writing through `wrap(log)` (a log that delays or fails
/// appends, say); the harness still reads events back from the segment log underneath.
pub async fn harness_with_log(
    tweak: impl FnOnce(&mut ProxyConfig),
    wrap: impl FnOnce(Arc<SegmentLog>) -> Arc<dyn EventLog>,
) -> Harness {
    let sim = tally_simulator::spawn(SimConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut cfg = ProxyConfig::default();
    cfg.point_all_upstreams_at(&sim.base_url());
    cfg.dev_keys = true;
    tweak(&mut cfg);
    let dir = tempfile::tempdir().unwrap();
    let log_cfg = LogConfig {
        fsync: FsyncPolicy::Interval,
        fsync_interval_ms: 1,
        ..LogConfig::default()
    };
    let log = Arc::new(SegmentLog::open(dir.path(), &log_cfg).unwrap());
    let (sink, _task) = EventSink::start(wrap(log.clone()), &cfg.event_queue);
    let state = Arc::new(ProxyState::new(cfg, "test-gw".into(), sink).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(tally_enforcer::server::serve(
        listener,
        state.clone(),
        async move {
            let _ = stopped.await;
        },
        Duration::from_secs(1),
    ));
    Harness {
        proxy,
        sim,
        log,
        state,
        _dir: dir,
        _stop: stop,
    }
}

impl Harness {
    pub fn events(&self) -> Vec<Event> {
        let mut pos = Position::START;
        let mut out = Vec::new();
        loop {
            let records = self.log.read(pos, 1000).unwrap();
            if records.is_empty() {
                return out;
            }
            for r in records {
                out.push(tally_events::decode(&r.payload).unwrap());
                pos = r.next;
            }
        }
    }

    pub fn usage_for(&self, prefix: &str) -> Vec<UsageEvent> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Usage(u) if u.header.request_id.starts_with(prefix) => Some(u),
                _ => None,
            })
            .collect()
    }

    pub fn decisions_for(&self, request_id: &str) -> Vec<DecisionEvent> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Decision(d) if d.header.request_id == request_id => Some(d),
                _ => None,
            })
            .collect()
    }

    /// Wait until `n` usage events exist for ids starting with `prefix`.
    pub async fn wait_usage(&self, prefix: &str, n: usize) -> Vec<UsageEvent> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self.usage_for(prefix);
            if found.len() >= n || Instant::now() > deadline {
                // Give a straggler a moment to show up, so "exactly n" is meaningful.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return self.usage_for(prefix);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn chat(&self, body: serde_json::Value) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", self.proxy))
            .bearer_auth("dev-acme-test")
            .json(&body)
    }
}

pub fn request_id(resp: &reqwest::Response) -> String {
    resp.headers()["x-tally-request-id"]
        .to_str()
        .unwrap()
        .to_owned()
}

pub fn stream_body(tokens: u32) -> serde_json::Value {
    serde_json::json!({
        "model": "gpt-4o-mini",
        "stream": true,
        "max_tokens": tokens,
        "messages": [{"role": "user", "content": "tell me a long story"}]
    })
}

/// A segment log whose appends go through `hook` (to delay, refuse or watch them); reads
/// and the rest go straight to the log.
pub struct HookedLog<F> {
    pub inner: Arc<SegmentLog>,
    pub hook: F,
}

impl<F> EventLog for HookedLog<F>
where
    F: Fn(&SegmentLog, &str, &[u8]) -> Result<Receipt, LogError> + Send + Sync + 'static,
{
    fn append(&self, key: &str, payload: &[u8]) -> Result<Receipt, LogError> {
        (self.hook)(&self.inner, key, payload)
    }

    fn read(&self, from: Position, max: usize) -> Result<Vec<Record>, LogError> {
        self.inner.read(from, max)
    }

    fn checkpoint(&self, upto: Position) -> Result<(), LogError> {
        self.inner.checkpoint(upto)
    }

    fn durable_end(&self) -> Position {
        self.inner.durable_end()
    }
}
