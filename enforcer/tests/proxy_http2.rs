//! HTTP/2 clients (prior knowledge, cleartext, as gateways inside a cluster are reached)
//! get the same proxy: non-streaming and streaming answers, exact usage in the events,
//! and many concurrent streams multiplexed over one connection, each with its own usage
//! event.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{harness, request_id, stream_body};
use futures_util::StreamExt;
use tally_events::{FinishState, UsageSource};

fn h2() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
}

#[tokio::test]
async fn http2_clients_are_proxied_and_accounted_like_http1() {
    let h = harness(|_| {}).await;
    let client = h2();
    let url = format!("{}/v1/chat/completions", h.proxy);

    // Non-streaming: the recorded usage is the body's usage.
    let resp = client
        .post(&url)
        .bearer_auth("dev-acme-h2")
        .json(
            &serde_json::json!({"model": "gpt-4o-mini", "max_tokens": 40,
            "messages": [{"role": "user", "content": "hello over h2"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let id = request_id(&resp);
    let body: serde_json::Value = resp.json().await.unwrap();
    let u = h.wait_usage(&id, 1).await;
    assert_eq!(u.len(), 1);
    assert_eq!(u[0].finish_state, FinishState::Completed);
    assert_eq!(u[0].usage_source, UsageSource::ProviderReported);
    assert_eq!(
        Some(u[0].tokens.input_tokens),
        body["usage"]["prompt_tokens"].as_u64()
    );
    assert_eq!(
        Some(u[0].tokens.output_tokens),
        body["usage"]["completion_tokens"].as_u64()
    );

    // 20 concurrent streams over the one connection this client keeps.
    let streams = (0..20).map(|_| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let resp = client
                .post(&url)
                .bearer_auth("dev-acme-h2")
                .header("x-sim-chunk-delay-ms", "5")
                .json(&stream_body(60))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.version(), reqwest::Version::HTTP_2);
            let id = request_id(&resp);
            let mut text = String::new();
            let mut body = resp.bytes_stream();
            while let Some(chunk) = body.next().await {
                text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            }
            assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
            assert!(
                !text.contains("\"usage\":{"),
                "the usage chunk tally asked for must not reach the client"
            );
            id
        }
    });
    let ids = futures_util::future::join_all(streams).await;
    for id in &ids {
        let u = h.wait_usage(id, 1).await;
        assert_eq!(u.len(), 1, "one usage event per stream");
        assert!(u[0].streamed);
        assert_eq!(u[0].finish_state, FinishState::Completed);
        assert_eq!(u[0].usage_source, UsageSource::ProviderReported);
        assert!(u[0].tokens.output_tokens > 0 && u[0].tokens.output_tokens <= 60);
    }
}

/// Client-side sockets of this process connected to `port` on loopback
/// (`/proc/net/tcp`: state 01 is ESTABLISHED; the remote port is the 3rd field's suffix).
fn connections_to(port: u16) -> usize {
    let suffix = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|t| t.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[2].ends_with(&suffix) && f[3] == "01"
        })
        .count()
}

/// Open `n` slow streams through the proxy, count the sockets towards the simulator
/// while they are all open, then read them to the end and check their usage.
async fn upstream_sockets_for_streams(http2_upstream: bool, n: usize) -> usize {
    let h = harness(|c| {
        for u in c.upstreams.values_mut() {
            u.http2 = http2_upstream;
        }
    })
    .await;
    let port = h.sim.addr().port();
    let url = format!("{}/v1/chat/completions", h.proxy);
    let client = reqwest::Client::new();
    let mut open = Vec::new();
    for _ in 0..n {
        let resp = client
            .post(&url)
            .bearer_auth("dev-acme-h2up")
            .header("x-sim-chunk-delay-ms", "20")
            .json(&stream_body(40))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        open.push(resp);
    }
    let sockets = connections_to(port);
    for resp in open {
        let id = request_id(&resp);
        let text = resp.text().await.unwrap();
        assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
        let u = h.wait_usage(&id, 1).await;
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].finish_state, FinishState::Completed);
        assert_eq!(u[0].usage_source, UsageSource::ProviderReported);
    }
    sockets
}

#[tokio::test]
async fn http2_upstreams_carry_many_streams_on_one_connection() {
    // HTTP/1.1 to the upstream: a socket per open stream.
    let h1 = upstream_sockets_for_streams(false, 12).await;
    assert!(
        h1 >= 12,
        "HTTP/1.1 upstream: {h1} sockets for 12 open streams"
    );
    // `http2: true`: the streams are multiplexed.
    let h2 = upstream_sockets_for_streams(true, 12).await;
    assert!(h2 <= 2, "HTTP/2 upstream: {h2} sockets for 12 open streams");
}

#[tokio::test]
async fn http2_upstreams_open_more_connections_beyond_the_stream_limit() {
    // The simulator's HTTP/2 server allows 200 concurrent streams per connection; 250
    // slow streams must all be open at once (the ones past 200 would otherwise wait for
    // a stream to end, 30 s here).
    let h = harness(|c| {
        c.on_client_abort = tally_enforcer::config::OnClientAbort::Cancel;
        for u in c.upstreams.values_mut() {
            u.http2 = true;
        }
    })
    .await;
    let url = format!("{}/v1/chat/completions", h.proxy);
    let client = reqwest::Client::new();
    let sends = (0..250).map(|_| {
        client
            .post(&url)
            .bearer_auth("dev-acme-lanes")
            .header("x-sim-ttft-ms", "0")
            .header("x-sim-chunk-delay-ms", "500")
            .json(&stream_body(60))
            .send()
    });
    let open = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        futures_util::future::join_all(sends),
    )
    .await
    .expect("every stream got its response head while the others were open");
    assert!(
        open.iter()
            .all(|r| r.as_ref().is_ok_and(|r| r.status() == 200))
    );
    let sockets = connections_to(h.sim.addr().port());
    assert!(
        sockets >= 3,
        "250 streams at 100 per connection: {sockets} upstream connections"
    );
}
