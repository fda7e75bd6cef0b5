//! The Protobuf encoding over a real WebSocket (the `centrifuge-protobuf` subprotocol), at the
//! wire level: several commands per binary frame, the ping as an empty reply, and malformed
//! Protobuf (a bad varint, a truncated message, an unknown method, a text frame) closed with
//! 3501 and its reason while other clients carry on. The real SDKs are in compat_js.rs
//! (`centrifuge_js_protobuf.mjs`) and compat_python.rs (`centrifuge_python_protobuf.py`).

mod common;

use bytes::Bytes;
use common::{PbClient, TestServer};
use serde_json::json;
use switchboard_proto as pb;

fn connect(id: u32) -> pb::Command {
    pb::Command {
        id,
        connect: Some(pb::ConnectRequest::default()),
        ..Default::default()
    }
}

fn subscribe(id: u32, channel: &str) -> pb::Command {
    pb::Command {
        id,
        subscribe: Some(pb::SubscribeRequest {
            channel: channel.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn rpc(id: u32, data: &'static [u8]) -> pb::Command {
    pb::Command {
        id,
        rpc: Some(pb::RpcRequest {
            method: "echo".into(),
            data: Bytes::from_static(data),
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn one_frame_carries_several_commands_answered_in_order() {
    let server = TestServer::start().await;
    let mut client = PbClient::open(&server).await;
    client
        .send(&[connect(1), subscribe(2, "news"), rpc(3, b"[1,2]")])
        .await;
    let replies = [
        client.next().await,
        client.next().await,
        client.next().await,
    ];
    assert_eq!(replies.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(replies[0].connect.as_ref().unwrap().client.len() == 36);
    assert!(replies[1].subscribe.is_some());
    assert_eq!(&replies[2].rpc.as_ref().unwrap().data[..], b"[1,2]");
    // A publication from the API arrives as a push with the payload's JSON text.
    let (status, _) = server
        .api("publish", json!({"channel": "news", "data": {"n": 1}}))
        .await;
    assert_eq!(status, 200);
    let push = client.next().await.push.expect("a push");
    assert_eq!(push.channel, "news");
    let publication = push.r#pub.expect("a publication");
    assert_eq!(&publication.data[..], br#"{"n":1}"#);
    assert_eq!(publication.offset, 1);
    server.stop().await;
}

#[tokio::test]
async fn the_ping_is_an_empty_reply_and_an_empty_command_answers_it() {
    let server = TestServer::with(|c| {
        c.ping_interval = 1;
        c.pong_timeout = 1;
    })
    .await;
    let mut client = PbClient::connected(&server).await;
    for _ in 0..3 {
        assert_eq!(client.next().await, pb::Reply::default(), "a ping");
        client.send(&[pb::Command::default()]).await;
    }
    // Still connected after three pings answered.
    client.send(&[rpc(9, b"true")]).await;
    assert_eq!(client.next().await.id, 9);
    server.stop().await;
}

#[tokio::test]
async fn malformed_protobuf_is_closed_with_3501_and_harms_nobody_else() {
    let server = TestServer::start().await;
    let mut bystander = PbClient::connected(&server).await;
    bystander.send(&[subscribe(2, "room")]).await;
    assert!(bystander.next().await.subscribe.is_some());

    // A command with an id and a field no request has (number 99): an unknown method.
    let mut unknown = vec![0x08, 0x02, 0x98, 0x06, 0x01];
    unknown.insert(0, unknown.len() as u8);
    let cases: [(&str, Vec<u8>, bool, &str); 4] = [
        (
            "a varint that never ends",
            vec![0xff; 11],
            false,
            "bad request: ",
        ),
        (
            "a length beyond the frame",
            vec![5, 0x08, 0x01],
            false,
            "bad request: truncated",
        ),
        (
            "a field of wire type 7",
            vec![2, 0x0f, 0x00],
            false,
            "bad request: invalid message",
        ),
        ("an unknown method", unknown, true, "bad request"),
    ];
    for (what, bytes, connect_first, reason_start) in cases {
        let mut client = if connect_first {
            PbClient::connected(&server).await
        } else {
            PbClient::open(&server).await
        };
        client.send_bytes(bytes).await;
        let (code, reason) = client.closed().await;
        assert_eq!(code, 3501, "{what}: {reason}");
        assert!(reason.starts_with(reason_start), "{what}: {reason}");
    }
    // A text frame on the Protobuf subprotocol.
    let mut client = PbClient::open(&server).await;
    client.send_text(r#"{"id":1,"connect":{}}"#).await;
    let (code, reason) = client.closed().await;
    assert_eq!(
        (code, reason.as_str()),
        (
            3501,
            "bad request: text frame on the centrifuge-protobuf subprotocol"
        )
    );

    // The bystander still receives and is answered.
    server
        .api("publish", json!({"channel": "room", "data": "still here"}))
        .await;
    let publication = bystander.next().await.push.unwrap().r#pub.unwrap();
    assert_eq!(&publication.data[..], br#""still here""#);
    bystander.send(&[rpc(3, b"{}")]).await;
    assert_eq!(bystander.next().await.id, 3);
    server.stop().await;
}

#[tokio::test]
async fn sse_refuses_protobuf_with_a_clear_error() {
    let server = TestServer::start().await;
    let request = format!(
        "GET /connection/sse?cf_protocol=protobuf HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        server.addr
    );
    let (status, body) = common::http_raw(server.addr, &request).await;
    assert_eq!(status, 400);
    assert!(body.contains("SSE carries JSON only"), "{body}");
    server.stop().await;
}

fn publish(id: u32, channel: &str, data: &'static [u8]) -> pb::Command {
    pb::Command {
        id,
        publish: Some(pb::PublishRequest {
            channel: channel.into(),
            data: Bytes::from_static(data),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Binary publications through one engine: `publisher` and `subscriber` are on the same server
/// or (Redis) on two nodes sharing it.
async fn binary_publications_round_trip(publisher: &TestServer, subscriber: &TestServer) {
    const BYTES: &[u8] = &[0, 255, 1, 2];
    let mut pb_sub = PbClient::connected(subscriber).await;
    pb_sub
        .send(&[pb::Command {
            id: 2,
            subscribe: Some(pb::SubscribeRequest {
                channel: "bin".into(),
                recoverable: true,
                ..Default::default()
            }),
            ..Default::default()
        }])
        .await;
    let epoch = pb_sub.next().await.subscribe.expect("subscribed").epoch;
    let mut json_sub = subscriber.client().await;
    json_sub.subscribe("bin").await;
    let mut pb_pub = PbClient::connected(publisher).await;
    pb_pub.send(&[publish(2, "bin", BYTES)]).await;
    let reply = pb_pub.next().await;
    assert!(
        reply.publish.is_some() && reply.error.is_none(),
        "{reply:?}"
    );
    // Protobuf gets the bytes; JSON a base64 string, marked binary (a valid JSON frame).
    let publication = pb_sub.next().await.push.unwrap().r#pub.unwrap();
    assert_eq!(&publication.data[..], BYTES);
    let push = json_sub.next_publication().await;
    assert_eq!(push["pub"]["data"], "AP8BAg==", "{push}");
    assert_eq!(push["pub"]["binary"], true, "{push}");
    // The API's b64data publishes bytes the same way.
    let (status, body) = publisher
        .api("publish", json!({"channel": "bin", "b64data": "3q2+7w=="}))
        .await;
    assert_eq!(status, 200, "{body}");
    let publication = pb_sub.next().await.push.unwrap().r#pub.unwrap();
    assert_eq!(&publication.data[..], [0xde, 0xad, 0xbe, 0xef]);
    // History and recovery give the bytes back.
    pb_sub
        .send(&[pb::Command {
            id: 3,
            history: Some(pb::HistoryRequest {
                channel: "bin".into(),
                limit: 10,
                ..Default::default()
            }),
            ..Default::default()
        }])
        .await;
    let history = pb_sub.next().await.history.expect("history");
    let data: Vec<&[u8]> = history.publications.iter().map(|p| &p.data[..]).collect();
    assert_eq!(data, [BYTES, &[0xde, 0xad, 0xbe, 0xef]]);
    let mut late = PbClient::connected(subscriber).await;
    late.send(&[pb::Command {
        id: 2,
        subscribe: Some(pb::SubscribeRequest {
            channel: "bin".into(),
            recover: true,
            epoch,
            offset: 0,
            ..Default::default()
        }),
        ..Default::default()
    }])
    .await;
    let recovered = late.next().await.subscribe.expect("subscribed");
    assert!(recovered.recovered);
    let data: Vec<&[u8]> = recovered.publications.iter().map(|p| &p.data[..]).collect();
    assert_eq!(data, [BYTES, &[0xde, 0xad, 0xbe, 0xef]]);
    // The API's history: the base64 string, marked binary.
    let (_, body) = subscriber
        .api("history", json!({"channel": "bin", "limit": 10}))
        .await;
    let first = &body["result"]["publications"][0];
    assert_eq!(
        (&first["data"], &first["binary"]),
        (&json!("AP8BAg=="), &json!(true)),
        "{body}"
    );
}

#[tokio::test]
async fn binary_publications_are_byte_exact_with_memory_history() {
    let server = TestServer::with(|c| {
        c.history_storage = switchboard::config::HistoryStorage::Memory;
    })
    .await;
    binary_publications_round_trip(&server, &server).await;
    server.stop().await;
}

#[tokio::test]
async fn binary_publications_are_byte_exact_with_sqlite_history() {
    let server = TestServer::with(|c| {
        c.history_storage = switchboard::config::HistoryStorage::Sqlite;
    })
    .await;
    binary_publications_round_trip(&server, &server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_publications_are_byte_exact_across_nodes_on_redis() {
    let redis = common::redis_server::RedisServer::start().await;
    let node = |name: &'static str| {
        let url = redis.url();
        TestServer::with(move |c| {
            c.redis = vec![url];
            c.redis_prefix = "protobuf-binary".into();
            c.name = Some(name.into());
        })
    };
    let (a, b) = (node("a").await, node("b").await);
    binary_publications_round_trip(&a, &b).await;
    a.stop().await;
    b.stop().await;
}
