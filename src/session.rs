//! One client: its authentication, its subscriptions, and the handling of its commands.
//!
//! A [`Session`] is owned by its connection task (see `transport`), which feeds it client frames
//! and control requests and writes what it queues. Replies and pushes share the client's bounded
//! queue, so they reach the client in the order they were produced.
//!
//! Cleanup lives in `Drop`: however the connection ends (close frame, reset, timeout, slow client,
//! shutdown, API disconnect, even a panic), dropping the session releases every subscription and
//! presence entry. There is no other exit path to forget.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::auth::{unix_now, TokenError};
use crate::history::HistoryFilter;
use crate::hub::{ClientHandle, ConnId, Control};
use crate::metrics::Metrics;
use crate::node::{Node, VERSION};
use crate::protocol::{
    error_code, flag, ClientInfo, Command, ConnectRequest, ConnectResult, Disconnect, Empty, Error,
    HistoryRequest, HistoryResult, Payload, PresenceResult, PresenceStatsResult, Push, PushBody,
    RefreshRequest, RefreshResult, Reply, ReplyResult, Request, RpcRequest, RpcResult,
    SubscribeRequest, SubscribeResult,
};
use crate::queue::ClientQueue;
use crate::timeline::Lane;

/// Longest accepted channel name, in bytes.
pub const MAX_CHANNEL_LENGTH: usize = 255;

/// A subscription held by a session.
#[derive(Debug, Clone)]
struct Subscription {
    info: ClientInfo,
    presence: bool,
    join_leave: bool,
}

/// One connected (or connecting) client.
pub struct Session {
    node: Node,
    conn: ConnId,
    queue: Arc<ClientQueue>,
    control: mpsc::Sender<Control>,
    identity: Option<Identity>,
    subscriptions: HashMap<String, Subscription>,
    /// When the last ping was sent, while its pong is awaited.
    ping_sent: Option<Instant>,
    /// When the connection's token expires (unix seconds), if it does.
    expires_at: Option<u64>,
}

/// Who the client is, once connected.
#[derive(Debug, Clone)]
struct Identity {
    client: Arc<str>,
    user: Arc<str>,
    conn_info: Option<Payload>,
}

/// What one frame asks of the connection.
pub type Outcome = Result<(), Disconnect>;

impl Session {
    /// A session writing to `queue`; `control` is the sender of the channel the connection task
    /// reads control requests from.
    pub fn new(node: Node, queue: Arc<ClientQueue>, control: mpsc::Sender<Control>) -> Session {
        Metrics::inc(&node.metrics().connections_accepted);
        Session {
            conn: node.next_conn_id(),
            node,
            queue,
            control,
            identity: None,
            subscriptions: HashMap::new(),
            ping_sent: None,
            expires_at: None,
        }
    }

    /// Whether `connect` succeeded.
    pub fn is_connected(&self) -> bool {
        self.identity.is_some()
    }

    /// The connection's id, once connected.
    pub fn client_id(&self) -> Option<&str> {
        self.identity.as_ref().map(|i| &*i.client)
    }

    /// Notes that a server ping was just queued; a pong is now expected.
    pub fn ping_sent(&mut self, at: Instant) {
        if self.ping_sent.is_none() {
            self.ping_sent = Some(at);
        }
    }

    /// When the outstanding ping was sent, if a pong is awaited.
    pub fn awaiting_pong_since(&self) -> Option<Instant> {
        self.ping_sent
    }

    /// When the connection must be closed for an expired token, if it can expire.
    pub fn expiry_deadline(&self) -> Option<Instant> {
        let expires_at = self.expires_at?;
        let grace = self.node.config().expired_grace;
        let left = expires_at.saturating_sub(unix_now()) + grace;
        Some(Instant::now() + Duration::from_secs(left))
    }

    /// Whether the token's expiry (plus grace) has passed.
    pub fn is_expired(&self) -> bool {
        self.expires_at
            .is_some_and(|at| at + self.node.config().expired_grace <= unix_now())
    }

    /// Handles every command of one client frame, in order.
    pub async fn handle_frame(&mut self, frame: &str) -> Outcome {
        for command in crate::protocol::decode_frame(frame) {
            Metrics::inc(&self.node.metrics().commands_received);
            let command = command.map_err(|e| {
                tracing::debug!(error = %e, "bad command");
                Disconnect::BAD_REQUEST
            })?;
            self.handle_command(command).await?;
            if self.queue.is_closed() {
                break;
            }
        }
        Ok(())
    }

