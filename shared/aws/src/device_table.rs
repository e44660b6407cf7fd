//! The device registry's DynamoDB edge (`SHOAL_DEVICE_TABLE`), shared by the provisioning
//! functions (which record each device's certificate), the shadow-sync functions (which write
//! presence and reported facts) and the CLI (which creates it locally and reads it).
//!
//! Keys: `thing_name` (S) and `record` (S). The device's own item is `record = "device"`: presence
//! (`online`, `last_seen`, `connection_order`, …), the certificate it was provisioned with
//! (`certificate_id`), reported `firmware_version` and `config`, the OTA
//! report (`ota_*`) and, per shadow, the last version recorded (`shadow_version_<shadow>`).
//! Conflict items are `record = "conflict#<shadow>#<version>#<path>"`: the value that lost.
//! The sparse index `offline` (`offline_shard`, `offline_since`) holds devices that went offline
//! and have not been alerted on.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{
    AttributeValue, GlobalSecondaryIndex, KeyType, Projection, ProjectionType, ScalarAttributeType,
};
use serde_json::Value;

use crate::client::{AwsResultExt, EdgeError, condition_held, created_unless_in_use};
use crate::config::TableName;
use shoal_core::presence::{
    LifecycleEvent, OFFLINE_SHARDS, PresenceEvent, REORDER_WINDOW_MS, Recorded, offline_shard,
};
use shoal_core::rollout::FirmwareVersion;
use shoal_core::rollout::advance::FleetDevice;
use shoal_core::shadow::ShadowRef;
use shoal_core::shadow::ota::OtaReport;
use shoal_core::shadow::policy::Conflict;
use shoal_core::shadow::sync::ReportedFacts;

pub const DEVICE_RECORD: &str = "device";
pub const OFFLINE_INDEX: &str = "offline";

type Item = HashMap<String, AttributeValue>;

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// A JSON value as a DynamoDB attribute (objects as maps, arrays as lists).
pub fn to_attribute(value: &Value) -> AttributeValue {
    match value {
        Value::Null => AttributeValue::Null(true),
        Value::Bool(b) => AttributeValue::Bool(*b),
        Value::Number(x) => n(x),
        Value::String(text) => s(text.as_str()),
        Value::Array(items) => AttributeValue::L(items.iter().map(to_attribute).collect()),
        Value::Object(fields) => AttributeValue::M(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), to_attribute(v)))
                .collect(),
        ),
    }
}

/// A DynamoDB attribute as JSON (numbers that are not JSON numbers become strings).
pub fn from_attribute(value: &AttributeValue) -> Value {
    match value {
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::N(x) => serde_json::from_str(x).unwrap_or_else(|_| Value::from(x.as_str())),
        AttributeValue::S(text) => Value::from(text.as_str()),
        AttributeValue::L(items) => Value::Array(items.iter().map(from_attribute).collect()),
        AttributeValue::M(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), from_attribute(v)))
                .collect(),
        ),
        _ => Value::Null,
    }
}

/// What [`fleet_device`] reads of a device's item (its shadows' reported configuration and
/// the rest stay in the table).
const FLEET_ATTRIBUTES: &[&str] = &[
    "thing_name",
    "online",
    "firmware_version",
    "facts_updated_at",
    "ota_status",
    "ota_target_version",
    "ota_running_version",
    "ota_reason",
    "ota_updated_at",
];

fn fleet_device(item: &Item) -> Option<FleetDevice> {
    let text = |name: &str| match item.get(name) {
        Some(AttributeValue::S(v)) => Some(v.as_str()),
        _ => None,
    };
    let number = |name: &str| match item.get(name) {
        Some(AttributeValue::N(v)) => v.parse::<u64>().ok(),
        _ => None,
    };
    let version = |name: &str| text(name).and_then(|v| v.parse::<FirmwareVersion>().ok());
    let report = item.get("ota_status").and_then(|status| {
        serde_json::from_value(serde_json::json!({
            "status": from_attribute(status),
            "version": text("ota_target_version"),
            "running_version": text("ota_running_version"),
            "reason": text("ota_reason"),
        }))
        .ok()
    });
    let ota_is_later = number("ota_updated_at") >= number("facts_updated_at");
    let running = match (version("firmware_version"), version("ota_running_version")) {
        (Some(_), Some(ota)) if ota_is_later => Some(ota),
        (reported, ota) => reported.or(ota),
    };
    Some(FleetDevice {
        thing: text("thing_name")?.to_owned(),
        online: match item.get("online") {
            Some(AttributeValue::Bool(b)) => Some(*b),
            _ => None,
        },
        running,
        report,
    })
}

