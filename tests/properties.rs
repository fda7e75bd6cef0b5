//! Property tests over the decoders a client or a backend reaches: the client frame decoder, token
//! verification, configuration loading and the server API's request bodies. They call the same
//! entry points as the cargo-fuzz targets in `fuzz/`, on stable and inside `cargo test`, with
//! few enough cases (256 each) to stay fast; the fuzzers search longer (RELIABILITY.md).

use std::sync::LazyLock;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use serde_json::{json, Value};
use switchboard::auth::{sign_hmac, unix_now, TokenError, TokenVerifier};
use switchboard::engine::idempotency::MAX_KEY_LENGTH;
use switchboard::http::api::{parse_batch, parse_call, ApiCall, ApiError, MAX_BATCH_COMMANDS};
use switchboard::http::MAX_GLOB_LENGTH;
use switchboard::protocol::{decode_frame, Request};
use switchboard::Config;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        // A failing case is reported with its seed; no files are written into the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Text that looks like JSON often enough to get past the first byte of the parser.
fn json_ish() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[{}\\[\\]\":,. 0-9a-z_\\-\\\\\n\t]{0,200}",
        json_value().prop_map(|v| v.to_string()),
    ]
}

/// Compact JSON text of `value`, as a client would send it.
fn text(value: &Value) -> String {
    serde_json::to_string(value).expect("a Value serializes")
}

// ---------------------------------------------------------------------------------------------
// The client frame decoder.

/// One valid client command with what decoding it must give back.
#[derive(Debug, Clone)]
struct Sent {
    id: u32,
    method: &'static str,
    channel: Option<String>,
    data: Option<Value>,
}

impl Sent {
    fn json(&self) -> Value {
        let mut body = serde_json::Map::new();
        if let Some(channel) = &self.channel {
            body.insert("channel".into(), Value::from(channel.clone()));
        }
        if let Some(data) = &self.data {
            body.insert("data".into(), data.clone());
        }
        let mut command = serde_json::Map::new();
        if self.id != 0 {
            command.insert("id".into(), Value::from(self.id));
        }
        command.insert(self.method.into(), Value::Object(body));
        Value::Object(command)
    }
}

fn sent_command() -> impl Strategy<Value = Sent> {
    let channel_methods = prop::sample::select(vec![
        "subscribe",
        "unsubscribe",
        "presence",
        "presence_stats",
        "history",
        "sub_refresh",
    ]);
    prop_oneof![
        (1..=u32::MAX, channel_methods, any::<String>()).prop_map(|(id, method, channel)| Sent {
            id,
            method,
            channel: Some(channel),
            data: None,
        }),
        (1..=u32::MAX, any::<String>(), json_value()).prop_map(|(id, channel, data)| Sent {
            id,
            method: "publish",
            channel: Some(channel),
            data: Some(data),
        }),
        (1..=u32::MAX, json_value()).prop_map(|(id, data)| Sent {
            id,
            method: "rpc",
            channel: None,
            data: Some(data),
        }),
        (1..=u32::MAX, json_value()).prop_map(|(id, data)| Sent {
            id,
            method: "connect",
            channel: None,
            data: Some(data),
        }),
        json_value().prop_map(|data| Sent {
            id: 0,
            method: "send",
            channel: None,
            data: Some(data),
        }),
    ]
}

