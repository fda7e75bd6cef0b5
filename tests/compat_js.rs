//! Compatibility with the official JavaScript SDK: `tests/compat/centrifuge_js.mjs` drives a real
//! server with the npm package `centrifuge` (centrifuge-js, pinned in tests/compat/package-lock.json)
//! and checks connect, subscribe, publications from the API and from clients, rpc, presence,
//! history, join/leave and recovery after a dropped connection.

mod common;

use std::path::Path;
use std::time::Duration;

use common::script::run_script;
use common::TestServer;

const API_KEY: &str = "compat-api-key";
const TOKEN_SECRET: &str = "compat-token-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn centrifuge_js_sdk_works_against_the_server() {
    let compat = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat");
    assert!(
        compat.join("node_modules/centrifuge").is_dir() && compat.join("node_modules/ws").is_dir(),
        "the npm packages of the JS compatibility test are not installed in {}: run ./test.sh \
         (it runs `npm ci` there), or `cd tests/compat && npm ci`",
        compat.display()
    );
    let server = TestServer::with(|config| {
        config.api_key = Some(API_KEY.into());
        // Tokens identify the user the script disconnects through the API; anonymous clients
        // are still accepted (`insecure`, harmless on loopback).
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
        "node",
        &["centrifuge_js.mjs", &address],
        &[
            ("SWITCHBOARD_API_KEY", API_KEY),
            ("SWITCHBOARD_TOKEN_SECRET", TOKEN_SECRET),
        ],
        &compat,
        Duration::from_secs(60),
    )
    .await;
    run.assert_success("centrifuge-js compatibility script");
    server.stop().await;
}
