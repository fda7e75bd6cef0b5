//! Durations in settings: `500ms`, `1s`, `2m`, `1h`, `1d`, or a bare number of seconds.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Parses a duration such as `500ms`, `1s`, `2m`, `1h` or `1d`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("bad duration {text:?} (use e.g. 500ms, 1s, 2m)"))?;
    let seconds = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => {
            return Err(format!(
                "bad duration unit in {text:?} (use ms, s, m, h or d)"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("bad duration {text:?}"))
}

/// A duration in a file: a string with units (see [`parse_duration`]) or a number of seconds.
pub(super) fn deserialize_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        Seconds(u64),
        WithUnit(String),
    }
    match Text::deserialize(deserializer)? {
        Text::Seconds(seconds) => Ok(Duration::from_secs(seconds)),
        Text::WithUnit(text) => parse_duration(&text).map_err(serde::de::Error::custom),
    }
}
