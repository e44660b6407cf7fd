//! The AWS client factory and the error type for calls at the edges.
//!
//! The shared AWS configuration is loaded once, at init (loading it per request doubled Rust
//! Lambda cold starts: aws-sdk-rust issue 894); clients are cheap views on it. When an endpoint is
//! configured (`AWS_ENDPOINT_URL`, or a service's own `AWS_ENDPOINT_URL_<SERVICE>`), the factory
//! adapts the two services that need it: S3 switches to path-style addressing and Timestream skips
//! endpoint discovery, which would otherwise replace the configured endpoint with AWS's own host.

use std::error::Error as StdError;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use aws_smithy_types::retry::{ErrorKind, ProvideErrorKind};
use aws_types::service_config::ServiceConfigKey;
pub use shoal_core::edge::{EdgeError, EdgeErrorKind, Retryable};

/// Builds every AWS client Shoal uses from one loaded configuration.
#[derive(Debug, Clone)]
pub struct ClientFactory {
    sdk: SdkConfig,
}

impl ClientFactory {
    /// Loads region, credentials and endpoint from the environment, once.
    pub async fn from_env() -> Self {
        Self::new(aws_config::load_defaults(BehaviorVersion::latest()).await)
    }

    pub fn new(sdk: SdkConfig) -> Self {
        Self { sdk }
    }

    /// Clients made from the returned factory give up an operation — every attempt and retry
    /// backoff of one call — after `timeout`, so a caller with a deadline keeps its reserve.
    #[must_use]
    pub fn with_operation_timeout(self, timeout: std::time::Duration) -> Self {
        let timeouts = aws_smithy_types::timeout::TimeoutConfig::builder()
            .operation_timeout(timeout)
            .build();
        Self {
            sdk: self.sdk.to_builder().timeout_config(timeouts).build(),
        }
    }

    pub fn sdk_config(&self) -> &SdkConfig {
        &self.sdk
    }

    /// The configured region, or `us-east-1` when none is (the SDK's own clients fail without
    /// one; this is for building ARNs and presigned-URL settings).
    pub fn region_or_default(&self) -> String {
        self.sdk
            .region()
            .map_or_else(|| "us-east-1".to_owned(), ToString::to_string)
    }

    /// The endpoint configured for `service_id` (the SDK's service id, e.g. "S3", "Timestream
    /// Write"), resolved the way the generated SDK resolves it: an endpoint set in code wins, then
    /// the service-specific variable or profile key, then the global `AWS_ENDPOINT_URL`.
    pub fn configured_endpoint(&self, service_id: &str) -> Option<String> {
        if self.sdk.get_origin("endpoint_url").is_client_config() {
            return self.sdk.endpoint_url().map(str::to_owned);
        }
        let key = ServiceConfigKey::builder()
            .service_id(service_id)
            .env("AWS_ENDPOINT_URL")
            .profile("endpoint_url")
            .build()
            .ok();
        self.sdk
            .service_config()
            .zip(key)
            .and_then(|(config, key)| config.load_config(key))
            .or_else(|| self.sdk.endpoint_url().map(str::to_owned))
    }

    pub fn iot(&self) -> aws_sdk_iot::Client {
        aws_sdk_iot::Client::new(&self.sdk)
    }

    /// The device-shadow data plane. On AWS, point it at the account's `iot:Data-ATS` endpoint with
    /// `AWS_ENDPOINT_URL_IOT_DATA_PLANE`.
    pub fn iot_data(&self) -> aws_sdk_iotdataplane::Client {
        aws_sdk_iotdataplane::Client::new(&self.sdk)
    }

