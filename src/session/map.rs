//! Map subscriptions and map publishes from the client, as centrifuge-js drives them.
//!
//! A map subscription is a series of `subscribe` commands with `type: 1`, each answered at once:
//!
//! - **state** (`phase: 2`): a page of the map's entries after `cursor`, with the stream
//!   position of the first page (the client keeps that one for the whole walk);
//! - **stream** (`phase: 1`): the changes after the client's `offset`, a page at a time, while
//!   the client is further behind than one page; then, or at once when it is close enough,
//! - **live** (`phase: 0`): the client becomes a subscriber, exactly as a recovering stream
//!   subscriber does: the remaining changes come in the reply, and every later one as a
//!   publication push. A gap (the stream was trimmed past the client's offset, or its epoch
//!   changed) is error 112, after which the SDK reads the state again from scratch.
//!
//! Only the live reply registers the subscription; the earlier phases are reads, checked with
//! the same decisions as a subscribe.

use futures_util::future::BoxFuture;

use super::{Answer, Identity, Session};
use crate::channel::{ChannelOptions, MapOptions};
use crate::config::{ClientKey, MapMode};
use crate::engine::history::HistoryFilter;
use crate::hooks::decisions::SubscribeDecision;
use crate::hooks::Refusal;
use crate::protocol::{
    error_code, flag, ClientInfo, Error, PublishRequest, ReplyResult, StreamPosition,
    SubscribeRequest, SubscribeResult,
};

/// `type` of a map subscription (2 and 3 are map presence, see [`crate::channel`]).
const TYPE_MAP: i32 = crate::channel::MAP;
/// Phases of a map subscription.
const PHASE_LIVE: i32 = 0;
const PHASE_STREAM: i32 = 1;
const PHASE_STATE: i32 = 2;

impl Session {
    /// A `subscribe` of a map channel, or one asking for a map subscription (checked already:
    /// name, permission, channel limit).
    pub(super) async fn map_subscribe(
        &mut self,
        id: u32,
        who: &Identity,
        req: SubscribeRequest,
        options: ChannelOptions,
        decision: SubscribeDecision,
    ) -> Answer {
        // A stream subscriber of a map channel, or a map subscriber of a stream channel, would
        // misread what it receives.
        let Some(map) = options.map.filter(|m| req.kind == m.kind) else {
            return Err(Error::new(error_code::BAD_REQUEST).into());
        };
        let kind = map.kind;
        match req.phase {
            PHASE_STATE => self.map_state_page(&req, &map).await,
            PHASE_STREAM | PHASE_LIVE => {
                let limit = map
                    .page_size(req.limit)
                    .min(self.node.config().recovery_max_publications.max(1));
                if let Some(page) = self.map_stream_page(&req, limit).await? {
                    return Ok(Some(ReplyResult::Subscribe(page)));
                }
                let recovering = req.recover;
                let ephemeral = map.mode == MapMode::Ephemeral;
                let live = SubscribeRequest {
                    recover: true,
                    flag: req.flag | flag::REJECT_UNRECOVERED,
                    ..req
                };
                self.subscribe_now(id, who, live, options, decision, move |result| {
                    result.kind = kind;
                    result.phase = PHASE_LIVE;
                    // A fresh subscription gets `sync` from the SDK, a recovery `update`s.
                    result.recovered = recovering;
                    result.was_recovering = recovering;
                    // Ephemeral maps are read again after a reconnect, not caught up.
                    result.recoverable = !ephemeral;
                })
                .await
            }
            _ => Err(Error::new(error_code::BAD_REQUEST).into()),
        }
    }

    /// A state page; its position is the stream's when it was read.
    async fn map_state_page(&self, req: &SubscribeRequest, map: &MapOptions) -> Answer {
        // Room for the reply's own fields beside the entries.
        let budget = self.max_answer_bytes().saturating_sub(1024);
        let page = self
            .node
            .map_state(&req.channel, &req.cursor, map.page_size(req.limit), budget)
            .await?;
        Ok(Some(ReplyResult::Subscribe(SubscribeResult {
            kind: map.kind,
            phase: PHASE_STATE,
            epoch: page.position.epoch,
            offset: page.position.offset,
            cursor: page.cursor,
            state: page.entries,
            ..Default::default()
        })))
    }