pub use shoal_core::presence::OfflineDevice;

fn build_error(operation: &'static str, e: impl std::fmt::Display) -> EdgeError {
    EdgeError::request("dynamodb", operation, e)
}

#[derive(Debug, Clone)]
pub struct DeviceTable {
    client: aws_sdk_dynamodb::Client,
    table: TableName,
}

impl DeviceTable {
    pub fn new(client: aws_sdk_dynamodb::Client, table: TableName) -> Self {
        Self { client, table }
    }

    pub fn name(&self) -> &TableName {
        &self.table
    }

    /// Creates the table and its offline index unless it exists. On AWS the table comes from
    /// infra/template.yaml; locally `shoal init-local` and the tests call this.
    ///
    /// # Errors
    /// [`EdgeError`] when the CreateTable request could not be built or DynamoDB could not be
    /// called or refused it; a table that exists already (`ResourceInUseException`) is `Ok(())`.
    pub async fn ensure_exists(&self) -> Result<(), EdgeError> {
        use crate::dynamo::{attribute, key};
        let offline = GlobalSecondaryIndex::builder()
            .index_name(OFFLINE_INDEX)
            .key_schema(key("offline_shard", KeyType::Hash)?)
            .key_schema(key("offline_since", KeyType::Range)?)
            .projection(
                Projection::builder()
                    .projection_type(ProjectionType::Include)
                    .non_key_attributes("disconnect_reason")
                    .build(),
            )
            .build()
            .map_err(|e| build_error("CreateTable", e))?;
        let created = crate::dynamo::create_table(
            &self.client,
            self.table.as_str(),
            "thing_name",
            Some("record"),
        )?
        .attribute_definitions(attribute("offline_shard", ScalarAttributeType::S)?)
        .attribute_definitions(attribute("offline_since", ScalarAttributeType::N)?)
        .global_secondary_indexes(offline)
        .send()
        .await
        .aws("dynamodb", "CreateTable");
        created_unless_in_use(created)
    }

    fn update(
        &self,
        thing: &str,
        record: &str,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(self.table.as_str())
            .key("thing_name", s(thing))
            .key("record", s(record))
    }

    /// Records the certificate `thing` was provisioned with (`certificate_id`): the only
    /// principal whose lifecycle events [`record_presence`](Self::record_presence) applies. The
    /// pre-provisioning hook and JITR call it once they have claimed the serial, before the
    /// certificate can connect; a later claim (a lapsed claim taken over, a reset serial
    /// provisioned again) replaces it.
    ///
    /// # Errors
    /// The write failed (the caller denies or retries: no device may connect unrecorded).
    pub async fn record_certificate(
        &self,
        thing: &str,
        certificate_id: &str,
        now_ms: u64,
    ) -> Result<(), EdgeError> {
        self.set_certificate(thing, certificate_id, now_ms)
            .send()
            .await
            .aws("dynamodb", "UpdateItem")
            .map(|_| ())
    }

    /// The write of `certificate_id` as the thing's recorded certificate, as of `now_ms`.
    fn set_certificate(
        &self,
        thing: &str,
        certificate_id: &str,
        now_ms: u64,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.update(thing, DEVICE_RECORD)
            .update_expression("SET certificate_id = :cert, certificate_recorded_at = :now")
            .expression_attribute_values(":cert", s(certificate_id))
            .expression_attribute_values(":now", n(now_ms))
    }

