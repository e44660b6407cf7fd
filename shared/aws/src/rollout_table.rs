//! The rollout table's DynamoDB edge (`SHOAL_ROLLOUT_TABLE`): keys `rollout_id` and `record`.
//! `record = "rollout"` holds the state (JSON) with its `revision` and `status` beside it;
//! `record = "audit#<revision>"` one entry per transition. A transition is one transaction: the
//! state is written only over the revision it was computed from, and the audit entry only if it
//! is new, so two advancers racing move a rollout once and log it once.
//! `record = "device#<thing>"` holds what the rollout asked of one device ([`DeviceRecord`]).
//! Partition `#rollouts` lists every rollout (`id#<id>`, one item each), for the advancer.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};

use crate::client::{AwsResultExt, EdgeError, created_unless_in_use};
use crate::config::TableName;
use crate::dynamo::ItemError;
use shoal_core::rollout::advance::DeviceRecord;
use shoal_core::rollout::state::{Rollout, Transition};

pub const ROLLOUT_RECORD: &str = "rollout";
const INDEX_PARTITION: &str = "#rollouts";
const INDEX_PREFIX: &str = "id#";
const DEVICE_PREFIX: &str = "device#";

type Item = HashMap<String, AttributeValue>;

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn json<T: serde::Serialize>(
    operation: &'static str,
    value: &T,
) -> Result<AttributeValue, EdgeError> {
    serde_json::to_string(value)
        .map(s)
        .map_err(|e| EdgeError::request("dynamodb", operation, e))
}

/// The record a JSON-text attribute holds.
fn json_attribute<T: serde::de::DeserializeOwned>(
    item: &Item,
    attribute: &'static str,
) -> Result<T, ItemError> {
    match item.get(attribute) {
        Some(AttributeValue::S(text)) => {
            serde_json::from_str(text).map_err(ItemError::invalid(attribute))
        }
        Some(_) => Err(ItemError::invalid(attribute)("not a string")),
        None => Err(ItemError::Missing(attribute)),
    }
}

