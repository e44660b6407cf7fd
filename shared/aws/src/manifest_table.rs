//! The factory manifest in DynamoDB (the edge; the rules are in [`shoal_core::provisioning`]).
//!
//! One item per serial: `serial` (S, partition key), `model`, `batch`, `status`,
//! `certificate_id`, `thing_name`, `thing_group` (S), `attributes` (M of S), `proof` (S,
//! [`shoal_core::provisioning::Proof`]'s text form), `created_at`, `updated_at` (N, ms since the epoch).

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::types::AttributeValue;

use crate::client::{AwsResultExt, EdgeError, condition_held, created_unless_in_use};
use crate::config::TableName;
use crate::dynamo::ItemError;
use shoal_core::ids::ThingName;
use shoal_core::provisioning::{DeviceStatus, ManifestEntry, Serial};

type Item = HashMap<String, AttributeValue>;

fn s(value: &str) -> AttributeValue {
    AttributeValue::S(value.to_owned())
}

fn n(value: i64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// The item for `entry`.
pub fn to_item(entry: &ManifestEntry) -> Item {
    let mut item = Item::from([
        ("serial".into(), s(entry.serial.as_str())),
        ("model".into(), s(&entry.model)),
        ("batch".into(), s(&entry.batch)),
        ("status".into(), s(entry.status.as_str())),
        ("created_at".into(), n(entry.created_at_ms)),
        ("updated_at".into(), n(entry.updated_at_ms)),
    ]);
    if let Some(cert) = &entry.certificate_id {
        item.insert("certificate_id".into(), s(cert));
    }
    if let Some(thing) = &entry.thing_name {
        item.insert("thing_name".into(), s(thing.as_str()));
    }
    if let Some(group) = &entry.thing_group {
        item.insert("thing_group".into(), s(group));
    }
    if let Some(proof) = &entry.proof {
        item.insert("proof".into(), s(&proof.to_string()));
    }
    if !entry.attributes.is_empty() {
        let map = entry
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), s(v)))
            .collect();
        item.insert("attributes".into(), AttributeValue::M(map));
    }
    item
}