    /// Takes a decommissioned device out of presence: offline, out of the offline index (no
    /// alert for a device retired on purpose), no certificate recorded (a later lifecycle event
    /// of its revoked certificate is ignored; a retired manifest row adopts nothing), `retired_at`
    /// set. Idempotent.
    ///
    /// # Errors
    /// The write failed.
    pub async fn retire(&self, thing: &str, now_ms: u64) -> Result<(), EdgeError> {
        self.update(thing, DEVICE_RECORD)
            .update_expression(
                "SET #online = :false, retired_at = if_not_exists(retired_at, :now) \
                 REMOVE certificate_id, offline_shard, offline_since",
            )
            .expression_attribute_names("#online", "online")
            .expression_attribute_values(":false", AttributeValue::Bool(false))
            .expression_attribute_values(":now", n(now_ms))
            .send()
            .await
            .aws("dynamodb", "UpdateItem")
            .map(|_| ())
    }

    /// Records `certificate_id` for a thing that has none recorded (provisioned before Shoal
    /// recorded certificates; the caller checked the manifest's claim). `Ok(false)`: one is
    /// recorded already, nothing changed.
    ///
    /// # Errors
    /// The write failed.
    pub async fn adopt_certificate(
        &self,
        thing: &str,
        certificate_id: &str,
        now_ms: u64,
    ) -> Result<bool, EdgeError> {
        condition_held(
            self.set_certificate(thing, certificate_id, now_ms)
                .condition_expression("attribute_not_exists(certificate_id)")
                .send()
                .await
                .aws("dynamodb", "UpdateItem"),
        )
    }

    /// Applies a lifecycle event if its principal is the certificate recorded for the thing at
    /// provisioning ([`record_certificate`](Self::record_certificate)) and the registry holds no
    /// later (or the same) event. One conditional `UpdateItem`, compared in DynamoDB; on a failed
    /// condition the item as it was (`ReturnValuesOnConditionCheckFailure`) tells a foreign
    /// principal from a stale event. No other call per event.
    ///
    /// # Errors
    /// The write failed for any other reason (throttling): the caller retries the event.
    pub async fn record_presence(
        &self,
        thing: &str,
        event: &LifecycleEvent,
        now_ms: u64,
    ) -> Result<Recorded, EdgeError> {
        use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
        use aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure;
        let Some(principal) = event.principal_identifier.as_deref() else {
            return Ok(Recorded::ForeignPrincipal);
        };
        let session = event.session_identifier.clone().unwrap_or_default();
        let update = self
            .update(thing, DEVICE_RECORD)
            // The principal first; then `presence::supersedes`: more than the window newer than
            // `last_seen` wins, that much older loses, within it the connection order decides.
            // An item written before `connection_order` existed (it had the time-major
            // `presence_order`, removed here) is ordered by time alone until then.
            .condition_expression(
                "certificate_id = :principal AND (\
                   (attribute_not_exists(connection_order) \
                     AND (attribute_not_exists(last_seen) OR last_seen <= :ts)) \
                   OR last_seen < :newer_than \
                   OR (last_seen <= :older_than AND connection_order < :order))",
            )
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .expression_attribute_values(":principal", s(principal))
            .expression_attribute_values(
                ":newer_than",
                n(event.timestamp.saturating_sub(REORDER_WINDOW_MS)),
            )
            .expression_attribute_values(
                ":older_than",
                n(event.timestamp.saturating_add(REORDER_WINDOW_MS)),
            )
            // ONLINE is a DynamoDB reserved word.
            .expression_attribute_names("#online", "online")
            .expression_attribute_values(":order", n(event.order()))
            .expression_attribute_values(":ts", n(event.timestamp))
            .expression_attribute_values(":session", s(session))
            .expression_attribute_values(":client", s(event.client_id.as_str()))
            .expression_attribute_values(":now", n(now_ms));
        let update = match event.event_type {
            PresenceEvent::Connected => update
                .update_expression(
                    "SET #online = :true, last_seen = :ts, connected_at = :ts, \
                     connection_order = :order, session_id = :session, client_id = :client, \
                     presence_updated_at = :now \
                     REMOVE offline_shard, offline_since, disconnect_reason, offline_alerted_at, \
                     presence_order",
                )
                .expression_attribute_values(":true", AttributeValue::Bool(true)),
            PresenceEvent::Disconnected => update
                .update_expression(
                    "SET #online = :false, last_seen = :ts, disconnected_at = :ts, \
                     connection_order = :order, session_id = :session, client_id = :client, \
                     presence_updated_at = :now, disconnect_reason = :reason, \
                     offline_shard = :shard, offline_since = :ts \
                     REMOVE offline_alerted_at, presence_order",
                )
                .expression_attribute_values(":false", AttributeValue::Bool(false))
                .expression_attribute_values(
                    ":reason",
                    s(event
                        .disconnect_reason
                        .clone()
                        .unwrap_or_else(|| "UNKNOWN".into())),
                )
                .expression_attribute_values(":shard", s(offline_shard(thing).to_string())),
        };
        let error = match update.send().await {
            Ok(_) => return Ok(Recorded::Applied),
            Err(e) => e,
        };
        if let Some(UpdateItemError::ConditionalCheckFailedException(failed)) =
            error.as_service_error()
        {
            let recorded = match failed.item().and_then(|item| item.get("certificate_id")) {
                Some(AttributeValue::S(certificate)) => Some(certificate.as_str()),
                _ => None,
            };
            return Ok(match recorded {
                Some(certificate) if certificate == principal => Recorded::Stale,
                Some(_) => Recorded::ForeignPrincipal,
                None => Recorded::Unrecorded,
            });
        }
        Err(Err::<(), _>(error)
            .aws("dynamodb", "UpdateItem")
            .unwrap_err())
    }

