//! The HTML report (`tally usage --format html`) opened in a real browser: headless
//! Chromium (Debian's package, installed by scripts/setup-test-deps.sh) renders it
//! offline to a PNG, and the screenshot shows the charts: bars in the palette colours of
//! the models that spent money and of the top keys.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::Tally;
use common::cli::run_ok;

fn chat(proxy: &str, key: &str, model: &str, output: u32) {
    let status = reqwest::blocking::Client::new()
        .post(format!("{proxy}/v1/chat/completions"))
        .header("authorization", format!("Bearer {key}"))
        .header("x-sim-output-tokens", output.to_string())
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"model":"{model}","max_tokens":2000,"messages":[{{"role":"user","content":"hello"}}]}}"#
        ))
        .send()
        .unwrap()
        .status();
    assert_eq!(status, 200);
}

/// `#rrggbb` → (r, g, b).
fn rgb(hex: &str) -> (u8, u8, u8) {
    let v = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).unwrap();
    (v(1), v(3), v(5))
}

#[test]
fn the_html_report_renders_its_charts_in_headless_chromium() {
    let t = Tally::up_dev(&[]);
    // Three models that cost money, spread over two keys.
    for _ in 0..3 {
        chat(&t.proxy, "dev-acme-1", "gpt-4o", 1500);
        chat(&t.proxy, "dev-acme-2", "claude-sonnet-4-5", 900);
        chat(&t.proxy, "dev-beta-1", "gemini-2.5-flash", 600);
    }
    let data_dir = t.stop();
    let html = run_ok(&data_dir, &["usage", "--format", "html", "--since", "1d"]);
    assert!(
        html.starts_with("<!doctype html>") && html.contains("<svg"),
        "{html}"
    );
    assert!(
        !html.contains("<script") && !html.contains("http://") && !html.contains("https://"),
        "the page must work offline: no scripts, no external resources"
    );
    assert!(html.contains("id=\"daily-spend\"") && html.contains("id=\"top-keys\""));

    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    std::fs::write(&page, &html).unwrap();
    let shot = dir.path().join("report.png");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--window-size=1000,1400",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium (Debian's package; scripts/setup-test-deps.sh installs it)");
    assert!(
        out.status.success() && shot.exists(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let pixels = &buf[..info.buffer_size()];
    let count = |(r, g, b): (u8, u8, u8)| {
        pixels
            .chunks(channels)
            .filter(|p| p[0].abs_diff(r) <= 3 && p[1].abs_diff(g) <= 3 && p[2].abs_diff(b) <= 3)
            .count()
    };
    // The three models' segments of the stacked daily bar, and the top-key bars (first
    // colour), are drawn: each colour covers a visible area.
    for colour in &tally_queries::reports::html::PALETTE[..3] {
        let n = count(rgb(colour));
        assert!(n > 200, "{colour}: {n} pixels; the charts did not render");
    }
    // And most of the page is the white background (the page rendered, not an error).
    let white = count((255, 255, 255));
    assert!(white > pixels.len() / channels / 2, "{white} white pixels");
}
