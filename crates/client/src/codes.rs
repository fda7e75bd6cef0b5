//! Codes and the rules the client follows on them, as centrifuge-js does.
//!
//! Disconnect codes (a WebSocket close frame's code): the server's own are 3000–3999, the
//! application's 4000–4999; 3500–3999 and 4500–4999 are terminal, every other code reconnects with
//! backoff. Codes below 3000 are transport closes (1006, 1000, …) and reconnect, except 1009
//! (message too big), which would only happen again. Codes below 100 (and the client-side
//! constants here) are the client's own reasons, never sent by a server.
//!
//! Unsubscribe codes (an `unsubscribe` push): below 2500 the subscription ends; 2500 and above it
//! resubscribes (recovering what it missed).
//!
//! A WebSocket close is read as centrifuge-js reads it ([`close_outcome`]): a terminal code is
//! terminal only when the close carries a reason (Centrifugo and Switchboard always send one), a
//! reason that is JSON is the protocol v1 "advice" `{"reason", "reconnect"}`, and every code below
//! 3000 is reported as [`TRANSPORT_CLOSED`] (or [`MESSAGE_SIZE_LIMIT`] for 1009).

use std::time::Duration;

use serde_json::Value;

/// Client-side reason: [`crate::Client::disconnect`] was called.
pub const DISCONNECT_CALLED: u32 = 0;
/// Client-side reason: the token callback returned an empty token (the user is not allowed).
pub const UNAUTHORIZED: u32 = 1;
/// Client-side reason: the server broke the protocol.
pub const BAD_PROTOCOL: u32 = 2;
/// Client-side reason: a message exceeded the WebSocket size limit (close code 1009).
pub const MESSAGE_SIZE_LIMIT: u32 = 3;

/// Connecting reason: [`crate::Client::connect`] was called.
pub const CONNECT_CALLED: u32 = 0;
/// Connecting reason: the transport closed (or could not be opened).
pub const TRANSPORT_CLOSED: u32 = 1;
/// Connecting reason: no ping from the server within its interval plus the allowed delay.
pub const NO_PING: u32 = 2;

/// Subscribing reason: [`crate::Subscription::subscribe`] was called.
pub const SUBSCRIBE_CALLED: u32 = 0;
/// Subscribing reason: the connection was lost; the subscription resubscribes on reconnect.
pub const SUBSCRIBING_TRANSPORT_CLOSED: u32 = 1;

/// Unsubscribed reason: [`crate::Subscription::unsubscribe`] was called.
pub const UNSUBSCRIBE_CALLED: u32 = 0;
/// Unsubscribed reason: the subscription token callback returned an empty token.
pub const SUBSCRIPTION_UNAUTHORIZED: u32 = 1;

/// Server error: the token expired; the client fetches a new one and tries again.
pub const ERROR_TOKEN_EXPIRED: u32 = 109;
/// Server error: a position in another epoch.
pub const ERROR_UNRECOVERABLE_POSITION: u32 = 112;

/// Server disconnect: state invalidated; the client forgets its token and positions.
pub const DISCONNECT_STATE_INVALIDATED: u32 = 3014;
/// Server unsubscribe: state invalidated; the subscription forgets its position.
pub const UNSUBSCRIBE_STATE_INVALIDATED: u32 = 2502;

/// What the client does after the connection closed with `code`.
pub fn disconnect_reconnects(code: u32) -> bool {
    match code {
        1009 => false,
        0..=2999 => true,
        3500..=3999 | 4500..=4999 => false,
        _ => true,
    }
}

/// What a closed connection means to the client: the code and reason it reports, and whether
/// it reconnects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseOutcome {
    /// The code reported (the close code, or a client-side code for closes below 3000).
    pub code: u32,
    /// The reason reported.
    pub reason: String,
    /// Whether the client reconnects.
    pub reconnect: bool,
}

/// Reads a WebSocket close (its code, if any, and its reason) as centrifuge-js does.
pub fn close_outcome(code: Option<u16>, reason: &str) -> CloseOutcome {
    let mut code = u32::from(code.unwrap_or(0));
    let mut reported = String::from("connection closed");
    let mut reconnect = true;
    if !reason.is_empty() {
        match serde_json::from_str::<Value>(reason) {
            Ok(Value::Null) | Err(_) => {
                reported = reason.to_string();
                if !disconnect_reconnects(code) && code >= 3000 {
                    reconnect = false;
                }
            }
            // Protocol v1's advice, still honoured by centrifuge-js.
            Ok(advice) => {
                reported = advice
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                reconnect = advice.get("reconnect").is_some_and(truthy);
            }
        }
    }
    if code < 3000 {
        if code == 1009 {
            code = MESSAGE_SIZE_LIMIT;
            reported = "message size limit exceeded".into();
            reconnect = false;
        } else {
            code = TRANSPORT_CLOSED;
            reported = "transport closed".into();
        }
    }
    CloseOutcome {
        code,
        reason: reported,
        reconnect,
    }
}

