//! Validation of the webhook settings.

use super::validate::{check_known, check_url};
use super::{Config, ConfigError, WEBHOOK_EVENTS};

/// Most webhook requests in flight that a configuration may ask for.
const MAX_CONCURRENCY: usize = 1024;
/// Most events one webhook request may carry.
const MAX_BATCH: usize = 10_000;

impl Config {
    /// Checks the webhook settings: the URL, event names, bounds.
    pub(super) fn validate_webhooks(&self) -> Result<(), ConfigError> {
        if let Some(endpoint) = &self.webhook_endpoint {
            check_url("webhook_endpoint", endpoint)?;
        }
        check_known(
            "webhook_events",
            "event",
            &self.webhook_events,
            &WEBHOOK_EVENTS,
        )?;
        if !(1..=MAX_CONCURRENCY).contains(&self.webhook_concurrency) {
            return Err(ConfigError::Invalid(format!(
                "webhook_concurrency must be from 1 to {MAX_CONCURRENCY}"
            )));
        }
        if !(1..=MAX_BATCH).contains(&self.webhook_batch_size) {
            return Err(ConfigError::Invalid(format!(
                "webhook_batch_size must be from 1 to {MAX_BATCH}"
            )));
        }
        if self.webhook_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "webhook_timeout must be more than zero".into(),
            ));
        }
        if self.webhook_secret.as_deref() == Some("") {
            return Err(ConfigError::Invalid(
                "webhook_secret must not be empty (leave it out to send unsigned)".into(),
            ));
        }
        Ok(())
    }

    /// Whether a webhook event type is sent.
    pub fn webhook_sends(&self, event: &str) -> bool {
        self.webhook_endpoint.is_some() && self.webhook_events.iter().any(|e| e == event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_settings_are_checked() {
        let mut config = Config {
            webhook_endpoint: Some("http://127.0.0.1:9/hook".into()),
            ..Config::default()
        };
        assert!(config.validate_webhooks().is_ok());
        assert!(config.webhook_sends("disconnect"));
        config.webhook_events = vec!["connect".into(), "disconect".into()];
        let error = config.validate_webhooks().unwrap_err().to_string();
        assert!(error.contains("\"disconect\""), "{error}");
        config.webhook_events = vec!["connect".into()];
        assert!(!config.webhook_sends("disconnect"));
        config.webhook_concurrency = 0;
        assert!(config.validate_webhooks().is_err());
        config.webhook_concurrency = 4;
        config.webhook_endpoint = Some("ftp://example".into());
        assert!(config.validate_webhooks().is_err());
    }
}
