//! Shoal's domain library.
//!
//! Pure domain logic lives here without AWS SDK types in its signatures; the one exception is
//! [`aws`], the client factory and the error type that the edges (functions, tools) use.

pub mod aws;
pub mod config;
pub mod ids;
pub mod logging;
pub mod metrics;
pub mod telemetry;