/// The entry an item holds; an item that does not parse is an error naming the field.
///
/// # Errors
/// [`ItemError`] naming the attribute that is missing, of the wrong type or does not parse.
pub fn from_item(item: &Item) -> Result<ManifestEntry, ItemError> {
    let text = |key: &'static str| -> Result<Option<String>, ItemError> {
        match item.get(key) {
            None => Ok(None),
            Some(AttributeValue::S(v)) => Ok(Some(v.clone())),
            Some(_) => Err(ItemError::invalid(key)("not a string")),
        }
    };
    let required = |key: &'static str| text(key)?.ok_or(ItemError::Missing(key));
    let number = |key: &'static str| -> Result<i64, ItemError> {
        match item.get(key) {
            Some(AttributeValue::N(v)) => v.parse().map_err(ItemError::invalid(key)),
            None => Ok(0),
            Some(_) => Err(ItemError::invalid(key)("not a number")),
        }
    };
    let attributes = match item.get("attributes") {
        None => BTreeMap::new(),
        Some(AttributeValue::M(map)) => map
            .iter()
            .map(|(k, v)| match v {
                AttributeValue::S(v) => Ok((k.clone(), v.clone())),
                _ => Err(ItemError::invalid("attributes")(format!(
                    "attribute {k} is not a string"
                ))),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(ItemError::invalid("attributes")("not a map")),
    };
    Ok(ManifestEntry {
        serial: Serial::parse(&required("serial")?).map_err(ItemError::invalid("serial"))?,
        model: required("model")?,
        batch: required("batch")?,
        status: required("status")?
            .parse()
            .map_err(ItemError::invalid("status"))?,
        certificate_id: text("certificate_id")?,
        thing_name: text("thing_name")?
            .map(|t| ThingName::parse(&t).map_err(ItemError::invalid("thing_name")))
            .transpose()?,
        thing_group: text("thing_group")?,
        attributes,
        proof: text("proof")?
            .map(|p| p.parse().map_err(ItemError::invalid("proof")))
            .transpose()?,
        created_at_ms: number("created_at")?,
        updated_at_ms: number("updated_at")?,
    })
}

/// The manifest table.
#[derive(Debug, Clone)]
pub struct ManifestTable {
    client: aws_sdk_dynamodb::Client,
    table: TableName,
}

impl ManifestTable {
    pub fn new(client: aws_sdk_dynamodb::Client, table: TableName) -> Self {
        Self { client, table }
    }

    pub fn name(&self) -> &TableName {
        &self.table
    }

    /// Creates the table (on-demand, keyed by serial) unless it exists. On AWS the table comes
    /// from infra/template.yaml; locally `shoal init-local` and the tests call this.
    ///
    /// # Errors
    /// [`EdgeError`] when the CreateTable request could not be built or DynamoDB could not be
    /// called or refused it; a table that exists already (`ResourceInUseException`) is `Ok(())`.
    pub async fn ensure_exists(&self) -> Result<(), EdgeError> {
        let created =
            crate::dynamo::create_table(&self.client, self.table.as_str(), "serial", None)?
                .send()
                .await
                .aws("dynamodb", "CreateTable");
        created_unless_in_use(created)
    }

    /// The serial's raw item, read consistently (a claim just made must be seen).
    async fn item(&self, serial: &Serial) -> Result<Option<Item>, EdgeError> {
        let got = self
            .client
            .get_item()
            .table_name(self.table.as_str())
            .key("serial", s(serial.as_str()))
            .consistent_read(true)
            .send()
            .await
            .aws("dynamodb", "GetItem")?;
        Ok(got.item)
    }

    /// The serial's entry, read consistently.
    ///
    /// # Errors
    /// [`EdgeError`] when the GetItem call fails, or
    /// [`EdgeErrorKind::Unreadable`](crate::client::EdgeErrorKind::Unreadable) when the item is
    /// not a manifest entry (see [`from_item`]); an absent serial is `Ok(None)`.
    pub async fn get(&self, serial: &Serial) -> Result<Option<ManifestEntry>, EdgeError> {
        self.item(serial)
            .await?
            .as_ref()
            .map(from_item)
            .transpose()
            .map_err(|e| EdgeError::unreadable("dynamodb", "GetItem", e))
    }

    /// Writes `entry` unless its serial is already in the table. `Ok(false)`: it was.
    ///
    /// # Errors
    /// [`EdgeError`] when DynamoDB could not be called or refused the write; a serial already in
    /// the table is `Ok(false)`, not an error.
    pub async fn insert(&self, entry: &ManifestEntry) -> Result<bool, EdgeError> {
        let put = self
            .client
            .put_item()
            .table_name(self.table.as_str())
            .set_item(Some(to_item(entry)))
            .condition_expression("attribute_not_exists(serial)")
            .send()
            .await
            .aws("dynamodb", "PutItem");
        condition_held(put)
    }

    /// Marks `serial` provisioned to `certificate_id` as `thing`, only if it is pending or already
    /// provisioned to that same certificate (`pending_only`: only if it is pending, so the write
    /// is known to be this caller's own claim): of two concurrent claims with different
    /// certificates, exactly one succeeds. `Ok(false)`: the condition failed (another certificate
    /// won, or the entry changed); re-read to see why.
    ///
    /// # Errors
    /// [`EdgeError`] when DynamoDB could not be called or refused the write; a condition that did
    /// not hold is `Ok(false)`, not an error.
    pub async fn claim(
        &self,
        serial: &Serial,
        certificate_id: &str,
        thing: &ThingName,
        now_ms: i64,
        pending_only: bool,
    ) -> Result<bool, EdgeError> {
        let updated = self
            .client
            .update_item()
            .table_name(self.table.as_str())
            .key("serial", s(serial.as_str()))
            .update_expression(
                "SET #status = :provisioned, certificate_id = :cert, thing_name = :thing, updated_at = :now",
            )
            .condition_expression(if pending_only {
                "attribute_exists(serial) AND #status = :pending"
            } else {
                "attribute_exists(serial) AND (#status = :pending OR (#status = :provisioned AND certificate_id = :cert))"
            })
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":provisioned", s(DeviceStatus::Provisioned.as_str()))
            .expression_attribute_values(":pending", s(DeviceStatus::Pending.as_str()))
            .expression_attribute_values(":cert", s(certificate_id))
            .expression_attribute_values(":thing", s(thing.as_str()))
            .expression_attribute_values(":now", n(now_ms))
            .send()
            .await
            .aws("dynamodb", "UpdateItem");
        condition_held(updated)
    }
}

