//! The firmware registry's DynamoDB edge (`SHOAL_FIRMWARE_TABLE`): one item per image, keyed by
//! `model_hardware` (`<model>#<hardware>`) and `version`, the version's precedence text (build
//! metadata dropped: `1.10.0+build.42` is keyed `1.10.0`, its full text kept in `version_text`).
//! Items are immutable: a version is written once (conditional put), so two builds of one
//! version can never both be published, even by racing publishers (items written before
//! `version_text` are keyed by their full text: for those, `check_publish` is what refuses
//! another build). The current version of a
//! model is the greatest by SemVer precedence, never by string order.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use crate::client::{AwsResultExt, EdgeError, condition_held, created_unless_in_use};
use crate::config::TableName;
use crate::dynamo::ItemError;
use shoal_core::rollout::FirmwareVersion;
use shoal_core::rollout::image::{DeviceModel, FirmwareImage, HardwareRevision};

type Item = HashMap<String, AttributeValue>;

fn partition(model: &DeviceModel, hardware: &HardwareRevision) -> String {
    format!("{model}#{hardware}")
}

fn to_item(image: &FirmwareImage) -> Item {
    let s = |v: &str| AttributeValue::S(v.to_owned());
    let mut item = Item::from([
        (
            "model_hardware".into(),
            s(&partition(&image.model, &image.hardware)),
        ),
        ("version".into(), s(&image.version.precedence_text())),
        ("version_text".into(), s(&image.version.to_string())),
        ("model".into(), s(image.model.as_str())),
        ("hardware".into(), s(image.hardware.as_str())),
        ("size".into(), AttributeValue::N(image.size.to_string())),
        ("sha256".into(), s(&image.sha256)),
        ("signature".into(), s(&image.signature)),
        ("s3_key".into(), s(&image.s3_key)),
        ("signing_key".into(), s(&image.signing_key)),
        (
            "created_at_ms".into(),
            AttributeValue::N(image.created_at_ms.to_string()),
        ),
    ]);
    if let Some(min) = &image.min_version {
        item.insert("min_version".into(), s(&min.to_string()));
    }
    if let Some(reason) = &image.downgrade_reason {
        item.insert("downgrade_reason".into(), s(reason));
    }
    item
}

fn from_item(item: &Item) -> Result<FirmwareImage, ItemError> {
    let text = |k: &'static str| match item.get(k) {
        Some(AttributeValue::S(v)) => Ok(v.clone()),
        Some(_) => Err(ItemError::invalid(k)("not a string")),
        None => Err(ItemError::Missing(k)),
    };
    let number = |k: &'static str| match item.get(k) {
        Some(AttributeValue::N(v)) => v.parse::<u64>().map_err(ItemError::invalid(k)),
        Some(_) => Err(ItemError::invalid(k)("not a number")),
        None => Err(ItemError::Missing(k)),
    };
    let parsed = |k: &'static str, text: String| text.parse().map_err(ItemError::invalid(k));
    Ok(FirmwareImage {
        model: text("model")?
            .parse()
            .map_err(ItemError::invalid("model"))?,
        hardware: text("hardware")?
            .parse()
            .map_err(ItemError::invalid("hardware"))?,
        // Items written before `version_text` keyed the full text.
        version: parsed(
            "version",
            text("version_text").or_else(|_| text("version"))?,
        )?,
        min_version: text("min_version")
            .ok()
            .map(|v| parsed("min_version", v))
            .transpose()?,
        size: number("size")?,
        sha256: text("sha256")?,
        signature: text("signature")?,
        s3_key: text("s3_key")?,
        signing_key: text("signing_key")?,
        created_at_ms: number("created_at_ms")?,
        downgrade_reason: text("downgrade_reason").ok(),
    })
}

#[derive(Debug, Clone)]
pub struct FirmwareTable {
    client: aws_sdk_dynamodb::Client,
    table: TableName,
}

impl FirmwareTable {
    pub fn new(client: aws_sdk_dynamodb::Client, table: TableName) -> Self {
        Self { client, table }
    }

