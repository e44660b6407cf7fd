//! Shoal's domain: telemetry decoding, validation and records ([`telemetry`]), shadow documents,
//! policies and sync ([`shadow`]), rollout cohorts, phases and advance ([`rollout`]), provisioning
//! decisions ([`provisioning`]) and presence ordering ([`presence`]).
//!
//! Pure logic: no AWS SDK, no async runtime, no I/O. It builds on the device↔cloud contract in
//! `shoal-wire`, whose modules it re-exports where its own extend them ([`ids`],
//! [`rollout::version`], [`rollout::image`], [`shadow::ota`]).

#![warn(missing_docs)]

pub use shoal_wire::ids;

pub mod alerts;
pub mod clock;
pub mod edge;
pub mod lists;
pub mod presence;
pub mod provisioning;
pub mod rollout;
pub mod shadow;
pub mod telemetry;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;
