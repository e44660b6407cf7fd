//! The shadow data plane at the edge: `shoal-core`'s [`ShadowStore`] port on AWS IoT's
//! GetThingShadow / UpdateThingShadow.

use aws_smithy_types::Blob;

use crate::client::{AwsResultExt, EdgeError};
use shoal_core::shadow::store::ShadowStore;
use shoal_core::shadow::{ShadowDocument, ShadowRef, ShadowUpdate};

/// AWS IoT's data plane.
#[derive(Debug, Clone)]
pub struct IotShadowStore {
    client: aws_sdk_iotdataplane::Client,
}

impl IotShadowStore {
    pub fn new(client: aws_sdk_iotdataplane::Client) -> Self {
        Self { client }
    }
}

fn malformed(operation: &'static str, e: impl std::fmt::Display) -> EdgeError {
    EdgeError::unreadable(
        "iot-data",
        operation,
        format!("unreadable shadow document: {e}"),
    )
}

impl ShadowStore for IotShadowStore {
    async fn get(&self, shadow: &ShadowRef) -> Result<Option<ShadowDocument>, EdgeError> {
        let answer = self
            .client
            .get_thing_shadow()
            .thing_name(shadow.thing.as_str())
            .set_shadow_name(shadow.name.as_ref().map(|n| n.as_str().to_owned()))
            .send()
            .await
            .aws("iot-data", "GetThingShadow");
        match answer {
            Ok(out) => {
                let bytes = out.payload.map(Blob::into_inner).unwrap_or_default();
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| malformed("GetThingShadow", e))
            }
            Err(e) if e.is_code("ResourceNotFoundException") => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn update(
        &self,
        shadow: &ShadowRef,
        update: &ShadowUpdate,
    ) -> Result<Option<u64>, EdgeError> {
        let body = serde_json::to_vec(update)
            .map_err(|e| EdgeError::request("iot-data", "UpdateThingShadow", e))?;
        let answer = self
            .client
            .update_thing_shadow()
            .thing_name(shadow.thing.as_str())
            .set_shadow_name(shadow.name.as_ref().map(|n| n.as_str().to_owned()))
            .payload(Blob::new(body))
            .send()
            .await
            .aws("iot-data", "UpdateThingShadow");
        match answer {
            Ok(out) => {
                let bytes = out.payload.map(Blob::into_inner).unwrap_or_default();
                let accepted: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|e| malformed("UpdateThingShadow", e))?;
                let version = accepted["version"]
                    .as_u64()
                    .ok_or_else(|| malformed("UpdateThingShadow", "no version"))?;
                Ok(Some(version))
            }
            Err(e) if e.is_code("ConflictException") => Ok(None),
            Err(e) => Err(e),
        }
    }
}
