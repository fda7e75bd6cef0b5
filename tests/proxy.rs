//! Decisions by an application backend over HTTP (Centrifugo's proxy), end to end: a real HTTP
//! backend in this process, a real server, real WebSocket clients.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard::Config;
use switchboard_proto as pb;
use tokio::sync::Notify;

/// A backend answering Centrifugo proxy requests; each answer depends on the request, so one
/// backend serves every test.
struct Backend {
    addr: SocketAddr,
    state: Arc<BackendState>,
}

/// A request the backend received: its path, its JSON body, and its `cookie` and `x-static`
/// headers.
type Recorded = (String, Value, Option<String>, Option<String>);

#[derive(Default)]
struct BackendState {
    /// Every request, in order of arrival.
    requests: Mutex<Vec<Recorded>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Wakes the handlers that wait (the "slow" RPC), so the backend can stop.
    release: Notify,
}

impl BackendState {
    fn record(&self, path: &str, headers: &HeaderMap, body: &Value) {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        self.requests.lock().unwrap().push((
            path.to_string(),
            body.clone(),
            header("cookie"),
            header("x-static"),
        ));
    }

    fn requests_to(&self, path: &str) -> Vec<(Value, Option<String>, Option<String>)> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, ..)| p == path)
            .map(|(_, body, cookie, fixed)| (body.clone(), cookie.clone(), fixed.clone()))
            .collect()
    }
}

type Shared = State<Arc<BackendState>>;

/// Bytes that are not JSON (nor UTF-8).
const NOT_JSON: &[u8] = &[0, 255, 1, 2];

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The client's data in a request, whichever way it came: `data`, or `b64data` decoded (its
/// JSON, or `{"user": "bytes"}` for bytes that are not JSON).
fn client_data(body: &Value) -> Value {
    match body["b64data"].as_str() {
        None => body["data"].clone(),
        Some(text) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text)
                .expect("b64data is base64");
            serde_json::from_slice(&bytes).unwrap_or(json!({"user": "bytes"}))
        }
    }
}

/// `connect`: the client's `data.mode` says how to answer.
async fn connect(State(state): Shared, headers: HeaderMap, Json(body): Json<Value>) -> Json<Value> {
    state.record("connect", &headers, &body);
    let data = &client_data(&body);
    Json(match data["mode"].as_str().unwrap_or("allow") {
        "error" => json!({"error": {"code": 1000, "message": "custom error"}}),
        "disconnect" => json!({"disconnect": {"code": 4501, "reason": "unauthorized"}}),
        "expiring" => json!({"result": {
            "user": data["user"],
            "expire_at": unix_now() + 1,
            "meta": {"tenant": 7},
        }}),
        _ => json!({"result": {
            "user": data["user"],
            "info": {"name": data["user"]},
            "data": {"welcome": true},
        }}),
    })
}

/// `connect`, counting requests in flight; each takes a little while.
async fn counted_connect(
    State(state): Shared,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Json<Value> {
    state.record("counted", &headers, &body);
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(20)).await;
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    Json(json!({"result": {"user": "crowd"}}))
}

/// `refresh`: extends users named `keep`, ends the others.
async fn refresh(State(state): Shared, headers: HeaderMap, Json(body): Json<Value>) -> Json<Value> {
    state.record("refresh", &headers, &body);
    Json(if body["user"] == "keep" {
        json!({"result": {"expire_at": unix_now() + 3600}})
    } else {
        json!({"result": {"expired": true}})
    })
}