    async fn handle_command(&mut self, command: Command) -> Outcome {
        let id = command.id;
        let request = command.request();
        let _span = self.node.timeline().span(
            Lane::Command,
            request.name(),
            request.channel().unwrap_or(""),
        );
        let identity = match (&self.identity, &request) {
            (None, Request::Connect(_)) => None,
            (None, _) => return Err(Disconnect::BAD_REQUEST),
            (Some(_), Request::Connect(_)) => return Err(Disconnect::BAD_REQUEST),
            (Some(identity), _) => Some(identity.clone()),
        };
        let result = match (request, identity) {
            (Request::Connect(req), _) => return self.connect(id, req).await,
            (Request::Pong, _) => {
                if self.ping_sent.take().is_none() {
                    return Err(Disconnect::BAD_REQUEST);
                }
                return Ok(());
            }
            (Request::Send(_), _) => return Ok(()),
            (Request::Unknown, _) => return Err(Disconnect::BAD_REQUEST),
            (_, None) => unreachable!("only connect runs before identity"),
            (Request::Ping, _) => Ok(ReplyResult::Ping(Empty {})),
            (Request::Subscribe(req), Some(who)) => {
                return self.subscribe(id, &who, req, None).await;
            }
            (Request::Unsubscribe(req), _) => {
                self.unsubscribe(&req.channel).await;
                Ok(ReplyResult::Unsubscribe(Empty {}))
            }
            (Request::Publish(req), Some(who)) => self.publish(&who, &req.channel, req.data).await,
            (Request::Presence(req), _) => self.presence(&req.channel).await,
            (Request::PresenceStats(req), _) => self.presence_stats(&req.channel).await,
            (Request::History(req), _) => self.history(req).await,
            (Request::Rpc(req), _) => rpc(req),
            (Request::Refresh(req), Some(who)) => self.refresh(&who, req)?,
            (Request::SubRefresh(_), _) => Err(Error::new(error_code::NOT_AVAILABLE)),
        };
        self.reply(id, result);
        Ok(())
    }

    fn reply(&self, id: u32, result: Result<ReplyResult, Error>) {
        let reply = match result {
            Ok(result) => Reply::ok(id, result),
            Err(error) => Reply::error(id, error),
        };
        self.send(reply.encode());
    }

    /// Queues one encoded message to this client.
    fn send(&self, message: Vec<u8>) {
        let metrics = self.node.metrics();
        match self.queue.push(Bytes::from(message)) {
            Ok(()) => Metrics::inc(&metrics.messages_sent),
            Err(crate::queue::PushError::Overflow) => {
                Metrics::inc(&metrics.queue_drops);
                Metrics::inc(&metrics.slow_disconnects);
            }
            Err(crate::queue::PushError::Closed) => Metrics::inc(&metrics.queue_drops),
        }
    }

    async fn connect(&mut self, id: u32, req: ConnectRequest) -> Outcome {
        let config = self.node.config();
        let (user, exp, conn_info) = if req.token.is_empty() {
            if !config.anonymous_allowed() {
                return Err(Disconnect::INVALID_TOKEN);
            }
            (String::new(), None, None)
        } else {
            let Some(verifier) = self.node.verifier() else {
                tracing::debug!("token given but no token secret configured");
                return Err(Disconnect::INVALID_TOKEN);
            };
            match verifier.verify(&req.token) {
                Ok(claims) => (
                    claims.sub,
                    claims.exp.filter(|e| *e > 0),
                    claims.info.map(Payload::from),
                ),
                Err(TokenError::Expired) => {
                    self.reply(id, Err(Error::new(error_code::TOKEN_EXPIRED)));
                    return Ok(());
                }
                Err(TokenError::Invalid(reason)) => {
                    tracing::debug!(%reason, "invalid connection token");
                    return Err(Disconnect::INVALID_TOKEN);
                }
            }
        };
        let identity = Identity {
            client: Arc::from(uuid::Uuid::new_v4().to_string()),
            user: Arc::from(user),
            conn_info,
        };
        self.node.hub().add_connection(
            self.conn,
            ClientHandle {
                client_id: identity.client.clone(),
                user: identity.user.clone(),
                queue: self.queue.clone(),
                control: self.control.clone(),
            },
        );
        self.expires_at = exp;
        let result = ConnectResult {
            client: identity.client.to_string(),
            version: VERSION.to_string(),
            expires: exp.is_some(),
            ttl: exp.map_or(0, ttl_from),
            ping: config.ping_interval as u32,
            pong: true,
            ..Default::default()
        };
        tracing::debug!(client = %identity.client, user = %identity.user, "connected");
        self.identity = Some(identity);
        self.reply(id, Ok(ReplyResult::Connect(result)));
        Ok(())
    }

