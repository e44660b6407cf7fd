//! A client of Lambda's Invoke API, as AWS IoT's Lambda action and the fleet-provisioning hook
//! call it: `POST /2015-03-31/functions/<name>/invocations` with `X-Amz-Invocation-Type`. Locally
//! it talks to the local Lambda host (tools/lambda-host); plain HTTP on loopback, so no signing.
//!
//! <https://docs.aws.amazon.com/lambda/latest/api/API_Invoke.html>

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use thiserror::Error;

/// How Lambda runs the invocation (`X-Amz-Invocation-Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvocationType {
    /// Synchronous: the function's response comes back.
    RequestResponse,
    /// Asynchronous: Lambda queues the event (and retries it) and answers 202 at once.
    Event,
}

/// What an invocation gave back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invoked {
    /// HTTP status: 200 (RequestResponse), 202 (Event).
    pub status: u16,
    /// `X-Amz-Function-Error` (`Unhandled`) when the function failed; `payload` is its error.
    pub function_error: Option<String>,
    /// The response payload (the function's result or error document).
    pub payload: Bytes,
}

/// Why an invocation did not reach the function.
#[derive(Debug, Error)]
pub enum InvokeError {
    /// Lambda refused it (`x-amzn-ErrorType`, e.g. `ResourceNotFoundException`,
    /// `TooManyRequestsException`, `RequestEntityTooLargeException`).
    #[error("{status} {kind}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The error type.
        kind: String,
        /// Its message.
        message: String,
    },
    /// The endpoint did not answer.
    #[error("Lambda endpoint: {0}")]
    Transport(String),
}

/// Lambda's Invoke API at an endpoint (`http://127.0.0.1:9001`), connections kept.
#[derive(Debug, Clone)]
pub struct LambdaClient {
    endpoint: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl LambdaClient {
    /// A client of the Invoke API at `endpoint` (scheme, host and port).
    pub fn new(endpoint: &str) -> Self {
        Self {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Invokes `function` (name or ARN) with `payload`.
    ///
    /// # Errors
    /// [`InvokeError::Refused`] with Lambda's error type; [`InvokeError::Transport`] when the
    /// endpoint is unreachable.
    pub async fn invoke(
        &self,
        function: &str,
        kind: InvocationType,
        payload: Vec<u8>,
    ) -> Result<Invoked, InvokeError> {
        let name: String =
            percent_encoding::utf8_percent_encode(function, percent_encoding::NON_ALPHANUMERIC)
                .collect();
        let request = hyper::Request::post(format!(
            "{}/2015-03-31/functions/{name}/invocations",
            self.endpoint
        ))
        .header(
            "x-amz-invocation-type",
            match kind {
                InvocationType::RequestResponse => "RequestResponse",
                InvocationType::Event => "Event",
            },
        )
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(payload)))
        .map_err(|e| InvokeError::Transport(e.to_string()))?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| InvokeError::Transport(format!("{}: {e}", self.endpoint)))?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let function_error = header("x-amz-function-error");
        let kind = header("x-amzn-errortype");
        let payload = response
            .into_body()
            .collect()
            .await
            .map_err(|e| InvokeError::Transport(e.to_string()))?
            .to_bytes();
        if !(200..300).contains(&status) {
            let message = serde_json::from_slice::<serde_json::Value>(&payload)
                .ok()
                .and_then(|v| {
                    v.get("message")
                        .or_else(|| v.get("Message"))
                        .and_then(|m| m.as_str())
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| String::from_utf8_lossy(&payload).into_owned());
            return Err(InvokeError::Refused {
                status,
                kind: kind.unwrap_or_else(|| "ServiceException".into()),
                message,
            });
        }
        Ok(Invoked {
            status,
            function_error,
            payload,
        })
    }
}
