//! The `shoal` operator CLI. Each command lives in its own module; `main.rs` only parses
//! arguments and wires the AWS clients.

pub mod decommission;
pub mod firmware;
pub mod group_config;
pub mod manifest;
pub mod resources;
pub mod rollout;
pub mod smoke;
