//! Everything served over plain HTTP: the server API ([`api`], its publishing methods in
//! `publish`), the embedded web pages ([`web`]),
//! and the helpers every HTTP answer of the server shares.

pub mod api;
pub mod map;
mod publish;
mod refresh;
pub mod web;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;

use crate::node::Node;

/// Largest server API request body.
const API_BODY_LIMIT: usize = 4 * 1024 * 1024;

/// The server API, health and metrics.
pub fn api_routes() -> Router<Node> {
    Router::new()
        .route("/api/{method}", post(api::call))
        .route("/health", get(api::health))
        .route("/metrics", get(api::metrics))
        .layer(DefaultBodyLimit::max(API_BODY_LIMIT))
}

/// An HTTP error with the JSON body every error of the server has: `{"error": {code, message}}`.
pub fn json_error(status: StatusCode, code: u32, message: &str) -> Response {
    let body = json!({"error": {"code": code, "message": message}});
    (status, axum::Json(body)).into_response()
}

/// Compares secrets in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Longest glob accepted by [`glob_match`]'s callers: the match costs up to the product of the
/// pattern's and the name's lengths.
pub const MAX_GLOB_LENGTH: usize = 1024;

/// Matches `text` against a glob where `*` is any run of characters and `?` any one character.
///
/// Two cursors and the position of the last `*` (backtracking only to it), allocating nothing:
/// at most `pattern.len() × text.len()` steps.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let first = |s: &str, at: usize| s[at..].chars().next();
    let (mut p, mut t) = (0, 0);
    // After the last `*` seen: where the pattern resumes, and where in the text it was tried.
    let mut star: Option<(usize, usize)> = None;
    while let Some(tc) = first(text, t) {
        match first(pattern, p) {
            Some('*') => {
                p += 1;
                star = Some((p, t));
                continue;
            }
            Some(pc) if pc == '?' || pc == tc => {
                p += pc.len_utf8();
                t += tc.len_utf8();
                continue;
            }
            _ => {}
        }
        // Mismatch: let the last `*` swallow one more character, or fail without one.
        let Some((resume, tried)) = star else {
            return false;
        };
        let skipped = first(text, tried).map_or(1, char::len_utf8);
        star = Some((resume, tried + skipped));
        (p, t) = (resume, tried + skipped);
    }
    pattern[p..].bytes().all(|b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("chat:*", "chat:room"));
        assert!(glob_match("*", "x"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("chat:*", "news"));
        assert!(glob_match("*:b*", "a:bc"));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "a"));
        assert!(glob_match("**", ""));
        assert!(!glob_match("?", ""));
        assert!(
            glob_match("*b", "*ab"),
            "a literal * in the name is no special case"
        );
        assert!(glob_match("a*b*c", "a-b-b-c"));
        assert!(!glob_match("a*b*c", "a-c-b"));
        assert!(
            glob_match("é?:*", "éü:x"),
            "? is one character, not one byte"
        );
        assert!(!glob_match("é?:*", "é:x"));
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"key", b"key"));
        assert!(!constant_time_eq(b"key", b"kez"));
        assert!(!constant_time_eq(b"key", b"keys"));
    }
}
