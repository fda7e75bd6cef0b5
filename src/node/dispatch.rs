//! What the broker delivers to this node becomes queued messages for local subscribers: each
//! event is encoded once per encoding its subscribers speak, and the same bytes go to every
//! subscriber of that encoding.

use std::sync::Arc;

use crate::engine::broker::{BrokerEventHandler, NodeControl};
use crate::hub::{Control, Hub};
use crate::metrics::Metrics;
use crate::protocol::{unsubscribe_code, ClientInfo, EncodedPush, Publication, Push, PushBody};
use crate::timeline::{Lane, Timeline};

/// The push, to be encoded once per encoding its subscribers speak.
fn encode_push(channel: &str, body: PushBody) -> EncodedPush {
    EncodedPush::new(Push {
        channel: channel.to_string(),
        body,
    })
}

/// Turns broker events into queued messages for local subscribers: each event is encoded once
/// and the same bytes go to every subscriber.
pub(super) struct Dispatcher {
    pub(super) hub: Arc<Hub>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) timeline: Arc<Timeline>,
    /// This node's uid, to pick the emulation requests meant for it.
    pub(super) uid: String,
    pub(super) emulation: Arc<super::emulation::EmulationSessions>,
}

impl Dispatcher {
    fn deliver_join_leave(&self, channel: &str, body: PushBody) {
        let mut span = self.timeline.span(Lane::FanOut, body.kind(), channel);
        let delivery = self
            .hub
            .deliver_join_leave(channel, &encode_push(channel, body));
        span.set_count(delivery.queued);
        self.count(delivery);
    }

    fn count(&self, delivery: crate::hub::Delivery) {
        Metrics::add(&self.metrics.messages_sent, delivery.queued);
        Metrics::add(&self.metrics.queue_drops, delivery.dropped);
        Metrics::add(&self.metrics.slow_disconnects, delivery.overflowed);
    }

    fn matching(&self, user: &str, client: &Option<String>) -> Vec<crate::hub::ClientHandle> {
        self.hub
            .user_connections(user)
            .into_iter()
            .filter(|h| client.as_deref().is_none_or(|c| *h.client_id == *c))
            .collect()
    }
}

impl BrokerEventHandler for Dispatcher {
    fn handle_insufficient_state(&self, channel: &str) {
        for handle in self.hub.subscriber_handles(channel) {
            let request = Control::Unsubscribe {
                channel: channel.to_string(),
                code: unsubscribe_code::INSUFFICIENT_STATE,
                reason: "insufficient state",
            };
            if handle.control.try_send(request).is_err() {
                // The client cannot be told in order: make it reconnect and recover instead.
                handle
                    .queue
                    .close(crate::protocol::Disconnect::INSUFFICIENT_STATE);
            }
        }
    }

    fn handle_publication(&self, channel: &str, publication: Arc<Publication>) {
        let mut span = self.timeline.span(Lane::FanOut, "publication", channel);
        let message = encode_push(channel, PushBody::Publication(publication.clone()));
        let delivery = self
            .hub
            .deliver_publication(channel, &publication, &message);
        span.set_count(delivery.queued);
        self.count(delivery);
    }

    fn handle_join(&self, channel: &str, info: &ClientInfo) {
        self.deliver_join_leave(channel, PushBody::Join { info: info.clone() });
    }

    fn handle_leave(&self, channel: &str, info: &ClientInfo) {
        self.deliver_join_leave(channel, PushBody::Leave { info: info.clone() });
    }

    fn handle_control(&self, control: NodeControl) {
        match control {
            NodeControl::Subscribe {
                user,
                channel,
                client,
                chan_info,
                data,
            } => {
                for handle in self.matching(&user, &client) {
                    let request = Control::Subscribe {
                        channel: channel.clone(),
                        chan_info: chan_info.clone(),
                        data: data.clone(),
                    };
                    if handle.control.try_send(request).is_err() {
                        tracing::warn!(client = %handle.client_id, "control queue full, subscribe dropped");
                    }
                }
            }
            NodeControl::Unsubscribe {
                user,
                channel,
                client,
            } => {
                for handle in self.matching(&user, &client) {
                    let request = Control::Unsubscribe {
                        channel: channel.clone(),
                        code: unsubscribe_code::SERVER,
                        reason: "server unsubscribe",
                    };
                    if handle.control.try_send(request).is_err() {
                        tracing::warn!(client = %handle.client_id, "control queue full, unsubscribe dropped");
                    }
                }
            }
            NodeControl::Disconnect {
                user,
                client,
                whitelist,
                reason,
            } => {
                for handle in self.matching(&user, &client) {
                    if !whitelist.iter().any(|w| **w == *handle.client_id) {
                        handle.queue.close(reason.clone());
                    }
                }
            }
            // Answered by the broker itself, which asks `local_channels`.
            NodeControl::Channels { .. } => {}
            NodeControl::Refresh {
                user,
                client,
                expired,
                expire_at,
                info,
            } => {
                for handle in self.matching(&user, &client) {
                    if expired || expire_at.is_some_and(|at| at <= crate::auth::unix_now()) {
                        handle.queue.close(crate::protocol::Disconnect::EXPIRED);
                        continue;
                    }
                    let request = Control::Refresh {
                        expire_at,
                        info: info.clone(),
                    };
                    if handle.control.try_send(request).is_err() {
                        tracing::warn!(client = %handle.client_id, "control queue full, refresh dropped");
                    }
                }
            }
            NodeControl::Emulation {
                node,
                session,
                commands,
            } => {
                if node == self.uid {
                    let delivery = self.emulation.deliver(&session, commands);
                    tracing::debug!(session, ?delivery, "emulation request from another node");
                }
            }
        }
    }

    fn local_channels(&self) -> Vec<(Arc<str>, usize)> {
        self.hub.channels()
    }
}