    fn refresh(
        &mut self,
        who: &Identity,
        req: RefreshRequest,
    ) -> Result<Result<ReplyResult, Error>, Disconnect> {
        let Some(verifier) = self.node.verifier() else {
            return Ok(Err(Error::new(error_code::NOT_AVAILABLE)));
        };
        let claims = match verifier.verify(&req.token) {
            Ok(claims) => claims,
            Err(TokenError::Expired) => return Err(Disconnect::EXPIRED),
            Err(TokenError::Invalid(_)) => return Err(Disconnect::INVALID_TOKEN),
        };
        if claims.sub != *who.user {
            return Err(Disconnect::INVALID_TOKEN);
        }
        self.expires_at = claims.exp.filter(|e| *e > 0);
        Ok(Ok(ReplyResult::Refresh(RefreshResult {
            client: who.client.to_string(),
            version: VERSION.to_string(),
            expires: self.expires_at.is_some(),
            ttl: self.expires_at.map_or(0, ttl_from),
        })))
    }

    /// Subscribes to a channel and replies (with `id`), or, for a server-side subscription
    /// (`id` 0), sends a `subscribe` push carrying `data`.
    async fn subscribe(
        &mut self,
        id: u32,
        who: &Identity,
        req: SubscribeRequest,
        server_side: Option<(Option<Payload>, Option<Payload>)>,
    ) -> Outcome {
        let channel = req.channel.clone();
        if let Err(error) = check_channel(&channel) {
            self.reply(id, Err(error));
            return Ok(());
        }
        if self.subscriptions.contains_key(&channel) {
            if id != 0 {
                self.reply(id, Err(Error::new(error_code::ALREADY_SUBSCRIBED)));
            }
            return Ok(());
        }
        let options = match self.node.channel_options(&channel) {
            Ok(options) => options,
            Err(error) => {
                if id != 0 {
                    self.reply(id, Err(error));
                }
                return Ok(());
            }
        };
        let (chan_info, push_data) = server_side.unwrap_or_default();
        let info = ClientInfo {
            user: who.user.to_string(),
            client: who.client.to_string(),
            conn_info: who.conn_info.clone(),
            chan_info,
        };
        let hub = self.node.hub();
        let encode = |result: SubscribeResult| -> Bytes {
            let reply = if id == 0 {
                Reply::push(Push {
                    channel: channel.clone(),
                    body: PushBody::Subscribe(result),
                })
            } else {
                Reply::ok(id, ReplyResult::Subscribe(result))
            };
            Bytes::from(reply.encode())
        };
        let first_local = if options.history.is_some() {
            // Hold deliveries while the position is read, so none is missed or duplicated.
            let first = hub.subscribe(&channel, self.conn, &self.queue, true, None);
            match self.position_and_recovery(&channel, &req).await {
                Ok(mut result) => {
                    result.data = push_data;
                    let top = result.offset;
                    let last_sent = result
                        .publications
                        .last()
                        .map_or(top, |p| p.offset.max(top));
                    hub.activate(&channel, self.conn, encode(result), last_sent);
                    Metrics::inc(&self.node.metrics().messages_sent);
                }
                Err(error) => {
                    if hub.unsubscribe(&channel, self.conn) {
                        let _ = self.node.broker().unsubscribe(&channel).await;
                    }
                    if id != 0 {
                        self.reply(id, Err(error));
                    }
                    return Ok(());
                }
            }
            first
        } else {
            let result = SubscribeResult {
                data: push_data,
                ..Default::default()
            };
            Metrics::inc(&self.node.metrics().messages_sent);
            hub.subscribe(
                &channel,
                self.conn,
                &self.queue,
                false,
                Some(encode(result)),
            )
        };
        if first_local {
            if let Err(e) = self.node.broker().subscribe(&channel).await {
                tracing::error!(channel, error = %e, "broker subscribe failed");
            }
        }
        self.subscriptions.insert(
            channel.clone(),
            Subscription {
                info: info.clone(),
                presence: options.presence,
                join_leave: options.join_leave,
            },
        );
        if options.presence {
            if let Err(e) = self
                .node
                .presence_storage()
                .add(&channel, info.clone())
                .await
            {
                tracing::error!(channel, error = %e, "presence add failed");
            }
        }
        if options.join_leave {
            if let Err(e) = self.node.broker().publish_join(&channel, &info).await {
                tracing::error!(channel, error = %e, "join publish failed");
            }
        }
        Ok(())
    }

