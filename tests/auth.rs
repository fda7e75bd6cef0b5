//! Authentication, permissions and limits, over real sockets.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use switchboard::auth::{sign_hmac, unix_now};
use switchboard::config::Namespace;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn sign(alg: Algorithm, key_file: &str, claims: &Value, kid: Option<&str>) -> String {
    let pem = std::fs::read(fixture(key_file)).unwrap();
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        _ => unreachable!(),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(String::from);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// Connects with `token`; returns the client and the connect reply, or the close code.
async fn connect_with(server: &TestServer, token: &str) -> Result<(Client, Value), u16> {
    let mut c = Client::open(&server.ws_url()).await;
    c.send("connect", json!({"token": token})).await;
    match c.next_event().await {
        Event::Message(m) => {
            if let Some(id) = m["connect"]["client"].as_str() {
                c.client_id = id.to_string();
            }
            Ok((c, m))
        }
        Event::Closed(code, _) => Err(code),
        Event::Dropped => Err(0),
    }
}

#[tokio::test]
async fn rsa_and_ecdsa_tokens_and_forgeries() {
    let server = TestServer::with(|c| {
        c.token_rsa_public_key = Some(fixture("rsa_public.pem"));
        c.token_ecdsa_public_key = Some(fixture("ec_public.pem"));
    })
    .await;
    let claims = json!({"sub": "ana", "exp": unix_now() + 60});
    let (_, reply) = connect_with(
        &server,
        &sign(Algorithm::RS256, "rsa_private.pem", &claims, None),
    )
    .await
    .unwrap();
    assert!(reply["connect"]["client"].is_string(), "{reply}");
    let (_, reply) = connect_with(
        &server,
        &sign(Algorithm::ES256, "ec_private.pem", &claims, None),
    )
    .await
    .unwrap();
    assert!(reply["connect"]["client"].is_string(), "{reply}");
    // Signed by a key the server does not trust.
    let other = sign(Algorithm::RS256, "rsa_other_private.pem", &claims, None);
    assert_eq!(connect_with(&server, &other).await.err(), Some(3500));
    // HS/RS confusion: HS256 "signed" with the RSA public key as the secret.
    let public = std::fs::read_to_string(fixture("rsa_public.pem")).unwrap();
    let confused = sign_hmac(&public, &claims).unwrap();
    assert_eq!(connect_with(&server, &confused).await.err(), Some(3500));
    // alg "none", and garbage.
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&claims.to_string())
    );
    assert_eq!(connect_with(&server, &none).await.err(), Some(3500));
    assert_eq!(connect_with(&server, "abc.def").await.err(), Some(3500));
    // Expired: error 109, the connection stays for a retry.
    let expired = json!({"sub": "ana", "exp": unix_now() - 1});
    let (_, reply) = connect_with(
        &server,
        &sign(Algorithm::RS256, "rsa_private.pem", &expired, None),
    )
    .await
    .unwrap();
    assert_eq!(reply["error"]["code"], 109);
    server.stop().await;
}

/// Serves `body` at any path over plain HTTP on loopback; returns the URL.
async fn serve_once_forever(body: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/jwks.json")
}

