//! A server API request body (`POST /api/<method>`): the first byte picks the method, the rest is
//! the body, parsed as the handler parses it. Nothing may panic; a batch's commands are parsed
//! one by one too, as `batch` does before running each.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::http::api::{parse_batch, parse_call};

const METHODS: &[&str] = &[
    "publish",
    "broadcast",
    "subscribe",
    "unsubscribe",
    "disconnect",
    "refresh",
    "presence",
    "presence_stats",
    "history",
    "history_remove",
    "channels",
    "info",
    "batch",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let method = METHODS[usize::from(selector) % METHODS.len()];
    if method == "batch" {
        if let Ok(batch) = parse_batch(body) {
            for (method, params) in batch.commands().flatten() {
                let _ = parse_call(method, params.as_bytes());
            }
        }
    } else {
        let _ = parse_call(method, body);
    }
});