fn status_text(rollout: &Rollout) -> String {
    serde_json::to_value(rollout.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn state_item(rollout: &Rollout) -> Result<Item, EdgeError> {
    Ok(Item::from([
        ("rollout_id".into(), s(rollout.id.as_str())),
        ("record".into(), s(ROLLOUT_RECORD)),
        (
            "revision".into(),
            AttributeValue::N(rollout.revision.to_string()),
        ),
        ("status".into(), s(status_text(rollout))),
        ("state".into(), json("TransactWriteItems", rollout)?),
    ]))
}

fn audit_item(rollout_id: &str, transition: &Transition) -> Result<Item, EdgeError> {
    Ok(Item::from([
        ("rollout_id".into(), s(rollout_id)),
        (
            "record".into(),
            s(format!("audit#{:010}", transition.revision)),
        ),
        ("transition".into(), json("TransactWriteItems", transition)?),
    ]))
}

fn build(operation: &'static str) -> impl Fn(aws_sdk_dynamodb::error::BuildError) -> EdgeError {
    move |e| EdgeError::request("dynamodb", operation, e)
}

#[derive(Debug, Clone)]
pub struct RolloutTable {
    client: aws_sdk_dynamodb::Client,
    table: TableName,
}

impl RolloutTable {
    pub fn new(client: aws_sdk_dynamodb::Client, table: TableName) -> Self {
        Self { client, table }
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
            "rollout_id",
            Some("record"),
        )?
        .send()
        .await
        .aws("dynamodb", "CreateTable");
        created_unless_in_use(created)
    }

    /// Records a new rollout and lists it for the advancer. `Ok(false)`: the id is taken.
    ///
    /// # Errors
    /// [`EdgeError`] when the rollout does not serialize or a put could not be built (nothing
    /// sent), or DynamoDB could not be called or refused the transaction; a cancelled
    /// transaction (`TransactionCanceledException`, the id taken) is `Ok(false)`, not an error.
    pub async fn create(&self, rollout: &Rollout) -> Result<bool, EdgeError> {
        let state = Put::builder()
            .table_name(self.table.as_str())
            .set_item(Some(state_item(rollout)?))
            .condition_expression("attribute_not_exists(rollout_id)")
            .build()
            .map_err(build("TransactWriteItems"))?;
        let listed = Put::builder()
            .table_name(self.table.as_str())
            .item("rollout_id", s(INDEX_PARTITION))
            .item("record", s(format!("{INDEX_PREFIX}{}", rollout.id)))
            .build()
            .map_err(build("TransactWriteItems"))?;
        self.transact(vec![state, listed]).await
    }

    /// Every rollout id, in id order.
    ///
    /// # Errors
    /// [`EdgeError`] when a Query page fails (unreachable, throttled, refused).
    pub async fn ids(&self) -> Result<Vec<String>, EdgeError> {
        let items = crate::dynamo::query_prefix(
            &self.client,
            self.table.as_str(),
            ("rollout_id", INDEX_PARTITION),
            ("record", INDEX_PREFIX),
        )
        .await?;
        Ok(items
            .iter()
            .filter_map(|item| match item.get("record") {
                Some(AttributeValue::S(record)) => {
                    record.strip_prefix(INDEX_PREFIX).map(str::to_owned)
                }
                _ => None,
            })
            .collect())
    }

    /// Records (or rewrites) what the rollout asked of one device.
    ///
    /// # Errors
    /// [`EdgeError`] when the record does not serialize (nothing sent) or DynamoDB could not be
    /// called or refused the write.
    pub async fn put_device(
        &self,
        rollout_id: &str,
        record: &DeviceRecord,
    ) -> Result<(), EdgeError> {
        self.client
            .put_item()
            .table_name(self.table.as_str())
            .item("rollout_id", s(rollout_id))
            .item("record", s(format!("{DEVICE_PREFIX}{}", record.thing)))
            .item("device", json("PutItem", record)?)
            .send()
            .await
            .aws("dynamodb", "PutItem")?;
        Ok(())
    }

    /// Every device the rollout targeted.
    ///
    /// # Errors
    /// [`EdgeError`] when a Query page fails, or
    /// [`EdgeErrorKind::Unreadable`](crate::client::EdgeErrorKind::Unreadable) when a device item
    /// has no readable `device` JSON.
    pub async fn devices(&self, rollout_id: &str) -> Result<Vec<DeviceRecord>, EdgeError> {
        let items = crate::dynamo::query_prefix(
            &self.client,
            self.table.as_str(),
            ("rollout_id", rollout_id),
            ("record", DEVICE_PREFIX),
        )
        .await?;
        items
            .iter()
            .map(|item| {
                json_attribute(item, "device").map_err(|e| {
                    EdgeError::unreadable("dynamodb", "Query", format!("rollout {rollout_id}: {e}"))
                })
            })
            .collect()
    }

    /// The rollout, read consistently.
    ///
    /// # Errors
    /// [`EdgeError`] when the GetItem call fails, or
    /// [`EdgeErrorKind::Unreadable`](crate::client::EdgeErrorKind::Unreadable) when the item has
    /// no readable `state` JSON; an unknown id is `Ok(None)`.
    pub async fn get(&self, id: &str) -> Result<Option<Rollout>, EdgeError> {
        let got = self
            .client
            .get_item()
            .table_name(self.table.as_str())
            .key("rollout_id", s(id))
            .key("record", s(ROLLOUT_RECORD))
            .consistent_read(true)
            .send()
            .await
            .aws("dynamodb", "GetItem")?;
        got.item
            .as_ref()
            .map(|item| {
                json_attribute(item, "state").map_err(|e| {
                    EdgeError::unreadable("dynamodb", "GetItem", format!("rollout {id}: {e}"))
                })
            })
            .transpose()
    }

    /// Writes `next` over `previous` (same id) and appends `transition`, atomically.
    /// `Ok(false)`: the rollout moved since `previous` was read; nothing was written.
    ///
    /// # Errors
    /// [`EdgeError`] when the state or transition does not serialize or a put could not be built
    /// (nothing sent), or DynamoDB could not be called or refused the transaction; a cancelled
    /// transaction (`TransactionCanceledException`) is `Ok(false)`, not an error.
    pub async fn transition(
        &self,
        previous: &Rollout,
        next: &Rollout,
        transition: &Transition,
    ) -> Result<bool, EdgeError> {
        let state = Put::builder()
            .table_name(self.table.as_str())
            .set_item(Some(state_item(next)?))
            .condition_expression("revision = :read")
            .expression_attribute_values(":read", AttributeValue::N(previous.revision.to_string()))
            .build()
            .map_err(build("TransactWriteItems"))?;
        let audit = Put::builder()
            .table_name(self.table.as_str())
            .set_item(Some(audit_item(previous.id.as_str(), transition)?))
            .condition_expression("attribute_not_exists(rollout_id)")
            .build()
            .map_err(build("TransactWriteItems"))?;
        self.transact(vec![state, audit]).await
    }

    /// Both puts or neither. `Ok(false)`: a condition failed.
    async fn transact(&self, puts: Vec<Put>) -> Result<bool, EdgeError> {
        let items = puts
            .into_iter()
            .map(|put| TransactWriteItem::builder().put(put).build())
            .collect();
        let written = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
            .aws("dynamodb", "TransactWriteItems");
        match written {
            Ok(_) => Ok(true),
            Err(e) if e.is_code("TransactionCanceledException") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The audit log, oldest first.
    ///
    /// # Errors
    /// [`EdgeError`] when a Query page fails, or
    /// [`EdgeErrorKind::Unreadable`](crate::client::EdgeErrorKind::Unreadable) when an audit item
    /// has no readable `transition` JSON.
    pub async fn audit(&self, id: &str) -> Result<Vec<Transition>, EdgeError> {
        let items = crate::dynamo::query_prefix(
            &self.client,
            self.table.as_str(),
            ("rollout_id", id),
            ("record", "audit#"),
        )
        .await?;
        items
            .iter()
            .map(|item| {
                json_attribute(item, "transition").map_err(|e| {
                    EdgeError::unreadable("dynamodb", "Query", format!("rollout {id} audit: {e}"))
                })
            })
            .collect()
    }
}
