//! Secrets never reach what tally writes. A run of `tally up` with a configured gateway
//! key (stored as its hash), a provider key held by the gateway (from the environment),
//! and a client passing its own provider key through, sends requests whose prompts carry
//! a marker, streaming and not. Afterwards every file under the data directory, the
//! process's whole log at debug level, and every row of every table (read back through
//! SQL, since Parquet pages are compressed) are scanned: none holds a gateway key, a
//! provider key, a prompt or a response text.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Stdio;

use common::Tally;
use common::cli::run_ok;

/// Every file under `dir`, recursively.
fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn keys_prompts_and_responses_are_never_written() {
    let nonce = format!("{:x}", std::process::id() as u64 * 7919 + 12345);
    let gateway_key = format!("gw-secret-{nonce}-gateway");
    let provider_key = format!("sk-provider-{nonce}-held");
    let client_provider_key = format!("sk-ant-client-{nonce}-passed");
    let prompt = format!("prompt-marker-{nonce} please keep this private");

    let tmp = tempfile::tempdir().unwrap();
    let hash = run_ok(tmp.path(), &["keys", "hash", &gateway_key]);
    let hash = hash
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("no hash in {hash}"))
        .to_owned();
    let config = tmp.path().join("tally.yaml");
    std::fs::write(
        &config,
        format!(
            "proxy:
  keys:
    - id: team-a
      tenant: acme
      hash: \"{hash}\"
  upstreams:
    openai:
      base_url: http://127.0.0.1:9
      provider: openai
      credentials:
        api_key_env: TALLY_TEST_PROVIDER_KEY
"
        ),
    )
    .unwrap();
    let data_dir = tmp.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let log_path = tmp.path().join("tally.log");
    let t = Tally::start_with(
        &data_dir,
        "127.0.0.1:0",
        &["--config", config.to_str().unwrap()],
        Stdio::from(std::fs::File::create(&log_path).unwrap()),
        // The log at debug level: the most it ever writes.
        &[
            ("TALLY_TEST_PROVIDER_KEY", provider_key.as_str()),
            ("TALLY_LOG_FILTER", "debug"),
        ],
    );

    let client = reqwest::blocking::Client::new();
    let mut responses = Vec::new();
    for stream in [false, true] {
        let r = client
            .post(format!("{}/v1/chat/completions", t.proxy))
            .bearer_auth(&gateway_key)
            .json(
                &serde_json::json!({"model": "gpt-4o-mini", "stream": stream,
                "messages": [{"role": "user", "content": prompt}]}),
            )
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        responses.push(r.text().unwrap());
    }
    // Passthrough: the client's own provider key, the gateway key in x-tally-key.
    let r = client
        .post(format!("{}/v1/messages", t.proxy))
        .header("x-api-key", &client_provider_key)
        .header("x-tally-key", &gateway_key)
        .header("anthropic-version", "2023-06-01")
        .json(
            &serde_json::json!({"model": "claude-haiku-4-5", "max_tokens": 100,
            "messages": [{"role": "user", "content": prompt}]}),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text());
    responses.push(r.text().unwrap());
    // A refused key is not written either.
    let r = client
        .post(format!("{}/v1/chat/completions", t.proxy))
        .bearer_auth(format!("{gateway_key}-wrong"))
        .json(&serde_json::json!({"model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": prompt}]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let data_dir = t.stop();

    // Response texts: long distinctive pieces of what the simulator generated.
    let mut secrets = vec![
        gateway_key.clone(),
        provider_key.clone(),
        client_provider_key.clone(),
        format!("prompt-marker-{nonce}"),
    ];
    for body in &responses {
        let text: String = body
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ')
            .collect();
        let words: Vec<&str> = text.split_whitespace().filter(|w| w.len() > 3).collect();
        // Six words from the middle of the text (any length from eight words up).
        if words.len() >= 8 {
            let start = (words.len() - 6) / 2;
            secrets.push(words[start..start + 6].join(" "));
        }
    }
    assert!(
        secrets.len() >= 6,
        "response texts to look for: {secrets:?}"
    );

    let mut written = Vec::new();
    files(&data_dir, &mut written);
    written.push(log_path.clone());
    let mut scanned = 0usize;
    for f in &written {
        let bytes = std::fs::read(f).unwrap();
        scanned += bytes.len();
        let text = String::from_utf8_lossy(&bytes);
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "{} holds {s:?}", f.display());
        }
    }
    for table in ["usage", "decisions", "corrections"] {
        let rows = run_ok(
            &data_dir,
            &["sql", "--format", "csv", &format!("SELECT * FROM {table}")],
        );
        scanned += rows.len();
        for s in &secrets {
            assert!(!rows.contains(s.as_str()), "table {table} holds {s:?}");
        }
    }
    // The rows are there, keyed by the key id, not the key.
    let ids = run_ok(
        &data_dir,
        &[
            "sql",
            "--format",
            "csv",
            "SELECT DISTINCT api_key_id FROM usage WHERE tenant = 'acme'",
        ],
    );
    assert!(ids.contains("team-a"), "{ids}");
    println!(
        "scanned {} files and the tables ({scanned} bytes) for {} secrets: none found",
        written.len(),
        secrets.len()
    );
}