    /// The subscribe result's stream fields, recovering missed publications if asked.
    async fn position_and_recovery(
        &self,
        channel: &str,
        req: &SubscribeRequest,
    ) -> Result<SubscribeResult, Error> {
        let max = self.node.config().recovery_max_publications;
        let filter = if req.recover {
            HistoryFilter {
                since: Some(crate::protocol::StreamPosition {
                    offset: req.offset,
                    epoch: String::new(),
                }),
                limit: Some(max),
                reverse: false,
            }
        } else {
            HistoryFilter {
                limit: Some(0),
                ..Default::default()
            }
        };
        let page = self.node.history(channel, filter).await?;
        let top = page.position.offset;
        let mut result = SubscribeResult {
            recoverable: true,
            positioned: true,
            epoch: page.position.epoch.clone(),
            offset: top,
            ..Default::default()
        };
        if req.recover {
            result.was_recovering = true;
            let same_epoch = req.epoch.is_empty() || req.epoch == page.position.epoch;
            let complete = match (page.publications.first(), page.publications.last()) {
                (Some(first), Some(last)) => first.offset == req.offset + 1 && last.offset == top,
                _ => top == req.offset,
            };
            if same_epoch && complete {
                result.recovered = true;
                result.publications = page.publications;
            } else if req.flag & flag::REJECT_UNRECOVERED != 0 {
                return Err(Error::new(error_code::UNRECOVERABLE_POSITION));
            }
        }
        Ok(result)
    }

    /// Leaves a channel; a no-op if not subscribed.
    async fn unsubscribe(&mut self, channel: &str) {
        if let Some(subscription) = self.subscriptions.remove(channel) {
            release(&self.node, self.conn, channel.to_string(), subscription).await;
        }
    }

    async fn publish(
        &self,
        who: &Identity,
        channel: &str,
        data: Option<Payload>,
    ) -> Result<ReplyResult, Error> {
        check_channel(channel)?;
        let data = data.ok_or_else(|| Error::new(error_code::BAD_REQUEST))?;
        let info = ClientInfo {
            user: who.user.to_string(),
            client: who.client.to_string(),
            conn_info: who.conn_info.clone(),
            chan_info: self
                .subscriptions
                .get(channel)
                .and_then(|s| s.info.chan_info.clone()),
        };
        self.node
            .publish(channel, data, Some(info), HashMap::new(), false)
            .await?;
        Ok(ReplyResult::Publish(Empty {}))
    }

    async fn presence(&self, channel: &str) -> Result<ReplyResult, Error> {
        check_channel(channel)?;
        let presence = self.node.presence(channel).await?;
        Ok(ReplyResult::Presence(PresenceResult { presence }))
    }

    async fn presence_stats(&self, channel: &str) -> Result<ReplyResult, Error> {
        check_channel(channel)?;
        let stats = self.node.presence_stats(channel).await?;
        Ok(ReplyResult::PresenceStats(PresenceStatsResult {
            num_clients: stats.num_clients,
            num_users: stats.num_users,
        }))
    }

    async fn history(&self, req: HistoryRequest) -> Result<ReplyResult, Error> {
        check_channel(&req.channel)?;
        let filter = history_filter(req.limit, req.since, req.reverse)?;
        let page = self.node.history(&req.channel, filter).await?;
        Ok(ReplyResult::History(HistoryResult {
            publications: page.publications,
            epoch: page.position.epoch,
            offset: page.position.offset,
        }))
    }