    /// Records the reported firmware and config unless a later version of this shadow was
    /// recorded already. `Ok(false)`: an older document, nothing changed.
    ///
    /// # Errors
    /// [`EdgeError`] when DynamoDB could not be called or refused the write; a later shadow
    /// version recorded already is `Ok(false)`, not an error.
    pub async fn record_facts(
        &self,
        shadow: &ShadowRef,
        version: u64,
        facts: &ReportedFacts,
        now_ms: u64,
    ) -> Result<bool, EdgeError> {
        let mut set = vec!["#sv = :v", "facts_updated_at = :now"];
        let mut update = self
            .update(shadow.thing.as_str(), DEVICE_RECORD)
            .condition_expression("attribute_not_exists(#sv) OR #sv < :v")
            .expression_attribute_names("#sv", format!("shadow_version_{}", shadow.label()))
            .expression_attribute_values(":v", n(version))
            .expression_attribute_values(":now", n(now_ms));
        if let Some(firmware) = &facts.firmware {
            set.push("firmware_version = :fw");
            update = update.expression_attribute_values(":fw", s(firmware.as_str()));
        }
        if let Some(config) = &facts.config {
            set.push("reported_config = :cfg");
            update = update.expression_attribute_values(":cfg", to_attribute(config));
        }
        let update = update.update_expression(format!("SET {}", set.join(", ")));
        condition_held(update.send().await.aws("dynamodb", "UpdateItem"))
    }

    /// Hands a device's OTA report to the OTA flow: the `ota_*` attributes of its item, kept in
    /// `ota` shadow version order. `Ok(false)`: an older report, nothing changed.
    ///
    /// # Errors
    /// [`EdgeError`] when the report's status does not serialize (nothing sent) or DynamoDB could
    /// not be called or refused the write; a later report recorded already is `Ok(false)`.
    pub async fn record_ota(
        &self,
        thing: &str,
        version: u64,
        report: &OtaReport,
        now_ms: u64,
    ) -> Result<bool, EdgeError> {
        let status =
            serde_json::to_value(report.status).map_err(|e| build_error("UpdateItem", e))?;
        let mut set = vec![
            "ota_status = :status",
            "ota_shadow_version = :v",
            "ota_updated_at = :now",
        ];
        let mut remove = Vec::new();
        let mut update = self
            .update(thing, DEVICE_RECORD)
            .condition_expression(
                "attribute_not_exists(ota_shadow_version) OR ota_shadow_version < :v",
            )
            .expression_attribute_values(":status", to_attribute(&status))
            .expression_attribute_values(":v", n(version))
            .expression_attribute_values(":now", n(now_ms));
        for (attribute, assignment, placeholder, value) in [
            (
                "ota_target_version",
                "ota_target_version = :target",
                ":target",
                &report.target_version,
            ),
            (
                "ota_running_version",
                "ota_running_version = :running",
                ":running",
                &report.running_version,
            ),
            (
                "ota_reason",
                "ota_reason = :reason",
                ":reason",
                &report.reason,
            ),
        ] {
            match value {
                Some(v) => {
                    set.push(assignment);
                    update = update.expression_attribute_values(placeholder, s(v.as_str()));
                }
                None => remove.push(attribute),
            }
        }
        let mut expression = format!("SET {}", set.join(", "));
        if !remove.is_empty() {
            expression.push_str(&format!(" REMOVE {}", remove.join(", ")));
        }
        condition_held(
            update
                .update_expression(expression)
                .send()
                .await
                .aws("dynamodb", "UpdateItem"),
        )
    }

