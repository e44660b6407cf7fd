//! Shoal's device agent for Linux gateways and its fleet simulator: the state machines of
//! `shoal-firmware` (the same a microcontroller runs) over real connections.
//!
//! - [`link`]: the MQTT connection (rumqttc, MQTT 3.1.1 or 5, rustls, ALPN on 443, reconnect
//!   with full jitter).
//! - [`provision`]: fleet provisioning by claim over MQTT (the device's own key and CSR, or AWS's).
//! - [`slots`]: A/B slots and a bootloader, in memory or in a directory.
//! - [`download`]: presigned-URL downloads from an offset, in chunks.
//! - [`device`]: one device at run time (shadow sync, OTA, telemetry through the offline buffer),
//!   over a [`device::Board`].
//! - [`gateway`]: the agent's configuration file and board (a Linux gateway).
//! - [`simulate`]: many virtual devices in one process, with seeded fault injection.

pub mod device;
pub mod download;
pub mod gateway;
pub mod link;
pub mod provision;
pub mod simulate;
pub mod slots;
