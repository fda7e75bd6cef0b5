//! What the session's unit tests share: a real node on the in-process engine, and a client that
//! drives a real [`Session`] and reads what it queued.

use std::sync::Arc;

use futures_util::FutureExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{Outcome, Session};
use crate::auth::{sign_hmac, TokenVerifier};
use crate::config::Config;
use crate::engine::memory::{LocalBroker, MemoryHistory, MemoryPresence};
use crate::hooks::decisions::Transport;
use crate::hub::ControlInbox;
use crate::node::{Node, NodeHooks};
use crate::protocol::Disconnect;
use crate::queue::{ClientQueue, Outbound};

/// The HMAC secret of [`secured`] nodes.
const SECRET: &str = "session-test-secret";

/// A node on `LocalBroker` + `MemoryHistory` + `MemoryPresence`, with the default configuration
/// (development mode: anonymous clients, every permission) adjusted by `adjust`.
pub fn node(adjust: impl FnOnce(&mut Config)) -> Node {
    node_with(adjust, NodeHooks::default())
}

/// [`node`] with the application's `hooks`.
pub fn node_with(adjust: impl FnOnce(&mut Config), hooks: NodeHooks) -> Node {
    let mut config = Config::default();
    adjust(&mut config);
    let verifier = config.token_hmac_secret.as_deref().map(TokenVerifier::hmac);
    Node::with_hooks(
        config,
        Arc::new(LocalBroker::new(Arc::new(MemoryHistory::default()))),
        Arc::new(MemoryPresence::default()),
        verifier,
        CancellationToken::new(),
        tokio_util::task::TaskTracker::new(),
        hooks,
    )
}

/// Verifies tokens: no anonymous clients, no permission nobody configured.
pub fn secured(config: &mut Config) {
    config.token_hmac_secret = Some(SECRET.into());
}

/// A token with `claims`, signed for [`secured`] nodes.
pub fn token(claims: Value) -> String {
    sign_hmac(SECRET, &claims).expect("claims sign")
}

/// A session and the queue it writes to.
pub struct TestClient {
    pub session: Session,
    queue: Arc<ClientQueue>,
    /// Messages read from the queue but not yet handed to the test.
    unread: Vec<Value>,
}

impl TestClient {
    /// A session that has not connected yet.
    pub fn new(node: &Node) -> TestClient {
        let queue = Arc::new(ClientQueue::new(node.config().client_queue_max_bytes));
        let control = Arc::new(ControlInbox::new(16));
        TestClient {
            session: Session::new(node.clone(), queue.clone(), control, Transport::WebSocket),
            queue,
            unread: Vec::new(),
        }
    }

    /// A session connected anonymously (command id 1).
    pub async fn connected(node: &Node) -> TestClient {
        let mut client = TestClient::new(node);
        let reply = client.call(1, "connect", serde_json::json!({})).await;
        assert!(reply.unwrap()["connect"].is_object());
        client
    }

    /// A session connected with a token for `user` (command id 1).
    pub async fn connected_as(node: &Node, user: &str) -> TestClient {
        let mut client = TestClient::new(node);
        let connection = token(serde_json::json!({"sub": user}));
        let reply = client
            .call(1, "connect", serde_json::json!({"token": connection}))
            .await;
        assert!(reply.unwrap()["connect"].is_object());
        client
    }

    /// Hands the session one frame holding `commands`; publishes may stay in flight.
    pub async fn send(&mut self, commands: &[Value]) -> Outcome {
        let frame: Vec<String> = commands.iter().map(Value::to_string).collect();
        self.session.handle_frame(frame.join("\n").as_bytes()).await
    }

    /// Sends one command, lets the publishes in flight finish, and returns the reply to it (other
    /// messages stay for [`TestClient::messages`]).
    pub async fn call(&mut self, id: u32, key: &str, body: Value) -> Result<Value, Disconnect> {
        let mut command = serde_json::json!({ "id": id });
        command[key] = body;
        self.send(&[command]).await?;
        while self.session.has_publishes_in_flight() {
            self.session.finish_publish().await;
        }
        self.drain();
        let at = self
            .unread
            .iter()
            .position(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("no reply to {id} in {:?}", self.unread));
        Ok(self.unread.remove(at))
    }

    /// Every message queued and not read yet, in order.
    pub fn messages(&mut self) -> Vec<Value> {
        self.drain();
        std::mem::take(&mut self.unread)
    }

    /// Every line queued and not read yet, unparsed (for answers a `Value` could not hold).
    pub fn raw_lines(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        while let Some(Outbound::Frame(frame)) = self.queue.next().now_or_never() {
            let text = std::str::from_utf8(&frame).expect("frames are UTF-8");
            lines.extend(text.split('\n').map(str::to_string));
        }
        lines
    }

    fn drain(&mut self) {
        while let Some(Outbound::Frame(frame)) = self.queue.next().now_or_never() {
            let text = std::str::from_utf8(&frame).expect("frames are UTF-8");
            for line in text.split('\n') {
                self.unread
                    .push(serde_json::from_str(line).expect("messages are JSON"));
            }
        }
    }
}
