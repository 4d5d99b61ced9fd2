//! Bad-input suite against the real binary: malformed, non-UTF-8 and oversized bodies,
//! oversized headers, request smuggling patterns, path traversal, an unknown model, and
//! on the command line bad policy files, a corrupt log segment and corrupt provider
//! report files. Each gets a clear error with a stable code; nothing panics (the
//! process's whole log is scanned); every request tally answered with a request id has
//! its usage row, and the proxy keeps serving.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use common::Tally;
use common::cli::{run_ok, tally_in};

const MAX_BODY: usize = 64 * 1024;

/// Send raw bytes on a new connection; everything the server sends back until it
/// closes (or 5 s pass).
fn raw(addr: &str, request: &[u8]) -> String {
    // A server that answers before reading everything (413, 431) closes with unread
    // bytes, so the client may see a reset, which can discard the answer before it is
    // read: write from another thread while reading here, and try again (up to three
    // times) when nothing came back.
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut w = s.try_clone().unwrap();
        let request = request.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = w.write_all(&request);
        });
        let mut out = Vec::new();
        // Bytes read before an error stay in `out`.
        let _ = s.read_to_end(&mut out);
        let _ = writer.join();
        if !out.is_empty() {
            return String::from_utf8_lossy(&out).into_owned();
        }
    }
    String::new()
}

fn post(addr: &str, path: &str, auth: &str, body: &[u8], extra: &str) -> String {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: tally\r\n{auth}\r\nContent-Type: application/json\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    raw(addr, &req)
}

fn status(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {resp:?}"))
}

fn request_id(resp: &str) -> Option<String> {
    resp.lines()
        .find_map(|l| l.strip_prefix("x-tally-request-id: "))
        .map(|v| v.trim().to_owned())
}

fn failed(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "panic: {err}");
    err
}

/// One HTTP case: what to send and what must come back.
struct Case {
    name: &'static str,
    response: String,
    status: u16,
    /// The error code in the body; `None` for errors hyper answers before tally sees
    /// the request (no body, no request id).
    code: Option<&'static str>,
}

