//! Every server-side close reaches the client as a close frame with its code, even when the client
//! keeps sending: the server reads and drops what follows its close frame for a while (a lingering
//! close, `transport::linger`) instead of closing a socket with unread input, which the kernel
//! answers with a reset that can overtake the close frame.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

/// Opens a socket, connects, sends `offending` then keeps sending `followers` text frames without
/// waiting; returns the close code the client read (`None`: no close frame, the socket dropped).
async fn close_code(server: &TestServer, offending: Message, followers: usize) -> Option<u16> {
    let (ws, _) = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .unwrap();
    let (mut sink, mut stream) = ws.split();
    sink.send(Message::text(r#"{"id":1,"connect":{}}"#))
        .await
        .unwrap();
    let writer = tokio::spawn(async move {
        let _ = sink.send(offending).await;
        let filler = format!(
            r#"{{"id":2,"rpc":{{"method":"echo","data":"{}"}}}}"#,
            "f".repeat(500)
        );
        for _ in 0..followers {
            if sink.send(Message::text(filler.clone())).await.is_err() {
                break;
            }
        }
        sink
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
    let _ = writer.await;
    code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_limit_gets_1009_while_the_client_keeps_sending() {
    let server = TestServer::start().await;
    // Past the configured limit (64 KiB) and past the transport's hard limit (128 KiB).
    for size in [100 * 1024, 200 * 1024] {
        for _ in 0..5 {
            let big = Message::text("x".repeat(size));
            assert_eq!(
                close_code(&server, big, 300).await,
                Some(1009),
                "{size} bytes"
            );
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_that_is_not_utf8_gets_1007() {
    let server = TestServer::start().await;
    // After such a frame the WebSocket library reads no more; the socket still lingers.
    for _ in 0..5 {
        let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
        assert_eq!(
            close_code(&server, Message::Frame(frame), 300).await,
            Some(1007)
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_flood_gets_3013_every_time() {
    let server = TestServer::with(|c| {
        c.client_command_rate = 50;
        c.client_command_burst = 100;
    })
    .await;
    for _ in 0..10 {
        let flood: Vec<String> = (0..400)
            .map(|i| {
                format!(
                    r#"{{"id":{},"rpc":{{"method":"echo","data":{i}}}}}"#,
                    i + 10
                )
            })
            .collect();
        let first = Message::text(flood.join("\n"));
        assert_eq!(close_code(&server, first, 2000).await, Some(3013));
    }
    server.stop().await;
}
