//! The telemetry router: AWS IoT rule (directly, or batched through SQS or Kinesis) → Timestream, with a quarantine in S3 for everything that
//! cannot be stored. `router` is the logic over two small traits, `edges` implements them with the
//! AWS SDK, `handler` is the Lambda entry point and `main.rs` wires them.

pub mod batch;
pub mod edges;
#[cfg(test)]
mod fakes;
pub mod handler;
pub mod router;