    /// What the registry knows of each of `things` for a rollout: presence, running version
    /// (the later of the reported firmware and the OTA report's running version) and the last
    /// OTA report. A thing without an item is unknown on every count.
    ///
    /// # Errors
    /// [`EdgeError`] when a BatchGetItem call fails or keys stay unprocessed after its retries
    /// (see [`batch_get`](crate::dynamo::batch_get)).
    pub async fn fleet(&self, things: &[String]) -> Result<Vec<FleetDevice>, EdgeError> {
        let keys = things
            .iter()
            .map(|t| {
                Item::from([
                    ("thing_name".into(), s(t.as_str())),
                    ("record".into(), s(DEVICE_RECORD)),
                ])
            })
            .collect();
        let items = crate::dynamo::batch_get(
            &self.client,
            self.table.as_str(),
            keys,
            Some(FLEET_ATTRIBUTES),
        )
        .await?;
        let mut known: HashMap<String, FleetDevice> = items
            .iter()
            .filter_map(fleet_device)
            .map(|d| (d.thing.clone(), d))
            .collect();
        Ok(things
            .iter()
            .map(|t| {
                known.remove(t).unwrap_or_else(|| FleetDevice {
                    thing: t.clone(),
                    online: None,
                    running: None,
                    report: None,
                })
            })
            .collect())
    }

    /// Keeps every conflict's losing value, one item each; a replay rewrites the same items.
    ///
    /// # Errors
    /// [`EdgeError`] when a conflict does not serialize or a PutItem fails; it stops there, with
    /// the conflicts before it written (a replay rewrites them).
    pub async fn record_conflicts(
        &self,
        shadow: &ShadowRef,
        version: u64,
        conflicts: &[Conflict],
        now_ms: u64,
    ) -> Result<(), EdgeError> {
        for conflict in conflicts {
            let record = format!(
                "conflict#{}#{version:020}#{}",
                shadow.label(),
                conflict.path
            );
            let detail = serde_json::to_value(conflict).map_err(|e| build_error("PutItem", e))?;
            self.client
                .put_item()
                .table_name(self.table.as_str())
                .item("thing_name", s(shadow.thing.as_str()))
                .item("record", s(record))
                .item("shadow", s(shadow.label()))
                .item("shadow_version", n(version))
                .item("conflict", to_attribute(&detail))
                .item("recorded_at", n(now_ms))
                .send()
                .await
                .aws("dynamodb", "PutItem")?;
        }
        Ok(())
    }