    pub fn dynamodb(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&self.sdk)
    }

    pub fn kms(&self) -> aws_sdk_kms::Client {
        aws_sdk_kms::Client::new(&self.sdk)
    }

    /// S3 with path-style addressing against a configured endpoint: virtual-hosted names like
    /// `bucket.127.0.0.1` do not resolve locally.
    pub fn s3(&self) -> aws_sdk_s3::Client {
        let path_style = self.configured_endpoint("S3").is_some();
        let config = aws_sdk_s3::config::Builder::from(&self.sdk)
            .force_path_style(path_style)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// Timestream Write. AWS requires endpoint discovery for it, so on AWS this makes one
    /// DescribeEndpoints call and spawns the task that refreshes the endpoint before it expires;
    /// call it at init, once, and only in functions that write telemetry. Against a configured
    /// endpoint there is nothing to discover.
    ///
    /// # Errors
    /// [`EdgeError`] (unreachable) when the DescribeEndpoints call of endpoint discovery fails;
    /// against a configured endpoint this never fails.
    pub async fn timestream_write(&self) -> Result<aws_sdk_timestreamwrite::Client, EdgeError> {
        let client = aws_sdk_timestreamwrite::Client::new(&self.sdk);
        if self.configured_endpoint("Timestream Write").is_some() {
            return Ok(client);
        }
        let (client, reload) =
            client
                .with_endpoint_discovery_enabled()
                .await
                .map_err(|source| {
                    EdgeError::unreachable("timestream-write", "DescribeEndpoints", source)
                })?;
        tokio::spawn(reload.reload_task());
        Ok(client)
    }
}

/// A DynamoDB conditional write's result: `Ok(true)` written, `Ok(false)` the condition did not
/// hold.
///
/// # Errors
/// The [`EdgeError`] in `result` unless its code is `ConditionalCheckFailedException`, which
/// is `Ok(false)`, not an error.
pub fn condition_held<T>(result: Result<T, EdgeError>) -> Result<bool, EdgeError> {
    match result {
        Ok(_) => Ok(true),
        Err(e) if e.is_code("ConditionalCheckFailedException") => Ok(false),
        Err(e) => Err(e),
    }
}

/// The result of a call whose errors with one of `codes` mean the state it wanted holds already
/// (an idempotent create, cancel or delete): those count as done.
///
/// # Errors
/// The [`EdgeError`] in `result` unless its code is one of `codes`.
pub fn done_or_already<T>(result: Result<T, EdgeError>, codes: &[&str]) -> Result<(), EdgeError> {
    match result {
        Err(e) if codes.iter().any(|code| e.is_code(code)) => Ok(()),
        other => other.map(|_| ()),
    }
}

/// A DynamoDB CreateTable's result where a table that already exists is fine (idempotent setup).
///
/// # Errors
/// The [`EdgeError`] in `result` unless its code is `ResourceInUseException`.
pub fn created_unless_in_use<T>(result: Result<T, EdgeError>) -> Result<(), EdgeError> {
    done_or_already(result, &["ResourceInUseException"])
}

/// Error codes AWS services use for throttling.
const THROTTLING_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "SlowDown",
    "LimitExceededException",
];

/// The edge error of a failed SDK call: unreachable on a dispatch failure, a timeout or a
/// response cut off; throttled on one of AWS's throttling codes; a server error on HTTP 5xx or an
/// error the service models as retryable; otherwise the service's refusal with its code; or a
/// request that could not be built.
pub fn sdk_error<E>(
    service: &'static str,
    operation: &'static str,
    err: SdkError<E, HttpResponse>,
) -> EdgeError
where
    E: ProvideErrorMetadata + ProvideErrorKind + StdError + 'static,
{
    let (kind, code, message) = match &err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            (EdgeErrorKind::Unreachable, None, chain(&err))
        }
        SdkError::ServiceError(service_err) => {
            let inner = service_err.err();
            let code = ProvideErrorMetadata::code(inner).map(str::to_owned);
            let kind = match (code.as_deref(), inner.retryable_error_kind()) {
                (Some(c), _) if THROTTLING_CODES.contains(&c) => EdgeErrorKind::Throttled,
                (_, Some(ErrorKind::ThrottlingError)) => EdgeErrorKind::Throttled,
                (_, Some(ErrorKind::ServerError | ErrorKind::TransientError)) => {
                    EdgeErrorKind::ServerError
                }
                _ if service_err.raw().status().is_server_error() => EdgeErrorKind::ServerError,
                _ => EdgeErrorKind::Service,
            };
            let message = inner
                .message()
                .map(str::to_owned)
                .unwrap_or_else(|| chain(inner));
            (kind, code, message)
        }
        SdkError::ConstructionFailure(_) => (EdgeErrorKind::Request, None, chain(&err)),
        // Whatever later SDK versions add.
        _ => (EdgeErrorKind::Unreadable, None, chain(&err)),
    };
    EdgeError {
        service,
        operation,
        kind,
        code,
        message,
    }
}

