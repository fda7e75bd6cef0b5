//! The bad-input catalog: every kind of malformed input, and the answer it gets — a protocol error
//! reply (the connection stays), a close code with its reason, or an HTTP status with a JSON error
//! body. Table-driven; RELIABILITY.md lists the same table. After each table, the server still
//! serves an honest client.

mod common;

use common::*;
use serde_json::{json, Value};
use switchboard::auth::sign_hmac;
use switchboard::Config;

const SECRET: &str = "catalog-secret";
const API_KEY: &str = "catalog-key";

/// What a bad input gets.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    /// The command fails with this error code; the connection stays open.
    Error(u64),
    /// The connection is closed with this code.
    Close(u16),
}

async fn server() -> TestServer {
    TestServer::with(|c: &mut Config| {
        c.token_hmac_secret = Some(SECRET.into());
        c.api_key = Some(API_KEY.into());
        c.max_message_size = 4096;
        c.channel_max_length = 64;
        open_channels(c);
        c.namespace.push(switchboard::config::Namespace {
            name: "chat".into(),
            allow_subscribe_for_client: Some(true),
            ..Default::default()
        });
    })
    .await
}

fn token(claims: Value) -> String {
    sign_hmac(SECRET, &claims).unwrap()
}

/// A client connected with a valid token.
async fn connected(server: &TestServer) -> Client {
    let mut client = Client::open(&server.ws_url()).await;
    let reply = client
        .connect(json!({"token": token(json!({"sub": "u1"}))}))
        .await;
    assert!(reply.get("connect").is_some(), "{reply}");
    client
}