    /// A stream page when the client is more than `limit` changes behind; `None` when it may go
    /// live. A position the stream no longer continues is error 112. A page whose changes would
    /// not fit in one answer is read again, shorter.
    async fn map_stream_page(
        &self,
        req: &SubscribeRequest,
        limit: usize,
    ) -> Result<Option<SubscribeResult>, Error> {
        let mut read = limit;
        let page = loop {
            let filter = HistoryFilter {
                since: Some(StreamPosition {
                    offset: req.offset,
                    epoch: req.epoch.clone(),
                }),
                limit: Some(read),
                reverse: false,
                max_bytes: Some(self.max_answer_bytes().saturating_sub(1024)),
            };
            match self.node.history(&req.channel, filter).await {
                Err(error) if error.code == error_code::LIMIT_EXCEEDED && read > 1 => read /= 2,
                other => break other?,
            }
        };
        let top = page.position.offset;
        let continues = req.offset <= top
            && (top == req.offset
                || page
                    .publications
                    .first()
                    .is_some_and(|p| p.offset == req.offset + 1));
        if !continues {
            return Err(Error::new(error_code::UNRECOVERABLE_POSITION));
        }
        if top - req.offset <= read as u64 && read == limit {
            return Ok(None);
        }
        let last = page.publications.last().map_or(req.offset, |p| p.offset);
        Ok(Some(SubscribeResult {
            kind: req.kind,
            phase: PHASE_STREAM,
            epoch: page.position.epoch,
            offset: last,
            publications: page.publications,
            ..Default::default()
        }))
    }

    /// A map publish or remove from the client (`type: 1`): the namespace's map permissions,
    /// its key rule, then the change. Awaited by the caller (its order is fixed as it runs).
    pub(super) fn map_publish(
        &self,
        who: &Identity,
        req: PublishRequest,
        options: &ChannelOptions,
    ) -> Result<BoxFuture<'static, Result<Option<StreamPosition>, Error>>, Refusal> {
        // Map presence channels are written by the server only.
        let Some(map) = options
            .map
            .filter(|m| req.kind == TYPE_MAP && m.kind == TYPE_MAP)
        else {
            return Err(Error::new(error_code::BAD_REQUEST).into());
        };
        let subscribed = self.subscriptions.contains_key(&req.channel);
        let (for_client, for_subscriber, for_anonymous) = if req.removed {
            (
                map.allow_remove_for_client,
                map.allow_remove_for_subscriber,
                map.allow_remove_for_anonymous,
            )
        } else {
            (
                map.allow_publish_for_client,
                map.allow_publish_for_subscriber,
                map.allow_publish_for_anonymous,
            )
        };
        let permitted = for_client || (for_subscriber && subscribed);
        if !permitted || (who.user.is_empty() && !for_anonymous) {
            return Err(Error::new(error_code::PERMISSION_DENIED).into());
        }
        let key = match map.client_key {
            ClientKey::Sent => req.key,
            ClientKey::ClientId => who.client.to_string(),
            ClientKey::UserId => who.user.to_string(),
        };
        let node = self.node.clone();
        let channel = req.channel;
        if req.removed {
            return Ok(Box::pin(async move {
                node.map_remove(&channel, &key, None).await
            }));
        }
        let data = req
            .data
            .ok_or_else(|| Error::new(error_code::BAD_REQUEST))?;
        let info = ClientInfo {
            user: who.user.to_string(),
            client: who.client.to_string(),
            conn_info: who.conn_info.clone(),
            chan_info: self
                .subscriptions
                .get(&channel)
                .and_then(|s| s.info.chan_info.clone()),
        };
        Ok(Box::pin(async move {
            node.map_publish(&channel, &key, data, Some(info), Default::default())
                .await
                .map(Some)
        }))
    }
}
