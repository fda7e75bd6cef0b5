//! One backend endpoint and the call to it: POST a JSON body, read a JSON answer, all within the
//! time bound and under the endpoint's bound on requests in flight.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::wire::Answer;
use crate::hooks::decisions::ClientHeaders;
use crate::metrics::{BackendCalls, InFlight, Metrics, ProxyMetrics};

/// Largest answer read from the backend, in bytes.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// What every endpoint shares: one HTTP client (its connections are kept alive and reused), the
/// time bound, the static headers, the node's metrics.
pub struct Backend {
    pub client: reqwest::Client,
    pub timeout: Duration,
    pub static_headers: HeaderMap,
    pub metrics: Arc<Metrics>,
}

/// Why a call to the backend gave no usable answer. The client gets the temporary error 100
/// for each, and may retry.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("request failed: {0}")]
    Request(#[from] reqwest::Error),
    #[error("answered with HTTP status {0}")]
    Status(u16),
    #[error("answer larger than 4 MiB")]
    TooLarge,
    #[error("answer is not a proxy answer: {0}")]
    Invalid(#[from] serde_json::Error),
}

/// One configured endpoint.
pub struct Endpoint {
    url: reqwest::Url,
    /// Requests in flight; a call waits for a slot (within its time bound).
    slots: Semaphore,
    /// This endpoint's counters among the node's proxy metrics.
    calls: fn(&ProxyMetrics) -> &BackendCalls,
}

impl Endpoint {
    /// The endpoint at `url`, with `concurrency` requests in
    /// flight at most; marks its metrics as in use.
    pub fn new(
        url: reqwest::Url,
        concurrency: usize,
        calls: fn(&ProxyMetrics) -> &BackendCalls,
        metrics: &Metrics,
    ) -> Endpoint {
        calls(&metrics.proxy)
            .enabled
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Endpoint {
            url,
            slots: Semaphore::new(concurrency),
            calls,
        }
    }

    /// POSTs `body` with the client's forwarded `headers` and reads the answer. The whole call,
    /// waiting for a slot included, is bounded by the backend's timeout; every failure is
    /// counted.
    pub async fn call<R: DeserializeOwned>(
        &self,
        backend: &Backend,
        body: &impl Serialize,
        headers: &ClientHeaders,
    ) -> Result<Answer<R>, CallError> {
        let calls = (self.calls)(&backend.metrics.proxy);
        Metrics::inc(&calls.calls);
        let outcome = match tokio::time::timeout(
            backend.timeout,
            self.request(backend, calls, body, headers),
        )
        .await
        {
            Ok(Ok(bytes)) => serde_json::from_slice(&bytes).map_err(CallError::from),
            Ok(Err(error)) => Err(error),
            Err(_) => {
                Metrics::inc(&calls.timeouts);
                Err(CallError::Timeout(backend.timeout))
            }
        };
        if outcome.is_err() {
            Metrics::inc(&calls.errors);
        }
        outcome
    }

    /// Counts an answer whose result could not be used as an error of this endpoint.
    pub fn bad_answer(&self, backend: &Backend) {
        Metrics::inc(&(self.calls)(&backend.metrics.proxy).errors);
    }

    /// Waits for a slot, sends the request and reads the answer's body.
    async fn request(
        &self,
        backend: &Backend,
        calls: &BackendCalls,
        body: &impl Serialize,
        headers: &ClientHeaders,
    ) -> Result<Vec<u8>, CallError> {
        let body = serde_json::to_vec(body)?;
        // The semaphore is never closed, so acquiring only waits.
        let _slot = self.slots.acquire().await;
        let _in_flight = InFlight::start(&calls.in_flight);
        let started = Instant::now();
        let response = backend
            .client
            .post(self.url.clone())
            .headers(request_headers(&backend.static_headers, headers))
            .body(body)
            .send()
            .await;
        let answer = read_answer(response).await;
        calls.observe(started.elapsed());
        answer
    }
}

/// The static headers, then the client's forwarded ones (which replace static ones of the same
/// name), then the JSON content type.
fn request_headers(static_headers: &HeaderMap, forwarded: &ClientHeaders) -> HeaderMap {
    let mut headers = static_headers.clone();
    let mut from_client = HeaderMap::new();
    for (name, value) in forwarded.iter() {
        // They came from a parsed request, so they are valid; a bad one is skipped, never sent.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            from_client.append(name, value);
        }
    }
    // Extending with a map replaces the values of names already present.
    headers.extend(from_client);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers
}

/// The body of a 200 answer, read up to [`MAX_ANSWER_BYTES`].
async fn read_answer(
    response: Result<reqwest::Response, reqwest::Error>,
) -> Result<Vec<u8>, CallError> {
    let mut response = response?;
    let status = response.status();
    if status != reqwest::StatusCode::OK {
        return Err(CallError::Status(status.as_u16()));
    }
    if response
        .content_length()
        .is_some_and(|length| length > MAX_ANSWER_BYTES as u64)
    {
        return Err(CallError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(CallError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_headers_replace_static_ones_and_the_content_type_is_json() {
        let mut static_headers = HeaderMap::new();
        static_headers.insert("x-secret", HeaderValue::from_static("s"));
        static_headers.insert("authorization", HeaderValue::from_static("static"));
        static_headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let forwarded = ClientHeaders::new(vec![
            ("Authorization".into(), "Bearer client".into()),
            ("Cookie".into(), "a=1".into()),
            ("Cookie".into(), "b=2".into()),
        ]);
        let headers = request_headers(&static_headers, &forwarded);
        assert_eq!(headers["x-secret"], "s");
        assert_eq!(headers["authorization"], "Bearer client");
        let cookies: Vec<_> = headers.get_all("cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(headers[CONTENT_TYPE], "application/json");
    }
}
