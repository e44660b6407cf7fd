//! The `shoal` operator CLI. Each command lives in its own module, which owns both its clap
//! arguments and its action (`run`); `main.rs` only parses the command line and dispatches.

pub mod claim;
pub mod decommission;
pub mod firmware;
pub mod group_config;
pub mod manifest;
pub mod resources;
pub mod rollout;
pub mod smoke;
