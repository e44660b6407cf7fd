//! A local Lambda host for the local stack: the SAM template's functions run from their built
//! binaries (`cargo build`, `target/debug/<binary>`) as they are deployed, so the IoT Core's rules,
//! the event source mappings and the operator's tools invoke the real code through the real
//! seams.
//!
//! - [`functions`]: the template's functions, event source mappings and schedules, resolved to
//!   local names.
//! - [`runtime`]: execution environments: one process each behind Lambda's Runtime API, with the
//!   function's timeout, crash and init-error handling.
//! - [`host`]: concurrency per function, synchronous invocations, the asynchronous queue with
//!   retries and on-failure records.
//! - [`api`]: Lambda's Invoke API over HTTP (`AWS_ENDPOINT_URL_LAMBDA`).
//! - [`sources`]: SQS and Kinesis pollers and schedules.
//!
//! What differs from AWS Lambda is listed in README's emulator table.

pub mod api;
pub mod functions;
pub mod host;
pub mod runtime;
pub mod sources;

/// [`host::Destinations`] on SQS (moto's, locally): the queue named by the ARN's last part.
#[derive(Debug, Clone)]
pub struct SqsDestinations(pub aws_sdk_sqs::Client);

impl host::Destinations for SqsDestinations {
    async fn send(&self, queue_arn: &str, record: String) -> Result<(), String> {
        let name = queue_arn.rsplit(':').next().unwrap_or(queue_arn);
        let url = self
            .0
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .map_err(|e| {
                format!(
                    "GetQueueUrl {name}: {}",
                    aws_sdk_sqs::error::DisplayErrorContext(e)
                )
            })?
            .queue_url
            .unwrap_or_default();
        self.0
            .send_message()
            .queue_url(url)
            .message_body(record)
            .send()
            .await
            .map(drop)
            .map_err(|e| {
                format!(
                    "SendMessage {name}: {}",
                    aws_sdk_sqs::error::DisplayErrorContext(e)
                )
            })
    }
}
