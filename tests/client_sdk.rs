//! The Rust client SDK (`switchboard-client`) against a real server in this process: every
//! command, recovery across a server restart, token refresh, terminal and reconnect codes,
//! server pings, a slow consumer, and (against a scripted fake server) the no-ping timeout and
//! the batching of commands written in one tick.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{open_channels, temp_dir, TestServer, WAIT};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard::auth::{sign_hmac, unix_now};
use switchboard::Config;
use switchboard_client::codec::{Codec, JsonCodec, ProtobufCodec};
use switchboard_client::{
    codes, Client, ClientEvent, Error, Events, HistoryOptions, State, StreamPosition,
    SubscriptionEvent, SubscriptionOptions, SubscriptionState,
};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "client-sdk-secret";

fn token(user: &str, ttl: u64) -> String {
    sign_hmac(SECRET, &json!({"sub": user, "exp": unix_now() + ttl})).unwrap()
}

fn sub_token(user: &str, channel: &str, ttl: u64) -> String {
    sign_hmac(
        SECRET,
        &json!({"sub": user, "channel": channel, "exp": unix_now() + ttl}),
    )
    .unwrap()
}

/// A fast-reconnecting client of `url`.
fn client(url: &str) -> switchboard_client::ClientBuilder {
    Client::builder(url)
        .reconnect_delay(Duration::from_millis(100), Duration::from_millis(500))
        .timeout(WAIT)
}

/// The next subscription event that `pick` accepts, within the wait.
async fn next_matching<T>(
    events: &mut Events<SubscriptionEvent>,
    mut pick: impl FnMut(SubscriptionEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            let event = events.next().await.expect("the subscription lives");
            if let Some(found) = pick(event) {
                return found;
            }
        }
    })
    .await
    .expect("the event came in time")
}

async fn next_client_matching<T>(
    events: &mut Events<ClientEvent>,
    mut pick: impl FnMut(ClientEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            let event = events.next().await.expect("the client lives");
            if let Some(found) = pick(event) {
                return found;
            }
        }
    })
    .await
    .expect("the event came in time")
}

fn publication_data(event: SubscriptionEvent) -> Option<Value> {
    match event {
        SubscriptionEvent::Publication(p) => Some(p.data),
        _ => None,
    }
}

#[tokio::test]
async fn every_command_works_against_the_server() {
    every_command_works(JsonCodec).await;
}

/// The same with Alice on the Protobuf encoding and Bob still on JSON: each reads the other's
/// publications, joins and leaves as JSON values.
#[tokio::test]
async fn every_command_works_in_protobuf_beside_a_json_client() {
    every_command_works(ProtobufCodec).await;
}

