//! The Lambda error every Shoal function answers with when an invocation fails.
//!
//! Follows aws-lambda-rust-runtime's `basic-error-thiserror` example: each function keeps one
//! error enum (its domain failures and the [`EdgeError`](crate::client::EdgeError)s of its
//! ports) and maps it here, once, to a `Diagnostic` whose `errorType` says whether a retry can
//! help — `Retryable` (a store throttled or unreachable, a deadline) or `NonRetryable` (a
//! refusal, missing data, a malformed event) — and whose `errorMessage` is the error's text.
//! See <https://docs.aws.amazon.com/lambda/latest/dg/rust-handler.html>.

use lambda_runtime::Diagnostic;
use shoal_core::edge::Retryable;

/// `errorType` of a failure the same invocation may get past later.
pub const RETRYABLE: &str = "Retryable";
/// `errorType` of a failure that stays until someone acts.
pub const NON_RETRYABLE: &str = "NonRetryable";

/// The `Diagnostic` of `error`: `errorType` [`RETRYABLE`] or [`NON_RETRYABLE`], `errorMessage`
/// its text.
pub fn diagnostic<E: Retryable + std::fmt::Display + ?Sized>(error: &E) -> Diagnostic {
    Diagnostic {
        error_type: if error.is_retryable() {
            RETRYABLE
        } else {
            NON_RETRYABLE
        }
        .into(),
        error_message: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_core::edge::EdgeError;

    #[test]
    fn an_unreachable_store_is_retryable_and_a_refusal_is_not() {
        let down = diagnostic(&EdgeError::unreachable(
            "s3",
            "PutObject",
            "connection refused",
        ));
        assert_eq!(down.error_type, RETRYABLE);
        assert_eq!(
            down.error_message,
            "s3 PutObject failed (endpoint unreachable): connection refused"
        );
        let refused = diagnostic(&EdgeError::service(
            "dynamodb",
            "PutItem",
            "ResourceNotFoundException",
            "Requested resource not found",
        ));
        assert_eq!(refused.error_type, NON_RETRYABLE);
    }
}
