//! The operator's command line, run as the real binary: `--version` with the git commit,
//! `check-config`, shell completions, and `serve --log-format json` logging the URLs to open.

mod common;

use std::process::{Command, Output, Stdio};

use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};

const BINARY: &str = env!("CARGO_BIN_EXE_switchboard");

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BINARY);
    command.args(args).env("RUST_BACKTRACE", "0");
    for name in [
        "SWITCHBOARD_PORT",
        "SWITCHBOARD_API_KEY",
        "SWITCHBOARD_CONFIG",
    ] {
        command.env_remove(name);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    command.stdin(Stdio::null()).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

#[test]
fn version_names_the_git_commit() {
    let output = run(&["--version"], &[]);
    assert!(output.status.success());
    let version = text(&output.stdout);
    let prefix = format!("switchboard {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(version.starts_with(&prefix), "{version}");
    let commit = version[prefix.len()..].trim().trim_end_matches(')');
    let head = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    match head {
        Ok(head) if head.status.success() => assert_eq!(commit, text(&head.stdout).trim()),
        // Built without git: the fallback.
        _ => assert_eq!(commit, "unknown"),
    }
}

#[test]
fn check_config_prints_the_effective_settings_with_secrets_masked() {
    let dir = temp_dir();
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "api_key = \"very-secret-key\"\ntoken_hmac_secret = \"very-secret-token\"\n\
         redis = [\"redis://:redis-password@127.0.0.1:6379\"]\ntrusted_proxies = [\"127.0.0.1\"]\n\
         port = 8001\n",
    )
    .unwrap();
    let path = good.to_str().unwrap();
    let output = run(&["check-config", path], &[("SWITCHBOARD_PORT", "9123")]);
    let shown = text(&output.stdout);
    assert!(output.status.success(), "{shown}{}", text(&output.stderr));
    assert!(shown.contains("is valid"), "{shown}");
    for secret in ["very-secret-key", "very-secret-token", "redis-password"] {
        assert!(!shown.contains(secret), "{secret} shown:\n{shown}");
    }
    assert!(shown.contains("api_key = \"********\""), "{shown}");
    assert!(
        shown.contains("trusted_proxies = [\"127.0.0.1/32\"]"),
        "{shown}"
    );
    // The environment wins over the file, as for `serve`; flags over both.
    assert!(shown.contains("port = 9123"), "{shown}");
    let output = run(&["check-config", path, "--port", "9200"], &[]);
    assert!(text(&output.stdout).contains("port = 9200"));
    // Proxy binary mode, by flag or environment; it needs a proxy endpoint to change anything.
    let output = run(
        &[
            "check-config",
            path,
            "--proxy-rpc-endpoint",
            "http://127.0.0.1:9000/rpc",
            "--proxy-binary-encoding",
            "true",
        ],
        &[],
    );
    let shown = text(&output.stdout);
    assert!(shown.contains("proxy_binary_encoding = true"), "{shown}");
    let output = run(
        &["check-config", path],
        &[("SWITCHBOARD_PROXY_BINARY_ENCODING", "true")],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("proxy_binary_encoding changes proxy requests only"));

    let cases = [
        (
            "trusted_proxies = [\"10.0.0.0/40\"]\n",
            "bad CIDR \"10.0.0.0/40\"",
        ),
        (
            "address = \"0.0.0.0\"\n",
            "refusing to accept anonymous clients",
        ),
        ("no_such_setting = 1\n", "unknown field"),
        ("port = \"eighty\"\n", "invalid type"),
    ];
    for (file, error) in cases {
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, file).unwrap();
        let output = run(&["check-config", bad.to_str().unwrap()], &[]);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{file}: {stderr}");
        assert!(stderr.contains(error), "{file}: no {error:?} in {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let output = run(
        &["check-config", dir.join("missing.toml").to_str().unwrap()],
        &[],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("cannot read config file"));
    let output = run(
        &[
            "check-config",
            path,
            "--trusted-proxies",
            "10.0.0.0/8,nonsense",
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(2), "a bad flag is a usage error");
    assert!(text(&output.stderr).contains("bad CIDR \"nonsense\""));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let output = run(&["completions", shell], &[]);
        assert!(output.status.success(), "{shell}");
        let script = text(&output.stdout);
        for word in [
            "check-config",
            "completions",
            "trusted-proxies",
            "log-format",
        ] {
            assert!(script.contains(word), "{shell} script lacks {word}");
        }
    }
    let output = run(&["completions", "tcsh"], &[]);
    assert_eq!(output.status.code(), Some(2));
}

/// The server process, killed if the test fails before it stops it.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[tokio::test]
async fn serve_logs_json_lines_with_the_urls_to_open() {
    let port = common::redis_server::free_port();
    let dir = temp_dir();
    let mut server = Server(
        Command::new(BINARY)
            .args(["serve", "--port", &port.to_string(), "--log-format", "json"])
            .arg("--data-dir")
            .arg(&dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let child = &mut server.0;
    // A thread reads the log (on standard output), a line at a time, until the server closes it.
    let stdout = child.stdout.take().unwrap();
    let (sender, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let mut urls = Vec::new();
    let mut seen = Vec::new();
    // Every line is one JSON object; the URL lines come before "listening".
    for _ in 0..100 {
        let line = lines
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("a log line in time (so far: {seen:?})"));
        seen.push(line.clone());
        let entry: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            entry["level"].is_string() && entry["timestamp"].is_string(),
            "{line}"
        );
        let fields = &entry["fields"];
        if let Some(url) = fields["url"].as_str() {
            urls.push((
                fields["message"].as_str().unwrap().to_string(),
                url.to_string(),
            ));
        }
        if fields["message"] == "switchboard listening" {
            break;
        }
    }
    let base = format!("http://127.0.0.1:{port}");
    let expected = [
        ("front page", format!("{base}/")),
        ("chat", format!("{base}/chat")),
        ("dashboard", format!("{base}/dashboard")),
        (
            "WebSocket endpoint",
            format!("ws://127.0.0.1:{port}/connection/websocket"),
        ),
        ("server API (POST)", format!("{base}/api/<method>")),
        ("health", format!("{base}/health")),
        ("metrics", format!("{base}/metrics")),
    ];
    let expected: Vec<(String, String)> = expected
        .into_iter()
        .map(|(m, u)| (m.to_string(), u))
        .collect();
    assert_eq!(urls, expected);
    // The front page it names answers.
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let (status, body) = http_raw(
        addr,
        &format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("<title>Switchboard</title>"));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let stopped = eventually(|| {
        let exited = child.try_wait().ok().flatten().is_some();
        async move { exited }
    })
    .await;
    if !stopped {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    assert!(stopped && status.success(), "stops on SIGTERM: {status}");
    let _ = std::fs::remove_dir_all(dir);
}
