//! Fossil delta compression (`delta: "fossil"` subscriptions where `allowed_delta_types` allows
//! them), over real sockets: the official centrifuge-js SDK follows 100 revisions of a slowly
//! changing document and a recovery (`tests/compat/centrifuge_js_delta.mjs`); a raw client checks
//! the wire (payloads as strings, `delta: true` after the first, a delta rebuilds the payload)
//! and the refusals.

mod common;

use std::path::Path;
use std::time::Duration;

use common::script::run_script;
use common::TestServer;
use serde_json::{json, Value};
use switchboard::config::Namespace;

async fn server() -> TestServer {
    TestServer::with(|c| {
        c.namespace.push(Namespace {
            name: "docs".into(),
            allowed_delta_types: Some(vec!["fossil".into()]),
            ..Namespace::default()
        });
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn centrifuge_js_decodes_fossil_deltas() {
    let compat = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat");
    assert!(
        compat.join("node_modules/centrifuge").is_dir(),
        "run ./test.sh (or `npm ci` in tests/compat) first"
    );
    let server = server().await;
    let address = server.addr.to_string();
    let run = run_script(
        "node",
        &["centrifuge_js_delta.mjs", &address],
        &[],
        &compat,
        Duration::from_secs(60),
    )
    .await;
    run.assert_success("centrifuge-js delta script");
    server.stop().await;
}

#[tokio::test]
async fn the_wire_carries_strings_then_deltas_that_rebuild_the_payload() {
    let server = server().await;
    let mut client = server.client().await;
    let r = client
        .call("subscribe", json!({"channel": "docs:a", "delta": "fossil"}))
        .await;
    assert_eq!(r["subscribe"]["delta"], true, "{r}");
    let text = "a long paragraph that barely changes between revisions ".repeat(10);
    let mut previous: Option<String> = None;
    for rev in 0..5 {
        let data = json!({"text": text, "rev": rev});
        server
            .api("publish", json!({"channel": "docs:a", "data": data}))
            .await;
        let publication = client.next_publication().await["pub"].clone();
        let carried = publication["data"]
            .as_str()
            .expect("data as a string")
            .to_string();
        let payload = match &previous {
            None => {
                assert!(publication.get("delta").is_none(), "the first is whole");
                carried
            }
            Some(before) => {
                assert_eq!(publication["delta"], true, "{publication}");
                assert!(carried.len() < before.len() / 4, "a delta is small");
                String::from_utf8(
                    fossil_delta::apply(before.as_bytes(), carried.as_bytes()).unwrap(),
                )
                .unwrap()
            }
        };
        let value: Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(value, data);
        previous = Some(payload);
    }
    // A subscriber without deltas gets the payload as published.
    let mut plain = server.client().await;
    plain.subscribe("docs:a").await;
    server
        .api(
            "publish",
            json!({"channel": "docs:a", "data": {"plain": true}}),
        )
        .await;
    assert_eq!(plain.next_publication().await["pub"]["data"]["plain"], true);
}

#[tokio::test]
async fn deltas_are_refused_where_the_namespace_does_not_allow_them() {
    let server = server().await;
    let mut client = server.client().await;
    let r = client
        .call("subscribe", json!({"channel": "news", "delta": "fossil"}))
        .await;
    assert_eq!(r["error"]["code"], 107, "{r}");
    let r = client
        .call("subscribe", json!({"channel": "docs:b", "delta": "gzip"}))
        .await;
    assert_eq!(r["error"]["code"], 107, "{r}");
}

#[test]
fn an_unknown_delta_type_is_a_configuration_error() {
    let config = switchboard::Config {
        namespace: vec![Namespace {
            name: "docs".into(),
            allowed_delta_types: Some(vec!["brotli".into()]),
            ..Namespace::default()
        }],
        ..switchboard::Config::default()
    };
    let error = config.validate().unwrap_err().to_string();
    assert!(error.contains("allowed_delta_types"), "{error}");
}