/// Checks that `request` is what `sent` asked for.
fn check_request(sent: &Sent, request: Request) -> Result<(), TestCaseError> {
    prop_assert_eq!(request.name(), sent.method);
    prop_assert_eq!(request.channel(), sent.channel.as_deref());
    let data = match request {
        Request::Publish(r) => r.data,
        Request::Rpc(r) => r.data,
        Request::Connect(r) => r.data,
        _ => None,
    };
    if sent.method != "send" {
        // Payloads are kept byte for byte as the client wrote them; `"data": null` reads as no
        // data (serde's `Option`), where Centrifugo would keep a raw `null`.
        let expected = sent.data.as_ref().filter(|d| !d.is_null()).map(text);
        prop_assert_eq!(data.map(|d| d.get().to_owned()), expected);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_frame_decodes_without_panicking(frame in json_ish()) {
        for command in decode_frame(&frame).flatten() {
            let request = command.request();
            let _ = (request.name(), request.channel());
        }
    }

    #[test]
    fn valid_commands_round_trip(sent in sent_command()) {
        let line = text(&sent.json());
        let mut commands = decode_frame(&line);
        let command = commands.next().expect("one line").expect("a valid command");
        prop_assert!(commands.next().is_none());
        prop_assert_eq!(command.id, sent.id);
        check_request(&sent, command.request())?;
    }

    #[test]
    fn batched_commands_decode_in_order(
        sent in prop::collection::vec(sent_command(), 1..8),
        blank in prop::collection::vec(prop::sample::select(vec!["", " ", "\t", "\r"]), 8),
        trailing_newline in any::<bool>(),
    ) {
        // Blank lines anywhere are skipped; one command per line otherwise.
        let mut frame = String::new();
        for (i, command) in sent.iter().enumerate() {
            frame.push_str(&text(&command.json()));
            frame.push('\n');
            frame.push_str(blank[i]);
            if !blank[i].is_empty() {
                frame.push('\n');
            }
        }
        if !trailing_newline {
            frame.pop();
        }
        let decoded: Vec<_> = decode_frame(&frame).collect();
        prop_assert_eq!(decoded.len(), sent.len());
        for (sent, command) in sent.iter().zip(decoded) {
            let command = command.expect("a valid command");
            prop_assert_eq!(command.id, sent.id);
            check_request(sent, command.request())?;
        }
    }

    #[test]
    fn a_bad_line_fails_alone(sent in sent_command(), garbage in "[^\n]{0,40}") {
        prop_assume!(serde_json::from_str::<Value>(&garbage).is_err());
        let frame = format!("{garbage}\n{}", text(&sent.json()));
        let decoded: Vec<_> = decode_frame(&frame).collect();
        let Some((last, rest)) = decoded.split_last() else {
            return Err(TestCaseError::fail("nothing decoded"));
        };
        prop_assert!(rest.iter().all(Result::is_err));
        prop_assert!(last.is_ok());
    }

    #[test]
    fn deeply_nested_payloads_neither_panic_nor_overflow(depth in 1usize..20_000) {
        // Raw payloads are skipped over without recursion; the command's own fields are shallow.
        let data = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let frame = format!("{{\"id\":1,\"publish\":{{\"channel\":\"c\",\"data\":{data}}}}}");
        let command = decode_frame(&frame).next().expect("one line");
        match command.map(|c| c.request()) {
            Ok(Request::Publish(publish)) => {
                prop_assert_eq!(publish.data.map(|d| d.get().len()), Some(2 * depth));
            }
            other => return Err(TestCaseError::fail(format!("{other:?}"))),
        }
        let unbalanced = format!("{{\"id\":1,\"rpc\":{{\"data\":{}}}}}", "{\"a\":".repeat(depth));
        prop_assert!(decode_frame(&unbalanced).next().expect("one line").is_err());
    }
}

// ---------------------------------------------------------------------------------------------
// The Protobuf frame decoder.

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_protobuf_frame_decodes_without_panicking(frame in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut failed = false;
        for command in switchboard::protocol::protobuf::decode_frame(frame.into()) {
            prop_assert!(!failed, "a command after an error");
            match command {
                Ok(command) => {
                    let request = command.request();
                    let _ = (request.name(), request.channel());
                }
                Err(_) => failed = true,
            }
        }
    }

    #[test]
    fn protobuf_publishes_round_trip_in_order(
        sent in prop::collection::vec((1u32.., "[a-z:]{1,12}", prop::collection::vec(any::<u8>(), 0..64)), 1..8),
    ) {
        use switchboard_proto as pb;
        let commands: Vec<pb::Command> = sent
            .iter()
            .map(|(id, channel, data)| pb::Command {
                id: *id,
                publish: Some(pb::PublishRequest {
                    channel: channel.clone(),
                    data: data.clone().into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        let frame = pb::encode_frame(&commands);
        let decoded: Vec<_> = switchboard::protocol::protobuf::decode_frame(frame.into()).collect();
        prop_assert_eq!(decoded.len(), sent.len());
        for ((id, channel, data), command) in sent.iter().zip(decoded) {
            let command = command.expect("a valid command");
            prop_assert_eq!(command.id, *id);
            let Request::Publish(publish) = command.request() else {
                return Err(TestCaseError::fail("not a publish"));
            };
            prop_assert_eq!(&publish.channel, channel);
            // Any bytes survive: JSON as its text, others as a binary payload.
            let publication = switchboard::protocol::Publication {
                binary: publish.binary,
                ..switchboard::protocol::Publication::new(
                    publish.data.unwrap_or_else(switchboard::protocol::null_payload),
                )
            };
            if data.is_empty() {
                prop_assert_eq!(publication.data.get(), "null");
            } else if publication.binary {
                prop_assert_eq!(&publication.data_bytes()[..], &data[..]);
            } else {
                // JSON text, possibly without raw newlines.
                let text: Vec<u8> = data.iter().copied().filter(|b| *b != b'\n' && *b != b'\r').collect();
                prop_assert_eq!(publication.data.get().as_bytes(), &text[..]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Token verification.

const SECRET: &str = "property-secret";

static VERIFIER: LazyLock<TokenVerifier> = LazyLock::new(|| TokenVerifier::hmac(SECRET));

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn claims() -> impl Strategy<Value = Value> {
    (
        any::<String>(),
        prop::option::of(unix_now() + 60..u64::MAX),
        prop::option::of(json_value()),
        prop::collection::vec(any::<String>(), 0..3),
    )
        .prop_map(|(sub, exp, info, channels)| {
            let mut claims = json!({ "sub": sub, "channel": "c", "channels": channels });
            if let Some(exp) = exp {
                claims["exp"] = exp.into();
            }
            if let Some(info) = info {
                claims["info"] = info;
            }
            claims
        })
}

/// Whether either kind of token check accepts `token`.
fn accepted(token: &str) -> bool {
    let connection = VERIFIER.verify_connection(token);
    let subscription = VERIFIER.verify_subscription(token);
    connection.is_ok() || subscription.is_ok()
}

/// Ways to damage a token: one character replaced, inserted or removed, or a cut.
#[derive(Debug, Clone)]
enum Mangle {
    Replace(usize, char),
    Insert(usize, char),
    Remove(usize),
    Truncate(usize),
}

fn mangle() -> impl Strategy<Value = Mangle> {
    let char = prop_oneof![
        prop::sample::select(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/"
                .chars()
                .collect::<Vec<_>>()
        ),
        any::<char>(),
    ];
    prop_oneof![
        (any::<usize>(), char.clone()).prop_map(|(at, c)| Mangle::Replace(at, c)),
        (any::<usize>(), char).prop_map(|(at, c)| Mangle::Insert(at, c)),
        any::<usize>().prop_map(Mangle::Remove),
        any::<usize>().prop_map(Mangle::Truncate),
    ]
}

fn apply(token: &str, mangle: &Mangle) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    let len = chars.len();
    match *mangle {
        Mangle::Replace(at, c) => chars[at % len] = c,
        Mangle::Insert(at, c) => chars.insert(at % (len + 1), c),
        Mangle::Remove(at) => {
            chars.remove(at % len);
        }
        Mangle::Truncate(at) => chars.truncate(at % len),
    }
    chars.into_iter().collect()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_string_is_refused_without_panicking(token in json_ish()) {
        prop_assert!(!accepted(&token));
    }

    #[test]
    fn jwt_shaped_strings_are_refused(
        header in prop_oneof![
            json_value(),
            prop::sample::select(vec!["HS256", "HS384", "HS512", "none", "None", "RS256", "ES256", "EdDSA", ""])
                .prop_map(|alg| json!({ "alg": alg, "typ": "JWT" })),
        ],
        claims in prop_oneof![claims(), json_value()],
        signature in prop::collection::vec(any::<u8>(), 0..80),
    ) {
        // Well-formed pieces with a signature that is not the key's.
        let token = format!("{}.{}.{}", b64(text(&header).as_bytes()), b64(text(&claims).as_bytes()), b64(&signature));
        prop_assert!(!accepted(&token));
    }

    #[test]
    fn tokens_signed_with_the_key_are_accepted_and_mangled_ones_refused(
        claims in claims(),
        mangle in mangle(),
    ) {
        let token = sign_hmac(SECRET, &claims).expect("signs");
        let connection = VERIFIER.verify_connection(&token).expect("a valid connection token");
        prop_assert_eq!(&connection.sub, claims["sub"].as_str().expect("sub"));
        prop_assert!(VERIFIER.verify_subscription(&token).is_ok());
        let mangled = apply(&token, &mangle);
        prop_assume!(mangled != token);
        prop_assert!(!accepted(&mangled), "accepted {:?} ({:?})", mangled, mangle);
    }

    #[test]
    fn tokens_signed_with_another_key_or_algorithm_are_refused(
        claims in claims(),
        secret in any::<String>(),
        alg in prop::sample::select(vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512]),
    ) {
        prop_assume!(secret != SECRET);
        let other = jsonwebtoken::encode(&Header::new(alg), &claims, &EncodingKey::from_secret(secret.as_bytes()))
            .expect("signs");
        prop_assert!(!accepted(&other));
        // The right key with every HMAC size passes; only the key decides.
        let right = jsonwebtoken::encode(&Header::new(alg), &claims, &EncodingKey::from_secret(SECRET.as_bytes()))
            .expect("signs");
        prop_assert!(accepted(&right));
    }

    #[test]
    fn expired_tokens_are_refused_as_expired(claims in claims(), ago in 1u64..1_000_000) {
        let mut claims = claims;
        claims["exp"] = (unix_now() - ago).into();
        let token = sign_hmac(SECRET, &claims).expect("signs");
        prop_assert_eq!(VERIFIER.verify_connection(&token).err(), Some(TokenError::Expired));
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration loading.

/// One TOML line for a configuration field, with a value of the right type or not.
fn config_line() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "address",
        "port",
        "api_key",
        "insecure",
        "ping_interval",
        "pong_timeout",
        "max_message_size",
        "client_queue_max_bytes",
        "history_storage",
        "history_durability",
        "history_size",
        "max_connections",
        "api_address",
        "tls_cert",
        "allowed_origins",
        "redis",
        "subscribe_to_user_personal_channel",
        "personal_channel_namespace",
        "token_hmac_secret",
        "name",
        "presence",
        "unknown_field",
    ]);
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (0u64..300).prop_map(|n| n.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        any::<String>().prop_map(|s| Value::from(s).to_string()),
        prop::sample::select(vec![
            "\"0.0.0.0\"",
            "\"::1\"",
            "\"127.0.0.1\"",
            "\"memory\"",
            "\"sqlite\"",
            "\"full\"",
            "\"normal\"",
            "[]",
            "[\"redis://x\"]",
            "{}",
            "1e400",
            "-0",
            "0x10",
            "1979-05-27",
        ])
        .prop_map(String::from),
    ];
    (key, value).prop_map(|(key, value)| format!("{key} = {value}"))
}

/// A namespace table, valid or not.
fn namespace_table() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just(String::new()), "[a-z:]{0,6}".prop_map(String::from)],
        any::<Option<bool>>(),
        prop::option::of(any::<i64>()),
    )
        .prop_map(|(name, presence, history_size)| {
            let mut table = format!("[[namespace]]\nname = {}\n", Value::from(name));
            if let Some(presence) = presence {
                table.push_str(&format!("presence = {presence}\n"));
            }
            if let Some(size) = history_size {
                table.push_str(&format!("history_size = {size}\n"));
            }
            table
        })
}

fn config_text() -> impl Strategy<Value = String> {
    prop_oneof![
        json_ish(),
        (
            prop::collection::vec(config_line(), 0..10),
            prop::option::of("\\[channel\\]\n(name = \"x\"\n)?presence = (true|false)"),
            prop::collection::vec(namespace_table(), 0..4),
        )
            .prop_map(|(lines, channel, namespaces)| {
                let mut text = lines.join("\n");
                text.push('\n');
                if let Some(channel) = channel {
                    text.push_str(&channel);
                    text.push('\n');
                }
                text.push_str(&namespaces.concat());
                text
            }),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn config_text_loads_or_fails_without_panicking(text in config_text()) {
        let Ok(config) = toml::from_str::<Config>(&text) else {
            return Ok(());
        };
        if config.validate().is_ok() {
            // What validation promises the rest of the server.
            prop_assert!(config.ping_interval > 0 && config.pong_timeout > 0);
            prop_assert!(config.max_message_size >= 128);
            prop_assert!(config.client_queue_max_bytes >= config.max_message_size);
            prop_assert!(config.max_connections != Some(0));
            prop_assert!(config.channel.name.is_empty());
            prop_assert!(config.namespace.iter().all(|ns| !ns.name.is_empty() && !ns.name.contains(':')));
            prop_assert!(config.address.is_loopback() || config.insecure
                || (config.verifies_tokens() && config.api_key.is_some()));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server API request bodies.

const METHODS: &[&str] = &[
    "publish",
    "broadcast",
    "subscribe",
    "unsubscribe",
    "disconnect",
    "refresh",
    "presence",
    "presence_stats",
    "history",
    "history_remove",
    "channels",
    "info",
    "map_publish",
    "map_remove",
    "map_read_state",
    "map_read_stream",
    "map_stats",
    "map_clear",
];

fn method() -> impl Strategy<Value = &'static str> {
    prop::sample::select(METHODS.to_vec())
}

/// A body that is valid for `method`, with arbitrary values where the method takes any.
fn valid_body(method: &'static str) -> BoxedStrategy<Value> {
    let s = any::<String>;
    match method {
        // Idempotency keys of up to 64 characters: at most 256 bytes.
        "publish" => (s(), json_value(), any::<bool>(), prop::option::of("\\PC{0,64}"))
            .prop_map(|(channel, data, skip_history, key)| {
                json!({
                    "channel": channel, "data": data, "skip_history": skip_history,
                    "idempotency_key": key,
                })
            })
            .boxed(),
        "broadcast" => (prop::collection::vec(s(), 0..4), json_value(), prop::option::of("\\PC{0,64}"))
            .prop_map(|(channels, data, key)| {
                json!({ "channels": channels, "data": data, "idempotency_key": key })
            })
            .boxed(),
        "subscribe" => (s(), s(), prop::option::of(json_value()))
            .prop_map(|(user, channel, info)| json!({ "user": user, "channel": channel, "info": info }))
            .boxed(),
        "unsubscribe" => (s(), s())
            .prop_map(|(user, channel)| json!({ "user": user, "channel": channel }))
            .boxed(),
        "disconnect" => (s(), any::<u16>(), s())
            .prop_map(|(user, code, reason)| {
                json!({ "user": user, "disconnect": { "code": code, "reason": reason } })
            })
            .boxed(),
        "refresh" => (s(), any::<bool>(), prop::option::of(any::<u64>()), prop::option::of(json_value()))
            .prop_map(|(user, expired, expire_at, info)| {
                json!({ "user": user, "expired": expired, "expire_at": expire_at, "info": info })
            })
            .boxed(),
        "history" => (s(), any::<i32>(), any::<u64>(), s(), any::<bool>())
            .prop_map(|(channel, limit, offset, epoch, reverse)| {
                json!({
                    "channel": channel, "limit": limit, "reverse": reverse,
                    "since": { "offset": offset, "epoch": epoch },
                })
            })
            .boxed(),
        "channels" => "[a-z*?]{0,20}".prop_map(|pattern| json!({ "pattern": pattern })).boxed(),
        "map_publish" => (s(), s(), json_value())
            .prop_map(|(channel, key, data)| json!({ "channel": channel, "key": key, "data": data }))
            .boxed(),
        "map_remove" => (s(), s())
            .prop_map(|(channel, key)| json!({ "channel": channel, "key": key }))
            .boxed(),
        "map_read_state" => (s(), s(), any::<i32>())
            .prop_map(|(channel, cursor, limit)| {
                json!({ "channel": channel, "cursor": cursor, "limit": limit })
            })
            .boxed(),
        "map_read_stream" => (s(), any::<i32>(), any::<u64>(), s(), any::<bool>())
            .prop_map(|(channel, limit, since_offset, since_epoch, reverse)| {
                json!({
                    "channel": channel, "limit": limit, "since_offset": since_offset,
                    "since_epoch": since_epoch, "reverse": reverse,
                })
            })
            .boxed(),
        "info" => Just(json!({})).boxed(),
        _ => s().prop_map(|channel| json!({ "channel": channel })).boxed(),
    }
}

fn method_and_valid_body() -> impl Strategy<Value = (&'static str, Value)> {
    method().prop_flat_map(|method| valid_body(method).prop_map(move |body| (method, body)))
}

fn is_method(call: &ApiCall, method: &str) -> bool {
    let name = match call {
        ApiCall::Publish(_) => "publish",
        ApiCall::Broadcast(_) => "broadcast",
        ApiCall::Subscribe(_) => "subscribe",
        ApiCall::Unsubscribe(_) => "unsubscribe",
        ApiCall::Disconnect(_) => "disconnect",
        ApiCall::Refresh(_) => "refresh",
        ApiCall::Presence(_) => "presence",
        ApiCall::PresenceStats(_) => "presence_stats",
        ApiCall::History(_) => "history",
        ApiCall::HistoryRemove(_) => "history_remove",
        ApiCall::Channels(_) => "channels",
        ApiCall::Info => "info",
        ApiCall::Map(call) => call.method(),
    };
    name == method
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_body_parses_or_fails_without_panicking(
        method in method(),
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200),
            json_ish().prop_map(String::into_bytes),
        ],
    ) {
        match parse_call(method, &body) {
            Ok(call) => prop_assert!(is_method(&call, method)),
            Err(error) => prop_assert!(matches!(error, ApiError::BadRequest(_)), "{error:?}"),
        }
        if let Ok(batch) = parse_batch(&body) {
            for (method, params) in batch.commands().flatten() {
                let _ = parse_call(method, params.as_bytes());
            }
        }
    }

    #[test]
    fn valid_bodies_parse_as_their_method((method, body) in method_and_valid_body()) {
        let call = parse_call(method, text(&body).as_bytes());
        prop_assert!(matches!(&call, Ok(call) if is_method(call, method)), "{method} {body}");
    }

    #[test]
    fn unknown_methods_are_not_found(method in "[a-z_]{0,16}", body in json_ish()) {
        prop_assume!(!METHODS.contains(&method.as_str()));
        prop_assert!(matches!(parse_call(&method, body.as_bytes()), Err(ApiError::MethodNotFound)));
    }

    #[test]
    fn batches_keep_their_commands_in_order_up_to_the_bound(
        commands in prop::collection::vec(method_and_valid_body(), 0..20),
    ) {
        let commands_json: Vec<Value> = commands
            .iter()
            .map(|(method, body)| Value::Object([(method.to_string(), body.clone())].into_iter().collect()))
            .collect();
        let body = json!({ "commands": commands_json });
        let batch = parse_batch(text(&body).as_bytes()).expect("a valid batch");
        let parsed: Vec<_> = batch.commands().map(|c| c.expect("a method")).collect();
        prop_assert_eq!(parsed.len(), commands.len());
        for ((method, body), (parsed_method, params)) in commands.iter().zip(parsed) {
            prop_assert_eq!(*method, parsed_method);
            prop_assert_eq!(text(body), params);
            prop_assert!(parse_call(parsed_method, params.as_bytes()).is_ok());
        }
    }

    #[test]
    fn bounds_are_refused_as_bad_requests(
        extra in 1usize..50,
        pattern_extra in 1usize..50,
        key_extra in 1usize..50,
    ) {
        let commands = vec![json!({ "info": {} }); MAX_BATCH_COMMANDS + extra];
        let batch = text(&json!({ "commands": commands }));
        prop_assert!(matches!(parse_batch(batch.as_bytes()), Err(ApiError::BadRequest(_))));
        let pattern = "*".repeat(MAX_GLOB_LENGTH + pattern_extra);
        let body = text(&json!({ "pattern": pattern }));
        prop_assert!(matches!(parse_call("channels", body.as_bytes()), Err(ApiError::BadRequest(_))));
        let key = "k".repeat(MAX_KEY_LENGTH + key_extra);
        let body = text(&json!({ "channel": "c", "data": 1, "idempotency_key": key }));
        prop_assert!(matches!(parse_call("publish", body.as_bytes()), Err(ApiError::BadRequest(_))));
        let body = text(&json!({ "channels": ["c"], "data": 1, "idempotency_key": key }));
        prop_assert!(matches!(parse_call("broadcast", body.as_bytes()), Err(ApiError::BadRequest(_))));
    }

    #[test]
    fn deeply_nested_api_data_parses_without_overflow(depth in 1usize..20_000) {
        let data = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let body = format!("{{\"channel\":\"c\",\"data\":{data}}}");
        prop_assert!(matches!(parse_call("publish", body.as_bytes()), Ok(ApiCall::Publish(_))));
        let unbalanced = format!("{{\"channel\":\"c\",\"data\":{}}}", "[".repeat(depth));
        prop_assert!(parse_call("publish", unbalanced.as_bytes()).is_err());
    }
}