/// `subscribe`: channels starting with `secret` are refused.
async fn subscribe(
    State(state): Shared,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Json<Value> {
    state.record("subscribe", &headers, &body);
    let channel = body["channel"].as_str().unwrap_or("");
    Json(if channel.starts_with("secret") {
        json!({"error": {"code": 403, "message": "permission denied"}})
    } else if channel.starts_with("brief") {
        json!({"result": {"expire_at": unix_now() + 1}})
    } else {
        json!({"result": {"data": {"granted": channel}, "info": {"role": "reader"}}})
    })
}

/// `sub_refresh`: extends subscriptions to channels ending in `renewed`, ends the others.
async fn sub_refresh(
    State(state): Shared,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Json<Value> {
    state.record("sub_refresh", &headers, &body);
    let channel = body["channel"].as_str().unwrap_or("");
    Json(if channel.ends_with("renewed") {
        json!({"result": {"expire_at": unix_now() + 3600}})
    } else {
        json!({"result": {"expired": true}})
    })
}

/// `publish`: what is published is the backend's, wrapping the client's data; to channels
/// starting with `bytes`, bytes that are not JSON.
async fn publish(State(state): Shared, headers: HeaderMap, Json(body): Json<Value>) -> Json<Value> {
    state.record("publish", &headers, &body);
    if body["channel"].as_str().unwrap_or("").starts_with("bytes") {
        return Json(json!({"result": {"b64data": b64(NOT_JSON)}}));
    }
    Json(json!({"result": {"data": {"by": "backend", "was": body["data"]}}}))
}

/// `rpc`: `price` answers at once; `bytes` with bytes that are not JSON; `slow` waits until the
/// backend is released.
async fn rpc(State(state): Shared, headers: HeaderMap, Json(body): Json<Value>) -> Json<Value> {
    state.record("rpc", &headers, &body);
    match body["method"].as_str() {
        Some("price") => Json(json!({"result": {"data": {"answer": 42, "user": body["user"]}}})),
        Some("bytes") => Json(json!({"result": {"b64data": b64(NOT_JSON)}})),
        Some("slow") => {
            let _ = tokio::time::timeout(Duration::from_secs(30), state.release.notified()).await;
            Json(json!({"result": {}}))
        }
        _ => Json(json!({"error": {"code": 404, "message": "no such method"}})),
    }
}

/// `rpc` of a second service, reached by method prefix.
async fn billing(State(state): Shared, headers: HeaderMap, Json(body): Json<Value>) -> Json<Value> {
    state.record("billing", &headers, &body);
    Json(json!({"result": {"data": {"service": "billing", "method": body["method"]}}}))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Backend {
    async fn start() -> Backend {
        let state = Arc::new(BackendState::default());
        let router = Router::new()
            .route("/connect", post(connect))
            .route("/counted", post(counted_connect))
            .route("/refresh", post(refresh))
            .route("/subscribe", post(subscribe))
            .route("/sub_refresh", post(sub_refresh))
            .route("/publish", post(publish))
            .route("/rpc", post(rpc))
            .route("/billing", post(billing))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Backend { addr, state }
    }

    fn url(&self, path: &str) -> Option<String> {
        Some(format!("http://{}/{path}", self.addr))
    }

    /// Points every hook at this backend.
    fn every_hook(&self, config: &mut Config) {
        config.proxy_connect_endpoint = self.url("connect");
        config.proxy_subscribe_endpoint = self.url("subscribe");
        config.proxy_publish_endpoint = self.url("publish");
        config.proxy_rpc_endpoint = self.url("rpc");
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.state.release.notify_waiters();
    }
}

/// A port nothing listens on.
async fn closed_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

async fn connected_as(server: &TestServer, user: &str) -> Client {
    let mut client = Client::open(&server.ws_url()).await;
    let reply = client.connect(json!({"data": {"user": user}})).await;
    assert!(reply["connect"].is_object(), "connect failed: {reply}");
    client
}

#[tokio::test]
async fn the_connect_proxy_names_the_user_with_the_clients_headers() {
    let backend = Backend::start().await;
    let server = TestServer::with(|c| {
        backend.every_hook(c);
        // Presence reads are the namespace's to permit, not the backend's.
        open_channels(c);
        c.proxy_http_headers = vec!["Cookie".into()];
        c.proxy_static_headers
            .insert("X-Static".into(), "from-config".into());
    })
    .await;
    let mut ann = Client::open_with_headers(&server.ws_url(), &[("Cookie", "session=ann")]).await;
    let reply = ann
        .connect(json!({"name": "test-sdk", "data": {"user": "ann"}}))
        .await;
    assert_eq!(reply["connect"]["data"], json!({"welcome": true}));
    let requests = backend.state.requests_to("connect");
    let (body, cookie, fixed) = &requests[0];
    assert_eq!(body["client"], ann.client_id.as_str());
    assert_eq!(body["transport"], "websocket");
    assert_eq!(body["protocol"], "json");
    assert_eq!(body["encoding"], "json");
    assert_eq!(body["name"], "test-sdk");
    assert_eq!(cookie.as_deref(), Some("session=ann"));
    assert_eq!(fixed.as_deref(), Some("from-config"));
    // Presence shows who the backend said the client is.
    ann.subscribe("room").await;
    let presence = ann.call("presence", json!({"channel": "room"})).await;
    let me = &presence["presence"]["presence"][ann.client_id.as_str()];
    assert_eq!(me["user"], "ann");
    assert_eq!(me["conn_info"], json!({"name": "ann"}));
    assert_eq!(me["chan_info"], json!({"role": "reader"}));
    // The connection's headers go with every later request too.
    let (_, cookie, _) = &backend.state.requests_to("subscribe")[0];
    assert_eq!(cookie.as_deref(), Some("session=ann"));
    server.stop().await;
}

#[tokio::test]
async fn headers_the_sdk_emulates_are_forwarded_when_listed_and_real_ones_win() {
    let backend = Backend::start().await;
    let server = TestServer::with(|c| {
        backend.every_hook(c);
        c.proxy_http_headers = vec!["Cookie".into()];
        c.proxy_emulated_headers = vec!["cookie".into()];
    })
    .await;
    let mut browser = Client::open(&server.ws_url()).await;
    browser
        .connect(json!({"headers": {"Cookie": "session=emulated"}, "data": {"user": "ann"}}))
        .await;
    let mut native =
        Client::open_with_headers(&server.ws_url(), &[("Cookie", "session=real")]).await;
    native
        .connect(json!({"headers": {"Cookie": "session=forged"}, "data": {"user": "bob"}}))
        .await;
    let cookies: Vec<_> = backend
        .state
        .requests_to("connect")
        .into_iter()
        .map(|(_, cookie, _)| cookie)
        .collect();
    assert_eq!(
        cookies,
        [
            Some("session=emulated".to_string()),
            Some("session=real".to_string())
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn the_connect_proxy_refuses_with_an_error_or_a_disconnect() {
    let backend = Backend::start().await;
    let server = TestServer::with(|c| backend.every_hook(c)).await;
    let mut refused = Client::open(&server.ws_url()).await;
    let reply = refused.connect(json!({"data": {"mode": "error"}})).await;
    assert_eq!(reply["error"]["code"], 1000);
    assert_eq!(reply["error"]["message"], "custom error");
    let mut closed = Client::open(&server.ws_url()).await;
    closed
        .send("connect", json!({"data": {"mode": "disconnect"}}))
        .await;
    assert_eq!(closed.closed().await, (4501, "unauthorized".to_string()));
    server.stop().await;
}

#[tokio::test]
async fn a_client_with_a_token_is_not_asked_of_the_backend() {
    let backend = Backend::start().await;
    let server = TestServer::with(|c| {
        c.proxy_connect_endpoint = backend.url("connect");
        c.token_hmac_secret = Some("proxy-test-secret".into());
    })
    .await;
    let token = switchboard::auth::make_hmac_token("proxy-test-secret", "bob", 3600).unwrap();
    let mut bob = Client::open(&server.ws_url()).await;
    let reply = bob.connect(json!({"token": token})).await;
    assert!(reply["connect"].is_object(), "{reply}");
    assert!(backend.state.requests_to("connect").is_empty());
    server.stop().await;
}

#[tokio::test]
async fn the_subscribe_proxy_grants_and_refuses() {
    let backend = Backend::start().await;
    let server = TestServer::with(|c| backend.every_hook(c)).await;
    let mut ann = connected_as(&server, "ann").await;
    let reply = ann.call("subscribe", json!({"channel": "news"})).await;
    assert_eq!(reply["subscribe"]["data"], json!({"granted": "news"}));
    let reply = ann.call("subscribe", json!({"channel": "secret"})).await;
    assert_eq!(reply["error"]["code"], 403);
    assert_eq!(reply["error"]["message"], "permission denied");
    let asked = backend.state.requests_to("subscribe");
    assert_eq!(asked[0].0["user"], "ann");
    assert_eq!(asked[0].0["channel"], "news");
    server.stop().await;
}

#[tokio::test]
async fn the_publish_proxy_replaces_what_is_published() {
    let backend = Backend::start().await;
    let server = TestServer::with(|c| backend.every_hook(c)).await;
    let mut ann = connected_as(&server, "ann").await;
    let mut bob = connected_as(&server, "bob").await;
    bob.subscribe("chat").await;
    let reply = ann
        .call(
            "publish",
            json!({"channel": "chat", "data": {"text": "hi"}}),
        )
        .await;
    assert_eq!(reply["publish"], json!({}));
    let publication = bob.next_publication().await;
    assert_eq!(
        publication["pub"]["data"],
        json!({"by": "backend", "was": {"text": "hi"}})
    );
    assert_eq!(publication["pub"]["info"]["user"], "ann");
    let asked = backend.state.requests_to("publish");
    assert_eq!(asked[0].0["channel"], "chat");
    assert_eq!(asked[0].0["data"], json!({"text": "hi"}));
    server.stop().await;
}

#[tokio::test]
async fn publishes_through_the_proxy_keep_their_order() {
    let backend = Backend::start().await;
    let server = TestServer::with(|c| backend.every_hook(c)).await;
    let mut ann = connected_as(&server, "ann").await;
    ann.subscribe("chat").await;
    let ids: Vec<u32> = {
        let mut ids = Vec::new();
        for n in 0..20 {
            ids.push(
                ann.send("publish", json!({"channel": "chat", "data": n}))
                    .await,
            );
        }
        ids
    };
    for id in ids {
        assert_eq!(ann.reply_to(id).await["publish"], json!({}));
    }
    for n in 0..20 {
        let publication = ann.next_publication().await;
        assert_eq!(publication["pub"]["data"]["was"], n);
    }
    server.stop().await;
}

#[tokio::test]
async fn the_rpc_proxy_answers_methods() {
    let backend = Backend::start().await;
    let server = TestServer::with(|c| backend.every_hook(c)).await;
    let mut ann = connected_as(&server, "ann").await;
    let reply = ann
        .call("rpc", json!({"method": "price", "data": {"item": 1}}))
        .await;
    assert_eq!(reply["rpc"]["data"], json!({"answer": 42, "user": "ann"}));
    let reply = ann.call("rpc", json!({"method": "other"})).await;
    assert_eq!(reply["error"]["code"], 404);
    let asked = backend.state.requests_to("rpc");
    assert_eq!(asked[0].0["data"], json!({"item": 1}));
    server.stop().await;
}

#[tokio::test]
async fn a_backend_too_slow_costs_its_client_a_temporary_error_and_no_one_else_waits() {
    let backend = Backend::start().await;
    let server = TestServer::with(|c| {
        backend.every_hook(c);
        c.proxy_timeout = Duration::from_millis(300);
    })
    .await;
    let mut waiting = connected_as(&server, "ann").await;
    let slow = waiting.send("rpc", json!({"method": "slow"})).await;
    // Another client is served while the first one's call is pending.
    let mut other = connected_as(&server, "bob").await;
    let reply = other.call("rpc", json!({"method": "price"})).await;
    assert_eq!(reply["rpc"]["data"]["answer"], 42);
    // The pending call is bounded: it ends with the temporary internal error.
    let reply = waiting.reply_to(slow).await;
    assert_eq!(reply["error"]["code"], 100);
    assert_eq!(reply["error"]["temporary"], true);
    // The connection stays usable.
    let reply = waiting.call("rpc", json!({"method": "price"})).await;
    assert_eq!(reply["rpc"]["data"]["answer"], 42);
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("switchboard_proxy_timeouts_total{hook=\"rpc\"} 1"),
        "{metrics}"
    );
    backend.state.release.notify_waiters();
    server.stop().await;
}

#[tokio::test]
async fn a_backend_that_refuses_connections_is_a_temporary_error() {
    let port = closed_port().await;
    let server = TestServer::with(|c| {
        c.proxy_rpc_endpoint = Some(format!("http://127.0.0.1:{port}/rpc"));
    })
    .await;
    let mut client = server.client().await;
    let reply = client.call("rpc", json!({"method": "price"})).await;
    assert_eq!(reply["error"]["code"], 100);
    assert_eq!(reply["error"]["temporary"], true);
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("switchboard_proxy_errors_total{hook=\"rpc\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("switchboard_proxy_calls_total{hook=\"rpc\"} 1"));
    server.stop().await;
}

#[tokio::test]
async fn backend_calls_in_flight_stay_within_the_concurrency_bound() {
    let backend = Backend::start().await;
    let server = TestServer::with(|c| {
        c.proxy_connect_endpoint = backend.url("counted");
        c.proxy_concurrency = 4;
        // Generous: the calls wait their turn, they must not run out of time doing so.
        c.proxy_timeout = Duration::from_secs(8);
        c.connection_rate_per_ip = 0;
    })
    .await;
    let url = server.ws_url();
    let connects = (0..50).map(|_| {
        let url = url.clone();
        tokio::spawn(async move {
            let mut client = Client::open(&url).await;
            client.connect(json!({})).await
        })
    });
    for reply in futures_util::future::join_all(connects).await {
        let reply = reply.unwrap();
        assert!(reply["connect"].is_object(), "{reply}");
    }
    let max = backend.state.max_in_flight.load(Ordering::SeqCst);
    assert!((1..=4).contains(&max), "max in flight {max}");
    assert_eq!(backend.state.requests_to("counted").len(), 50);
    server.stop().await;
}

#[tokio::test]
async fn the_refresh_proxy_renews_the_connections_it_let_in_or_ends_them() {
    let backend = Backend::start().await;
    let server = TestServer::with(|c| {
        backend.every_hook(c);
        c.proxy_refresh_endpoint = backend.url("refresh");
    })
    .await;
    let mut kept = Client::open(&server.ws_url()).await;
    let reply = kept
        .connect(json!({"data": {"mode": "expiring", "user": "keep"}}))
        .await;
    // The server renews the connection itself: the client is not asked to.
    assert!(reply["connect"].get("expires").is_none(), "{reply}");
    let mut ended = Client::open(&server.ws_url()).await;
    ended
        .connect(json!({"data": {"mode": "expiring", "user": "gone"}}))
        .await;
    assert_eq!(ended.closed().await.0, 3005);
    assert!(
        eventually(|| async {
            backend
                .state
                .requests_to("refresh")
                .iter()
                .any(|(body, ..)| body["user"] == "keep")
        })
        .await
    );
    let asked = backend.state.requests_to("refresh");
    let (body, ..) = asked.iter().find(|(b, ..)| b["user"] == "keep").unwrap();
    assert_eq!(
        body["meta"],
        json!({"tenant": 7}),
        "connect meta comes back"
    );
    // Renewed: still served.
    let reply = kept.call("rpc", json!({"method": "price"})).await;
    assert_eq!(reply["rpc"]["data"]["answer"], 42);
    server.stop().await;
}

#[tokio::test]
async fn namespaces_turn_hooks_off_and_rpc_methods_route_by_prefix() {
    let backend = Backend::start().await;
    let server = TestServer::with(|c| {
        backend.every_hook(c);
        c.namespace.push(switchboard::config::Namespace {
            name: "open".into(),
            proxy_subscribe: Some(false),
            allow_subscribe_for_client: Some(true),
            ..Default::default()
        });
        c.proxy_rpc_endpoints
            .insert("billing:".into(), backend.url("billing").unwrap());
    })
    .await;
    let mut ann = connected_as(&server, "ann").await;
    ann.subscribe("open:lobby").await;
    assert!(backend.state.requests_to("subscribe").is_empty());
    let reply = ann.call("rpc", json!({"method": "billing:invoice"})).await;
    assert_eq!(
        reply["rpc"]["data"],
        json!({"service": "billing", "method": "billing:invoice"})
    );
    let reply = ann.call("rpc", json!({"method": "price"})).await;
    assert_eq!(reply["rpc"]["data"]["answer"], 42);
    server.stop().await;
}

#[tokio::test]
async fn the_sub_refresh_proxy_renews_the_subscriptions_it_granted_or_ends_them() {
    let backend = Backend::start().await;
    let server = TestServer::with(|c| {
        backend.every_hook(c);
        c.proxy_sub_refresh_endpoint = backend.url("sub_refresh");
    })
    .await;
    let mut ann = connected_as(&server, "ann").await;
    let reply = ann.subscribe("brief-renewed").await;
    // The server renews the subscription itself: the client is not asked to.
    assert!(reply["subscribe"].get("expires").is_none(), "{reply}");
    ann.subscribe("brief-ended").await;
    let push = ann.next_push().await;
    assert_eq!(push["channel"], "brief-ended");
    assert_eq!(push["unsubscribe"]["code"], 2501);
    assert!(
        eventually(|| async {
            backend
                .state
                .requests_to("sub_refresh")
                .iter()
                .any(|(body, ..)| body["channel"] == "brief-renewed")
        })
        .await
    );
    // Renewed: still subscribed, publications still arrive.
    ann.call(
        "publish",
        json!({"channel": "brief-renewed", "data": "still here"}),
    )
    .await;
    let publication = ann.next_publication().await;
    assert_eq!(publication["channel"], "brief-renewed");
    server.stop().await;
}

/// The backend's request to `hook` about the client whose data names `user`.
fn request_of(backend: &Backend, hook: &str, user: &str) -> Value {
    let requests = backend.state.requests_to(hook);
    let found = requests
        .iter()
        .find(|(body, ..)| client_data(body)["user"] == user);
    found
        .unwrap_or_else(|| panic!("no {hook} request of {user}: {requests:?}"))
        .0
        .clone()
}

/// What a request says of its client's connection: transport, protocol, encoding.
fn origin(body: &Value) -> (&str, &str, &str) {
    let field = |name: &str| body[name].as_str().unwrap_or("-");
    (field("transport"), field("protocol"), field("encoding"))
}

/// A Protobuf client connected with `data` (its bytes as they are).
async fn protobuf_connected(server: &TestServer, data: &'static [u8]) -> PbClient {
    let mut client = PbClient::open(server).await;
    let reply = client
        .0
        .call(pb::Command {
            id: 1,
            connect: Some(pb::ConnectRequest {
                data: Bytes::from_static(data),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("the connect reply");
    assert!(reply.connect.is_some(), "connected: {reply:?}");
    client
}

fn protobuf_rpc(id: u32, method: &str, data: &'static [u8]) -> pb::Command {
    pb::Command {
        id,
        rpc: Some(pb::RpcRequest {
            method: method.into(),
            data: Bytes::from_static(data),
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_names_the_clients_transport_and_protocol_truly() {
    use switchboard_client::raw::{urlencode, EmulationKind};
    use tokio_tungstenite::tungstenite::Message;
    let backend = Backend::start().await;
    let server = TestServer::with(|c| {
        backend.every_hook(c);
        c.insecure = true;
    })
    .await;
    let addr = server.addr;
    let _json = connected_as(&server, "ws-json").await;
    let mut protobuf = protobuf_connected(&server, br#"{"user":"ws-protobuf"}"#).await;
    let mut streams = Vec::new();
    for (kind, user) in [
        (EmulationKind::HttpStream, "http-stream"),
        (EmulationKind::Sse, "sse"),
    ] {
        let connect = json!({"data": {"user": user}});
        let (session, reply) = switchboard_client::raw::Emulated::open(addr, kind, connect)
            .await
            .expect("an emulated session");
        assert!(reply["client"].is_string(), "{user}: {reply}");
        streams.push(session);
    }
    // Unidirectional clients: their connect push says they are in.
    let (mut uni_ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/connection/uni_websocket"))
            .await
            .unwrap();
    uni_ws
        .send(Message::text(
            json!({"data": {"user": "uni-ws"}}).to_string(),
        ))
        .await
        .unwrap();
    let pushed = tokio::time::timeout(WAIT, uni_ws.next()).await.unwrap();
    assert!(pushed
        .unwrap()
        .unwrap()
        .to_text()
        .unwrap()
        .contains("connect"));
    let query = urlencode(&json!({"data": {"user": "uni-sse"}}).to_string());
    let mut uni_sse = common::http_stream::HttpStream::open(
        addr,
        &format!(
            "GET /connection/uni_sse?cf_connect={query} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        ),
        true,
    )
    .await;
    assert!(uni_sse.next().await.unwrap()["connect"].is_object());
    for (user, expected) in [
        ("ws-json", ("websocket", "json", "json")),
        ("ws-protobuf", ("websocket", "protobuf", "json")),
        ("http-stream", ("http_stream", "json", "json")),
        ("sse", ("sse", "json", "json")),
        ("uni-ws", ("uni_websocket", "json", "json")),
        ("uni-sse", ("uni_sse", "json", "json")),
    ] {
        let body = request_of(&backend, "connect", user);
        assert_eq!(origin(&body), expected, "{user}: {body}");
    }
    // Later hooks of a Protobuf client and of an emulated one say the same.
    protobuf
        .send(&[
            pb::Command {
                id: 2,
                subscribe: Some(pb::SubscribeRequest {
                    channel: "room".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            protobuf_rpc(3, "price", b"{}"),
        ])
        .await;
    assert!(protobuf.next().await.subscribe.is_some());
    assert!(protobuf.next().await.rpc.is_some());
    let (subscribe, rpc) = (
        backend.state.requests_to("subscribe"),
        backend.state.requests_to("rpc"),
    );
    assert_eq!(origin(&subscribe[0].0), ("websocket", "protobuf", "json"));
    assert_eq!(origin(&rpc[0].0), ("websocket", "protobuf", "json"));
    let reply = streams[1]
        .call_via(addr, "rpc", json!({"method": "price"}))
        .await
        .unwrap();
    assert_eq!(reply["rpc"]["data"]["answer"], 42, "{reply}");
    let rpc = backend.state.requests_to("rpc");
    assert_eq!(origin(&rpc[1].0), ("sse", "json", "json"));
    server.stop().await;
}

#[tokio::test]
async fn bytes_that_are_not_json_reach_the_backend_as_b64data() {
    let backend = Backend::start().await;
    let server = TestServer::with(|c| {
        backend.every_hook(c);
        open_channels(c);
    })
    .await;
    // Connect data, subscribe data, a publication and RPC data, none of them JSON.
    let mut client = protobuf_connected(&server, NOT_JSON).await;
    let commands = [
        pb::Command {
            id: 2,
            subscribe: Some(pb::SubscribeRequest {
                channel: "room".into(),
                data: Bytes::from_static(NOT_JSON),
                ..Default::default()
            }),
            ..Default::default()
        },
        pb::Command {
            id: 3,
            publish: Some(pb::PublishRequest {
                channel: "room".into(),
                data: Bytes::from_static(NOT_JSON),
                ..Default::default()
            }),
            ..Default::default()
        },
        protobuf_rpc(4, "price", NOT_JSON),
    ];
    for command in commands {
        let reply = client.0.call(command).await.expect("a reply");
        assert!(reply.error.is_none(), "{reply:?}");
    }
    for hook in ["connect", "subscribe", "publish", "rpc"] {
        let body = &backend.state.requests_to(hook)[0].0;
        assert_eq!(body["b64data"], b64(NOT_JSON), "{hook}: {body}");
        assert!(body.get("data").is_none(), "{hook}: {body}");
        assert_eq!(origin(body), ("websocket", "protobuf", "binary"), "{hook}");
    }
    // JSON data from the same client stays raw JSON.
    let reply = client.0.call(protobuf_rpc(5, "price", br#"{"n":1}"#)).await;
    assert!(reply.expect("a reply").rpc.is_some());
    let body = &backend.state.requests_to("rpc")[1].0;
    assert_eq!(body["data"], json!({"n": 1}), "{body}");
    assert!(body.get("b64data").is_none(), "{body}");
    assert_eq!(origin(body), ("websocket", "protobuf", "json"));
    server.stop().await;
}

#[tokio::test]
async fn binary_answers_reach_protobuf_clients_byte_exact_and_json_clients_get_a_clear_error() {
    let backend = Backend::start().await;
    let server = TestServer::with(|c| {
        backend.every_hook(c);
        open_channels(c);
    })
    .await;
    let mut protobuf = protobuf_connected(&server, br#"{"user":"pb"}"#).await;
    let reply = protobuf
        .0
        .call(protobuf_rpc(2, "bytes", b""))
        .await
        .unwrap();
    assert_eq!(&reply.rpc.expect("an rpc result").data[..], NOT_JSON);
    // A JSON client cannot carry them: an error says why, and the connection goes on.
    let mut ann = connected_as(&server, "ann").await;
    let reply = ann.call("rpc", json!({"method": "bytes"})).await;
    assert_eq!(reply["error"]["code"], 100, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("binary"),
        "{reply}"
    );
    assert!(reply["error"].get("temporary").is_none(), "{reply}");
    let reply = ann.call("rpc", json!({"method": "price"})).await;
    assert_eq!(reply["rpc"]["data"]["answer"], 42, "{reply}");
    // The publish proxy's bytes in place of the client's: a binary publication.
    let mut subscriber = connected_as(&server, "sub").await;
    subscriber.subscribe("bytes-feed").await;
    let reply = ann
        .call(
            "publish",
            json!({"channel": "bytes-feed", "data": {"x": 1}}),
        )
        .await;
    assert!(reply.get("error").is_none(), "{reply}");
    let push = subscriber.next_publication().await;
    assert_eq!(push["pub"]["data"], b64(NOT_JSON), "{push}");
    assert_eq!(push["pub"]["binary"], true, "{push}");
    server.stop().await;
}

#[tokio::test]
async fn binary_mode_sends_json_payloads_as_b64data_too() {
    let backend = Backend::start().await;
    let server = TestServer::with(|c| {
        backend.every_hook(c);
        open_channels(c);
        c.proxy_binary_encoding = true;
    })
    .await;
    let mut ann = connected_as(&server, "ann").await;
    let reply = ann
        .call("rpc", json!({"method": "price", "data": {"item": 1}}))
        .await;
    assert_eq!(reply["rpc"]["data"]["answer"], 42, "{reply}");
    let connect = request_of(&backend, "connect", "ann");
    assert_eq!(connect["b64data"], b64(br#"{"user":"ann"}"#), "{connect}");
    assert!(connect.get("data").is_none(), "{connect}");
    assert_eq!(origin(&connect), ("websocket", "json", "binary"));
    let rpc = &backend.state.requests_to("rpc")[0].0;
    assert_eq!(rpc["b64data"], b64(br#"{"item":1}"#), "{rpc}");
    assert!(rpc.get("data").is_none(), "{rpc}");
    server.stop().await;
}
