//! Compatibility with the official Python SDK: `tests/compat/centrifuge_python.py` drives a real
//! server with the PyPI package `centrifuge-python` (pinned in tests/compat/requirements.txt) and
//! checks connect, subscribe, publications from the API and from clients, rpc, presence, history,
//! join/leave, pings, recovery after dropped connections, server-side subscriptions and tokens.

mod common;

use std::path::Path;
use std::time::Duration;

use common::script::run_script;
use common::TestServer;

const API_KEY: &str = "compat-api-key";
const TOKEN_SECRET: &str = "compat-token-secret";

/// The Python of the virtual environment ./test.sh makes (else `python3` on PATH), checked to
/// have the SDK.
async fn python_with_sdk(compat: &Path) -> String {
    // The virtual environment ./test.sh makes, else whatever `python3` is on PATH.
    let venv_python = compat.join(".venv/bin/python");
    let python = if venv_python.is_file() {
        venv_python.to_string_lossy().into_owned()
    } else {
        "python3".to_string()
    };
    let probe = run_script(
        &python,
        &["-c", "import centrifuge, websockets"],
        &[],
        compat,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        probe.code,
        Some(0),
        "the Python SDK is not installed for `{python}`: run ./test.sh (it makes tests/compat/.venv \
         and installs tests/compat/requirements.txt there), or `python3 -m venv tests/compat/.venv \
         && tests/compat/.venv/bin/pip install -r tests/compat/requirements.txt`\n{}",
        probe.stderr
    );
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn centrifuge_python_sdk_works_against_the_server() {
    let compat = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat");
    let python = python_with_sdk(&compat).await;
    let server = TestServer::with(|config| {
        config.api_key = Some(API_KEY.into());
        // Tokens identify the users the script acts on through the API; anonymous clients are
        // still accepted (`insecure`, harmless on loopback).
        config.token_hmac_secret = Some(TOKEN_SECRET.into());
        config.insecure = true;
        // A ping every second and a pong due within one, so a missing pong shows during the run.
        config.ping_interval = 1;
        config.pong_timeout = 1;
        // An expired connection that did not refresh is closed one second after its token's `exp`.
        config.expired_grace = 1;
        // Every known user's connections join `personal:#<user>` at connect (the SDK sees a
        // server-side subscription).
        config.subscribe_to_user_personal_channel = true;
        config.personal_channel_namespace = "personal".into();
        config.namespace.push(switchboard::config::Namespace {
            name: "personal".into(),
            ..Default::default()
        });
    })
    .await;
    let address = server.addr.to_string();
    let run = run_script(
        &python,
        &["centrifuge_python.py", &address],
        &[
            ("SWITCHBOARD_API_KEY", API_KEY),
            ("SWITCHBOARD_TOKEN_SECRET", TOKEN_SECRET),
            ("PYTHONUNBUFFERED", "1"),
        ],
        &compat,
        Duration::from_secs(60),
    )
    .await;
    run.assert_success("centrifuge-python compatibility script");
    server.stop().await;
}

/// The Protobuf encoding with `use_protobuf=True` (`centrifuge_python_protobuf.py`), beside a
/// JSON client of the same SDK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn centrifuge_python_protobuf_works_against_the_server() {
    let compat = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat");
    let python = python_with_sdk(&compat).await;
    let server = TestServer::with(|config| config.api_key = Some(API_KEY.into())).await;
    let address = server.addr.to_string();
    let run = run_script(
        &python,
        &["centrifuge_python_protobuf.py", &address],
        &[("SWITCHBOARD_API_KEY", API_KEY), ("PYTHONUNBUFFERED", "1")],
        &compat,
        Duration::from_secs(60),
    )
    .await;
    run.assert_success("centrifuge-python Protobuf script");
    server.stop().await;
}