impl ManifestTable {
    /// Gives back a claim this writer made at `claimed_at_ms` for `certificate_id` and then could
    /// not answer (the hook's deadline passed): the serial is pending again, only if it is still
    /// provisioned to that certificate by that very write, with a `claim_released` audit record.
    /// `Ok(false)`: the condition failed (the write never landed, or something changed since).
    ///
    /// # Errors
    /// [`EdgeError`] when DynamoDB cannot be reached or refuses the request.
    pub async fn release_own_claim(
        &self,
        serial: &Serial,
        certificate_id: &str,
        claimed_at_ms: i64,
        now_ms: i64,
    ) -> Result<bool, EdgeError> {
        let record = AuditRecord {
            at_ms: now_ms,
            action: "claim_released",
            reason: "the pre-provisioning hook denied after claiming (no decision in time, or an error after the claim)",
            certificate_id: Some(certificate_id),
        };
        self.reset_to_pending(serial, certificate_id, Some(claimed_at_ms), record)
            .await
    }

    /// Back to pending (certificate id and thing name removed) with `record` appended, only if
    /// the serial is provisioned to `certificate_id` (and, given `claimed_at_ms`, by the write
    /// made then). `Ok(false)`: the condition failed.
    async fn reset_to_pending(
        &self,
        serial: &Serial,
        certificate_id: &str,
        claimed_at_ms: Option<i64>,
        record: AuditRecord<'_>,
    ) -> Result<bool, EdgeError> {
        let condition = match claimed_at_ms {
            Some(_) => {
                "#status = :provisioned AND certificate_id = :cert AND updated_at = :claimed"
            }
            None => "#status = :provisioned AND certificate_id = :cert",
        };
        let mut update = self
            .client
            .update_item()
            .table_name(self.table.as_str())
            .key("serial", s(serial.as_str()))
            .update_expression(
                "SET #status = :pending, updated_at = :now, \
                 audit = list_append(if_not_exists(audit, :empty), :record) \
                 REMOVE certificate_id, thing_name",
            )
            .condition_expression(condition)
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":provisioned", s(DeviceStatus::Provisioned.as_str()))
            .expression_attribute_values(":pending", s(DeviceStatus::Pending.as_str()))
            .expression_attribute_values(":cert", s(certificate_id))
            .expression_attribute_values(":now", n(record.at_ms))
            .expression_attribute_values(":empty", AttributeValue::L(Vec::new()))
            .expression_attribute_values(":record", AttributeValue::L(vec![record.item()]));
        if let Some(at) = claimed_at_ms {
            update = update.expression_attribute_values(":claimed", n(at));
        }
        let updated = update.send().await.aws("dynamodb", "UpdateItem");
        condition_held(updated)
    }

    /// Gives a serial claimed by `old_certificate` to `new_certificate` (as `thing`), only if it
    /// is still provisioned to `old_certificate` and its entry has not changed since
    /// `unchanged_since_ms` (a lapsed claim), appending a `claim_taken_over` audit record in the
    /// same write. `Ok(false)`: the condition failed.
    ///
    /// # Errors
    /// [`EdgeError`] when DynamoDB cannot be reached or refuses the request.
    pub async fn take_over(
        &self,
        serial: &Serial,
        old_certificate: &str,
        new_certificate: &str,
        thing: &ThingName,
        unchanged_since_ms: i64,
        now_ms: i64,
    ) -> Result<bool, EdgeError> {
        let reason = format!(
            "certificate {old_certificate} was still not activated when the claim lease ran out"
        );
        let record = AuditRecord {
            at_ms: now_ms,
            action: "claim_taken_over",
            reason: &reason,
            certificate_id: Some(new_certificate),
        }
        .item();
        let updated = self
            .client
            .update_item()
            .table_name(self.table.as_str())
            .key("serial", s(serial.as_str()))
            .update_expression(
                "SET certificate_id = :new, thing_name = :thing, updated_at = :now, \
                 audit = list_append(if_not_exists(audit, :empty), :record)",
            )
            .condition_expression(
                "#status = :provisioned AND certificate_id = :old AND updated_at <= :since",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":provisioned", s(DeviceStatus::Provisioned.as_str()))
            .expression_attribute_values(":old", s(old_certificate))
            .expression_attribute_values(":new", s(new_certificate))
            .expression_attribute_values(":thing", s(thing.as_str()))
            .expression_attribute_values(":since", n(unchanged_since_ms))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":empty", AttributeValue::L(Vec::new()))
            .expression_attribute_values(":record", AttributeValue::L(vec![record]))
            .send()
            .await
            .aws("dynamodb", "UpdateItem");
        condition_held(updated)
    }
}

