//! The server API's `refresh`: extends or ends a user's connections (all of them, or one client),
//! as Centrifugo's does. `expired: true` disconnects them as expired (3005); `expire_at` (unix
//! seconds) is their new expiry (one in the past disconnects them as expired); neither makes
//! them no longer expire. `info` replaces their connection info from then on (in presence,
//! join/leave and their publications). A unidirectional client is told its new expiry in a
//! `refresh` push; a bidirectional one learns it when it refreshes its token.

use serde::Deserialize;
use serde_json::json;

use super::api::{raw, RawResult};
use crate::engine::broker::NodeControl;
use crate::node::Node;
use crate::protocol::{error_code, Error, Payload};

/// The body of `refresh`.
#[derive(Deserialize)]
pub struct RefreshRequest {
    user: String,
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    expired: bool,
    #[serde(default)]
    expire_at: Option<u64>,
    #[serde(default)]
    info: Option<Payload>,
}

/// Runs `refresh` on whichever nodes hold the user's connections.
pub(super) async fn refresh(node: &Node, req: RefreshRequest) -> RawResult {
    if req.user.is_empty() {
        return Err(Error::new(error_code::BAD_REQUEST));
    }
    node.control(NodeControl::Refresh {
        user: req.user,
        client: req.client.filter(|c| !c.is_empty()),
        expired: req.expired,
        expire_at: req.expire_at.filter(|&at| at > 0),
        info: req.info,
    })
    .await?;
    raw(&json!({}))
}
