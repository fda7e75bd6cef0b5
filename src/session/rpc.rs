//! `rpc`: the client calls a method on the server.

use super::{Answer, Identity, Session};
use crate::protocol::{ReplyResult, RpcRequest, RpcResult};

impl Session {
    /// `rpc`: answered by the node's decisions (the built-in rules know `echo`; any other method
    /// is error 108, "not available", as in Centrifugo without an RPC proxy).
    pub(super) async fn rpc(&self, who: &Identity, req: RpcRequest) -> Answer {
        let RpcRequest { method, data } = req;
        let decision = self
            .node
            .decisions()
            .rpc(who.as_client(), &method, data)
            .await?;
        Ok(Some(ReplyResult::Rpc(RpcResult {
            data: decision.data,
        })))
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
