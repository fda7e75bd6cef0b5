//! Compatibility with the official JavaScript SDK: `tests/compat/centrifuge_js.mjs` drives a real
//! server with the npm package `centrifuge` (centrifuge-js, pinned in tests/compat/package-lock.json)
//! and checks connect, subscribe, publications from the API and from clients, rpc, presence,
//! history, join/leave and recovery after a dropped connection; `centrifuge_js_proxy.mjs` checks
//! the SDK against a server whose decisions an application backend makes (proxy hooks, with the
//! SDK's headers emulation).

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

/// The Protobuf encoding with centrifuge-js's Protobuf build (`centrifuge_js_protobuf.mjs`): over
/// WebSocket and `http_stream`, beside a JSON client in the same channels, recovery and deltas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn centrifuge_js_protobuf_build_works_against_the_server() {
    let compat = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat");
    assert!(
        compat
            .join("node_modules/centrifuge/build/protobuf")
            .is_dir(),
        "the npm packages of the JS compatibility test are not installed in {}: run ./test.sh \
         (it runs `npm ci` there), or `cd tests/compat && npm ci`",
        compat.display()
    );
    let server = TestServer::with(|config| {
        config.api_key = Some(API_KEY.into());
        // Pings (empty Protobuf replies) and pongs show within the run.
        config.ping_interval = 1;
        config.pong_timeout = 1;
        config.namespace.push(switchboard::config::Namespace {
            name: "docs".into(),
            allowed_delta_types: Some(vec!["fossil".into()]),
            ..Default::default()
        });
    })
    .await;
    let address = server.addr.to_string();
    let run = run_script(
        "node",
        &["centrifuge_js_protobuf.mjs", &address],
        &[("SWITCHBOARD_API_KEY", API_KEY)],
        &compat,
        Duration::from_secs(60),
    )
    .await;
    run.assert_success("centrifuge-js Protobuf script");
    server.stop().await;
}

/// The backend of the proxy script: the user from the emulated `Authorization` header.
mod backend {
    use axum::http::HeaderMap;
    use axum::routing::post;
    use axum::{Json, Router};
    use serde_json::{json, Value};

    async fn connect(headers: HeaderMap, Json(_): Json<Value>) -> Json<Value> {
        let user = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        Json(match user {
            Some(user) => json!({"result": {"user": user, "data": {"welcome": user}}}),
            None => json!({"disconnect": {"code": 4501, "reason": "unauthorized"}}),
        })
    }

    async fn subscribe(Json(body): Json<Value>) -> Json<Value> {
        let channel = body["channel"].as_str().unwrap_or("");
        Json(if channel.starts_with("secret") {
            json!({"error": {"code": 403, "message": "permission denied"}})
        } else {
            json!({"result": {"data": {"granted": channel}}})
        })
    }

    async fn publish(Json(body): Json<Value>) -> Json<Value> {
        Json(json!({"result": {"data": {"by": "backend", "was": body["data"]}}}))
    }

    async fn rpc(Json(body): Json<Value>) -> Json<Value> {
        Json(match body["method"].as_str() {
            Some("price") => json!({"result": {"data": {"answer": 42, "user": body["user"]}}}),
            _ => json!({"error": {"code": 404, "message": "no such method"}}),
        })
    }

