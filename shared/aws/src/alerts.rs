//! Operator alerts, published to an MQTT topic (presence's offline sweep, the OTA advancer's
//! auto-pause), behind a trait so the flows that raise them are testable without AWS.

use std::future::Future;

use aws_smithy_types::Blob;

use crate::client::{AwsResultExt, EdgeError};

pub trait Alerts: Sync {
    fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
    ) -> impl Future<Output = Result<(), EdgeError>> + Send;
}

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
