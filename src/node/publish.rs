//! The one publish path of sessions and the server API: a publication for a channel goes to the
//! broker (with the channel's history retention), and every node delivers it. Publishes with an
//! idempotency key take the broker's idempotent path; the others never touch it.

use futures_util::future::BoxFuture;

use super::{broker_error, Node};
use crate::channel::ChannelOptions;
use crate::engine::broker::BrokerError;
use crate::engine::idempotency::{IdempotencyKey, Idempotent};
use crate::hooks::events::Event;
use crate::protocol::{error_code, Error, Publication, StreamPosition};
use crate::timeline::Lane;

/// A publish started by [`Node::submit_publish`]; the future resolves as [`Node::publish`] does.
pub enum Submitted {
    /// Its place in the channel's order is already fixed: the next publish may start at once.
    InFlight(BoxFuture<'static, Result<Option<StreamPosition>, Error>>),
    /// Its order is fixed only while it runs: await it before starting the next from the same
    /// client, or the two may swap.
    Sequential(BoxFuture<'static, Result<Option<StreamPosition>, Error>>),
}

impl Node {
    /// Publishes `publication` (its payload, publisher info and tags; the broker gives it its
    /// offset) to `channel` on every node. Returns the stream position when the channel keeps
    /// history (and `skip_history` is false).
    ///
    /// With a non-empty `idempotency_key`, a publish to `channel` that repeats a key used within
    /// the configured window ([`Config::idempotency_window`](crate::Config)) publishes nothing
    /// and returns the first publish's position, on every node sharing the broker.
    pub async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        skip_history: bool,
        idempotency_key: Option<&str>,
    ) -> Result<Option<StreamPosition>, Error> {
        if let Some(key) = idempotency_key.filter(|k| !k.is_empty()) {
            return self
                .publish_once(channel, publication, skip_history, key)
                .await;
        }
        match self.submit_publish(channel, publication, skip_history)? {
            Submitted::InFlight(publishing) | Submitted::Sequential(publishing) => publishing.await,
        }
    }

    /// Starts publishing, as [`Node::publish`] without an idempotency key; see [`Submitted`]
    /// for when the next may start.
    pub fn submit_publish(
        &self,
        channel: &str,
        publication: Publication,
        skip_history: bool,
    ) -> Result<Submitted, Error> {
        let options = self.stream_options(channel)?;
        let history = if skip_history { None } else { options.history };
        let span = history.map(|_| self.timeline().span(Lane::History, "append", channel));
        let node = self.clone();
        let name = channel.to_string();
        let publisher = publication
            .info
            .as_ref()
            .map(|i| (i.client.clone(), i.user.clone()));
        let (data, binary) = (publication.data.clone(), publication.binary);
        let finish = move |result: Result<Option<StreamPosition>, BrokerError>| {
            drop(span);
            let position = result.map_err(|e| broker_error(&name, e))?;
            node.emit(Event::Published {
                channel: &name,
                offset: position.as_ref().map_or(0, |p| p.offset),
                client: publisher.as_ref().map(|(client, _)| client.as_str()),
                user: publisher.as_ref().map(|(_, user)| user.as_str()),
                data: &data,
                binary,
            });
            Ok(position)
        };
        Ok(
            match self.broker().submit_publish(channel, publication, history) {
                Ok(publishing) => {
                    Submitted::InFlight(Box::pin(async move { finish(publishing.await) }))
                }
                Err(publication) => {
                    let node = self.clone();
                    let channel = channel.to_string();
                    Submitted::Sequential(Box::pin(async move {
                        finish(node.broker().publish(&channel, *publication, history).await)
                    }))
                }
            },
        )
    }

    /// The options of a channel publications go to: a map channel takes only map updates
    /// (error 107, as Centrifugo answers a stream publish there).
    fn stream_options(&self, channel: &str) -> Result<ChannelOptions, Error> {
        let options = self.channel_options(channel)?;
        if options.map.is_some() {
            return Err(Error::new(error_code::BAD_REQUEST));
        }
        Ok(options)
    }

    /// [`Node::publish`] with an idempotency key. A repeat is not a publication: no event.
    async fn publish_once(
        &self,
        channel: &str,
        publication: Publication,
        skip_history: bool,
        key: &str,
    ) -> Result<Option<StreamPosition>, Error> {
        let options = self.stream_options(channel)?;
        let history = if skip_history { None } else { options.history };
        let publisher = publication
            .info
            .as_ref()
            .map(|i| (i.client.clone(), i.user.clone()));
        let (published, binary) = (publication.data.clone(), publication.binary);
        let key = IdempotencyKey {
            key: key.to_string(),
            window: self.config().idempotency_window,
        };
        let span = history.map(|_| self.timeline().span(Lane::History, "append", channel));
        let outcome = self
            .broker()
            .publish_idempotent(channel, publication, history, key)
            .await;
        drop(span);
        match outcome.map_err(|e| broker_error(channel, e))? {
            Idempotent::Published(position) => {
                self.emit(Event::Published {
                    channel,
                    offset: position.as_ref().map_or(0, |p| p.offset),
                    client: publisher.as_ref().map(|(client, _)| client.as_str()),
                    user: publisher.as_ref().map(|(_, user)| user.as_str()),
                    data: &published,
                    binary,
                });
                Ok(position)
            }
            Idempotent::Repeated(position) => {
                tracing::debug!(channel, "repeated idempotency key: nothing published");
                Ok(position)
            }
        }
    }
}