/// The error and its sources on one line: SDK errors keep the useful part ("connection refused")
/// several sources deep.
fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}

/// `.aws("s3", "PutObject")?` at the edges.
pub trait AwsResultExt<T> {
    fn aws(self, service: &'static str, operation: &'static str) -> Result<T, EdgeError>;
}

impl<T, E> AwsResultExt<T> for Result<T, SdkError<E, HttpResponse>>
where
    E: ProvideErrorMetadata + ProvideErrorKind + StdError + 'static,
{
    fn aws(self, service: &'static str, operation: &'static str) -> Result<T, EdgeError> {
        self.map_err(|e| sdk_error(service, operation, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_config::Region;

    fn factory(endpoint: Option<&str>) -> ClientFactory {
        let mut loader = SdkConfig::builder()
            .region(Region::new("eu-west-1"))
            .behavior_version(BehaviorVersion::latest());
        if let Some(url) = endpoint {
            loader = loader.endpoint_url(url);
        }
        ClientFactory::new(loader.build())
    }

    #[test]
    fn endpoint_set_in_code_applies_to_every_service() {
        let f = factory(Some("http://127.0.0.1:4566"));
        assert_eq!(
            f.configured_endpoint("S3").as_deref(),
            Some("http://127.0.0.1:4566")
        );
        assert_eq!(
            f.configured_endpoint("Timestream Write").as_deref(),
            Some("http://127.0.0.1:4566")
        );
        assert_eq!(factory(None).configured_endpoint("S3"), None);
    }

    /// A DynamoDB PutItem answered with HTTP `status` and error `code`.
    fn answered(status: u16, code: &str) -> EdgeError {
        use aws_sdk_dynamodb::operation::put_item::PutItemError;
        use aws_smithy_types::body::SdkBody;
        use aws_smithy_types::error::ErrorMetadata;
        let error = PutItemError::generic(ErrorMetadata::builder().code(code).message("m").build());
        let raw = HttpResponse::new(status.try_into().unwrap(), SdkBody::empty());
        sdk_error("dynamodb", "PutItem", SdkError::service_error(error, raw))
    }

    #[test]
    fn server_errors_and_throttling_are_retried_and_refusals_are_not() {
        let server = answered(500, "InternalServerError");
        assert_eq!(server.kind, EdgeErrorKind::ServerError);
        assert!(server.is_retryable());
        let unavailable = answered(503, "ServiceUnavailable");
        assert_eq!(unavailable.kind, EdgeErrorKind::ServerError);
        let throttled = answered(400, "ThrottlingException");
        assert_eq!(throttled.kind, EdgeErrorKind::Throttled);
        assert!(throttled.is_retryable());
        let refused = answered(400, "ValidationException");
        assert_eq!(refused.kind, EdgeErrorKind::Service);
        assert!(refused.is_code("ValidationException"));
        assert!(!refused.is_retryable());
        assert_eq!(
            refused.to_string(),
            "dynamodb PutItem failed (ValidationException): m"
        );
    }

    #[tokio::test]
    async fn timestream_against_a_configured_endpoint_needs_no_discovery() {
        // Port 9 (discard) is closed: discovery would try to call it and fail; with a configured
        // endpoint the factory must not call anything.
        let f = factory(Some("http://127.0.0.1:9"));
        assert!(f.timestream_write().await.is_ok());
    }
}