    /// Starts the backend on a free port; returns its base URL.
    pub async fn start() -> String {
        let router = Router::new()
            .route("/connect", post(connect))
            .route("/subscribe", post(subscribe))
            .route("/publish", post(publish))
            .route("/rpc", post(rpc));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{addr}")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn centrifuge_js_sdk_works_with_the_proxy_hooks() {
    let compat = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat");
    assert!(
        compat.join("node_modules/centrifuge").is_dir() && compat.join("node_modules/ws").is_dir(),
        "the npm packages of the JS compatibility test are not installed in {}: run ./test.sh \
         (it runs `npm ci` there), or `cd tests/compat && npm ci`",
        compat.display()
    );
    let backend = backend::start().await;
    let server = TestServer::with(|config| {
        config.proxy_connect_endpoint = Some(format!("{backend}/connect"));
        config.proxy_subscribe_endpoint = Some(format!("{backend}/subscribe"));
        config.proxy_publish_endpoint = Some(format!("{backend}/publish"));
        config.proxy_rpc_endpoint = Some(format!("{backend}/rpc"));
        config.proxy_emulated_headers = vec!["Authorization".into()];
        // Presence reads are the namespace's to permit.
        config.channel.allow_presence_for_subscriber = Some(true);
    })
    .await;
    let address = server.addr.to_string();
    let run = run_script(
        "node",
        &["centrifuge_js_proxy.mjs", &address],
        &[],
        &compat,
        Duration::from_secs(40),
    )
    .await;
    run.assert_success("centrifuge-js proxy compatibility script");
    server.stop().await;
}

/// The map namespaces `centrifuge_js_maps.mjs` expects.
fn map_namespaces(config: &mut switchboard::Config) {
    use switchboard::config::{MapNamespace, Namespace};
    let namespace = |name: &str, map: MapNamespace| Namespace {
        name: name.into(),
        allow_subscribe_for_client: Some(true),
        allow_subscribe_for_anonymous: Some(true),
        subscription_type: Some("map".into()),
        map: Some(MapNamespace {
            allow_publish_for_client: Some(true),
            allow_publish_for_anonymous: Some(true),
            allow_remove_for_client: Some(true),
            allow_remove_for_anonymous: Some(true),
            // The script reads the state in pages of 2.
            min_page_size: Some(1),
            ..map
        }),
        ..Default::default()
    };
    let persistent = || MapNamespace {
        mode: Some("persistent".into()),
        ..Default::default()
    };
    config.namespace.push(namespace("board", persistent()));
    config.namespace.push(namespace(
        "short",
        MapNamespace {
            stream_size: Some(2),
            ..persistent()
        },
    ));
    config.namespace.push(namespace(
        "cursors",
        MapNamespace {
            mode: Some("durable".into()),
            key_ttl: Some(Duration::from_secs(1)),
            ..Default::default()
        },
    ));
    config.namespace.push(Namespace {
        name: "game".into(),
        allow_subscribe_for_client: Some(true),
        allow_subscribe_for_anonymous: Some(true),
        map_clients_presence_channel_prefix: Some("clients:".into()),
        map_users_presence_channel_prefix: Some("users:".into()),
        ..Default::default()
    });
    for (name, kind) in [("clients", "map_clients"), ("users", "map_users")] {
        config.namespace.push(Namespace {
            subscription_type: Some(kind.into()),
            ..namespace(
                name,
                MapNamespace {
                    mode: Some("durable".into()),
                    key_ttl: Some(Duration::from_secs(1)),
                    ..Default::default()
                },
            )
        });
    }
    let mut readonly = namespace("readonly", persistent());
    if let Some(map) = readonly.map.as_mut() {
        map.allow_publish_for_client = Some(false);
        map.allow_publish_for_subscriber = Some(false);
    }
    config.namespace.push(readonly);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn centrifuge_js_sdk_drives_map_subscriptions() {
    let compat = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat");
    assert!(
        compat.join("node_modules/centrifuge").is_dir() && compat.join("node_modules/ws").is_dir(),
        "the npm packages of the JS compatibility test are not installed in {}: run ./test.sh \
         (it runs `npm ci` there), or `cd tests/compat && npm ci`",
        compat.display()
    );
    let server = TestServer::with(|config| {
        config.api_key = Some(API_KEY.into());
        // Carol's token names her user for map presence; anonymous clients are accepted too.
        config.token_hmac_secret = Some(TOKEN_SECRET.into());
        config.insecure = true;
        map_namespaces(config);
    })
    .await;
    let address = server.addr.to_string();
    let carol = switchboard::auth::sign_hmac(TOKEN_SECRET, &serde_json::json!({"sub": "carol"}))
        .expect("a token");
    let run = run_script(
        "node",
        &["centrifuge_js_maps.mjs", &address],
        &[
            ("SWITCHBOARD_API_KEY", API_KEY),
            ("SWITCHBOARD_CAROL_TOKEN", &carol),
        ],
        &compat,
        Duration::from_secs(60),
    )
    .await;
    run.assert_success("centrifuge-js map subscription script");
    server.stop().await;
}