/// What the connection answers to `frame` (sent after a successful connect, unless
/// `before_connect`).
async fn answer(server: &TestServer, frame: &str, before_connect: bool) -> Answer {
    let mut client = if before_connect {
        Client::open(&server.ws_url()).await
    } else {
        connected(server).await
    };
    client.send_raw(frame).await;
    match client.next_event().await {
        Event::Message(m) if m.get("error").is_some() => {
            Answer::Error(m["error"]["code"].as_u64().unwrap())
        }
        Event::Message(m) => panic!("{frame}: answered {m}"),
        Event::Closed(code, _) => Answer::Close(code),
        Event::Dropped => panic!("{frame}: dropped without a close frame"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_commands() {
    let server = server().await;
    let long = "c".repeat(65);
    let big = "x".repeat(5000);
    let cases: Vec<(&str, String, bool, Answer)> = vec![
        ("not JSON", "hello".into(), false, Answer::Close(3501)),
        (
            "JSON, not an object",
            "[1,2]".into(),
            false,
            Answer::Close(3501),
        ),
        (
            "unknown command",
            r#"{"id":1,"teleport":{}}"#.into(),
            false,
            Answer::Close(3501),
        ),
        (
            "command before connect",
            r#"{"id":1,"subscribe":{"channel":"x"}}"#.into(),
            true,
            Answer::Close(3501),
        ),
        (
            "second connect",
            r#"{"id":1,"connect":{}}"#.into(),
            false,
            Answer::Close(3501),
        ),
        (
            "pong nobody asked for",
            "{}".into(),
            false,
            Answer::Close(3501),
        ),
        (
            "message over max_message_size",
            format!(r#"{{"id":1,"publish":{{"channel":"x","data":"{big}"}}}}"#),
            false,
            Answer::Close(1009),
        ),
        (
            "subscribe to an empty channel",
            r#"{"id":1,"subscribe":{"channel":""}}"#.into(),
            false,
            Answer::Error(107),
        ),
        (
            "channel over channel_max_length",
            format!(r#"{{"id":1,"subscribe":{{"channel":"{long}"}}}}"#),
            false,
            Answer::Error(107),
        ),
        (
            "channel in an unknown namespace",
            r#"{"id":1,"subscribe":{"channel":"nope:x"}}"#.into(),
            false,
            Answer::Error(102),
        ),
        (
            "publish without data",
            r#"{"id":1,"publish":{"channel":"x"}}"#.into(),
            false,
            Answer::Error(107),
        ),
        (
            "rpc nobody answers",
            r#"{"id":1,"rpc":{"method":"teleport"}}"#.into(),
            false,
            Answer::Error(108),
        ),
        (
            "history of a channel without permission",
            r#"{"id":1,"history":{"channel":"chat:x"}}"#.into(),
            false,
            Answer::Error(103),
        ),
        (
            "subscription token for another channel",
            format!(
                r#"{{"id":1,"subscribe":{{"channel":"chat:a","token":"{}"}}}}"#,
                token(json!({"sub":"u1","channel":"chat:b"}))
            ),
            false,
            Answer::Close(3500),
        ),
    ];
    let mut wrong = Vec::new();
    for (what, frame, before_connect, expected) in &cases {
        let got = answer(&server, frame, *before_connect).await;
        if got != *expected {
            wrong.push(format!("{what}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    let mut honest = connected(&server).await;
    honest.subscribe("still-here").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_tokens() {
    let server = server().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let none_alg = {
        use base64::Engine;
        let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!(
            "{}.{}.",
            b64(json!({"alg":"none","typ":"JWT"})),
            b64(json!({"sub":"u1"}))
        )
    };
    let cases: Vec<(&str, String, Answer)> = vec![
        ("not a JWT", "garbage".into(), Answer::Close(3500)),
        ("alg none", none_alg, Answer::Close(3500)),
        (
            "wrong signature",
            sign_hmac("another-secret", &json!({"sub":"u1"})).unwrap(),
            Answer::Close(3500),
        ),
        (
            "expired",
            token(json!({"sub":"u1","exp": now - 3600})),
            Answer::Error(109),
        ),
        (
            "not yet valid (nbf)",
            token(json!({"sub":"u1","nbf": now + 3600})),
            Answer::Close(3500),
        ),
        (
            "wrong claim type",
            token(json!({"sub": 42})),
            Answer::Close(3500),
        ),
    ];
    let mut wrong = Vec::new();
    for (what, token, expected) in &cases {
        let frame = json!({"id": 1, "connect": {"token": token}}).to_string();
        let got = answer(&server, &frame, true).await;
        if got != *expected {
            wrong.push(format!("{what}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    connected(&server).await;
    server.stop().await;
}

/// What, method, body, API key, expected HTTP status, expected error code in the body.
type ApiCase<'a> = (&'a str, &'a str, String, Option<&'a str>, u16, Option<u64>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_api_requests() {
    let server = server().await;
    let key = Some(API_KEY);
    let nested = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let batch: Vec<Value> = (0..1001)
        .map(|_| json!({"method": "info", "params": {}}))
        .collect();
    // HTTP errors (401, 404, 400) carry a JSON error body; a well-formed request whose command
    // fails is answered 200 with the command's error, as Centrifugo's API does.
    let cases: Vec<ApiCase> = vec![
        (
            "no API key",
            "publish",
            r#"{"channel":"x","data":1}"#.into(),
            None,
            401,
            None,
        ),
        (
            "wrong API key",
            "publish",
            r#"{"channel":"x","data":1}"#.into(),
            Some("nope"),
            401,
            None,
        ),
        ("unknown method", "teleport", "{}".into(), key, 404, None),
        ("body not JSON", "publish", "hello".into(), key, 400, None),
        (
            "missing channel",
            "publish",
            r#"{"data":1}"#.into(),
            key,
            400,
            None,
        ),
        (
            "idempotency key not a string",
            "publish",
            r#"{"channel":"x","data":1,"idempotency_key":5}"#.into(),
            key,
            400,
            None,
        ),
        (
            "batch over 1,000 commands",
            "batch",
            json!({"commands": batch}).to_string(),
            key,
            400,
            None,
        ),
        (
            "channels pattern over 1,024 bytes",
            "channels",
            json!({"pattern": "a".repeat(2000)}).to_string(),
            key,
            400,
            None,
        ),
        (
            "empty channel",
            "publish",
            r#"{"channel":"","data":1}"#.into(),
            key,
            200,
            Some(107),
        ),
        (
            "channel in an unknown namespace",
            "publish",
            r#"{"channel":"nope:x","data":1}"#.into(),
            key,
            200,
            Some(102),
        ),
        (
            "broadcast without channels",
            "broadcast",
            r#"{"channels":[],"data":1}"#.into(),
            key,
            200,
            Some(107),
        ),
        (
            "data nested 200 deep (accepted)",
            "publish",
            format!(r#"{{"channel":"x","data":{nested}}}"#),
            key,
            200,
            None,
        ),
    ];
    let mut wrong = Vec::new();
    for (what, method, body, key, status_expected, code_expected) in &cases {
        let (status, reply) = api_call(server.addr, method, body, *key).await;
        let code = reply["error"]["code"].as_u64();
        let fine = status == *status_expected
            && match code_expected {
                Some(expected) => code == Some(*expected),
                None if status == 200 => code.is_none(),
                None => code.is_some(),
            };
        if !fine {
            wrong.push(format!(
                "{what}: expected HTTP {status_expected} {code_expected:?}, got {status} {reply}"
            ));
        }
    }
    // A declared body over the 4 MiB limit is refused from its header.
    let request = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\nContent-Length: 104857600\r\nConnection: close\r\n\r\n{{"
    );
    let (status, body) = http_raw(server.addr, &request).await;
    if status != 413 || !body.contains("\"error\"") {
        wrong.push(format!(
            "declared 100 MiB body: expected 413 with a JSON error, got {status} {body}"
        ));
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    let (status, _) = api_call(server.addr, "info", "{}", key).await;
    assert_eq!(status, 200);
    server.stop().await;
}

#[tokio::test]
async fn malformed_configuration_values() {
    let cases: Vec<(&str, &str, &str)> = vec![
        ("unknown setting", "pnig_interval = 5", "pnig_interval"),
        ("wrong type", "port = \"eighty\"", "port"),
        ("zero ping interval", "ping_interval = 0", "ping_interval"),
        ("namespace with ':'", "[[namespace]]\nname = \"a:b\"", "a:b"),
        (
            "duplicate namespace",
            "[[namespace]]\nname = \"a\"\n[[namespace]]\nname = \"a\"",
            "\"a\"",
        ),
        (
            "proxy endpoint not a URL",
            "proxy_connect_endpoint = \"nowhere\"",
            "proxy_connect_endpoint",
        ),
        ("bad duration", "proxy_timeout = \"soon\"", "soon"),
        (
            "unknown webhook event",
            "webhook_events = [\"conect\"]",
            "conect",
        ),
        ("TLS key without certificate", "tls_key = \"/k.pem\"", "tls"),
    ];
    let dir = temp_dir();
    let mut wrong = Vec::new();
    for (what, text, mentions) in &cases {
        let path = dir.join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let outcome = Config::from_file(&path).and_then(|config| config.validate());
        match outcome {
            Ok(()) => wrong.push(format!("{what}: accepted")),
            Err(e) if !e.to_string().contains(mentions) => {
                wrong.push(format!("{what}: error does not name {mentions:?}: {e}"))
            }
            Err(_) => {}
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[tokio::test]
async fn malformed_handshakes() {
    let server = server().await;
    let addr = server.addr;
    let get = |headers: &str| {
        format!("GET /connection/websocket HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n")
    };
    let cases: Vec<(&str, String, u16)> = vec![
        ("a plain GET", get(""), 400),
        (
            "no Sec-WebSocket-Key",
            get("Connection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"),
            400,
        ),
        (
            "an unknown WebSocket version",
            get("Connection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 7\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"),
            400,
        ),
    ];
    let mut wrong = Vec::new();
    for (what, request, expected) in &cases {
        let (status, body) = http_raw(addr, request).await;
        let json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if status != *expected || !json["error"]["code"].is_u64() {
            wrong.push(format!(
                "{what}: expected HTTP {expected} with a JSON error, got {status} {body}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    server.stop().await;
}