#[test]
fn bad_requests_get_stable_codes_and_the_proxy_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("tally.yaml");
    std::fs::write(&config, format!("proxy:\n  max_body_bytes: {MAX_BODY}\n")).unwrap();
    let data_dir = tmp.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let log_path = tmp.path().join("tally.log");
    let t = Tally::start_with(
        &data_dir,
        "127.0.0.1:0",
        &["--config", config.to_str().unwrap()],
        Stdio::from(std::fs::File::create(&log_path).unwrap()),
        &[],
    );
    let addr = t.proxy.trim_start_matches("http://").to_owned();
    let openai = "Authorization: Bearer dev-acme-bad";
    let chat = "/v1/chat/completions";

    let cases = vec![
        Case {
            name: "malformed JSON",
            response: post(&addr, chat, openai, br#"{"model": "gpt-4o-mini", "messages": [}"#, ""),
            status: 400,
            code: Some("tally.invalid_request"),
        },
        Case {
            name: "non-UTF-8 body",
            response: post(
                &addr,
                chat,
                openai,
                b"{\"model\": \"gpt-4o-mini\", \"messages\": [{\"role\": \"user\", \"content\": \"\xff\xfe\"}]}",
                "",
            ),
            status: 400,
            code: Some("tally.invalid_request"),
        },
        Case {
            name: "JSON that is not an object",
            response: post(&addr, chat, openai, b"[1, 2, 3]", ""),
            status: 400,
            code: Some("tally.invalid_request"),
        },
        Case {
            name: "Anthropic body in the wrong shape",
            response: post(
                &addr,
                "/v1/messages",
                "x-api-key: dev-acme-bad",
                br#"{"model": 7, "messages": "hi", "max_tokens": "many"}"#,
                "",
            ),
            status: 400,
            code: Some("tally.invalid_request"),
        },
        Case {
            name: "Gemini body that is not JSON",
            response: post(
                &addr,
                "/v1beta/models/gemini-2.5-flash:generateContent",
                "x-goog-api-key: dev-acme-bad",
                b"\x00\x01\x02 not json",
                "",
            ),
            status: 400,
            code: Some("tally.invalid_request"),
        },
        Case {
            name: "body over proxy.max_body_bytes",
            response: post(&addr, chat, openai, &vec![b' '; MAX_BODY + 1], ""),
            status: 413,
            code: Some("tally.body_too_large"),
        },
        Case {
            name: "Content-Length and Transfer-Encoding together",
            response: raw(
                &addr,
                format!("POST {chat} HTTP/1.1\r\nHost: tally\r\n{openai}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: tally\r\n\r\n").as_bytes(),
            ),
            // hyper reads the body by Transfer-Encoding alone (RFC 9112 §6.3), drops
            // Content-Length and closes the connection after answering: the empty
            // chunked body is refused, and the request smuggled behind it never runs.
            status: 400,
            code: Some("tally.invalid_request"),
        },
        Case {
            name: "two different Content-Lengths",
            response: raw(
                &addr,
                format!("POST {chat} HTTP/1.1\r\nHost: tally\r\n{openai}\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde").as_bytes(),
            ),
            status: 400,
            code: None,
        },
        Case {
            name: "an invalid Transfer-Encoding",
            response: raw(
                &addr,
                format!("POST {chat} HTTP/1.1\r\nHost: tally\r\n{openai}\r\nTransfer-Encoding: gzip, chunked, identity\r\n\r\n0\r\n\r\n").as_bytes(),
            ),
            status: 400,
            code: None,
        },
        Case {
            name: "headers over proxy.max_header_bytes",
            response: post(
                &addr,
                chat,
                openai,
                b"{}",
                &format!("X-Padding: {}\r\n", "a".repeat(100 * 1024)),
            ),
            status: 431,
            code: None,
        },
        Case {
            name: "path traversal",
            response: raw(
                &addr,
                format!("GET /v1/../../etc/passwd HTTP/1.1\r\nHost: tally\r\n{openai}\r\nConnection: close\r\n\r\n").as_bytes(),
            ),
            status: 404,
            code: Some("tally.unknown_path"),
        },
        Case {
            name: "encoded path traversal",
            response: raw(
                &addr,
                format!("GET /v1/%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: tally\r\n{openai}\r\nConnection: close\r\n\r\n").as_bytes(),
            ),
            status: 404,
            code: Some("tally.unknown_path"),
        },
        Case {
            name: "not HTTP at all",
            response: raw(&addr, b"\x00\x01\x02GARBAGE\r\n\r\n"),
            status: 400,
            code: None,
        },
    ];

    let mut answered = Vec::new();
    for c in &cases {
        assert!(!c.response.is_empty(), "{}: no answer", c.name);
        assert_eq!(status(&c.response), c.status, "{}: {}", c.name, c.response);
        match c.code {
            Some(code) => {
                assert!(
                    c.response.contains(code),
                    "{}: no {code} in {}",
                    c.name,
                    c.response
                );
                answered.push((
                    c.name,
                    request_id(&c.response).unwrap_or_else(|| panic!("{}: no request id", c.name)),
                ));
            }
            None => assert!(request_id(&c.response).is_none(), "{}", c.name),
        }
    }
    // The smuggled second request was not served: one response on that connection.
    let smuggled = &cases[6].response;
    assert_eq!(smuggled.matches("HTTP/1.1 ").count(), 1, "{smuggled}");

    // An unknown model is the provider's business: forwarded, recorded, unpriced.
    let unknown = post(
        &addr,
        chat,
        openai,
        br#"{"model": "gpt-unreleased-9", "messages": [{"role": "user", "content": "hi"}]}"#,
        "",
    );
    assert_eq!(status(&unknown), 200, "{unknown}");
    let unknown_id = request_id(&unknown).unwrap();

    // Still serving, still alive.
    let ok = post(
        &addr,
        chat,
        openai,
        br#"{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "still there?"}]}"#,
        "",
    );
    assert_eq!(status(&ok), 200, "{ok}");
    let data_dir = t.stop();

    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(!log.contains("panicked"), "a panic was logged:\n{log}");

    // Every request tally answered has its usage row, refusals with their decision.
    for (name, id) in &answered {
        let q = format!(
            "SELECT (SELECT count(*) FROM usage WHERE request_id = '{id}') AS u, \
             (SELECT count(*) FROM decisions WHERE request_id = '{id}') AS d"
        );
        let out = run_ok(&data_dir, &["sql", "--format", "csv", &q]);
        assert_eq!(out.lines().nth(1), Some("1,1"), "{name} ({id}): {out}");
    }
    let q = format!(
        "SELECT model_requested, cost_micros, price_version IS NULL FROM usage WHERE request_id = '{unknown_id}'"
    );
    let out = run_ok(&data_dir, &["sql", "--format", "csv", &q]);
    assert_eq!(out.lines().nth(1), Some("gpt-unreleased-9,0,true"), "{out}");
}

