//! Provisioning functions, one binary per trigger. `hook`: the fleet-provisioning
//! pre-provisioning hook. `jitr`: just-in-time registration of CA-signed device certificates, with
//! `registry` its AWS IoT edge. Both work over the [`hook::Manifest`] trait (DynamoDB in
//! production: `shoal_aws::manifest_table`).

pub mod hook;
pub mod jitr;
#[cfg(test)]
mod memory;
pub mod registry;