/// One line of a manifest entry's audit trail.
#[derive(Debug, Clone, Copy)]
pub struct AuditRecord<'a> {
    pub at_ms: i64,
    /// e.g. `decommissioned`, `jitr_refused`.
    pub action: &'a str,
    pub reason: &'a str,
    pub certificate_id: Option<&'a str>,
}

impl AuditRecord<'_> {
    /// The record as the `audit` list holds it: `at`, `action`, `reason`, `certificate_id` when
    /// known.
    fn item(&self) -> AttributeValue {
        let mut fields = HashMap::from([
            ("at".to_owned(), n(self.at_ms)),
            ("action".to_owned(), s(self.action)),
            ("reason".to_owned(), s(self.reason)),
        ]);
        if let Some(cert) = self.certificate_id {
            fields.insert("certificate_id".to_owned(), s(cert));
        }
        AttributeValue::M(fields)
    }
}

/// DynamoDB's limits per batch call.
pub const MAX_BATCH_WRITE: usize = 25;

impl ManifestTable {
    /// Which of `serials` are already in the table, with their status.
    ///
    /// # Errors
    /// [`EdgeError`] when a BatchGetItem call fails or keys stay unprocessed after its retries,
    /// or [`EdgeErrorKind::Unreadable`](crate::client::EdgeErrorKind::Unreadable) when a stored
    /// item is not a manifest entry.
    pub async fn existing(
        &self,
        serials: &[Serial],
    ) -> Result<Vec<(Serial, DeviceStatus)>, EdgeError> {
        let mut found = Vec::new();
        for chunk in serials.chunks(crate::dynamo::MAX_BATCH_GET) {
            let keys: Vec<Item> = chunk
                .iter()
                .map(|serial| Item::from([("serial".to_owned(), s(serial.as_str()))]))
                .collect();
            for item in
                crate::dynamo::batch_get(&self.client, self.table.as_str(), keys, None).await?
            {
                let entry = from_item(&item)
                    .map_err(|e| EdgeError::unreadable("dynamodb", "BatchGetItem", e))?;
                found.push((entry.serial, entry.status));
            }
        }
        Ok(found)
    }

