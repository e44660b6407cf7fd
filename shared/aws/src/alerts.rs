//! Operator alerts at the edge: `shoal-core`'s [`Alerts`] port on IoT data Publish.

use aws_smithy_types::Blob;
use shoal_core::alerts::Alerts;

use crate::client::{AwsResultExt, EdgeError};

/// Alerts published with IoT data Publish (QoS 1).
pub struct IotAlerts(pub aws_sdk_iotdataplane::Client);

impl Alerts for IotAlerts {
    async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), EdgeError> {
        self.0
            .publish()
            .topic(topic)
            .qos(1)
            .payload(Blob::new(payload))
            .send()
            .await
            .aws("iot-data", "Publish")?;
        Ok(())
    }
}