    pub fn name(&self) -> &TableName {
        &self.table
    }

    /// Creates the table unless it exists (locally; on AWS it comes from the template).
    ///
    /// # Errors
    /// [`EdgeError`] when the CreateTable request could not be built or DynamoDB could not be
    /// called or refused it; a table that exists already (`ResourceInUseException`) is `Ok(())`.
    pub async fn ensure_exists(&self) -> Result<(), EdgeError> {
        let created = crate::dynamo::create_table(
            &self.client,
            self.table.as_str(),
            "model_hardware",
            Some("version"),
        )?
        .send()
        .await
        .aws("dynamodb", "CreateTable");
        created_unless_in_use(created)
    }

    /// Every image of a model and hardware revision, oldest version first (semver order).
    ///
    /// # Errors
    /// [`EdgeError`] when a Query page fails (unreachable, throttled, refused), or
    /// [`EdgeErrorKind::Unreadable`](crate::client::EdgeErrorKind::Unreadable) when a stored item
    /// is not a firmware image (an attribute missing or malformed).
    pub async fn images(
        &self,
        model: &DeviceModel,
        hardware: &HardwareRevision,
    ) -> Result<Vec<FirmwareImage>, EdgeError> {
        let mut pages = self
            .client
            .query()
            .table_name(self.table.as_str())
            .key_condition_expression("model_hardware = :p")
            .expression_attribute_values(":p", AttributeValue::S(partition(model, hardware)))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send();
        let mut images = Vec::new();
        while let Some(item) = pages.next().await {
            let item = item.aws("dynamodb", "Query")?;
            images
                .push(from_item(&item).map_err(|m| EdgeError::unreadable("dynamodb", "Query", m))?);
        }
        images.sort_by(|a, b| a.version.cmp(&b.version));
        Ok(images)
    }

    /// The greatest published version (semver), if any.
    ///
    /// # Errors
    /// [`EdgeError`] as [`images`](Self::images): a failed Query or an unreadable item.
    pub async fn current(
        &self,
        model: &DeviceModel,
        hardware: &HardwareRevision,
    ) -> Result<Option<FirmwareVersion>, EdgeError> {
        Ok(self.images(model, hardware).await?.pop().map(|i| i.version))
    }

    /// Records a new image. `Ok(false)`: a version of the same precedence (this one or another
    /// build of it) is already published (images are immutable).
    ///
    /// # Errors
    /// [`EdgeError`] when DynamoDB could not be called or refused the write; a version already
    /// published is `Ok(false)`, not an error.
    pub async fn insert(&self, image: &FirmwareImage) -> Result<bool, EdgeError> {
        let put = self
            .client
            .put_item()
            .table_name(self.table.as_str())
            .set_item(Some(to_item(image)))
            .condition_expression("attribute_not_exists(version)")
            .send()
            .await
            .aws("dynamodb", "PutItem");
        condition_held(put)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_round_trip_through_items() {
        let image = FirmwareImage {
            model: "th-v2".parse().unwrap(),
            hardware: "rev-b".parse().unwrap(),
            version: "1.10.0".parse().unwrap(),
            min_version: Some("1.4.0".parse().unwrap()),
            size: 42,
            sha256: "ab".repeat(32),
            signature: "MEUCIQ==".into(),
            s3_key: "firmware/th-v2/rev-b/1.10.0/x.bin".into(),
            signing_key: "alias/shoal-firmware".into(),
            created_at_ms: 1,
            downgrade_reason: None,
        };
        assert_eq!(from_item(&to_item(&image)), Ok(image.clone()));

        // A build's item is keyed by the precedence and reads back with its build metadata.
        let build = FirmwareImage {
            version: "1.10.0+build.42".parse().unwrap(),
            ..image
        };
        let item = to_item(&build);
        assert_eq!(item["version"], AttributeValue::S("1.10.0".into()));
        let read = from_item(&item).unwrap();
        assert_eq!(read.version.to_string(), "1.10.0+build.42");
    }
}