/// JavaScript's truthiness of a JSON value.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// Whether a subscription resubscribes after an `unsubscribe` push with `code`.
pub fn unsubscribe_resubscribes(code: u32) -> bool {
    code >= 2500
}

/// Whether a failed `connect` or `subscribe` is retried: temporary errors, client-side codes
/// (below 100), and 109 (token expired: with a fresh token).
pub fn error_retries(code: u32, temporary: bool) -> bool {
    temporary || code < 100 || code == ERROR_TOKEN_EXPIRED
}

/// Exponential backoff with full jitter: a random delay in `[min, min + min(max, min·2^step)]`,
/// capped at `max`. `unit` is a random number in `[0, 1]`.
pub fn backoff(step: u32, min: Duration, max: Duration, unit: f64) -> Duration {
    let ceiling = min
        .saturating_mul(1u32 << step.min(31))
        .min(max)
        .as_secs_f64();
    let jitter = Duration::from_secs_f64(ceiling * unit.clamp(0.0, 1.0));
    (min + jitter).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_and_reconnect_codes_as_centrifuge_js() {
        for code in [
            1000, 1006, 3000, 3001, 3005, 3008, 3012, 3014, 3499, 4000, 4499,
        ] {
            assert!(disconnect_reconnects(code), "{code} reconnects");
        }
        for code in [1009, 3500, 3501, 3503, 3507, 3999, 4500, 4999] {
            assert!(!disconnect_reconnects(code), "{code} is terminal");
        }
        assert!(!unsubscribe_resubscribes(2000));
        assert!(unsubscribe_resubscribes(2500));
        assert!(error_retries(109, false) && error_retries(100, true) && error_retries(2, false));
        assert!(!error_retries(103, false));
    }

    #[test]
    fn closes_are_read_as_centrifuge_js_reads_them() {
        let outcome = |code, reason| {
            let o = close_outcome(code, reason);
            (o.code, o.reason, o.reconnect)
        };
        assert_eq!(
            outcome(Some(3503), "force disconnect"),
            (3503, "force disconnect".into(), false)
        );
        assert_eq!(
            outcome(Some(3001), "shutdown"),
            (3001, "shutdown".into(), true)
        );
        assert_eq!(
            outcome(Some(4501), "banned"),
            (4501, "banned".into(), false)
        );
        assert_eq!(outcome(Some(4000), "again"), (4000, "again".into(), true));
        // Without a reason, even a terminal code reconnects (centrifuge-js only checks the
        // range when a reason is there).
        assert_eq!(
            outcome(Some(3503), ""),
            (3503, "connection closed".into(), true)
        );
        // Protocol v1 advice in the reason.
        assert_eq!(
            outcome(Some(3001), r#"{"reason":"bye","reconnect":false}"#),
            (3001, "bye".into(), false)
        );
        assert_eq!(
            outcome(Some(3503), r#"{"reason":"back soon","reconnect":true}"#),
            (3503, "back soon".into(), true)
        );
        assert_eq!(outcome(Some(3503), "null"), (3503, "null".into(), false));
        // Below 3000: a transport close, except 1009.
        assert_eq!(
            outcome(Some(1006), ""),
            (TRANSPORT_CLOSED, "transport closed".into(), true)
        );
        assert_eq!(
            outcome(None, ""),
            (TRANSPORT_CLOSED, "transport closed".into(), true)
        );
        assert_eq!(
            outcome(Some(1000), "bye"),
            (TRANSPORT_CLOSED, "transport closed".into(), true)
        );
        assert_eq!(
            outcome(Some(1009), "too big"),
            (
                MESSAGE_SIZE_LIMIT,
                "message size limit exceeded".into(),
                false
            )
        );
    }

    #[test]
    fn backoff_grows_with_full_jitter_and_is_capped() {
        let (min, max) = (Duration::from_millis(500), Duration::from_secs(20));
        assert_eq!(backoff(0, min, max, 0.0), min);
        assert_eq!(backoff(0, min, max, 1.0), Duration::from_millis(1000));
        assert_eq!(backoff(3, min, max, 1.0), Duration::from_millis(4500));
        assert_eq!(backoff(10, min, max, 1.0), max);
        assert_eq!(backoff(100, min, max, 0.5), max.min(min + max / 2));
        assert!(backoff(5, min, max, 0.3) < backoff(5, min, max, 0.6));
    }
}
