//! Firmware rollouts: versions compared as semver with anti-rollback ([`version`], from
//! `shoal-wire`), signed images ([`image`]), deterministic cohorts and eligibility ([`cohort`]),
//! and the phases an advancer moves through, pausing on failures ([`phases`]).

pub mod advance;
pub mod cohort;
pub mod delivery;
pub mod image;
pub mod phases;
pub mod state;
/// Firmware versions and their precedence: the contract's, from `shoal-wire`.
pub use shoal_wire::version;

pub use version::FirmwareVersion;
