//! Operator alerts, published to an MQTT topic (presence's offline sweep, the OTA advancer's
//! auto-pause): the port the flows that raise them call; `shoal-aws` publishes them with IoT data
//! Publish.

use std::future::Future;

use crate::edge::EdgeError;

/// Where alerts go.
pub trait Alerts: Sync {
    /// Publishes `payload` (JSON) to MQTT topic `topic`.
    ///
    /// # Errors
    /// [`EdgeError`] when the publish failed.
    fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
    ) -> impl Future<Output = Result<(), EdgeError>> + Send;
}
