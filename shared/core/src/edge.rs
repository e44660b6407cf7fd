//! The error every port returns: a call at an I/O edge (a table, the shadow store, an object
//! store, the time-series store, a topic) that did not do what was asked.
//!
//! It names the service and operation, so a log line says where, and its [`EdgeErrorKind`] says
//! what the caller may do about it: retry later (throttled, unreachable) or not (the service said
//! no; the request could not be made; the answer could not be read). It holds no SDK type: the
//! AWS edges (`shoal-aws`) build it from an SDK error, test doubles build it directly.
//!
//! Domain failures are not edge errors: a refused rollout transition is a
//! [`TransitionError`](crate::rollout::state::TransitionError), a missing firmware image is the
//! function's own error. Each function crate keeps one error enum that wraps this one with its
//! domain failures and maps to a Lambda `Diagnostic`.

use core::fmt;

/// What went wrong with a call at an edge, in terms the caller can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeErrorKind {
    /// The service answered with an error (not found, conditional check failed, validation, …).
    Service,
    /// The service asked us to slow down; retry with backoff.
    Throttled,
    /// No usable answer: connection refused, DNS, timeout, a response cut off. Retry later;
    /// nothing was decided.
    Unreachable,
    /// The service failed on its side (HTTP 5xx, or an error AWS marks transient, such as
    /// DynamoDB's `TransactionConflictException`). Retry later.
    ServerError,
    /// The request could not be built from what we had (a builder refused a value): nothing was
    /// sent.
    Request,
    /// The service answered, but not in a shape we can read (a stored item missing an
    /// attribute, a shadow document that is not JSON, an answer without its ARN).
    Unreadable,
}

/// A call at an edge that failed, with the service and operation, so logs and errors say where.
///
/// Displays as `<service> <operation> failed (<code>): <message>`; an unreadable answer as
/// `<service> <operation> answered unreadably: <message>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeError {
    /// The service as its SDK names it for logs: `dynamodb`, `iot-data`, `s3`,
    /// `timestream-write`, `kms`, `iot`.
    pub service: &'static str,
    /// The API operation, in the service's own spelling: `PutItem`, `UpdateThingShadow`.
    pub operation: &'static str,
    /// What the caller may do about it.
    pub kind: EdgeErrorKind,
    /// The service's error code, e.g. `ResourceNotFoundException`.
    pub code: Option<String>,
    /// What the service (or the reader of its answer) said.
    pub message: String,
}

impl EdgeError {
    fn of_kind(
        kind: EdgeErrorKind,
        service: &'static str,
        operation: &'static str,
        message: impl fmt::Display,
    ) -> Self {
        Self {
            service,
            operation,
            kind,
            code: None,
            message: message.to_string(),
        }
    }

    /// A request that could not be built: nothing was sent (kind [`EdgeErrorKind::Request`]).
    pub fn request(
        service: &'static str,
        operation: &'static str,
        message: impl fmt::Display,
    ) -> Self {
        Self::of_kind(EdgeErrorKind::Request, service, operation, message)
    }

    /// An answer (or a stored item) that could not be read (kind [`EdgeErrorKind::Unreadable`]).
    pub fn unreadable(
        service: &'static str,
        operation: &'static str,
        message: impl fmt::Display,
    ) -> Self {
        Self::of_kind(EdgeErrorKind::Unreadable, service, operation, message)
    }

    /// A call that got no answer (kind [`EdgeErrorKind::Unreachable`]): what a test double
    /// standing in for a store that is down returns.
    pub fn unreachable(
        service: &'static str,
        operation: &'static str,
        message: impl fmt::Display,
    ) -> Self {
        Self::of_kind(EdgeErrorKind::Unreachable, service, operation, message)
    }

    /// The service answered with error `code` (kind [`EdgeErrorKind::Service`]).
    pub fn service(
        service: &'static str,
        operation: &'static str,
        code: &str,
        message: impl fmt::Display,
    ) -> Self {
        Self {
            code: Some(code.to_owned()),
            ..Self::of_kind(EdgeErrorKind::Service, service, operation, message)
        }
    }

    /// Whether the service answered with error `code`.
    pub fn is_code(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }
}

/// Whether a failure may go away by itself: what decides a Lambda error's `errorType`
/// (`Retryable` or `NonRetryable`) and whether a caller tries again.
pub trait Retryable {
    /// `true` when the same call, made later, may succeed.
    fn is_retryable(&self) -> bool;
}

impl Retryable for EdgeError {
    /// Throttled, unreachable or a server error: the same call may succeed later. A service's
    /// refusal, a request that could not be built or an answer that could not be read will not
    /// change by retrying.
    fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            EdgeErrorKind::Throttled | EdgeErrorKind::Unreachable | EdgeErrorKind::ServerError
        )
    }
}

impl fmt::Display for EdgeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.service, self.operation)?;
        match (&self.kind, &self.code) {
            (EdgeErrorKind::Unreadable, _) => write!(f, " answered unreadably")?,
            (EdgeErrorKind::Request, _) => write!(f, " could not be sent")?,
            (EdgeErrorKind::Unreachable, _) => write!(f, " failed (endpoint unreachable)")?,
            (_, Some(code)) => write!(f, " failed ({code})")?,
            _ => write!(f, " failed")?,
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for EdgeError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_service_operation_and_what_happened() {
        let err = EdgeError::service(
            "dynamodb",
            "PutItem",
            "ResourceNotFoundException",
            "Requested resource not found",
        );
        assert_eq!(
            err.to_string(),
            "dynamodb PutItem failed (ResourceNotFoundException): Requested resource not found"
        );
        assert!(err.is_code("ResourceNotFoundException"));
        assert!(!err.is_retryable());
        assert_eq!(
            EdgeError::unreachable("s3", "PutObject", "connection refused").to_string(),
            "s3 PutObject failed (endpoint unreachable): connection refused"
        );
        assert_eq!(
            EdgeError::unreadable("dynamodb", "GetItem", "rollout r1: no state").to_string(),
            "dynamodb GetItem answered unreadably: rollout r1: no state"
        );
        assert_eq!(
            EdgeError::request("dynamodb", "CreateTable", "no key type").to_string(),
            "dynamodb CreateTable could not be sent: no key type"
        );
    }

    #[test]
    fn only_throttled_and_unreachable_calls_are_retried() {
        let kinds = [
            (EdgeErrorKind::Service, false),
            (EdgeErrorKind::Throttled, true),
            (EdgeErrorKind::Unreachable, true),
            (EdgeErrorKind::ServerError, true),
            (EdgeErrorKind::Request, false),
            (EdgeErrorKind::Unreadable, false),
        ];
        for (kind, retryable) in kinds {
            let err = EdgeError {
                kind,
                ..EdgeError::request("iot", "CreateJob", "x")
            };
            assert_eq!(err.is_retryable(), retryable, "{kind:?}");
        }
    }
}
