//! Sessions over HTTP emulation (`http_stream`, `sse`): the server → client stream is one long
//! response, and each client → server command comes in a request of its own to `/emulation`,
//! naming its session and the node holding it. This registry is where such a command finds its
//! session on this node; one for another node travels there through the broker
//! ([`NodeControl::Emulation`](crate::engine::broker::NodeControl)).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::hub::{ConnId, Inbox};

/// Commands waiting for one emulation session, at most (a client that sends faster than its
/// session handles commands is refused, 429, and its command rate limit applies as well).
pub const INBOX_CAPACITY: usize = 64;

/// What became of a command for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Queued for the session.
    Delivered,
    /// No such session here (it ended, or never was).
    Unknown,
    /// The session's inbox is full.
    Full,
}

/// How long the set of live nodes read for forwarded requests is trusted: a client sends many
/// commands, and each would otherwise read every node's announcement from the broker.
const LIVE_NODES_FOR: Duration = Duration::from_secs(1);

/// The emulation sessions on this node.
#[derive(Debug, Default)]
pub struct EmulationSessions {
    inner: Mutex<Registry>,
    /// The live nodes' uids as last read, and when.
    live_nodes: Mutex<Option<(Instant, HashSet<String>)>>,
}

#[derive(Debug, Default)]
struct Registry {
    inboxes: HashMap<Arc<str>, Arc<Inbox<String>>>,
    /// The session id of each emulation connection, for its connect reply.
    by_conn: HashMap<ConnId, Arc<str>>,
}

/// A session's place in the registry, removed when dropped.
#[derive(Debug)]
pub struct Registration {
    sessions: Arc<EmulationSessions>,
    id: Arc<str>,
    conn: ConnId,
}

impl Registration {
    /// The session id the client names in its `/emulation` requests.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut registry = self.sessions.lock();
        registry.inboxes.remove(&self.id);
        registry.by_conn.remove(&self.conn);
    }
}

impl EmulationSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers connection `conn` under a fresh random session id; its commands arrive in the
    /// inbox.
    pub fn register(self: &Arc<Self>, conn: ConnId) -> (Registration, Arc<Inbox<String>>) {
        let inbox = Arc::new(Inbox::new(INBOX_CAPACITY));
        let id: Arc<str> = Arc::from(uuid::Uuid::new_v4().simple().to_string());
        let mut registry = self.lock();
        registry.inboxes.insert(id.clone(), inbox.clone());
        registry.by_conn.insert(conn, id.clone());
        drop(registry);
        let registration = Registration {
            sessions: self.clone(),
            id,
            conn,
        };
        (registration, inbox)
    }

    /// Hands `commands` to `session`'s connection, without waiting.
    pub fn deliver(&self, session: &str, commands: String) -> Delivery {
        let Some(inbox) = self.lock().inboxes.get(session).cloned() else {
            return Delivery::Unknown;
        };
        match inbox.try_send(commands) {
            Ok(()) => Delivery::Delivered,
            Err(_) => Delivery::Full,
        }
    }

    /// Whether node `uid` was among the live nodes read recently. Only a yes is remembered: a
    /// node that started since the last read must not be refused, so a no means read again.
    pub fn known_live(&self, uid: &str) -> bool {
        let cached = self.live_nodes.lock().unwrap_or_else(|e| e.into_inner());
        matches!(&*cached, Some((read, uids)) if read.elapsed() < LIVE_NODES_FOR && uids.contains(uid))
    }

    /// Remembers the live nodes just read.
    pub fn set_live(&self, uids: HashSet<String>) {
        *self.live_nodes.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), uids));
    }

    /// The session id of connection `conn`, if it is an emulation connection.
    pub fn session_of(&self, conn: ConnId) -> Option<Arc<str>> {
        self.lock().by_conn.get(&conn).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commands_reach_a_registered_session_until_it_ends() {
        let sessions = Arc::new(EmulationSessions::default());
        let (registration, inbox) = sessions.register(7);
        let id = registration.id().to_string();
        assert_eq!(sessions.session_of(7).as_deref(), Some(id.as_str()));
        assert_eq!(sessions.deliver(&id, "{}".into()), Delivery::Delivered);
        assert_eq!(inbox.recv().await, "{}");
        for _ in 0..INBOX_CAPACITY {
            assert_eq!(sessions.deliver(&id, "{}".into()), Delivery::Delivered);
        }
        assert_eq!(sessions.deliver(&id, "{}".into()), Delivery::Full);
        drop(registration);
        assert_eq!(sessions.deliver(&id, "{}".into()), Delivery::Unknown);
        assert_eq!(sessions.session_of(7), None);
        assert_eq!(sessions.deliver("nobody", "{}".into()), Delivery::Unknown);
    }
}