    /// Acts on a request from the node (server API actions on this client).
    pub async fn handle_control(&mut self, control: Control) {
        let Some(who) = self.identity.clone() else {
            return;
        };
        match control {
            Control::Subscribe {
                channel,
                chan_info,
                data,
            } => {
                let req = SubscribeRequest {
                    channel,
                    ..Default::default()
                };
                let extra = (chan_info, data);
                if let Err(reason) = self.subscribe(0, &who, req, Some(extra)).await {
                    self.queue.close(reason);
                }
            }
            Control::Unsubscribe { channel } => {
                if self.subscriptions.contains_key(&channel) {
                    self.unsubscribe(&channel).await;
                    let push = Reply::push(Push {
                        channel,
                        body: PushBody::Unsubscribe {
                            code: 2000,
                            reason: "server unsubscribe".into(),
                        },
                    });
                    self.send(push.encode());
                }
            }
        }
    }
}

impl Drop for Session {
    /// The one cleanup path: the hub forgets the connection and its subscriptions at once; presence
    /// and leave notices, which may need I/O, finish in a tracked task.
    fn drop(&mut self) {
        self.queue.close(Disconnect::new(3000, "connection closed"));
        let subscriptions = std::mem::take(&mut self.subscriptions);
        self.node.hub().remove_connection(self.conn);
        if subscriptions.is_empty() {
            return;
        }
        let mut last_local = Vec::new();
        for channel in subscriptions.keys() {
            if self.node.hub().unsubscribe(channel, self.conn) {
                last_local.push(channel.clone());
            }
        }
        let node = self.node.clone();
        let cleanup = async move {
            let _span = node
                .timeline()
                .span(Lane::Background, "session cleanup", "");
            for (channel, subscription) in subscriptions {
                release_shared(&node, &channel, &subscription).await;
            }
            for channel in last_local {
                let _ = node.broker().unsubscribe(&channel).await;
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                drop(runtime.spawn(self.node.tracker().track_future(cleanup)));
            }
            Err(_) => tracing::warn!("session dropped outside the runtime; presence not released"),
        }
    }
}

/// Releases one subscription: hub entry, broker interest, presence and the leave notice.
async fn release(node: &Node, conn: ConnId, channel: String, subscription: Subscription) {
    if node.hub().unsubscribe(&channel, conn) {
        let _ = node.broker().unsubscribe(&channel).await;
    }
    release_shared(node, &channel, &subscription).await;
}

/// The part of releasing a subscription that other nodes see: presence and the leave notice.
async fn release_shared(node: &Node, channel: &str, subscription: &Subscription) {
    if subscription.presence {
        if let Err(e) = node
            .presence_storage()
            .remove(channel, &subscription.info.client)
            .await
        {
            tracing::error!(channel, error = %e, "presence remove failed");
        }
    }
    if subscription.join_leave {
        if let Err(e) = node
            .broker()
            .publish_leave(channel, &subscription.info)
            .await
        {
            tracing::error!(channel, error = %e, "leave publish failed");
        }
    }
}

/// The built-in RPC methods.
fn rpc(req: RpcRequest) -> Result<ReplyResult, Error> {
    match req.method.as_str() {
        "echo" => Ok(ReplyResult::Rpc(RpcResult { data: req.data })),
        _ => Err(Error::new(error_code::METHOD_NOT_FOUND)),
    }
}

/// Rejects empty, oversized or newline-bearing channel names.
pub fn check_channel(channel: &str) -> Result<(), Error> {
    if channel.is_empty() || channel.len() > MAX_CHANNEL_LENGTH || channel.contains(['\n', '\r']) {
        return Err(Error::new(error_code::BAD_REQUEST));
    }
    Ok(())
}

/// The history filter of a client or API `history` request.
pub fn history_filter(
    limit: i32,
    since: Option<crate::protocol::StreamPosition>,
    reverse: bool,
) -> Result<HistoryFilter, Error> {
    if reverse && since.as_ref().is_some_and(|s| s.offset == 0) {
        return Err(Error::new(error_code::BAD_REQUEST));
    }
    let limit = match limit {
        l if l < 0 => None,
        l => Some(l as usize),
    };
    Ok(HistoryFilter {
        since,
        limit,
        reverse,
    })
}

fn ttl_from(expires_at: u64) -> u32 {
    expires_at.saturating_sub(unix_now()).min(u32::MAX as u64) as u32
}