async fn every_command_works(alice_codec: impl Codec) {
    let server = TestServer::start().await;
    let alice = client(&server.ws_url())
        .name("sdk-test")
        .codec(alice_codec)
        .build();
    let bob = client(&server.ws_url()).build();
    alice.connect();
    bob.connect();
    alice.ready().await.unwrap();
    bob.ready().await.unwrap();
    assert_eq!(alice.state(), State::Connected);
    assert!(alice.client_id().is_some());

    let chat = alice
        .new_subscription("chat", SubscriptionOptions::new().join_leave(true))
        .unwrap();
    assert!(matches!(
        alice.new_subscription("chat", SubscriptionOptions::new()),
        Err(Error::DuplicateSubscription(_))
    ));
    let mut events = chat.events();
    chat.subscribe();
    let subscribed = chat.ready().await.unwrap();
    assert!(subscribed.recoverable, "history is on by default");
    assert_eq!(chat.state(), SubscriptionState::Subscribed);

    let bob_chat = bob
        .new_subscription("chat", SubscriptionOptions::new())
        .unwrap();
    bob_chat.subscribe();
    bob_chat.ready().await.unwrap();
    let bob_id = bob.client_id();
    let joined = next_matching(&mut events, |e| match e {
        SubscriptionEvent::Join(info) if Some(&info.client) == bob_id.as_ref() => Some(info),
        _ => None,
    })
    .await;
    assert_eq!(joined.user, "");

    bob.publish("chat", json!({"text": "hi"})).await.unwrap();
    let publication = next_matching(&mut events, |e| match e {
        SubscriptionEvent::Publication(p) => Some(p),
        _ => None,
    })
    .await;
    assert_eq!(publication.data, json!({"text": "hi"}));
    assert_eq!(publication.offset, 1);
    assert_eq!(
        publication.info.map(|i| i.client),
        bob.client_id(),
        "a client's publication names it"
    );

    assert_eq!(
        alice.rpc("echo", json!({"ping": 1})).await.unwrap(),
        json!({"ping": 1})
    );
    let not_available = alice.rpc("nope", json!({})).await.unwrap_err();
    assert_eq!(not_available.server_code(), Some(108));

    let presence = chat.presence().await.unwrap();
    assert_eq!(presence.len(), 2);
    let stats = chat.presence_stats().await.unwrap();
    assert_eq!(stats.num_clients, 2);

    for n in 2..=5 {
        chat.publish(json!({"n": n})).await.unwrap();
    }
    let all = chat
        .history(HistoryOptions {
            limit: -1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.publications.len(), 5);
    assert_eq!(all.offset, 5);
    let since = chat
        .history(HistoryOptions {
            limit: 2,
            since: Some(StreamPosition {
                offset: 2,
                epoch: all.epoch.clone(),
            }),
            reverse: false,
        })
        .await
        .unwrap();
    let offsets: Vec<u64> = since.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, [3, 4]);
    let newest = chat
        .history(HistoryOptions {
            limit: 2,
            reverse: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let offsets: Vec<u64> = newest.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, [5, 4]);
    let wrong_epoch = chat
        .history(HistoryOptions {
            limit: 1,
            since: Some(StreamPosition {
                offset: 1,
                epoch: "another".into(),
            }),
            reverse: false,
        })
        .await
        .unwrap_err();
    assert_eq!(wrong_epoch.server_code(), Some(112));

    // `send` has no reply; the connection stays up and usable.
    alice.send(json!({"note": 1})).await.unwrap();
    assert_eq!(alice.rpc("echo", json!(2)).await.unwrap(), json!(2));

    bob_chat.unsubscribe();
    let left = next_matching(&mut events, |e| match e {
        SubscriptionEvent::Leave(info) => Some(info),
        _ => None,
    })
    .await;
    assert_eq!(Some(left.client), bob_id);
    assert_eq!(bob_chat.state(), SubscriptionState::Unsubscribed);
    assert!(matches!(
        bob_chat.ready().await,
        Err(Error::Unsubscribed { code: 0, .. })
    ));

    // Removed, the channel can be subscribed anew.
    alice.remove_subscription(&chat);
    assert!(alice.subscription("chat").is_none());
    let again = alice
        .new_subscription("chat", SubscriptionOptions::new())
        .unwrap();
    again.subscribe();
    again.ready().await.unwrap();

    alice.disconnect();
    let err = alice.rpc("echo", json!(1)).await;
    assert!(
        matches!(
            err,
            Err(Error::Disconnected { .. } | Error::ConnectionClosed)
        ),
        "{err:?}"
    );
    assert!(matches!(
        alice.ready().await,
        Err(Error::Disconnected { code: 0, .. })
    ));
    server.stop().await;
}

#[tokio::test]
async fn a_subscription_starts_from_a_saved_position() {
    let server = TestServer::start().await;
    let mut epoch = String::new();
    for n in 1..=4 {
        let (_, body) = server
            .api("publish", json!({"channel": "saved", "data": {"n": n}}))
            .await;
        epoch = body["result"]["epoch"].as_str().unwrap().to_string();
    }
    let sdk = client(&server.ws_url()).build();
    sdk.connect();
    let saved = sdk
        .new_subscription(
            "saved",
            SubscriptionOptions::new().since(StreamPosition { offset: 2, epoch }),
        )
        .unwrap();
    let mut events = saved.events();
    saved.subscribe();
    let subscribed = saved.ready().await.unwrap();
    assert!(
        subscribed.was_recovering && subscribed.recovered,
        "{subscribed:?}"
    );
    for n in 3..=4 {
        assert_eq!(
            next_matching(&mut events, publication_data).await,
            json!({"n": n})
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn server_side_subscriptions_and_their_publications_are_client_events() {
    let server = TestServer::with(|c| {
        c.token_hmac_secret = Some(SECRET.into());
        open_channels(c);
    })
    .await;
    let alice = client(&server.ws_url()).token(token("alice", 3600)).build();
    let mut events = alice.events();
    alice.connect();
    alice.ready().await.unwrap();
    let (status, body) = server
        .api("subscribe", json!({"user": "alice", "channel": "news"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let subscribed = next_client_matching(&mut events, |e| match e {
        ClientEvent::ServerSubscribed { channel, .. } => Some(channel),
        _ => None,
    })
    .await;
    assert_eq!(subscribed, "news");
    server
        .api(
            "publish",
            json!({"channel": "news", "data": {"headline": 1}}),
        )
        .await;
    let (channel, publication) = next_client_matching(&mut events, |e| match e {
        ClientEvent::ServerPublication {
            channel,
            publication,
        } => Some((channel, publication)),
        _ => None,
    })
    .await;
    assert_eq!(channel, "news");
    assert_eq!(publication.data, json!({"headline": 1}));
    server
        .api("unsubscribe", json!({"user": "alice", "channel": "news"}))
        .await;
    let gone = next_client_matching(&mut events, |e| match e {
        ClientEvent::ServerUnsubscribed { channel } => Some(channel),
        _ => None,
    })
    .await;
    assert_eq!(gone, "news");
    server.stop().await;
}

#[tokio::test]
async fn server_side_subscriptions_recover_across_a_reconnect() {
    let server = TestServer::with(|c| {
        c.token_hmac_secret = Some(SECRET.into());
        open_channels(c);
    })
    .await;
    // The token subscribes the connection to `news` server-side at every connect.
    let token = sign_hmac(
        SECRET,
        &json!({"sub": "dan", "exp": unix_now() + 3600, "channels": ["news"]}),
    )
    .unwrap();
    let sdk = Client::builder(server.ws_url())
        .token(token)
        .reconnect_delay(Duration::from_secs(1), Duration::from_secs(2))
        .timeout(WAIT)
        .build();
    let mut events = sdk.events();
    sdk.connect();
    sdk.ready().await.unwrap();
    let first = next_client_matching(&mut events, |e| match e {
        ClientEvent::ServerSubscribed {
            channel,
            subscribed,
        } if channel == "news" => Some(subscribed),
        _ => None,
    })
    .await;
    assert!(first.recoverable, "{first:?}");
    let publication = |e| match e {
        ClientEvent::ServerPublication {
            channel,
            publication,
        } if channel == "news" => Some(publication.data),
        _ => None,
    };
    for n in 1..=2 {
        server
            .api("publish", json!({"channel": "news", "data": {"n": n}}))
            .await;
        assert_eq!(
            next_client_matching(&mut events, publication).await,
            json!({"n": n})
        );
    }
    disconnect_to_reconnect(&server, &mut events, "dan").await;
    // Published while the client waits to reconnect (at least a second).
    for n in 3..=4 {
        server
            .api("publish", json!({"channel": "news", "data": {"n": n}}))
            .await;
    }
    let again = next_client_matching(&mut events, |e| match e {
        ClientEvent::ServerSubscribed {
            channel,
            subscribed,
        } if channel == "news" => Some(subscribed),
        _ => None,
    })
    .await;
    assert!(again.was_recovering && again.recovered, "{again:?}");
    for n in 3..=4 {
        assert_eq!(
            next_client_matching(&mut events, publication).await,
            json!({"n": n})
        );
    }
    server.stop().await;
}

/// Disconnects `user`'s connections through the server API with code 4000 (reconnect) and
/// waits until the client, whose `events` these are, is reconnecting.
async fn disconnect_to_reconnect(
    server: &TestServer,
    events: &mut Events<ClientEvent>,
    user: &str,
) {
    server
        .api(
            "disconnect",
            json!({"user": user, "disconnect": {"code": 4000, "reason": "again"}}),
        )
        .await;
    next_client_matching(events, |e| match e {
        ClientEvent::Connecting { code: 4000, .. } => Some(()),
        _ => None,
    })
    .await;
}

/// Starts a server on `addr` (a port used before) over `data_dir`.
async fn server_at(addr: SocketAddr, data_dir: PathBuf) -> TestServer {
    let config = Config {
        data_dir: data_dir.clone(),
        ..Config::default()
    };
    let listener = loop {
        // The old listener's port may take a moment to be free.
        match TcpListener::bind(addr).await {
            Ok(listener) => break listener,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(switchboard::run(config, listener, shutdown.clone()));
    TestServer {
        addr,
        data_dir,
        shutdown,
        task: Some(task),
    }
}

#[tokio::test]
async fn a_subscription_recovers_everything_missed_across_a_server_restart() {
    recovers_across_a_server_restart(JsonCodec).await;
}

#[tokio::test]
async fn a_protobuf_subscription_recovers_everything_missed_across_a_server_restart() {
    recovers_across_a_server_restart(ProtobufCodec).await;
}

async fn recovers_across_a_server_restart(codec: impl Codec) {
    let addr = {
        let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
        probe.local_addr().unwrap()
    };
    let server = server_at(addr, temp_dir()).await;
    // Reconnects wait at least a second, so what is published right after the restart is
    // certainly missed.
    let sdk = Client::builder(server.ws_url())
        .reconnect_delay(Duration::from_secs(1), Duration::from_secs(2))
        .timeout(WAIT)
        .codec(codec)
        .build();
    let mut client_events = sdk.events();
    sdk.connect();
    let feed = sdk
        .new_subscription("feed", SubscriptionOptions::new())
        .unwrap();
    let mut events = feed.events();
    feed.subscribe();
    let first = feed.ready().await.unwrap();
    let epoch = first.stream_position.clone().unwrap().epoch;
    for n in 1..=3 {
        server
            .api("publish", json!({"channel": "feed", "data": {"n": n}}))
            .await;
        assert_eq!(
            next_matching(&mut events, publication_data).await,
            json!({"n": n})
        );
    }

    let data_dir = server.stop_keeping_data().await;
    let (code, _) = next_client_matching(&mut client_events, |e| match e {
        ClientEvent::Connecting { code, reason } if code != codes::CONNECT_CALLED => {
            Some((code, reason))
        }
        _ => None,
    })
    .await;
    assert_eq!(code, 3001, "a shutdown tells clients to reconnect");
    let server = server_at(addr, data_dir).await;
    for n in 4..=8 {
        let (status, body) = server
            .api("publish", json!({"channel": "feed", "data": {"n": n}}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let resubscribed = next_matching(&mut events, |e| match e {
        SubscriptionEvent::Subscribed(s) => Some(s),
        _ => None,
    })
    .await;
    assert!(resubscribed.was_recovering, "{resubscribed:?}");
    assert!(resubscribed.recovered, "{resubscribed:?}");
    assert_eq!(
        resubscribed.stream_position.unwrap().epoch,
        epoch,
        "SQLite history keeps the stream across the restart"
    );
    for n in 4..=8 {
        assert_eq!(
            next_matching(&mut events, publication_data).await,
            json!({"n": n}),
            "nothing missed, in order"
        );
    }
    server
        .api("publish", json!({"channel": "feed", "data": {"n": 9}}))
        .await;
    assert_eq!(
        next_matching(&mut events, publication_data).await,
        json!({"n": 9})
    );
    server.stop().await;
}

#[tokio::test]
async fn tokens_are_refreshed_before_they_expire_and_after_109() {
    let server = TestServer::with(|c| {
        c.token_hmac_secret = Some(SECRET.into());
        c.expired_grace = 0;
        c.ping_interval = 1;
        c.pong_timeout = 1;
    })
    .await;
    let fetched = Arc::new(AtomicUsize::new(0));
    let sub_fetched = Arc::new(AtomicUsize::new(0));
    let count = fetched.clone();
    // Connection tokens live 3 s; the first one given is already expired, so the server
    // answers 109 and the client asks the callback.
    let sdk = client(&server.ws_url())
        .token(sign_hmac(SECRET, &json!({"sub": "alice", "exp": unix_now() - 10})).unwrap())
        .token_getter(move || {
            count.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, String>(token("alice", 3)) }
        })
        .build();
    let mut client_events = sdk.events();
    sdk.connect();
    let first_error = next_client_matching(&mut client_events, |e| match e {
        ClientEvent::Error(e) => Some(e),
        _ => None,
    })
    .await;
    assert_eq!(first_error.server_code(), Some(codes::ERROR_TOKEN_EXPIRED));
    sdk.ready().await.unwrap();
    let client_id = sdk.client_id();

    let sub_count = sub_fetched.clone();
    let private = sdk
        .new_subscription(
            "private",
            SubscriptionOptions::new().token_getter(move |channel| {
                sub_count.fetch_add(1, Ordering::SeqCst);
                async move { Ok::<_, String>(sub_token("alice", &channel, 3)) }
            }),
        )
        .unwrap();
    let mut events = private.events();
    private.subscribe();
    private.ready().await.unwrap();
    while client_events.try_next().is_some() {}
    while events.try_next().is_some() {}

    // Several token lifetimes later: the same connection, still subscribed, still delivering.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(sdk.client_id(), client_id, "never reconnected");
    assert_eq!(private.state(), SubscriptionState::Subscribed);
    assert!(
        fetched.load(Ordering::SeqCst) >= 3,
        "refreshed: {fetched:?}"
    );
    assert!(
        sub_fetched.load(Ordering::SeqCst) >= 3,
        "refreshed: {sub_fetched:?}"
    );
    while let Some(event) = client_events.try_next() {
        assert!(
            !matches!(
                event,
                ClientEvent::Connecting { .. } | ClientEvent::Disconnected { .. }
            ),
            "{event:?}"
        );
    }
    while let Some(event) = events.try_next() {
        assert!(
            !matches!(
                event,
                SubscriptionEvent::Subscribing { .. } | SubscriptionEvent::Unsubscribed { .. }
            ),
            "{event:?}"
        );
    }
    server
        .api(
            "publish",
            json!({"channel": "private", "data": "still here"}),
        )
        .await;
    assert_eq!(
        next_matching(&mut events, publication_data).await,
        json!("still here")
    );
    server.stop().await;
}

#[tokio::test]
async fn an_empty_token_from_the_callback_is_unauthorized() {
    let server = TestServer::with(|c| c.token_hmac_secret = Some(SECRET.into())).await;
    let sdk = client(&server.ws_url())
        .token_getter(|| async { Ok::<_, String>(String::new()) })
        .build();
    sdk.connect();
    assert!(matches!(
        sdk.ready().await,
        Err(Error::Disconnected {
            code: codes::UNAUTHORIZED,
            ..
        })
    ));
    server.stop().await;
}

#[tokio::test]
async fn terminal_codes_stop_the_client_and_others_reconnect_it() {
    let server = TestServer::with(|c| {
        c.token_hmac_secret = Some(SECRET.into());
        open_channels(c);
    })
    .await;
    let sdk = client(&server.ws_url()).token(token("bob", 3600)).build();
    let mut events = sdk.events();
    sdk.connect();
    sdk.ready().await.unwrap();
    let room = sdk
        .new_subscription("room", SubscriptionOptions::new())
        .unwrap();
    room.subscribe();
    room.ready().await.unwrap();

    // 4000–4499 (and 3000–3499): reconnect, and the subscription comes back.
    for code in [4000u32, 3011] {
        let before = sdk.client_id();
        server
            .api(
                "disconnect",
                json!({"user": "bob", "disconnect": {"code": code, "reason": "again"}}),
            )
            .await;
        let seen = next_client_matching(&mut events, |e| match e {
            ClientEvent::Connecting { code, .. } if code != codes::CONNECT_CALLED => Some(code),
            _ => None,
        })
        .await;
        assert_eq!(seen, code);
        next_client_matching(&mut events, |e| match e {
            ClientEvent::Connected { .. } => Some(()),
            _ => None,
        })
        .await;
        assert_ne!(sdk.client_id(), before, "a new connection");
        room.ready().await.unwrap();
    }

    // The server API's default, 3503 "force disconnect", is terminal.
    server.api("disconnect", json!({"user": "bob"})).await;
    let (code, reason) = next_client_matching(&mut events, |e| match e {
        ClientEvent::Disconnected { code, reason } => Some((code, reason)),
        _ => None,
    })
    .await;
    assert_eq!((code, reason.as_str()), (3503, "force disconnect"));
    assert_eq!(sdk.state(), State::Disconnected);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(sdk.state(), State::Disconnected, "no reconnect after 3503");
    assert_eq!(room.state(), SubscriptionState::Subscribing);

    // connect() again: the subscription comes back with it.
    sdk.connect();
    sdk.ready().await.unwrap();
    room.ready().await.unwrap();

    // 4500–4999 are terminal too.
    server
        .api(
            "disconnect",
            json!({"user": "bob", "disconnect": {"code": 4501, "reason": "banned"}}),
        )
        .await;
    assert!(matches!(
        tokio::time::timeout(WAIT, async {
            loop {
                if let Err(e) = sdk.ready().await {
                    return e;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap(),
        Error::Disconnected { code: 4501, .. }
    ));
    server.stop().await;
}

#[tokio::test]
async fn a_slow_consumer_is_told_what_it_missed_and_catches_up_from_history() {
    let server = TestServer::start().await;
    let sdk = client(&server.ws_url()).event_capacity(8).build();
    sdk.connect();
    let ticks = sdk
        .new_subscription("ticks", SubscriptionOptions::new())
        .unwrap();
    let mut events = ticks.events();
    ticks.subscribe();
    ticks.ready().await.unwrap();
    // Skip the subscribing and subscribed events.
    while events.try_next().is_some() {}

    // 50 publications while the application reads nothing.
    for n in 1..=50 {
        server
            .api("publish", json!({"channel": "ticks", "data": {"n": n}}))
            .await;
    }
    assert!(
        common::eventually(|| async {
            ticks
                .history(HistoryOptions::default())
                .await
                .unwrap()
                .offset
                == 50
        })
        .await
    );
    // Let the last ones reach the client.
    assert_eq!(sdk.rpc("echo", json!(1)).await.unwrap(), json!(1));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let missed = match events.next().await.unwrap() {
        SubscriptionEvent::Lagged { missed } => missed,
        other => panic!("expected Lagged first, got {other:?}"),
    };
    assert_eq!(missed, 42, "8 kept of 50");
    let mut last_seen = 0;
    let mut kept = Vec::new();
    while let Some(event) = events.try_next() {
        if let SubscriptionEvent::Publication(p) = event {
            kept.push(p.offset);
            last_seen = p.offset;
        }
    }
    assert_eq!(
        kept,
        (43..=50).collect::<Vec<_>>(),
        "the newest ones are kept"
    );
    assert_eq!(last_seen, 50);
    // The connection never noticed, and history fills the gap for whoever needs it.
    assert_eq!(sdk.state(), State::Connected);
    let gap = ticks
        .history(HistoryOptions {
            limit: 42,
            since: Some(StreamPosition {
                offset: 0,
                epoch: ticks.ready().await.unwrap().stream_position.unwrap().epoch,
            }),
            reverse: false,
        })
        .await
        .unwrap();
    assert_eq!(gap.publications.len(), 42);
    assert_eq!(gap.publications[41].data, json!({"n": 42}));
    server.stop().await;
}

#[tokio::test]
async fn pongs_keep_the_connection_open() {
    let server = TestServer::with(|c| {
        c.ping_interval = 1;
        c.pong_timeout = 1;
    })
    .await;
    let sdk = client(&server.ws_url()).build();
    let mut events = sdk.events();
    sdk.connect();
    sdk.ready().await.unwrap();
    let id = sdk.client_id();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(sdk.client_id(), id);
    while let Some(event) = events.try_next() {
        assert!(
            !matches!(event, ClientEvent::Connecting { code, .. } if code != codes::CONNECT_CALLED),
            "{event:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn wss_with_a_private_root_certificate() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let server = TestServer::with(|c| {
        c.tls_cert = Some(fixtures.join("tls_cert.pem"));
        c.tls_key = Some(fixtures.join("tls_key.pem"));
    })
    .await;
    let url = format!(
        "wss://localhost:{}/connection/websocket",
        server.addr.port()
    );
    let pem = std::fs::read(fixtures.join("tls_cert.pem")).unwrap();
    let sdk = client(&url)
        .add_root_certificates_pem(&pem)
        .unwrap()
        .build();
    sdk.connect();
    sdk.ready().await.unwrap();
    assert_eq!(
        sdk.rpc("echo", json!("over TLS")).await.unwrap(),
        json!("over TLS")
    );

    // Without trusting the certificate, the handshake fails and the client keeps retrying.
    let untrusting = client(&url).build();
    let mut events = untrusting.events();
    untrusting.connect();
    let error = next_client_matching(&mut events, |e| match e {
        ClientEvent::Error(Error::Transport(e)) => Some(e),
        _ => None,
    })
    .await;
    assert!(error.contains("TLS"), "{error}");
    assert_eq!(untrusting.state(), State::Connecting);
    assert!(Client::builder(&url)
        .add_root_certificates_pem(b"not a certificate")
        .is_err());
    server.stop().await;
}

#[tokio::test]
async fn connect_data_name_version_and_emulated_headers_reach_the_connect_proxy() {
    use axum::routing::post;
    type Seen = Arc<std::sync::Mutex<Vec<(Value, Option<String>)>>>;
    let seen = Seen::default();
    let recorded = seen.clone();
    let app = axum::Router::new().route(
        "/connect",
        post(
            move |headers: axum::http::HeaderMap, axum::Json(body): axum::Json<Value>| {
                let recorded = recorded.clone();
                async move {
                    let token = headers
                        .get("x-session")
                        .and_then(|v| v.to_str().ok())
                        .map(String::from);
                    recorded.lock().unwrap().push((body, token.clone()));
                    axum::Json(match token {
                        Some(user) => json!({"result": {"user": user, "data": {"welcome": true}}}),
                        None => json!({"disconnect": {"code": 4501, "reason": "who are you"}}),
                    })
                }
            },
        ),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let server = TestServer::with(move |c| {
        c.proxy_connect_endpoint = Some(format!("http://{backend}/connect"));
        c.proxy_emulated_headers = vec!["X-Session".into()];
    })
    .await;
    let sdk = client(&server.ws_url())
        .name("sdk-test")
        .version("9.9")
        .data(json!({"hello": 1}))
        .header("X-Session", "carol")
        .build();
    let mut events = sdk.events();
    sdk.connect();
    sdk.ready().await.unwrap();
    let data = next_client_matching(&mut events, |e| match e {
        ClientEvent::Connected { data, .. } => Some(data),
        _ => None,
    })
    .await;
    assert_eq!(data, Some(json!({"welcome": true})));
    let (body, header) = seen.lock().unwrap()[0].clone();
    assert_eq!(header.as_deref(), Some("carol"));
    assert_eq!(body["name"], "sdk-test");
    assert_eq!(body["version"], "9.9");
    assert_eq!(body["data"], json!({"hello": 1}));

    // Without the header the backend refuses with 4501: terminal.
    let stranger = client(&server.ws_url()).build();
    stranger.connect();
    assert!(matches!(
        stranger.ready().await,
        Err(Error::Disconnected { code: 4501, .. })
    ));
    server.stop().await;
}

/// A fake server on a free port: each connection is handed to `script`.
async fn fake_server<F, Fut>(script: F) -> String
where
    F: Fn(tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            if let Ok(ws) = tokio_tungstenite::accept_async(stream).await {
                tokio::spawn(script(ws));
            }
        }
    });
    format!("ws://{addr}/connection/websocket")
}

#[tokio::test]
async fn a_server_that_stops_pinging_is_left_and_reconnected_to() {
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    let url = fake_server(move |mut ws| {
        count.fetch_add(1, Ordering::SeqCst);
        async move {
            // Answers connect announcing pings every second, then never pings.
            if let Some(Ok(Message::Text(_))) = ws.next().await {
                let _ = ws
                    .send(Message::text(
                        r#"{"id":1,"connect":{"client":"c1","ping":1,"pong":true}}"#,
                    ))
                    .await;
            }
            while ws.next().await.is_some() {}
        }
    })
    .await;
    let sdk = client(&url)
        .max_server_ping_delay(Duration::from_millis(200))
        .build();
    let mut events = sdk.events();
    sdk.connect();
    sdk.ready().await.unwrap();
    let started = std::time::Instant::now();
    let code = next_client_matching(&mut events, |e| match e {
        ClientEvent::Connecting { code, .. } if code != codes::CONNECT_CALLED => Some(code),
        _ => None,
    })
    .await;
    assert_eq!(code, codes::NO_PING);
    assert!(
        started.elapsed() >= Duration::from_millis(1100),
        "{:?}",
        started.elapsed()
    );
    sdk.ready().await.unwrap();
    assert!(connections.load(Ordering::SeqCst) >= 2);
}

#[tokio::test]
async fn commands_written_in_one_tick_share_one_frame_and_garbage_never_panics() {
    let (frames_tx, mut frames_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let url = fake_server(move |mut ws| {
        let frames = frames_tx.clone();
        async move {
            if let Some(Ok(Message::Text(_))) = ws.next().await {
                let _ = ws
                    .send(Message::text(r#"{"id":1,"connect":{"client":"c1"}}"#))
                    .await;
            }
            while let Some(Ok(message)) = ws.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let _ = frames.send(text.to_string());
                // Answers every rpc, in one frame, with garbage around it.
                let mut answer = String::from("{\"push\":{\"pub\":5}}\n[1]\n");
                for line in text.split('\n') {
                    let v: Value = serde_json::from_str(line).unwrap();
                    answer.push_str(&format!(
                        "{{\"id\":{},\"rpc\":{{\"data\":{}}}}}\n",
                        v["id"], v["rpc"]["data"]
                    ));
                }
                let _ = ws.send(Message::text(answer)).await;
            }
        }
    })
    .await;
    let sdk = client(&url).build();
    let mut events = sdk.events();
    sdk.connect();
    sdk.ready().await.unwrap();
    let calls = (0..10).map(|n| sdk.rpc("echo", json!(n)));
    let answers = futures_util::future::join_all(calls).await;
    let frame = frames_rx.recv().await.unwrap();
    assert_eq!(frame.lines().count(), 10, "one frame: {frame}");
    // The garbage made the client reconnect (bad protocol) instead of panicking; the replies
    // that were readable are either answered or failed as connection closed, never lost.
    for answer in answers {
        assert!(
            matches!(answer, Ok(_) | Err(Error::ConnectionClosed)),
            "{answer:?}"
        );
    }
    let code = next_client_matching(&mut events, |e| match e {
        ClientEvent::Connecting { code, .. } if code != codes::CONNECT_CALLED => Some(code),
        _ => None,
    })
    .await;
    assert_eq!(code, codes::BAD_PROTOCOL);
}

#[tokio::test]
async fn odd_but_well_formed_server_messages_never_break_the_client() {
    // After connect, the fake server sends thousands of messages a server may not send at that
    // moment (replies to no command, pushes for unknown channels, unsubscribes and subscribes
    // of every code, nulls), then answers rpcs normally.
    let url = fake_server(|mut ws| async move {
        if let Some(Ok(Message::Text(_))) = ws.next().await {
            let _ = ws
                .send(Message::text(
                    r#"{"id":1,"connect":{"client":"c1","subs":{"srv":{"recoverable":true,"epoch":"e","offset":3}}}}"#,
                ))
                .await;
        }
        let shapes = [
            r#"{"id":N,"subscribe":{"recoverable":true,"offset":N,"publications":null}}"#,
            r#"{"id":N,"error":{"code":109,"message":null,"temporary":true}}"#,
            r#"{"id":N}"#,
            r#"{"push":{"channel":"chat","unsubscribe":{"code":N,"reason":null}}}"#,
            r#"{"push":{"channel":"chat","pub":{"data":N,"offset":N}}}"#,
            r#"{"push":{"channel":"srv","pub":{"data":null,"offset":N,"tags":null}}}"#,
            r#"{"push":{"channel":"srv","subscribe":{"epoch":null}}}"#,
            r#"{"push":{"channel":"chat","join":{"info":{"user":null,"client":"x"}}}}"#,
            r#"{"push":{"channel":"","message":{"data":{"n":N}}}}"#,
            r#"{"push":{"channel":"gone","unsubscribe":{}}}"#,
            r#"{"id":N,"history":{"publications":null,"epoch":null}}"#,
            r#"{"id":N,"refresh":{"expires":true,"ttl":N}}"#,
            r#"{"push":{}}"#,
        ];
        let mut frame = String::new();
        for n in 0..3000u64 {
            let line = shapes[(n as usize * 7) % shapes.len()].replace('N', &(n % 4000).to_string());
            frame.push_str(&line);
            frame.push('\n');
            if n % 50 == 49 {
                let _ = ws.send(Message::text(std::mem::take(&mut frame))).await;
            }
        }
        while let Some(Ok(message)) = ws.next().await {
            let Message::Text(text) = message else { continue };
            for line in text.split('\n') {
                let v: Value = serde_json::from_str(line).unwrap_or_default();
                if v.get("rpc").is_some() {
                    let answer = format!("{{\"id\":{},\"rpc\":{{\"data\":\"alive\"}}}}", v["id"]);
                    let _ = ws.send(Message::text(answer)).await;
                }
            }
        }
    })
    .await;
    let sdk = client(&url).event_capacity(64).build();
    let chat = sdk
        .new_subscription("chat", SubscriptionOptions::new())
        .unwrap();
    chat.subscribe();
    sdk.connect();
    sdk.ready().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = tokio::time::timeout(WAIT, async {
        loop {
            match sdk.rpc("echo", json!(1)).await {
                Ok(answer) => return answer,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .expect("the client still works");
    assert_eq!(answer, json!("alive"));
}

#[tokio::test]
async fn a_server_that_drops_every_connection_is_retried_with_capped_backoff() {
    // Accepts TCP and closes at once: every attempt fails before the WebSocket handshake.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let attempts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = attempts.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            seen.lock().unwrap().push(std::time::Instant::now());
            drop(socket);
        }
    });
    let (min, max) = (Duration::from_millis(100), Duration::from_millis(400));
    let sdk = Client::builder(format!("ws://{addr}/connection/websocket"))
        .reconnect_delay(min, max)
        .build();
    sdk.connect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sdk.state(), State::Connecting, "still trying");
    sdk.disconnect();
    let attempts = attempts.lock().unwrap().clone();
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.len() >= 5, "{gaps:?}");
    for gap in &gaps {
        assert!(
            *gap >= min.mul_f64(0.9),
            "never sooner than the minimum: {gaps:?}"
        );
        assert!(
            *gap <= max + Duration::from_millis(250),
            "never later than the cap: {gaps:?}"
        );
    }
    // Full jitter: the delays are not all the same.
    let distinct: std::collections::HashSet<u128> =
        gaps.iter().map(|g| g.as_millis() / 10).collect();
    assert!(distinct.len() > 1, "{gaps:?}");
}

#[tokio::test]
async fn a_call_times_out_and_the_client_stays_usable() {
    let url = fake_server(|mut ws| async move {
        if let Some(Ok(Message::Text(_))) = ws.next().await {
            let _ = ws
                .send(Message::text(r#"{"id":1,"connect":{"client":"c1"}}"#))
                .await;
        }
        // Never answers anything else.
        while ws.next().await.is_some() {}
    })
    .await;
    let sdk = Client::builder(url)
        .timeout(Duration::from_millis(300))
        .build();
    sdk.connect();
    sdk.ready().await.unwrap();
    assert_eq!(sdk.rpc("echo", json!(1)).await, Err(Error::Timeout));
    // A cancelled call (dropped future) leaves the client as it was.
    let cancelled =
        tokio::time::timeout(Duration::from_millis(10), sdk.rpc("echo", json!(2))).await;
    assert!(cancelled.is_err());
    assert_eq!(sdk.state(), State::Connected);
}

fn publication(event: SubscriptionEvent) -> Option<switchboard_client::Publication> {
    match event {
        SubscriptionEvent::Publication(p) => Some(p),
        _ => None,
    }
}

/// A new subscription of `client` to `channel`, subscribed, with its events from the start.
async fn subscribed(
    client: &Client,
    channel: &str,
) -> (switchboard_client::Subscription, Events<SubscriptionEvent>) {
    let subscription = client
        .new_subscription(channel, SubscriptionOptions::new())
        .unwrap();
    let events = subscription.events();
    subscription.subscribe();
    subscription.ready().await.unwrap();
    (subscription, events)
}

/// Raw bytes from a Protobuf SDK client reach a Protobuf subscriber byte for byte — live, after
/// a reconnect (recovery) and in history — and a JSON subscriber as base64 marked binary, which
/// it decodes back to the same bytes. A JSON client cannot send bytes; RPC takes any bytes and
/// answers with bytes (`echo` returns them as they are).
#[tokio::test]
async fn binary_payloads_are_byte_exact_through_protobuf_and_json_clients() {
    // Not UTF-8 (0xff, 0xc3 0x28), not JSON.
    const BYTES: &[u8] = &[0, 0xff, 1, 2, 0xc3, 0x28];
    const BYTES_BASE64: &str = "AP8BAsMo";
    const JSON_TEXT: &[u8] = br#"{"k": [1, 2]}"#;
    const MISSED: &[u8] = &[0xfe, 0, 0x80];
    let server = TestServer::with(|c| {
        c.token_hmac_secret = Some(SECRET.into());
        open_channels(c);
    })
    .await;
    let publisher = client(&server.ws_url())
        .token(token("bin-publisher", 3600))
        .codec(ProtobufCodec)
        .build();
    // Reconnects wait at least a second, so what is published meanwhile is certainly missed.
    let subscriber = Client::builder(server.ws_url())
        .token(token("bin-subscriber", 3600))
        .reconnect_delay(Duration::from_secs(1), Duration::from_secs(2))
        .timeout(WAIT)
        .codec(ProtobufCodec)
        .build();
    let json_reader = client(&server.ws_url())
        .token(token("bin-reader", 3600))
        .build();
    let mut subscriber_events = subscriber.events();
    for sdk in [&publisher, &subscriber, &json_reader] {
        sdk.connect();
        sdk.ready().await.unwrap();
    }
    let (pb_sub, mut pb_events) = subscribed(&subscriber, "bin").await;
    let (json_sub, mut json_events) = subscribed(&json_reader, "bin").await;

    // Client-level publish of bytes that are neither UTF-8 nor JSON.
    publisher.publish_binary("bin", BYTES).await.unwrap();
    let received = next_matching(&mut pb_events, publication).await;
    assert!(received.binary, "{received:?}");
    assert_eq!(received.bytes.as_deref(), Some(BYTES));
    assert_eq!(received.data, json!(BYTES_BASE64));
    assert_eq!(received.offset, 1);
    let received = next_matching(&mut json_events, publication).await;
    assert!(received.binary, "{received:?}");
    assert_eq!(received.data, json!(BYTES_BASE64));
    assert_eq!(received.bytes.as_deref(), Some(BYTES), "base64 decoded");

    // Subscription-level publish of bytes that are JSON text: a JSON value for everyone, and
    // the exact text for Protobuf.
    let publisher_side = publisher
        .new_subscription("bin", SubscriptionOptions::new())
        .unwrap();
    publisher_side
        .publish_binary(bytes::Bytes::from_static(JSON_TEXT))
        .await
        .unwrap();
    let received = next_matching(&mut pb_events, publication).await;
    assert!(!received.binary, "{received:?}");
    assert_eq!(received.bytes.as_deref(), Some(JSON_TEXT));
    assert_eq!(received.data, json!({"k": [1, 2]}));
    let received = next_matching(&mut json_events, publication).await;
    assert!(!received.binary, "{received:?}");
    assert_eq!(
        (received.data, received.bytes),
        (json!({"k": [1, 2]}), None)
    );

    // A JSON client cannot send bytes: a typed error, nothing sent.
    assert_eq!(
        json_reader.publish_binary("bin", BYTES).await,
        Err(Error::BinaryNeedsProtobuf)
    );
    assert_eq!(
        json_sub.publish_binary(BYTES).await,
        Err(Error::BinaryNeedsProtobuf)
    );
    assert_eq!(
        json_reader.rpc_binary("echo", BYTES).await,
        Err(Error::BinaryNeedsProtobuf)
    );

    // Missed while the subscriber reconnects: recovered byte for byte.
    disconnect_to_reconnect(&server, &mut subscriber_events, "bin-subscriber").await;
    publisher.publish_binary("bin", MISSED).await.unwrap();
    let resubscribed = next_matching(&mut pb_events, |e| match e {
        SubscriptionEvent::Subscribed(s) if s.was_recovering => Some(s),
        _ => None,
    })
    .await;
    assert!(resubscribed.recovered, "{resubscribed:?}");
    let received = next_matching(&mut pb_events, publication).await;
    assert_eq!(
        (received.bytes.as_deref(), received.binary, received.offset),
        (Some(MISSED), true, 3)
    );

    // History: the exact bytes in Protobuf, the binary ones decoded in JSON.
    let options = HistoryOptions {
        limit: 10,
        ..Default::default()
    };
    let history = pb_sub.history(options.clone()).await.unwrap();
    let bytes: Vec<Option<&[u8]>> = history
        .publications
        .iter()
        .map(|p| p.bytes.as_deref())
        .collect();
    assert_eq!(bytes, [Some(BYTES), Some(JSON_TEXT), Some(MISSED)]);
    let history = json_sub.history(options).await.unwrap();
    let bytes: Vec<Option<&[u8]>> = history
        .publications
        .iter()
        .map(|p| p.bytes.as_deref())
        .collect();
    assert_eq!(bytes, [Some(BYTES), None, Some(MISSED)]);

    // RPC with bytes: JSON text comes back from `echo`; bytes that are not JSON are refused.
    assert_eq!(
        &publisher
            .rpc_binary("echo", &br#"[1,"x"]"#[..])
            .await
            .unwrap()[..],
        br#"[1,"x"]"#
    );
    assert_eq!(
        &publisher.rpc_binary("echo", BYTES).await.unwrap()[..],
        BYTES
    );
    server.stop().await;
}
