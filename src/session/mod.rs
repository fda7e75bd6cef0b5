//! One client: its authentication, its subscriptions, and the handling of its commands.
//!
//! A [`Session`] is owned by its connection task (see `transport`), which feeds it client frames
//! and control requests and writes what it queues. Replies and pushes share the client's bounded
//! queue, so they reach the client in the order they were produced.
//!
//! Cleanup lives in `Drop`: however the connection ends (close frame, reset, timeout, slow client,
//! shutdown, API disconnect, even a panic), dropping the session releases every subscription and
//! presence entry. There is no other exit path to forget.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::time::Instant;

use crate::auth::{unix_now, ConnectionClaims, TokenError};
use crate::config::Config;
use crate::engine::history::HistoryFilter;
use crate::hub::{ClientHandle, ConnId, Control, ControlSender};
use crate::metrics::Metrics;
use crate::node::{ChannelOptions, Node, Submitted, VERSION};
use crate::protocol::{
    error_code, flag, ClientInfo, Command, ConnectRequest, ConnectResult, Disconnect, Empty, Error,
    HistoryRequest, HistoryResult, Payload, PresenceResult, PresenceStatsResult, Push, PushBody,
    RefreshRequest, RefreshResult, Reply, ReplyResult, Request, RpcRequest, RpcResult,
    SubRefreshRequest, SubRefreshResult, SubscribeRequest, SubscribeResult,
};
use crate::queue::ClientQueue;
use crate::ratelimit::TokenBucket;
use crate::timeline::Lane;
use crate::vecmap::VecMap;

/// Longest channel name anyone may use, in bytes (configurations may lower it).
pub const MAX_CHANNEL_LENGTH: usize = 1024;

/// A subscription held by a session.
#[derive(Debug, Clone)]
struct Subscription {
    info: ClientInfo,
    presence: bool,
    join_leave: bool,
    /// When the subscription token expires (unix seconds), if it does.
    expires_at: Option<u64>,
}

/// One connected (or connecting) client.
pub struct Session {
    node: Node,
    conn: ConnId,
    queue: Arc<ClientQueue>,
    control: ControlSender,
    identity: Option<Identity>,
    /// A [`VecMap`]: a client usually holds one or a few subscriptions, and this map is paid
    /// for by every connection.
    subscriptions: VecMap<String, Subscription>,
    /// When the last ping was sent, while its pong is awaited.
    ping_sent: Option<Instant>,
    /// When the connection's token expires (unix seconds), if it does.
    expires_at: Option<u64>,
    limiter: RateLimiter,
    /// Publishes in flight, oldest first, with the ids of the commands they answer. Created on
    /// first use (most connections never publish) and boxed to keep idle sessions small. Only
    /// reached through `&mut self` (`Mutex::get_mut`, never locked): the mutex only makes the
    /// session `Sync`, which its `&self` methods held across awaits need.
    pipeline: Option<Box<Mutex<Pipeline>>>,
}

type Pipeline = VecDeque<(u32, PublishFuture)>;

/// A client publish under way.
type PublishFuture = BoxFuture<'static, Result<Option<crate::protocol::StreamPosition>, Error>>;

