//! Provisioning functions. `hook`: the fleet-provisioning pre-provisioning hook, over the
//! [`hook::Manifest`] trait (DynamoDB in production: `shoal_shared::manifest_table`).

pub mod hook;