    /// Devices offline since before `cutoff_ms` and not alerted on yet, across every shard.
    ///
    /// # Errors
    /// [`EdgeError`] when a Query page of the offline index fails (unreachable, throttled,
    /// refused); nothing found in earlier shards is returned.
    pub async fn offline_before(&self, cutoff_ms: u64) -> Result<Vec<OfflineDevice>, EdgeError> {
        let mut out = Vec::new();
        for shard in 0..OFFLINE_SHARDS {
            let mut pages = self
                .client
                .query()
                .table_name(self.table.as_str())
                .index_name(OFFLINE_INDEX)
                .key_condition_expression("offline_shard = :shard AND offline_since < :cutoff")
                .expression_attribute_values(":shard", s(shard.to_string()))
                .expression_attribute_values(":cutoff", n(cutoff_ms))
                .into_paginator()
                .items()
                .send();
            while let Some(item) = pages.next().await {
                let item = item.aws("dynamodb", "Query")?;
                let text = |k: &str| match item.get(k) {
                    Some(AttributeValue::S(v)) => Some(v.clone()),
                    _ => None,
                };
                let since = match item.get("offline_since") {
                    Some(AttributeValue::N(v)) => v.parse().ok(),
                    _ => None,
                };
                if let (Some(thing), Some(offline_since_ms)) = (text("thing_name"), since) {
                    out.push(OfflineDevice {
                        thing,
                        offline_since_ms,
                        disconnect_reason: text("disconnect_reason"),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Marks the offline episode that began at `offline_since_ms` as alerted (it leaves the
    /// index). `Ok(false)`: the device came back or went offline again meanwhile.
    ///
    /// # Errors
    /// [`EdgeError`] when DynamoDB could not be called or refused the write; an episode that
    /// ended or changed meanwhile is `Ok(false)`, not an error.
    pub async fn mark_alerted(
        &self,
        thing: &str,
        offline_since_ms: u64,
        now_ms: u64,
    ) -> Result<bool, EdgeError> {
        let update = self
            .update(thing, DEVICE_RECORD)
            .condition_expression("offline_since = :since")
            .update_expression("SET offline_alerted_at = :now REMOVE offline_shard")
            .expression_attribute_values(":since", n(offline_since_ms))
            .expression_attribute_values(":now", n(now_ms));
        condition_held(update.send().await.aws("dynamodb", "UpdateItem"))
    }

    /// An item as JSON (`record` is `device` or a conflict key), read consistently.
    ///
    /// # Errors
    /// [`EdgeError`] when the GetItem call fails; an absent item is `Ok(None)`.
    pub async fn get(&self, thing: &str, record: &str) -> Result<Option<Value>, EdgeError> {
        let got = self
            .client
            .get_item()
            .table_name(self.table.as_str())
            .key("thing_name", s(thing))
            .key("record", s(record))
            .consistent_read(true)
            .send()
            .await
            .aws("dynamodb", "GetItem")?;
        Ok(got.item.map(|item: Item| {
            Value::Object(
                item.iter()
                    .map(|(k, v)| (k.clone(), from_attribute(v)))
                    .collect(),
            )
        }))
    }

    /// Every conflict item of a thing, oldest version first.
    ///
    /// # Errors
    /// [`EdgeError`] when a Query page fails (unreachable, throttled, refused).
    pub async fn conflicts(&self, thing: &str) -> Result<Vec<Value>, EdgeError> {
        let items = crate::dynamo::query_prefix(
            &self.client,
            self.table.as_str(),
            ("thing_name", thing),
            ("record", "conflict#"),
        )
        .await?;
        let out = items
            .iter()
            .map(|item| item.get("conflict").map(from_attribute).unwrap_or_default())
            .collect();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_round_trips_through_attributes() {
        let value = json!({"a": [1, 2.5, "x", true, null], "b": {"c": -3}});
        assert_eq!(from_attribute(&to_attribute(&value)), value);
    }

    #[test]
    fn the_fleet_projection_keeps_all_a_fleet_device_is_read_from() {
        let item: Item = [
            ("thing_name", s("t-1")),
            ("record", s(DEVICE_RECORD)),
            ("online", AttributeValue::Bool(true)),
            ("firmware_version", s("1.0.0")),
            ("facts_updated_at", n(5u64)),
            ("ota_status", s("failed")),
            ("ota_target_version", s("1.1.0")),
            ("ota_running_version", s("1.0.1")),
            ("ota_reason", s("self-test")),
            ("ota_updated_at", n(6u64)),
            ("reported_config", to_attribute(&json!({"interval_s": 5}))),
            ("certificate_id", s("abc")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let projected: Item = item
            .iter()
            .filter(|(k, _)| FLEET_ATTRIBUTES.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let whole = fleet_device(&item).unwrap();
        assert_eq!(fleet_device(&projected).unwrap(), whole);
        assert_eq!(
            whole.running.map(|v| v.to_string()).as_deref(),
            Some("1.0.1")
        );
        assert!(whole.report.is_some() && whole.online == Some(true));
    }
}
