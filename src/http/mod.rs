//! Everything served over plain HTTP: the server API ([`api`]), the embedded web pages ([`web`]),
//! and the helpers every HTTP answer of the server shares.

pub mod api;
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

/// Matches `text` against a glob where `*` is any run of characters and `?` any one character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
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
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"key", b"key"));
        assert!(!constant_time_eq(b"key", b"kez"));
        assert!(!constant_time_eq(b"key", b"keys"));
    }
}
