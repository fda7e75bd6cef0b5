//! Error codes of replies and named disconnect codes: Centrifugo's numbers in one place.

use serde::{Deserialize, Serialize};

use super::is_false;

/// Error codes carried in `Reply.error` and in the server API's `error`.
pub mod error_code {
    /// Server fault; the client may retry.
    pub const INTERNAL: u32 = 100;
    pub const UNAUTHORIZED: u32 = 101;
    pub const UNKNOWN_CHANNEL: u32 = 102;
    pub const PERMISSION_DENIED: u32 = 103;
    pub const METHOD_NOT_FOUND: u32 = 104;
    pub const ALREADY_SUBSCRIBED: u32 = 105;
    pub const LIMIT_EXCEEDED: u32 = 106;
    pub const BAD_REQUEST: u32 = 107;
    pub const NOT_AVAILABLE: u32 = 108;
    pub const TOKEN_EXPIRED: u32 = 109;
    pub const EXPIRED: u32 = 110;
    pub const TOO_MANY_REQUESTS: u32 = 111;
    pub const UNRECOVERABLE_POSITION: u32 = 112;
}

/// An error reply: `{code, message, temporary}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    pub code: u32,
    pub message: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub temporary: bool,
}

impl Error {
    /// An error with the message Centrifugo uses for that code.
    /// Error 106 (limit exceeded) saying which limit: an answer or a page over `max_bytes`.
    pub fn too_large(what: &str, max_bytes: usize) -> Self {
        Error {
            message: format!("limit exceeded: {what} over {max_bytes} bytes, ask for less"),
            ..Error::new(error_code::LIMIT_EXCEEDED)
        }
    }

    pub fn new(code: u32) -> Self {
        use error_code::*;
        let (message, temporary) = match code {
            INTERNAL => ("internal server error", true),
            UNAUTHORIZED => ("unauthorized", false),
            UNKNOWN_CHANNEL => ("unknown channel", false),
            PERMISSION_DENIED => ("permission denied", false),
            METHOD_NOT_FOUND => ("method not found", false),
            ALREADY_SUBSCRIBED => ("already subscribed", false),
            LIMIT_EXCEEDED => ("limit exceeded", false),
            BAD_REQUEST => ("bad request", false),
            NOT_AVAILABLE => ("not available", false),
            TOKEN_EXPIRED => ("token expired", false),
            EXPIRED => ("expired", false),
            TOO_MANY_REQUESTS => ("too many requests", true),
            UNRECOVERABLE_POSITION => ("unrecoverable position", false),
            _ => ("error", false),
        };
        Error {
            code,
            message: message.to_string(),
            temporary,
        }
    }
}

/// Why the server closes a connection: a Centrifugo disconnect code and a short plain-text reason.
///
/// On WebSocket this becomes the close frame's code and reason. Codes 3000–3499 tell clients to
/// reconnect, 3500–3999 are terminal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disconnect {
    pub code: u16,
    pub reason: std::borrow::Cow<'static, str>,
}

impl Disconnect {
    /// The server is going away; reconnect (elsewhere).
    pub const SHUTDOWN: Disconnect = Disconnect::new(3001, "shutdown");
    pub const INTERNAL: Disconnect = Disconnect::new(3004, "internal server error");
    pub const EXPIRED: Disconnect = Disconnect::new(3005, "connection expired");
    pub const SUBSCRIPTION_EXPIRED: Disconnect = Disconnect::new(3006, "subscription expired");
    /// The client did not read fast enough: its outbound queue overflowed.
    pub const SLOW: Disconnect = Disconnect::new(3008, "slow");
    pub const WRITE_ERROR: Disconnect = Disconnect::new(3009, "write error");
    pub const INSUFFICIENT_STATE: Disconnect = Disconnect::new(3010, "insufficient state");
    pub const FORCE_RECONNECT: Disconnect = Disconnect::new(3011, "force reconnect");
    pub const NO_PONG: Disconnect = Disconnect::new(3012, "no pong");
    pub const TOO_MANY_REQUESTS: Disconnect = Disconnect::new(3013, "too many requests");
    pub const INVALID_TOKEN: Disconnect = Disconnect::new(3500, "invalid token");
    pub const BAD_REQUEST: Disconnect = Disconnect::new(3501, "bad request");
    /// No `connect` command arrived in time after the socket opened.
    pub const STALE: Disconnect = Disconnect::new(3502, "stale");
    pub const FORCE_DISCONNECT: Disconnect = Disconnect::new(3503, "force disconnect");
    pub const CONNECTION_LIMIT: Disconnect = Disconnect::new(3504, "connection limit");
    pub const CHANNEL_LIMIT: Disconnect = Disconnect::new(3505, "channel limit");
    pub const PERMISSION_DENIED: Disconnect = Disconnect::new(3507, "permission denied");
    pub const TOO_MANY_ERRORS: Disconnect = Disconnect::new(3509, "too many errors");
    /// A message larger than the configured limit (WebSocket's own code, terminal for clients).
    pub const MESSAGE_TOO_BIG: Disconnect = Disconnect::new(1009, "message too big");
    /// A text frame that is not UTF-8 (WebSocket's own code).
    pub const INVALID_UTF8: Disconnect = Disconnect::new(1007, "invalid UTF-8");

    pub const fn new(code: u16, reason: &'static str) -> Self {
        Disconnect {
            code,
            reason: std::borrow::Cow::Borrowed(reason),
        }
    }

    /// 3501 saying what was wrong with the client's frame (a close frame's reason holds at most
    /// 123 bytes, so the reason is cut to fit).
    pub fn bad_request(cause: &impl std::fmt::Display) -> Self {
        let mut reason = format!("bad request: {cause}");
        if reason.len() > MAX_REASON_BYTES {
            let mut end = MAX_REASON_BYTES;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        Disconnect::custom(Disconnect::BAD_REQUEST.code, reason)
    }

    /// A disconnect with a reason chosen at run time (the server API's custom disconnects).
    pub fn custom(code: u16, reason: String) -> Self {
        Disconnect {
            code,
            reason: std::borrow::Cow::Owned(reason),
        }
    }
}

/// The longest reason a WebSocket close frame carries.
const MAX_REASON_BYTES: usize = 123;

/// Codes of the `unsubscribe` push, as Centrifugo names them. Below 2500 the client stays
/// unsubscribed; from 2500 it resubscribes (and recovers what it missed).
pub mod unsubscribe_code {
    /// The server API unsubscribed the client.
    pub const SERVER: u32 = 2000;
    /// Publications may have been lost on their way to this node: resubscribe and recover.
    pub const INSUFFICIENT_STATE: u32 = 2500;
    /// The subscription token expired: resubscribe with a fresh one.
    pub const EXPIRED: u32 = 2501;
    /// The client's state of the channel is no longer valid: clear it and resubscribe.
    pub const STATE_INVALIDATED: u32 = 2502;
}
