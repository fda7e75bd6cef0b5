//! What can go wrong, as one enum callers can branch on.

/// An error of the client or reported by the server.
///
/// Errors are `Clone` so that one failure can be told to every waiting caller and every event
/// stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The server answered the command with an error (Centrifugo's codes: 103 permission
    /// denied, 108 not available, 109 token expired, …; 400–1999 come from the application).
    #[error("server error {code}: {message}")]
    Server {
        /// The error code.
        code: u32,
        /// What the server said.
        message: String,
        /// Whether retrying may succeed.
        temporary: bool,
    },
    /// No answer within the client's timeout (the command may still take effect).
    #[error("timed out")]
    Timeout,
    /// The client is disconnected (never connected, [`crate::Client::disconnect`] called, or a
    /// terminal disconnect code): nothing is sent until [`crate::Client::connect`].
    #[error("client disconnected ({code}: {reason})")]
    Disconnected {
        /// The disconnect code (see [`crate::codes`]).
        code: u32,
        /// Why.
        reason: String,
    },
    /// The connection closed while the command waited for its reply; whether it took effect is
    /// unknown.
    #[error("connection closed before the reply")]
    ConnectionClosed,
    /// The subscription is unsubscribed (terminally, or by the caller).
    #[error("subscription unsubscribed ({code}: {reason})")]
    Unsubscribed {
        /// The unsubscribe code (see [`crate::codes`]).
        code: u32,
        /// Why.
        reason: String,
    },
    /// A subscription to this channel already exists in this client.
    #[error("a subscription to {0} already exists")]
    DuplicateSubscription(String),
    /// The token callback failed; the client tries again with backoff.
    #[error("token callback failed: {0}")]
    Token(String),
    /// The WebSocket could not be opened or failed.
    #[error("transport: {0}")]
    Transport(String),
    /// The server sent something the protocol does not allow.
    #[error("protocol: {0}")]
    Protocol(String),
    /// Raw bytes were given to send over an encoding that carries JSON only: select
    /// [`crate::codec::ProtobufCodec`] to send bytes (Centrifugo's JSON clients cannot either).
    #[error("binary payloads need the Protobuf encoding (ClientBuilder::codec(ProtobufCodec))")]
    BinaryNeedsProtobuf,
    /// The URL or an option is unusable.
    #[error("configuration: {0}")]
    Config(String),
}

impl Error {
    /// The server's error code, for [`Error::Server`].
    pub fn server_code(&self) -> Option<u32> {
        match self {
            Error::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}