#[test]
fn bad_policy_files_are_refused_with_the_problem_named() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str, &str); 5] = [
        ("not YAML", "rules: [\n  - {name: a", "policy."),
        (
            "unknown field",
            "rules:\n  - name: a\n    action: deny\n    mtach: 'true'\n",
            "mtach",
        ),
        (
            "CEL that does not parse",
            "rules:\n  - name: a\n    action: deny\n    match: 'tenant ==== 1'\n",
            "a",
        ),
        (
            "a limit without a window",
            "rules:\n  - name: a\n    action: rate-limit\n    limit: 5\n",
            "window",
        ),
        ("binary garbage", "\u{0}\u{1}\u{2}\u{fffd}", "policy."),
    ];
    for (name, text, names) in cases {
        let file = dir.path().join("policy.yaml");
        std::fs::write(&file, text).unwrap();
        let out = tally_in(dir.path())
            .args(["policy", "check"])
            .arg(&file)
            .output()
            .unwrap();
        let err = failed(&out);
        assert!(err.contains("policy."), "{name}: no code in {err}");
        assert!(err.contains(names), "{name}: {err}");
    }
    // Non-UTF-8 bytes.
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, b"rules:\n  - name: \xff\xfe\n").unwrap();
    let out = tally_in(dir.path())
        .args(["policy", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(failed(&out).contains("policy."));
}

#[test]
fn a_corrupt_log_segment_is_reported_not_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let t = Tally::start(&data_dir, &[]);
    let client = reqwest::blocking::Client::new();
    for i in 0..20 {
        let r = client
            .post(format!("{}/v1/chat/completions", t.proxy))
            .bearer_auth("dev-acme-corrupt")
            .json(&serde_json::json!({"model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": format!("request {i}")}]}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let data_dir = t.stop();
    let segment = first_segment(&data_dir.join("log"));
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 16] {
        *b ^= 0x5a;
    }
    std::fs::write(&segment, &bytes).unwrap();

    let out = tally_in(&data_dir)
        .args(["log", "inspect"])
        .output()
        .unwrap();
    let err = failed(&out);
    assert!(err.contains("log.corrupt"), "{err}");
    assert!(
        err.contains(&*segment.file_name().unwrap().to_string_lossy()),
        "{err}"
    );
}

fn first_segment(dir: &Path) -> std::path::PathBuf {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files.into_iter().next().expect("a segment file")
}

#[test]
fn corrupt_provider_reports_are_refused_with_a_code() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let cases: [(&str, &[u8]); 4] = [
        (
            "truncated JSON",
            br#"{"object": "page", "data": [{"start_time": 17"#,
        ),
        ("binary garbage", b"\x00\xff\xfe\x01garbage"),
        ("JSON of the wrong shape", br#"{"data": "not a list"}"#),
        ("empty file", b""),
    ];
    for (name, bytes) in cases {
        let file = dir.path().join("report.json");
        std::fs::write(&file, bytes).unwrap();
        let out = tally_in(&data_dir)
            .args([
                "reconcile",
                "--provider",
                "openai",
                "--period",
                "2026-11",
                "--from-file",
            ])
            .arg(&file)
            .output()
            .unwrap();
        let err = failed(&out);
        assert!(err.contains("reconcile."), "{name}: no code in {err}");
    }
}
