//! Shadow sync and presence.
//!
//! - [`documents`]: one `update/documents` message → clear reached desired keys and decide
//!   conflicts (`shoal_core::shadow::sync`), written with optimistic locking; reported
//!   firmware/config and OTA reports recorded in the device registry.
//! - [`presence`]: lifecycle events → online/last_seen in the registry, never regressed by late
//!   or duplicate events; a scheduled sweep alerts on devices offline longer than the threshold.
//! - [`edges`]: the traits' AWS implementations (DynamoDB device table, IoT data Publish).

pub mod documents;
pub mod edges;
#[cfg(test)]
mod memory;
pub mod presence;
