//! The device side of Shoal: the state machines a device runs against AWS IoT Core, `no_std` +
//! `alloc` and without I/O, so that a microcontroller, the Linux agent and the fleet simulator run
//! the same code. Messages go in as (topic, payload); what to publish comes out. Built on
//! `shoal-wire`, the contract the cloud reads with.
//!
//! - [`shadow`]: Device Shadow sync — a `delta` applied to the device's configuration, what was
//!   applied (never what was merely asked) reported, in any order and with duplicates.
//! - [`ota`]: A/B over-the-air updates — resumable download, size/digest/signature checked before
//!   anything is bootable, anti-rollback floor, trial boot, self-test, commit or fallback; success
//!   reported only after the commit.
//! - [`provisioning`]: fleet provisioning by claim — a certificate from the device's own CSR (or
//!   AWS's keys), RegisterThing with the serial and factory secret, retries with backoff, a
//!   refusal final and explained.
//! - [`buffer`]: the offline buffer — bounded, in order, every drop counted, flushed at least once.
//! - [`aggregate`]: edge aggregation windows (count, mean, min, max, std) in shoal-wire's shape.
//! - [`sampling`]: adaptive sampling (deadband + heartbeat) and reconnect backoff with full jitter.

#![no_std]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod aggregate;
pub mod buffer;
pub mod ota;
pub mod provisioning;
pub mod sampling;
pub mod shadow;
