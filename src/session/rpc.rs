//! `rpc`: the client calls a method on the server.

use super::{Answer, Identity, Session};
use crate::hooks::decisions::Content;
use crate::protocol::{error_code, Encoding, Error, ReplyResult, RpcRequest, RpcResult};

/// What a JSON client gets for an RPC answered with bytes that are not JSON.
pub const BINARY_FOR_JSON: &str = "rpc result is binary data, which a JSON client cannot receive";

impl Session {
    /// `rpc`: answered by the node's decisions (the built-in rules know `echo`; any other method
    /// is error 108, "not available", as in Centrifugo without an RPC proxy). A binary result
    /// (a backend's `b64data` that is not JSON) reaches a Protobuf client as its bytes; a JSON
    /// client cannot carry it and gets error 100 saying so (not temporary: asking again gets the
    /// same answer), its connection unharmed.
    pub(super) async fn rpc(&self, who: &Identity, req: RpcRequest) -> Answer {
        let RpcRequest {
            method,
            data,
            binary,
        } = req;
        let data = data.map(|payload| Content { payload, binary });
        let decision = self
            .node
            .decisions()
            .rpc(who.as_client(self.link()), &method, data)
            .await?;
        let (data, binary) = match decision.data {
            Some(content) => (Some(content.payload), content.binary),
            None => (None, false),
        };
        if binary && self.encoding() == Encoding::Json {
            tracing::warn!(client = %who.client, method, "binary rpc result for a JSON client");
            return Err(Error {
                message: BINARY_FOR_JSON.into(),
                temporary: false,
                ..Error::new(error_code::INTERNAL)
            }
            .into());
        }
        Ok(Some(ReplyResult::Rpc(RpcResult { data, binary })))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testing::{node, TestClient};

    #[tokio::test]
    async fn echo_returns_the_data_and_other_methods_are_not_found() {
        let node = node(|_| {});
        let mut client = TestClient::connected(&node).await;
        let reply = client
            .call(2, "rpc", json!({"method": "echo", "data": {"x": [1, 2]}}))
            .await
            .unwrap();
        assert_eq!(reply["rpc"]["data"], json!({"x": [1, 2]}));
        let reply = client
            .call(3, "rpc", json!({"method": "nope"}))
            .await
            .unwrap();
        assert_eq!(reply["error"]["code"], 108);
    }
}
