//! The embedded pages in a real browser: runs `tests/browser/pages.test.mjs` (playwright-core
//! driving Debian's chromium) against two servers started here, one anonymous and one with a
//! token secret, an API key and an admin password. Screenshots go to `test-artifacts/`. The same
//! run checks the browser's own `EventSource` on the unidirectional SSE transport (`uni_sse`).
//!
//! Needs `node`, `tests/browser/node_modules` (`npm ci` there; `./test.sh` does it) and chromium at
//! `/usr/lib/chromium/chromium` (or `SWITCHBOARD_CHROMIUM`); without them the test fails and says
//! what is missing, rather than passing without having run.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::TestServer;
use switchboard::config::Namespace;

/// Time the whole browser run may take.
const TIME_LIMIT: Duration = Duration::from_secs(240);

const SECRET: &str = "browser-test-token-secret";
const API_KEY: &str = "browser-test-api-key";
const ADMIN_PASSWORD: &str = "browser-test-admin-password";
const USER: &str = "dora";

fn chromium() -> PathBuf {
    std::env::var_os("SWITCHBOARD_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/chromium/chromium"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_and_dashboard_work_in_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "tests/browser/node_modules is missing: run `npm ci` in tests/browser (./test.sh does it)"
    );
    let chromium = chromium();
    assert!(
        chromium.is_file(),
        "{} is missing: install Debian's chromium (`apt-get install chromium`, as .ci/run does) \
         or point SWITCHBOARD_CHROMIUM at a chromium binary",
        chromium.display()
    );

    let open = TestServer::start().await;
    let secure = TestServer::with(|c| {
        c.token_hmac_secret = Some(SECRET.into());
        c.api_key = Some(API_KEY.into());
        c.admin_password = Some(ADMIN_PASSWORD.into());
        // Rooms live in the `chat` namespace, open to subscribers as `switchboard genconfig`
        // writes it (with tokens, permissions left out are refused).
        c.namespace = vec![Namespace {
            name: "chat".into(),
            allow_subscribe_for_client: Some(true),
            allow_publish_for_subscriber: Some(true),
            allow_presence_for_subscriber: Some(true),
            allow_history_for_subscriber: Some(true),
            ..Namespace::default()
        }];
    })
    .await;
    let token = switchboard::auth::make_hmac_token(SECRET, USER, 3600).unwrap();
    let artifacts = root.join("test-artifacts");

    let child = tokio::process::Command::new("node")
        .arg("pages.test.mjs")
        .current_dir(&dir)
        .env("SWITCHBOARD_URL", format!("http://{}", open.addr))
        .env("SWITCHBOARD_SECURE_URL", format!("http://{}", secure.addr))
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .env("SWITCHBOARD_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("SWITCHBOARD_TOKEN", token)
        .env("SWITCHBOARD_USER", USER)
        .env("SWITCHBOARD_ARTIFACTS", &artifacts)
        .env("SWITCHBOARD_CHROMIUM", &chromium)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `node` (is Node.js installed?): {e}"));
    let output = match tokio::time::timeout(TIME_LIMIT, child.wait_with_output()).await {
        Ok(output) => output.expect("node ran"),
        Err(_) => panic!(
            "the browser tests did not finish within {TIME_LIMIT:?} (screenshots of failures are in {})",
            artifacts.display()
        ),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser tests failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    println!("{stdout}");
    open.stop().await;
    secure.stop().await;
}