    /// Writes `entries` in BatchWriteItem calls of 25, retrying unprocessed items with backoff;
    /// `progress` hears how many were written after each call.
    ///
    /// # Errors
    /// [`EdgeError`] when a put request could not be built, a BatchWriteItem call fails, or items
    /// stay unprocessed after the last retry round (throttled, code `UnprocessedItems`). Chunks
    /// before the failing one stay written.
    pub async fn write_all(
        &self,
        entries: &[ManifestEntry],
        mut progress: impl FnMut(usize),
    ) -> Result<(), EdgeError> {
        use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
        for chunk in entries.chunks(MAX_BATCH_WRITE) {
            let requests = chunk
                .iter()
                .map(|entry| {
                    PutRequest::builder()
                        .set_item(Some(to_item(entry)))
                        .build()
                        .map(|put| WriteRequest::builder().put_request(put).build())
                        .map_err(|e| build_error("BatchWriteItem", e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            crate::dynamo::until_processed("BatchWriteItem", requests, async |requests| {
                let sent = requests.len();
                let written = self
                    .client
                    .batch_write_item()
                    .request_items(self.table.as_str(), requests)
                    .send()
                    .await
                    .aws("dynamodb", "BatchWriteItem")?;
                let left: Vec<WriteRequest> = written
                    .unprocessed_items()
                    .and_then(|u| u.get(self.table.as_str()))
                    .cloned()
                    .unwrap_or_default();
                progress(sent - left.len());
                Ok(left)
            })
            .await?;
        }
        Ok(())
    }
}

impl ManifestTable {
    /// Appends an audit record `{at, action, reason, certificate_id}` to `serial`'s `audit` list,
    /// and sets its status to `status` when given, in one write.
    ///
    /// # Errors
    /// [`EdgeError`] when DynamoDB could not be called or refused the write, including a serial
    /// that is not in the table (code `ConditionalCheckFailedException`).
    pub async fn record(
        &self,
        serial: &Serial,
        record: AuditRecord<'_>,
        status: Option<DeviceStatus>,
    ) -> Result<(), EdgeError> {
        let mut update = self
            .client
            .update_item()
            .table_name(self.table.as_str())
            .key("serial", s(serial.as_str()))
            .condition_expression("attribute_exists(serial)")
            .expression_attribute_values(":now", n(record.at_ms))
            .expression_attribute_values(":empty", AttributeValue::L(Vec::new()))
            .expression_attribute_values(":record", AttributeValue::L(vec![record.item()]));
        let append =
            "updated_at = :now, audit = list_append(if_not_exists(audit, :empty), :record)";
        update = match status {
            Some(status) => update
                .update_expression(format!("SET #status = :status, {append}"))
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":status", s(status.as_str())),
            None => update.update_expression(format!("SET {append}")),
        };
        update.send().await.aws("dynamodb", "UpdateItem")?;
        Ok(())
    }

    /// Releases a serial claimed by `certificate_id` back to pending (certificate id and thing
    /// name removed) with an audit record, only if it is still provisioned to that certificate.
    /// `Ok(false)`: it was not.
    ///
    /// # Errors
    /// [`EdgeError`] when DynamoDB could not be called or refused the write; a serial not
    /// provisioned to `certificate_id` is `Ok(false)`, not an error.
    pub async fn release(
        &self,
        serial: &Serial,
        certificate_id: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<bool, EdgeError> {
        let record = AuditRecord {
            at_ms: now_ms,
            action: "reset",
            reason,
            certificate_id: Some(certificate_id),
        };
        self.reset_to_pending(serial, certificate_id, None, record)
            .await
    }

    /// The audit records of `serial`, oldest first, as (action, reason) pairs.
    ///
    /// # Errors
    /// [`EdgeError`] when the GetItem call fails; a serial without an item or audit trail is an
    /// empty list, and malformed records are skipped.
    pub async fn audit(&self, serial: &Serial) -> Result<Vec<(String, String)>, EdgeError> {
        let item = self.item(serial).await?;
        let text = |m: &HashMap<String, AttributeValue>, k: &str| match m.get(k) {
            Some(AttributeValue::S(v)) => v.clone(),
            _ => String::new(),
        };
        Ok(match item.as_ref().and_then(|i| i.get("audit")) {
            Some(AttributeValue::L(records)) => records
                .iter()
                .filter_map(|r| match r {
                    AttributeValue::M(m) => Some((text(m, "action"), text(m, "reason"))),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        })
    }
}

fn build_error(operation: &'static str, e: impl std::fmt::Display) -> EdgeError {
    EdgeError::request("dynamodb", operation, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> ManifestEntry {
        ManifestEntry {
            thing_name: Some(ThingName::parse("SN-1").unwrap()),
            thing_group: Some("greenhouse".into()),
            attributes: [("site".to_owned(), "lyon".to_owned())].into(),
            created_at_ms: 5,
            updated_at_ms: 6,
            ..shoal_core::test_util::manifest_entry("SN-1", DeviceStatus::Provisioned, Some("c1"))
        }
    }

    #[test]
    fn items_round_trip() {
        let e = entry();
        assert_eq!(from_item(&to_item(&e)), Ok(e));
        let bare = ManifestEntry {
            status: DeviceStatus::Pending,
            certificate_id: None,
            thing_name: None,
            thing_group: None,
            attributes: BTreeMap::new(),
            ..entry()
        };
        let item = to_item(&bare);
        assert!(!item.contains_key("attributes"));
        assert_eq!(from_item(&item), Ok(bare));
    }

    #[test]
    fn malformed_items_name_the_field() {
        let mut item = to_item(&entry());
        item.insert("status".into(), s("active"));
        let status = from_item(&item).unwrap_err();
        assert_eq!(
            status,
            ItemError::Invalid {
                attribute: "status",
                reason: "unknown device status \"active\" (pending, provisioned, revoked, retired)"
                    .into()
            }
        );
        assert_eq!(
            status.to_string(),
            "item attribute status: unknown device status \"active\" (pending, provisioned, revoked, retired)"
        );
        let mut item = to_item(&entry());
        item.remove("model");
        assert_eq!(from_item(&item), Err(ItemError::Missing("model")));
        let mut item = to_item(&entry());
        item.insert("updated_at".into(), s("yesterday"));
        assert_eq!(
            from_item(&item),
            Err(ItemError::Invalid {
                attribute: "updated_at",
                reason: "not a number".into()
            })
        );
    }
}