#[tokio::test]
async fn jwks_keys_verify_tokens_by_kid() {
    let jwks = std::fs::read_to_string(fixture("jwks.json")).unwrap();
    let url = serve_once_forever(jwks).await;
    let server = TestServer::with(move |c| c.token_jwks_url = Some(url)).await;
    let claims = json!({"sub": "kim", "exp": unix_now() + 60});
    let token = sign(
        Algorithm::RS256,
        "rsa_private.pem",
        &claims,
        Some("test-key-1"),
    );
    // The key set is fetched in the background: until it arrives, connect gets a temporary error.
    let mut connected = false;
    for _ in 0..50 {
        match connect_with(&server, &token).await {
            Ok((_, reply)) if reply["connect"]["client"].is_string() => {
                connected = true;
                break;
            }
            Ok((_, reply)) => assert_eq!(reply["error"]["temporary"], true, "{reply}"),
            Err(code) => panic!("closed with {code}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(connected, "a JWKS-verified token connects");
    let unknown_kid = sign(Algorithm::RS256, "rsa_private.pem", &claims, Some("nope"));
    let (_, reply) = connect_with(&server, &unknown_kid).await.unwrap();
    assert_eq!(reply["error"]["code"], 100);
    let wrong_key = sign(
        Algorithm::RS256,
        "rsa_other_private.pem",
        &claims,
        Some("test-key-1"),
    );
    assert_eq!(connect_with(&server, &wrong_key).await.err(), Some(3500));
    server.stop().await;
}

#[tokio::test]
async fn token_claims_info_channels_and_expiry() {
    let server = TestServer::with(|c| {
        c.token_hmac_secret = Some("s".into());
        c.expired_grace = 0;
        open_channels(c);
    })
    .await;
    let claims = json!({
        "sub": "uma",
        "exp": unix_now() + 2,
        "info": {"name": "Uma"},
        "channels": ["alerts"],
        "subs": {"inbox#uma": {"data": {"unread": 3}}},
        "meta": {"plan": "secret"},
    });
    let (mut c, reply) = connect_with(&server, &sign_hmac("s", &claims).unwrap())
        .await
        .unwrap();
    let result = &reply["connect"];
    assert_eq!(result["expires"], true);
    assert!(result["ttl"].as_u64().unwrap() <= 2);
    assert_eq!(result["subs"]["alerts"]["recoverable"], true);
    assert_eq!(result["subs"]["inbox#uma"]["data"], json!({"unread": 3}));
    assert!(
        !reply.to_string().contains("secret"),
        "meta stays on the server"
    );
    let (_, p) = server.api("presence", json!({"channel": "alerts"})).await;
    assert_eq!(
        p["result"]["presence"][&c.client_id]["conn_info"],
        json!({"name": "Uma"})
    );
    server
        .api("publish", json!({"channel": "alerts", "data": "fire"}))
        .await;
    assert_eq!(c.next_publication().await["pub"]["data"], "fire");
    // No refresh: the connection is closed as expired once the token runs out.
    assert_eq!(c.closed().await, (3005, "connection expired".into()));

    // With a refresh in time the connection lives on.
    let short = json!({"sub": "uma", "exp": unix_now() + 2});
    let (mut c, _) = connect_with(&server, &sign_hmac("s", &short).unwrap())
        .await
        .unwrap();
    let longer = json!({"sub": "uma", "exp": unix_now() + 3600});
    let r = c
        .call(
            "refresh",
            json!({"token": sign_hmac("s", &longer).unwrap()}),
        )
        .await;
    assert!(r["refresh"]["ttl"].as_u64().unwrap() > 3500, "{r}");
    assert!(
        c.silent_for(Duration::from_secs(3)).await,
        "still connected"
    );
    let r = c.call("rpc", json!({"method": "echo", "data": 1})).await;
    assert_eq!(r["rpc"]["data"], 1);
    // A refresh token for someone else is a forgery.
    let other = json!({"sub": "mallory", "exp": unix_now() + 3600});
    c.send("refresh", json!({"token": sign_hmac("s", &other).unwrap()}))
        .await;
    assert_eq!(c.closed().await.0, 3500);
    server.stop().await;
}

#[tokio::test]
async fn time_claims_far_expiry_connects_and_future_not_before_is_refused() {
    let server = TestServer::with(|c| {
        c.token_hmac_secret = Some("s".into());
        open_channels(c);
    })
    .await;
    // The largest `exp` a token can carry: a connect reply, and the connection lives on.
    let far = json!({"sub": "uma", "exp": u64::MAX});
    let (mut c, reply) = connect_with(&server, &sign_hmac("s", &far).unwrap())
        .await
        .expect("a connect reply");
    assert_eq!(reply["connect"]["expires"], true, "{reply}");
    let ttl = reply["connect"]["ttl"].as_u64().expect("a ttl");
    assert!(ttl > 0 && ttl <= u64::from(u32::MAX), "{reply}");
    let r = c.call("rpc", json!({"method": "echo", "data": 1})).await;
    assert_eq!(r["rpc"]["data"], 1);
    // Not valid before an hour from now: refused as any invalid token (RFC 7519 §4.1.5).
    let early = json!({"sub": "uma", "nbf": unix_now() + 3600});
    assert_eq!(
        connect_with(&server, &sign_hmac("s", &early).unwrap())
            .await
            .err(),
        Some(3500)
    );
    let started = json!({"sub": "uma", "nbf": unix_now() - 5});
    assert!(connect_with(&server, &sign_hmac("s", &started).unwrap())
        .await
        .is_ok());
    server.stop().await;
}

#[tokio::test]
async fn subscription_tokens_open_private_channels() {
    let server = TestServer::with(|c| {
        c.token_hmac_secret = Some("s".into());
        c.namespace = vec![Namespace {
            name: "private".into(),
            allow_presence_for_subscriber: Some(true),
            ..Default::default()
        }];
    })
    .await;
    let conn = |user: &str| sign_hmac("s", &json!({"sub": user})).unwrap();
    let sub_token = |user: &str, channel: &str, exp: u64| {
        sign_hmac(
            "s",
            &json!({"sub": user, "channel": channel, "exp": exp, "info": {"role": "owner"}}),
        )
        .unwrap()
    };
    let (mut zoe, _) = connect_with(&server, &conn("zoe")).await.unwrap();
    let r = zoe
        .call("subscribe", json!({"channel": "private:vault"}))
        .await;
    assert_eq!(r["error"]["code"], 103, "no token, no entry");
    let r = zoe
        .call(
            "subscribe",
            json!({"channel": "private:vault", "token": sub_token("zoe", "private:vault", unix_now() + 60)}),
        )
        .await;
    assert_eq!(r["subscribe"]["expires"], true, "{r}");
    let p = zoe
        .call("presence", json!({"channel": "private:vault"}))
        .await;
    assert_eq!(
        p["presence"]["presence"][&zoe.client_id]["chan_info"],
        json!({"role": "owner"})
    );
    // Publishing is not granted in this namespace.
    let r = zoe
        .call("publish", json!({"channel": "private:vault", "data": 1}))
        .await;
    assert_eq!(r["error"]["code"], 103);
    let r = zoe
        .call(
            "sub_refresh",
            json!({"channel": "private:vault", "token": sub_token("zoe", "private:vault", unix_now() + 600)}),
        )
        .await;
    assert!(r["sub_refresh"]["ttl"].as_u64().unwrap() > 500, "{r}");
    // Expired, someone else's, and another channel's tokens.
    let r = zoe
        .call(
            "subscribe",
            json!({"channel": "private:b", "token": sub_token("zoe", "private:b", unix_now() - 5)}),
        )
        .await;
    assert_eq!(r["error"]["code"], 109);
    let r = zoe
        .call(
            "subscribe",
            json!({"channel": "private:b", "token": sub_token("yan", "private:b", unix_now() + 60)}),
        )
        .await;
    assert_eq!(r["error"]["code"], 103);
    zoe.send(
        "subscribe",
        json!({"channel": "private:c", "token": sub_token("zoe", "private:other", unix_now() + 60)}),
    )
    .await;
    assert_eq!(zoe.closed().await.0, 3500);
    server.stop().await;
}

#[tokio::test]
async fn namespace_permissions_and_user_limited_channels() {
    let server = TestServer::with(|c| {
        c.token_hmac_secret = Some("s".into());
        c.namespace = vec![
            Namespace {
                name: "room".into(),
                allow_subscribe_for_client: Some(true),
                allow_publish_for_subscriber: Some(true),
                allow_history_for_subscriber: Some(true),
                allow_user_limited_channels: Some(true),
                ..Default::default()
            },
            // Open to every client, but user-limited channels not turned on.
            Namespace {
                name: "hall".into(),
                allow_subscribe_for_client: Some(true),
                ..Default::default()
            },
        ];
    })
    .await;
    let conn = |user: &str| sign_hmac("s", &json!({"sub": user})).unwrap();
    let (mut ann, _) = connect_with(&server, &conn("ann")).await.unwrap();
    // Outside the namespace nothing is granted once tokens are verified.
    let r = ann.call("subscribe", json!({"channel": "lobby"})).await;
    assert_eq!(r["error"]["code"], 103);
    // Publish and history only as a subscriber.
    let r = ann
        .call("publish", json!({"channel": "room:1", "data": 1}))
        .await;
    assert_eq!(r["error"]["code"], 103);
    let r = ann
        .call("history", json!({"channel": "room:1", "limit": 1}))
        .await;
    assert_eq!(r["error"]["code"], 103);
    ann.subscribe("room:1").await;
    let r = ann
        .call("publish", json!({"channel": "room:1", "data": 1}))
        .await;
    assert_eq!(r["publish"], json!({}));
    let r = ann
        .call("history", json!({"channel": "room:1", "limit": 1}))
        .await;
    assert_eq!(r["history"]["offset"], 1);
    let r = ann.call("presence", json!({"channel": "room:1"})).await;
    assert_eq!(r["error"]["code"], 103, "presence not granted");
    // User-limited channels: only the users listed after '#'.
    let r = ann
        .call("subscribe", json!({"channel": "room:dm#ann,bo"}))
        .await;
    assert!(r.get("subscribe").is_some(), "{r}");
    let (mut cy, _) = connect_with(&server, &conn("cy")).await.unwrap();
    let r = cy
        .call("subscribe", json!({"channel": "room:dm#ann,bo"}))
        .await;
    assert_eq!(r["error"]["code"], 103);
    // Without allow_user_limited_channels a '#' channel is refused, even to a listed user and
    // in a namespace open to every client.
    let r = ann
        .call("subscribe", json!({"channel": "hall:dm#ann,bo"}))
        .await;
    assert_eq!(r["error"]["code"], 103, "{r}");
    let r = ann
        .call("subscribe", json!({"channel": "hall:lobby"}))
        .await;
    assert!(r.get("subscribe").is_some(), "{r}");
    server.stop().await;
}

#[tokio::test]
async fn limits_refuse_the_excess_and_spare_the_rest() {
    let server = TestServer::with(|c| {
        c.token_hmac_secret = Some("s".into());
        c.user_connection_limit = 2;
        c.client_channel_limit = 2;
        c.channel_max_length = 16;
        open_channels(c);
    })
    .await;
    let token = sign_hmac("s", &json!({"sub": "dee"})).unwrap();
    let (mut first, _) = connect_with(&server, &token).await.unwrap();
    let (_second, _) = connect_with(&server, &token).await.unwrap();
    assert_eq!(connect_with(&server, &token).await.err(), Some(3504));
    first.subscribe("a").await;
    first.subscribe("b").await;
    let r = first.call("subscribe", json!({"channel": "c"})).await;
    assert_eq!(r["error"]["code"], 106);
    let r = first
        .call("subscribe", json!({"channel": "x".repeat(17)}))
        .await;
    assert_eq!(r["error"]["code"], 107);
    let r = first
        .call("rpc", json!({"method": "echo", "data": "ok"}))
        .await;
    assert_eq!(r["rpc"]["data"], "ok");
    server.stop().await;
}

#[tokio::test]
async fn a_command_flood_is_cut_off_without_hurting_others() {
    let server = TestServer::with(|c| {
        c.client_command_rate = 50;
        c.client_command_burst = 100;
        c.max_message_size = 1024 * 1024;
    })
    .await;
    let mut calm = server.client().await;
    calm.subscribe("calm").await;
    let mut flooder = server.client().await;
    let flood: Vec<String> = (0..2000)
        .map(|i| json!({"id": i + 10, "rpc": {"method": "echo", "data": i}}).to_string())
        .collect();
    flooder.send_raw(&flood.join("\n")).await;
    // The flooder gets its burst answered, then error 111, then the 3013 disconnect.
    let (mut answered, mut refused) = (0, 0);
    let code = loop {
        match flooder.next_event().await {
            Event::Message(m) if m.get("rpc").is_some() => answered += 1,
            Event::Message(m) if m["error"]["code"] == 111 => refused += 1,
            Event::Message(_) => {}
            Event::Closed(code, _) => break code,
            Event::Dropped => panic!("dropped without a close frame"),
        }
    };
    assert_eq!(code, 3013);
    assert!((100..=110).contains(&answered), "answered {answered}");
    assert!(refused > 0);
    // Meanwhile the calm client got every answer and every publication.
    for n in 0..40 {
        let r = calm.call("rpc", json!({"method": "echo", "data": n})).await;
        assert_eq!(r["rpc"]["data"], n);
        server
            .api("publish", json!({"channel": "calm", "data": n}))
            .await;
        assert_eq!(calm.next_publication().await["pub"]["data"], n);
    }
    server.stop().await;
}

#[tokio::test]
async fn origins_and_connection_rate_are_checked_before_the_upgrade() {
    let server = TestServer::with(|c| {
        c.allowed_origins = vec!["https://*.example.com".into()];
        c.connection_rate_per_ip = 2;
    })
    .await;
    let upgrade = |origin: &str| {
        format!(
            "GET /connection/websocket HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: {origin}\r\n\r\n"
        )
    };
    let (status, body) = http_raw_head(server.addr, &upgrade("https://evil.test")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("origin not allowed"));
    // Burst of 4 allowed per address, then 429.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(
            http_raw_head(server.addr, &upgrade("https://app.example.com"))
                .await
                .0,
        );
    }
    assert_eq!(&statuses[..3], &[101, 101, 101], "{statuses:?}");
    assert_eq!(statuses[5], 429, "{statuses:?}");
    server.stop().await;
}

/// Sends a request and reads only the response head (and a JSON body if any), not waiting for
/// the connection to close (an upgraded socket stays open).
async fn http_raw_head(addr: std::net::SocketAddr, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut text = String::new();
    while !text.contains("\r\n\r\n") || (text.contains("application/json") && !text.ends_with('}'))
    {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, text)
}

#[tokio::test]
async fn api_on_its_own_listener() {
    let main = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (main_addr, api_addr) = (main.local_addr().unwrap(), api.local_addr().unwrap());
    let dir = temp_dir();
    let config = switchboard::Config {
        api_port: Some(api_addr.port()),
        data_dir: dir.clone(),
        ..Default::default()
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(switchboard::run_with(
        config,
        switchboard::Listeners {
            main,
            api: Some(api),
        },
        shutdown.clone(),
    ));
    let (status, _) = api_call(main_addr, "info", "{}", None).await;
    assert_eq!(status, 404, "no API on the public listener");
    let (status, reply) = api_call(api_addr, "info", "{}", None).await;
    assert_eq!(status, 200);
    assert!(reply["result"]["nodes"].is_array());
    // Clients still connect on the main listener.
    let mut c = Client::open(&format!("ws://{main_addr}/connection/websocket")).await;
    assert!(c.connect(json!({})).await["connect"].is_object());
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// A TLS connection to `server`, trusting the test certificate, handshake done.
async fn tls_connect(
    server: &TestServer,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    let pem = std::fs::read(fixture("tls_cert.pem")).unwrap();
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    for cert in tokio_rustls::rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls = tokio_rustls::rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.expect("TLS handshake")
}

#[tokio::test]
async fn tls_listener_serves_wss() {
    let server = TestServer::with(|c| {
        c.tls_cert = Some(fixture("tls_cert.pem"));
        c.tls_key = Some(fixture("tls_key.pem"));
    })
    .await;
    let stream = tls_connect(&server).await;
    let url = format!(
        "wss://localhost:{}/connection/websocket",
        server.addr.port()
    );
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    use futures_util::{SinkExt, StreamExt};
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        r#"{"id":1,"connect":{}}"#,
    ))
    .await
    .unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    let reply: Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    assert!(reply["connect"]["client"].is_string(), "{reply}");
    server.stop().await;
}

#[tokio::test]
async fn anonymous_users_get_only_what_is_granted_to_them() {
    let server = TestServer::with(|c| {
        c.token_hmac_secret = Some("s".into());
        c.insecure = true; // anonymous connections allowed, permissions still from config
        c.namespace = vec![
            Namespace {
                name: "open".into(),
                allow_subscribe_for_client: Some(true),
                allow_subscribe_for_anonymous: Some(true),
                allow_publish_for_client: Some(true),
                allow_publish_for_anonymous: Some(false),
                ..Default::default()
            },
            Namespace {
                name: "members".into(),
                allow_subscribe_for_client: Some(true),
                allow_subscribe_for_anonymous: Some(false),
                ..Default::default()
            },
        ];
    })
    .await;
    let mut anon = server.client().await;
    anon.subscribe("open:x").await;
    let r = anon
        .call("subscribe", json!({"channel": "members:x"}))
        .await;
    assert_eq!(r["error"]["code"], 103);
    let r = anon
        .call("publish", json!({"channel": "open:x", "data": 1}))
        .await;
    assert_eq!(r["error"]["code"], 103, "anonymous publishing not granted");
    // A user with a token may publish without subscribing (allow_publish_for_client).
    let (mut user, _) = connect_with(&server, &sign_hmac("s", &json!({"sub": "u"})).unwrap())
        .await
        .unwrap();
    let r = user
        .call("subscribe", json!({"channel": "members:x"}))
        .await;
    assert!(r.get("subscribe").is_some(), "{r}");
    let r = user
        .call("publish", json!({"channel": "open:x", "data": 2}))
        .await;
    assert_eq!(r["publish"], json!({}));
    assert_eq!(anon.next_publication().await["pub"]["data"], 2);
    server.stop().await;
}

#[tokio::test]
async fn a_tls_client_silent_after_the_handshake_is_closed() {
    let server = TestServer::with(|c| {
        c.tls_cert = Some(fixture("tls_cert.pem"));
        c.tls_key = Some(fixture("tls_key.pem"));
        c.stale_timeout = 1;
    })
    .await;
    let mut stream = tls_connect(&server).await;
    // Nothing is sent: the server ends the connection (stale_timeout, 1 s) within the wait.
    use tokio::io::AsyncReadExt;
    let mut buffer = [0u8; 64];
    let ended = tokio::time::timeout(WAIT, stream.read(&mut buffer)).await;
    assert!(
        matches!(ended, Ok(Ok(0)) | Ok(Err(_))),
        "the silent connection is closed, got {ended:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_users_new_connection_closes_its_others_in_single_connection_mode() {
    let server = TestServer::with(|c| {
        c.token_hmac_secret = Some("s".into());
        c.subscribe_to_user_personal_channel = true;
        c.personal_channel_namespace = "personal".into();
        c.personal_single_connection = true;
        c.namespace = vec![Namespace {
            name: "personal".into(),
            ..Default::default()
        }];
    })
    .await;
    let ann_token = sign_hmac("s", &json!({"sub": "ann"})).unwrap();
    let bob_token = sign_hmac("s", &json!({"sub": "bob"})).unwrap();
    let (mut first, _) = connect_with(&server, &ann_token).await.unwrap();
    let (mut bob, _) = connect_with(&server, &bob_token).await.unwrap();
    let (mut second, _) = connect_with(&server, &ann_token).await.unwrap();
    assert_eq!(first.closed().await, (3504, "connection limit".into()));
    // The new connection, and other users, carry on.
    let r = second
        .call("presence_stats", json!({"channel": "personal:#ann"}))
        .await;
    assert!(r.get("error").is_none() || r["error"]["code"] == 103, "{r}");
    let (_, stats) = server
        .api("presence_stats", json!({"channel": "personal:#ann"}))
        .await;
    assert_eq!(stats["result"]["num_clients"], 1, "{stats}");
    assert!(bob.call("rpc", json!({"method": "echo", "data": 1})).await["rpc"].is_object());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_that_keeps_sending_still_reads_its_close_frame() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let server = TestServer::with(|c| {
        c.tls_cert = Some(fixture("tls_cert.pem"));
        c.tls_key = Some(fixture("tls_key.pem"));
    })
    .await;
    for _ in 0..10 {
        let stream = tls_connect(&server).await;
        let url = format!(
            "wss://localhost:{}/connection/websocket",
            server.addr.port()
        );
        let (ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
        let (mut sink, mut stream) = ws.split();
        sink.send(Message::text(r#"{"id":1,"connect":{}}"#))
            .await
            .unwrap();
        // Over the transport's hard limit (128 KiB), then frames the server will not read.
        let writer = tokio::spawn(async move {
            let _ = sink.send(Message::text("x".repeat(200 * 1024))).await;
            for _ in 0..2000 {
                if sink.send(Message::text("f".repeat(500))).await.is_err() {
                    break;
                }
            }
        });
        let code = tokio::time::timeout(WAIT, async {
            while let Some(message) = stream.next().await {
                match message {
                    Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                    Ok(_) => continue,
                    Err(_) => return None,
                }
            }
            None
        })
        .await
        .expect("the connection ends in time");
        assert_eq!(code, Some(1009));
        let _ = writer.await;
    }
    server.stop().await;
}
