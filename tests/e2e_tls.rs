//! TLS on the proxy and the admin listener (`proxy.tls`, `admin.tls`): the official OpenAI
//! Python SDK calls the proxy over HTTPS trusting a test CA, streaming and not, and its
//! usage lands in the rows; curl reaches the admin API over HTTPS (HTTP/2 by ALPN) with
//! the admin token; plain HTTP to a TLS port gets no answer; a certificate that cannot be
//! read is refused by `tally config check` with a `tls.` code.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::cli::{run_ok, tally_in};
use common::{Tally, python};

/// A self-signed certificate for 127.0.0.1 and localhost, made with openssl.
fn certificate(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=tally-test"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

fn curl(args: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn proxy_and_admin_serve_https_to_real_clients() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(tmp.path());
    let tls = format!(
        "    cert_file: {}\n    key_file: {}\n",
        cert.display(),
        key.display()
    );
    let config = tmp.path().join("tally.yaml");
    std::fs::write(
        &config,
        format!("proxy:\n  tls:\n{tls}admin:\n  tls:\n{tls}"),
    )
    .unwrap();
    let data_dir = tmp.path().join("data");
    let t = Tally::start(&data_dir, &["--config", config.to_str().unwrap()]);
    assert!(t.proxy.starts_with("https://"), "{}", t.proxy);
    assert!(t.admin.starts_with("https://"), "{}", t.admin);

    let out = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/tls_sdk.py"
        ))
        .arg(&t.proxy)
        .arg("dev-acme-tls")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(calls.len(), 2);

    // The admin API over HTTPS, HTTP/2 negotiated by ALPN, token required.
    let cacert = cert.to_str().unwrap();
    let healthz = format!("{}/healthz", t.admin);
    let (ok, text) = curl(&[
        "--cacert",
        cacert,
        "--http2",
        "-w",
        " %{http_version}",
        &healthz,
    ]);
    assert!(ok && text.trim_end().ends_with(" 2"), "{text}");
    let sql = format!("{}/v1/sql", t.admin);
    let (ok, text) = curl(&[
        "--cacert",
        cacert,
        "-w",
        " %{http_code}",
        "-X",
        "POST",
        &sql,
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"sql": "SELECT 1 AS one"}"#,
    ]);
    assert!(ok && text.trim_end().ends_with(" 401"), "no token: {text}");
    // Not trusting the certificate fails the handshake; plain HTTP gets no HTTP answer.
    let (ok, text) = curl(&[&healthz]);
    assert!(!ok, "untrusted certificate accepted: {text}");
    let plain = t.proxy.replace("https://", "http://") + "/v1/models";
    let (ok, text) = curl(&["-w", "%{http_code}", &plain]);
    assert!(!ok || text.ends_with("000"), "plain HTTP answered: {text}");

    let data_dir = t.stop();
    for call in &calls {
        let id = call["request_id"].as_str().unwrap();
        let row = run_ok(
            &data_dir,
            &[
                "sql",
                "--format",
                "csv",
                &format!("SELECT input_tokens, output_tokens FROM usage WHERE request_id = '{id}'"),
            ],
        );
        let expected = format!("{},{}", call["input_tokens"], call["output_tokens"]);
        assert_eq!(row.lines().nth(1), Some(expected.as_str()), "{call}");
    }

    // A certificate that cannot be read is refused before anything starts.
    std::fs::write(&cert, "not a certificate").unwrap();
    let out = tally_in(&data_dir)
        .args(["config", "check"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("proxy.tls") && err.contains("tls.cert"),
        "{err}"
    );
    assert!(err.contains("admin.tls"), "{err}");
}