/// Most publishes one client may have in flight; beyond that its next frame waits (the client's
/// own backpressure). In flight, a durable history store commits them together.
const MAX_PUBLISHES_IN_FLIGHT: usize = 256;

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
    pub fn new(node: Node, queue: Arc<ClientQueue>, control: ControlSender) -> Session {
        Metrics::inc(&node.metrics().connections_accepted);
        let limiter = RateLimiter::new(
            node.config().client_command_rate,
            node.config().client_command_burst,
        );
        Session {
            conn: node.next_conn_id(),
            node,
            queue,
            control,
            identity: None,
            subscriptions: VecMap::new(),
            ping_sent: None,
            expires_at: None,
            limiter,
            pipeline: None,
        }
    }

    /// Whether publishes are in flight (see [`Session::finish_publish`]).
    pub fn has_publishes_in_flight(&mut self) -> bool {
        self.in_flight() > 0
    }

    fn in_flight(&mut self) -> usize {
        self.pipeline_mut().map_or(0, |p| p.len())
    }

    fn pipeline_mut(&mut self) -> Option<&mut Pipeline> {
        self.pipeline
            .as_mut()
            .map(|p| p.get_mut().unwrap_or_else(|e| e.into_inner()))
    }

    /// Waits for the oldest publish in flight and replies to it; never resolves if none is.
    /// Cancel-safe: dropped before it resolves, it leaves the publish in flight.
    pub async fn finish_publish(&mut self) {
        let Some(front) = self.pipeline_mut().and_then(|p| p.front_mut()) else {
            return std::future::pending().await;
        };
        let result = (&mut front.1).await;
        let Some((id, _)) = self.pipeline_mut().and_then(|p| p.pop_front()) else {
            return;
        };
        self.reply(id, result.map(|_| ReplyResult::Publish(Empty {})));
    }

    /// Replies to every publish in flight, in order: whatever is answered next comes after them.
    async fn finish_publishes(&mut self) {
        while self.has_publishes_in_flight() {
            self.finish_publish().await;
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

    /// Notes a frame from the client. While a pong is awaited, a client whose frames keep
    /// arriving is alive even if its pong is late: under backpressure (its publishes waiting for
    /// durable writes) the pong sits behind its earlier frames, unread. The pong stays due, from
    /// now. A client that sends but does not read is caught by its queue bound instead.
    pub fn frame_received(&mut self) {
        if self.ping_sent.is_some() {
            self.ping_sent = Some(Instant::now());
        }
    }

    /// When the outstanding ping was sent (or, since then, the client's last frame arrived), if a
    /// pong is awaited.
    pub fn awaiting_pong_since(&self) -> Option<Instant> {
        self.ping_sent
    }

    /// When the next expiry (connection or subscription, plus grace) needs checking.
    pub fn expiry_deadline(&self) -> Option<Instant> {
        let earliest = self
            .subscriptions
            .values()
            .filter_map(|s| s.expires_at)
            .chain(self.expires_at)
            .min()?;
        let grace = self.node.config().expired_grace;
        let left = earliest.saturating_sub(unix_now()) + grace;
        Some(Instant::now() + Duration::from_secs(left))
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
        // Replies go out in command order: anything that is answered, other than another publish,
        // waits for the publishes in flight (which also lets a `history` read see them).
        if !matches!(
            request,
            Request::Publish(_) | Request::Pong | Request::Send(_)
        ) {
            self.finish_publishes().await;
        }
        if !matches!(request, Request::Pong | Request::Connect(_)) {
            match self.limiter.admit() {
                Admission::Admit => {}
                Admission::Refuse => {
                    self.finish_publishes().await;
                    if id != 0 {
                        self.reply(id, Err(Error::new(error_code::TOO_MANY_REQUESTS)));
                    }
                    return Ok(());
                }
                Admission::Flooding => return Err(Disconnect::TOO_MANY_REQUESTS),
            }
        }
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
                return self.client_subscribe(id, &who, req).await;
            }
            (Request::Unsubscribe(req), _) => {
                self.unsubscribe(&req.channel).await;
                Ok(ReplyResult::Unsubscribe(Empty {}))
            }
            (Request::Publish(req), Some(who)) => {
                match self.submit_publish(&who, &req.channel, req.data) {
                    Ok(Submitted::InFlight(publishing)) => {
                        if self.in_flight() >= MAX_PUBLISHES_IN_FLIGHT {
                            self.finish_publish().await;
                        }
                        let pipeline = self.pipeline.get_or_insert_default().get_mut();
                        pipeline
                            .unwrap_or_else(|e| e.into_inner())
                            .push_back((id, publishing));
                        return Ok(());
                    }
                    Ok(Submitted::Sequential(publishing)) => {
                        self.finish_publishes().await;
                        publishing.await.map(|_| ReplyResult::Publish(Empty {}))
                    }
                    Err(e) => {
                        self.finish_publishes().await;
                        Err(e)
                    }
                }
            }
            (Request::Presence(req), _) => self.presence(&req.channel).await,
            (Request::PresenceStats(req), _) => self.presence_stats(&req.channel).await,
            (Request::History(req), _) => self.history(req).await,
            (Request::Rpc(req), _) => rpc(req),
            (Request::Refresh(req), Some(who)) => self.refresh(&who, req)?,
            (Request::SubRefresh(req), Some(who)) => self.sub_refresh(&who, req)?,
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

    /// Queues one encoded message to this client. Only the connection's task calls this, and it
    /// looks at the queue before it waits again (see `transport`), so the push does not wake it.
    fn send(&self, message: Vec<u8>) {
        let metrics = self.node.metrics();
        match self.queue.push_from_consumer(Bytes::from(message)) {
            Ok(()) => Metrics::inc(&metrics.messages_sent),
            Err(crate::queue::PushError::Overflow) => {
                Metrics::inc(&metrics.queue_drops);
                Metrics::inc(&metrics.slow_disconnects);
            }
            Err(crate::queue::PushError::Closed) => Metrics::inc(&metrics.queue_drops),
        }
    }

    async fn connect(&mut self, id: u32, req: ConnectRequest) -> Outcome {
        let node = self.node.clone();
        let config = node.config();
        let claims = if req.token.is_empty() {
            if !config.anonymous_allowed() {
                return Err(Disconnect::INVALID_TOKEN);
            }
            ConnectionClaims::default()
        } else {
            let Some(verifier) = self.node.verifier() else {
                tracing::debug!("token given but no token key configured");
                return Err(Disconnect::INVALID_TOKEN);
            };
            match verifier.verify_connection(&req.token) {
                Ok(claims) => claims,
                Err(TokenError::Expired) => {
                    self.reply(id, Err(Error::new(error_code::TOKEN_EXPIRED)));
                    return Ok(());
                }
                Err(TokenError::KeyUnavailable) => {
                    self.reply(id, Err(Error::new(error_code::INTERNAL)));
                    return Ok(());
                }
                Err(TokenError::Invalid(reason)) => {
                    tracing::debug!(%reason, "invalid connection token");
                    return Err(Disconnect::INVALID_TOKEN);
                }
            }
        };
        let limit = config.user_connection_limit;
        if limit > 0
            && !claims.sub.is_empty()
            && self.node.hub().user_connection_count(&claims.sub) >= limit
        {
            return Err(Disconnect::CONNECTION_LIMIT);
        }
        let identity = Identity {
            client: Arc::from(uuid::Uuid::new_v4().to_string()),
            user: Arc::from(claims.sub.as_str()),
            conn_info: claims.info().map(Payload::from),
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
        self.expires_at = claims.expires_at();
        tracing::debug!(client = %identity.client, user = %identity.user, "connected");
        self.identity = Some(identity.clone());

        // Server-side subscriptions named by the token; the client may ask to recover them.
        let mut server_subs: Vec<(String, Option<Payload>, Option<Payload>)> = claims
            .channels
            .iter()
            .map(|c| (c.clone(), None, None))
            .collect();
        for (channel, options) in &claims.subs {
            server_subs.push((
                channel.clone(),
                options.info().map(Payload::from),
                options.data.clone().map(Payload::from),
            ));
        }
        let mut subs = HashMap::new();
        let mut joined = Vec::new();
        for (channel, chan_info, data) in server_subs {
            if subs.contains_key(&channel) || check_channel_name(config, &channel).is_err() {
                continue;
            }
            let Ok(options) = self.node.channel_options(&channel) else {
                continue;
            };
            let mut req = req.subs.get(&channel).cloned().unwrap_or_default();
            req.channel = channel.clone();
            match self.join(&req, &options).await {
                Ok((mut result, after)) => {
                    result.data = data;
                    subs.insert(channel.clone(), result);
                    joined.push((channel, chan_info, options, after));
                }
                Err(error) => {
                    tracing::warn!(
                        channel,
                        code = error.code,
                        "server-side subscription failed"
                    )
                }
            }
        }
        let result = ConnectResult {
            client: identity.client.to_string(),
            version: VERSION.to_string(),
            expires: self.expires_at.is_some(),
            ttl: self.expires_at.map_or(0, ttl_from),
            ping: config.ping_interval as u32,
            pong: true,
            subs,
            ..Default::default()
        };
        self.reply(id, Ok(ReplyResult::Connect(result)));
        for (channel, chan_info, options, after) in joined {
            self.node.hub().activate(&channel, self.conn, None, after);
            self.register(&identity, channel, chan_info, &options, None)
                .await;
        }
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
        let claims = match verifier.verify_connection(&req.token) {
            Ok(claims) => claims,
            Err(TokenError::Expired) => return Err(Disconnect::EXPIRED),
            Err(TokenError::KeyUnavailable) => return Ok(Err(Error::new(error_code::INTERNAL))),
            Err(TokenError::Invalid(_)) => return Err(Disconnect::INVALID_TOKEN),
        };
        if claims.sub != *who.user {
            return Err(Disconnect::INVALID_TOKEN);
        }
        self.expires_at = claims.expires_at();
        Ok(Ok(ReplyResult::Refresh(RefreshResult {
            client: who.client.to_string(),
            version: VERSION.to_string(),
            expires: self.expires_at.is_some(),
            ttl: self.expires_at.map_or(0, ttl_from),
        })))
    }

    /// `sub_refresh`: a new subscription token extends a subscription's life.
    fn sub_refresh(
        &mut self,
        who: &Identity,
        req: SubRefreshRequest,
    ) -> Result<Result<ReplyResult, Error>, Disconnect> {
        let Some(verifier) = self.node.verifier() else {
            return Ok(Err(Error::new(error_code::NOT_AVAILABLE)));
        };
        let claims = match verifier.verify_subscription(&req.token) {
            Ok(claims) => claims,
            Err(TokenError::Expired) => return Ok(Err(Error::new(error_code::EXPIRED))),
            Err(TokenError::KeyUnavailable) => return Ok(Err(Error::new(error_code::INTERNAL))),
            Err(TokenError::Invalid(_)) => return Err(Disconnect::INVALID_TOKEN),
        };
        if claims.channel != req.channel || claims.sub != *who.user {
            return Err(Disconnect::INVALID_TOKEN);
        }
        let Some(subscription) = self.subscriptions.get_mut(&req.channel) else {
            return Ok(Err(Error::new(error_code::PERMISSION_DENIED)));
        };
        subscription.expires_at = claims.expires_at();
        Ok(Ok(ReplyResult::SubRefresh(SubRefreshResult {
            expires: subscription.expires_at.is_some(),
            ttl: subscription.expires_at.map_or(0, ttl_from),
        })))
    }

    /// `subscribe` from the client: checks, then subscribes and replies.
    async fn client_subscribe(
        &mut self,
        id: u32,
        who: &Identity,
        req: SubscribeRequest,
    ) -> Outcome {
        let channel = req.channel.clone();
        let checked = self.check_subscribe(who, &req);
        let (options, chan_info, expires_at) = match checked {
            Ok(Ok(checked)) => checked,
            Ok(Err(error)) => {
                self.reply(id, Err(error));
                return Ok(());
            }
            Err(disconnect) => return Err(disconnect),
        };
        match self.join(&req, &options).await {
            Ok((mut result, after)) => {
                result.expires = expires_at.is_some();
                result.ttl = expires_at.map_or(0, ttl_from);
                let reply = Reply::ok(id, ReplyResult::Subscribe(result)).encode();
                Metrics::inc(&self.node.metrics().messages_sent);
                self.node
                    .hub()
                    .activate(&channel, self.conn, Some(Bytes::from(reply)), after);
                self.register(who, channel, chan_info, &options, expires_at)
                    .await;
            }
            Err(error) => self.reply(id, Err(error)),
        }
        Ok(())
    }

    /// Whether this client may subscribe: the channel's options, the subscription token's channel
    /// info and expiry — or the error to reply, or the disconnect a forged token earns.
    #[allow(clippy::type_complexity)]
    fn check_subscribe(
        &self,
        who: &Identity,
        req: &SubscribeRequest,
    ) -> Result<Result<(ChannelOptions, Option<Payload>, Option<u64>), Error>, Disconnect> {
        let config = self.node.config();
        let channel = &req.channel;
        if let Err(error) = check_channel_name(config, channel) {
            return Ok(Err(error));
        }
        if self.subscriptions.contains_key(channel) {
            return Ok(Err(Error::new(error_code::ALREADY_SUBSCRIBED)));
        }
        if self.subscriptions.len() >= config.client_channel_limit {
            return Ok(Err(Error::new(error_code::LIMIT_EXCEEDED)));
        }
        let options = match self.node.channel_options(channel) {
            Ok(options) => options,
            Err(error) => return Ok(Err(error)),
        };
        let denied = || Ok(Err(Error::new(error_code::PERMISSION_DENIED)));
        if !req.token.is_empty() {
            let Some(verifier) = self.node.verifier() else {
                return denied();
            };
            let claims = match verifier.verify_subscription(&req.token) {
                Ok(claims) => claims,
                Err(TokenError::Expired) => return Ok(Err(Error::new(error_code::TOKEN_EXPIRED))),
                Err(TokenError::KeyUnavailable) => {
                    return Ok(Err(Error::new(error_code::INTERNAL)))
                }
                Err(TokenError::Invalid(reason)) => {
                    tracing::debug!(%reason, "invalid subscription token");
                    return denied();
                }
            };
            if claims.channel != *channel {
                return Err(Disconnect::INVALID_TOKEN);
            }
            if claims.sub != *who.user {
                return denied();
            }
            return Ok(Ok((
                options,
                claims.info().map(Payload::from),
                claims.expires_at(),
            )));
        }
        // Without a token: private (`$`) channels are closed, user-limited ones (`#`) open only to
        // the users they list, the rest as the namespace allows.
        let name = channel.split_once(':').map_or(channel.as_str(), |(_, n)| n);
        if name.starts_with('$') {
            return denied();
        }
        if let Some((_, users)) = channel.rsplit_once('#') {
            if !users.split(',').any(|u| !u.is_empty() && u == &*who.user) {
                return denied();
            }
            return Ok(Ok((options, None, None)));
        }
        let anonymous = who.user.is_empty();
        if !options.allow_subscribe_for_client
            || (anonymous && !options.allow_subscribe_for_anonymous)
        {
            return denied();
        }
        Ok(Ok((options, None, None)))
    }

    /// A subscription made by the server API: no permission check, a `subscribe` push.
    async fn server_subscribe(
        &mut self,
        who: &Identity,
        channel: String,
        chan_info: Option<Payload>,
        data: Option<Payload>,
    ) {
        if self.subscriptions.contains_key(&channel)
            || check_channel_name(self.node.config(), &channel).is_err()
        {
            return;
        }
        let Ok(options) = self.node.channel_options(&channel) else {
            return;
        };
        let req = SubscribeRequest {
            channel: channel.clone(),
            ..Default::default()
        };
        match self.join(&req, &options).await {
            Ok((mut result, after)) => {
                result.data = data;
                let push = Reply::push(Push {
                    channel: channel.clone(),
                    body: PushBody::Subscribe(result),
                })
                .encode();
                Metrics::inc(&self.node.metrics().messages_sent);
                self.node
                    .hub()
                    .activate(&channel, self.conn, Some(Bytes::from(push)), after);
                self.register(who, channel, chan_info, &options, None).await;
            }
            Err(error) => {
                tracing::warn!(
                    channel,
                    code = error.code,
                    "server-side subscription failed"
                )
            }
        }
    }

    /// Adds this client to the channel in the hub with deliveries held, and computes the
    /// subscribe result (position, recovery). The caller queues its reply and then calls
    /// [`Hub::activate`] with the returned offset; on error the hub entry is already removed.
    async fn join(
        &mut self,
        req: &SubscribeRequest,
        options: &ChannelOptions,
    ) -> Result<(SubscribeResult, u64), Error> {
        let channel = &req.channel;
        // As in Centrifugo: join/leave pushes only to subscribers that ask, unless forced.
        let wants_join_leave =
            options.join_leave && (req.join_leave || options.force_push_join_leave);
        let first_local =
            self.node
                .hub()
                .subscribe(channel, self.conn, &self.queue, wants_join_leave);
        if first_local {
            if let Err(e) = self.node.broker().subscribe(channel).await {
                tracing::error!(channel, error = %e, "broker subscribe failed");
            }
        }
        let result = if options.history.is_some()
            && (options.force_recovery || req.recover || req.recoverable || req.positioned)
        {
            self.position_and_recovery(channel, req).await
        } else {
            Ok(SubscribeResult::default())
        };
        match result {
            Ok(result) => {
                let after = result
                    .publications
                    .last()
                    .map_or(result.offset, |p| p.offset.max(result.offset));
                Ok((result, after))
            }
            Err(error) => {
                if self.node.hub().unsubscribe(channel, self.conn) {
                    let _ = self.node.broker().unsubscribe(channel).await;
                }
                Err(error)
            }
        }
    }

    /// Records a subscription once the client has its reply: presence, join notice.
    async fn register(
        &mut self,
        who: &Identity,
        channel: String,
        chan_info: Option<Payload>,
        options: &ChannelOptions,
        expires_at: Option<u64>,
    ) {
        let info = ClientInfo {
            user: who.user.to_string(),
            client: who.client.to_string(),
            conn_info: who.conn_info.clone(),
            chan_info,
        };
        self.subscriptions.insert(
            channel.clone(),
            Subscription {
                info: info.clone(),
                presence: options.presence,
                join_leave: options.join_leave,
                expires_at,
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

    /// Checks that `channel` is a valid name and that this client may act on it: `grants` picks,
    /// from the channel's options, whether any client (first) or any subscriber (second) may.
    /// Returns the options; error 103 when neither applies.
    fn permit(
        &self,
        channel: &str,
        grants: fn(&ChannelOptions) -> (bool, bool),
    ) -> Result<ChannelOptions, Error> {
        check_channel_name(self.node.config(), channel)?;
        let options = self.node.channel_options(channel)?;
        let (for_client, for_subscriber) = grants(&options);
        if for_client || (for_subscriber && self.subscriptions.contains_key(channel)) {
            Ok(options)
        } else {
            Err(Error::new(error_code::PERMISSION_DENIED))
        }
    }

    /// Checks a client publish and starts it.
    fn submit_publish(
        &self,
        who: &Identity,
        channel: &str,
        data: Option<Payload>,
    ) -> Result<Submitted, Error> {
        let options = self.permit(channel, |o| {
            (o.allow_publish_for_client, o.allow_publish_for_subscriber)
        })?;
        if who.user.is_empty() && !options.allow_publish_for_anonymous {
            return Err(Error::new(error_code::PERMISSION_DENIED));
        }
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
            .submit_publish(channel, data, Some(info), HashMap::new(), false)
    }

    fn check_presence(&self, channel: &str) -> Result<(), Error> {
        self.permit(channel, |o| {
            (o.allow_presence_for_client, o.allow_presence_for_subscriber)
        })
        .map(drop)
    }

    async fn presence(&self, channel: &str) -> Result<ReplyResult, Error> {
        self.check_presence(channel)?;
        let presence = self.node.presence(channel).await?;
        Ok(ReplyResult::Presence(PresenceResult { presence }))
    }

    async fn presence_stats(&self, channel: &str) -> Result<ReplyResult, Error> {
        self.check_presence(channel)?;
        let stats = self.node.presence_stats(channel).await?;
        Ok(ReplyResult::PresenceStats(PresenceStatsResult {
            num_clients: stats.num_clients,
            num_users: stats.num_users,
        }))
    }

    async fn history(&self, req: HistoryRequest) -> Result<ReplyResult, Error> {
        self.permit(&req.channel, |o| {
            (o.allow_history_for_client, o.allow_history_for_subscriber)
        })?;
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
            } => self.server_subscribe(&who, channel, chan_info, data).await,
            Control::Unsubscribe {
                channel,
                code,
                reason,
            } => self.server_unsubscribe(&channel, code, reason).await,
        }
    }

    /// Ends a subscription from the server side and tells the client with an `unsubscribe` push.
    async fn server_unsubscribe(&mut self, channel: &str, code: u32, reason: &str) {
        if self.subscriptions.contains_key(channel) {
            self.unsubscribe(channel).await;
            let push = Reply::push(Push {
                channel: channel.to_string(),
                body: PushBody::Unsubscribe {
                    code,
                    reason: reason.into(),
                },
            });
            self.send(push.encode());
        }
    }

    /// Acts on expiries that have passed (plus grace): the connection's (disconnect 3005) and
    /// subscriptions' (unsubscribe push 2501, so the client resubscribes with a fresh token).
    pub async fn check_expiry(&mut self) -> Outcome {
        let now = unix_now();
        let grace = self.node.config().expired_grace;
        if self.expires_at.is_some_and(|at| at + grace <= now) {
            return Err(Disconnect::EXPIRED);
        }
        let expired: Vec<String> = self
            .subscriptions
            .iter()
            .filter(|(_, s)| s.expires_at.is_some_and(|at| at + grace <= now))
            .map(|(c, _)| c.clone())
            .collect();
        for channel in expired {
            self.server_unsubscribe(&channel, 2501, "subscription expired")
                .await;
        }
        Ok(())
    }
}

/// Admits client commands through a token bucket, and spots clients that keep flooding.
#[derive(Debug)]
struct RateLimiter {
    bucket: TokenBucket,
    /// Commands refused since the last one admitted.
    refused: u32,
}

/// What the limiter says of one command.
#[derive(Debug, PartialEq, Eq)]
enum Admission {
    Admit,
    /// Refuse this command (error 111).
    Refuse,
    /// The client keeps flooding: disconnect it.
    Flooding,
}

impl RateLimiter {
    fn new(rate: u32, burst: u32) -> Self {
        RateLimiter {
            bucket: TokenBucket::new(rate, burst),
            refused: 0,
        }
    }

    fn admit(&mut self) -> Admission {
        if self.bucket.take(Instant::now().into_std()) {
            self.refused = 0;
            return Admission::Admit;
        }
        self.refused += 1;
        // A client that goes on sending a full burst's worth after being refused is flooding.
        if f64::from(self.refused) > self.bucket.burst() {
            Admission::Flooding
        } else {
            Admission::Refuse
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

/// [`check_channel`] with the configured length limit.
fn check_channel_name(config: &Config, channel: &str) -> Result<(), Error> {
    check_channel(channel)?;
    if channel.len() > config.channel_max_length {
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
