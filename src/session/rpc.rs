//! `rpc`: the client calls a method on the server.

use super::{Answer, Session};
use crate::protocol::{error_code, Error, ReplyResult, RpcRequest, RpcResult};

impl Session {
    /// `rpc`: the built-in methods (`echo`); any other is error 104.
    pub(super) fn rpc(&mut self, req: RpcRequest) -> Answer {
        match req.method.as_str() {
            "echo" => Ok(Some(ReplyResult::Rpc(RpcResult { data: req.data }))),
            _ => Err(Error::new(error_code::METHOD_NOT_FOUND).into()),
        }
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
        assert_eq!(reply["error"]["code"], 104);
    }
}
