//! Shoal's edges to AWS: the SDK client factory and error mapping ([`client`]), the DynamoDB
//! tables ([`device_table`], [`manifest_table`], [`firmware_table`], [`rollout_table`] over
//! [`dynamo`]), the shadow store ([`shadow_store`]), the IoT registry ([`fleet`]), alerts
//! ([`alerts`]), configuration from the environment ([`config`]), logging ([`logging`]),
//! CloudWatch embedded metrics ([`metrics`]) and the Lambda error of a failed invocation
//! ([`lambda`]).
//!
//! The domain these edges serve lives in `shoal-core`; nothing there depends on this crate.

pub mod alerts;
pub mod client;
pub mod config;
pub mod device_table;
pub mod dynamo;
pub mod firmware_table;
pub mod fleet;
pub mod lambda;
pub mod logging;
pub mod manifest_table;
pub mod metrics;
pub mod rollout_table;
pub mod shadow_store;

pub use client::{AwsResultExt, ClientFactory, EdgeError, EdgeErrorKind, Retryable};
