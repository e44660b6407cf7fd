//! The run read back from the stores — never from the simulator's counters: the IoT registry
//! (things, attributes, groups, certificates, policies), Timestream (moto's state: Timestream has
//! no read API in moto), the Parquet archive and the quarantine in S3, the shadows (the local IoT
//! Core's data plane), the device and rollout tables (DynamoDB).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::{Context, Result, bail};
use futures::StreamExt as _;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::RowAccessor;
use serde::Serialize;
use serde_json::Value;
use shoal_aws::client::AwsResultExt;
use shoal_aws::device_table::DeviceTable;
use shoal_aws::rollout_table::RolloutTable;
use shoal_aws::shadow_store::IotShadowStore;
use shoal_cli::group_config::convergence;
use shoal_core::telemetry::archive::hour_partitions;

use crate::layout::Layout;
use crate::scenario::{Outcome, names};
use crate::stack::Stack;

/// Reads in flight at once against one service.
const CONCURRENCY: usize = 8;

/// `read` of every item, [`CONCURRENCY`] at a time, in the order they finish.
async fn concurrently<I, T, F, Fut>(items: I, read: F) -> Vec<Result<T>>
where
    I: IntoIterator,
    F: FnMut(I::Item) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    futures::stream::iter(items.into_iter().map(read))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await
}

/// The run's readings Timestream holds, from moto's state: (thing, time ms) of each record of a
/// run's thing, distinct (a redelivered reading is an upsert in Timestream, one reading).
pub fn timestream_readings(state: &Value, layout: &Layout) -> BTreeSet<(String, u64)> {
    let mut readings = BTreeSet::new();
    let tables = state["timestreamwrite"]["TimestreamTable"].as_array();
    for table in tables.into_iter().flatten() {
        if table["db_name"] != names::TIMESTREAM_DATABASE
            || table["name"] != names::TIMESTREAM_TABLE
        {
            continue;
        }
        for record in table["records"].as_array().into_iter().flatten() {
            let thing = record["Dimensions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|d| d["Name"] == "thing_name")
                .and_then(|d| d["Value"].as_str());
            let time = record["Time"].as_str().and_then(|t| t.parse::<u64>().ok());
            if let (Some(thing), Some(time)) = (thing, time)
                && layout.model_of(thing).is_some()
            {
                readings.insert((thing.to_owned(), time));
            }
        }
    }
    readings
}

/// What the quarantine holds for the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Quarantined {
    /// Messages (distinct: a redelivered message is filed under the same fingerprint).
    pub messages: u64,
    /// Readings refused in them, each once: a reading sent again in another batch (after a
    /// lost acknowledgement) is quarantined again in another message.
    pub readings: u64,
    /// Refused readings by reason code.
    pub reasons: BTreeMap<String, u64>,
}

/// The time (ms) of each reading of a quarantined message, in the message's order: `ts` of a
/// JSON reading or of each of `readings`; the leading timestamp of each packed record of the
/// demo's packed model. `None` where it cannot be read.
///
/// `message` is the rule's event as the router received it, read with the router's own
/// [`Envelope`] reader: a binary topic's event carries the device's bytes base64-encoded in
/// `_payload`. `message_base64` holds an event that was not UTF-8.
fn reading_times(body: &Value) -> Vec<Option<u64>> {
    use base64::Engine as _;
    use shoal_core::telemetry::envelope::{Envelope, Payload};
    let event = match (body["message"].as_str(), body["message_base64"].as_str()) {
        (Some(text), _) => text.as_bytes().to_vec(),
        (None, Some(encoded)) => match base64::engine::general_purpose::STANDARD.decode(encoded) {
            Ok(bytes) => bytes,
            Err(_) => return Vec::new(),
        },
        (None, None) => return Vec::new(),
    };
    let Ok(envelope) = Envelope::from_bytes(&event) else {
        return Vec::new();
    };
    let time = |v: &Value| v.as_u64();
    match envelope.payload {
        Payload::Flat(readings) => readings
            .iter()
            .map(|r| r.ts.and_then(|t| u64::try_from(t).ok()))
            .collect(),
        Payload::Json(message) => match message.get("readings").and_then(Value::as_array) {
            Some(readings) => readings.iter().map(|r| time(&r["ts"])).collect(),
            None => vec![message.get("ts").and_then(time)],
        },
        Payload::Binary(bytes) => {
            let fields = crate::layout::PACKED_FIELDS.len();
            shoal_wire::packed::records(&bytes, fields)
                .map(|records| records.map(|r| Some(r.time_ms)).collect())
                .unwrap_or_default()
        }
    }
}

/// The hour partitions (`year=…/hour=HH`) from `from_ms` to `to_ms`, both included.
fn hours(from_ms: u64, to_ms: u64) -> Vec<String> {
    let hour = 3_600_000;
    let mut at = from_ms / hour * hour;
    let mut out = Vec::new();
    while at <= to_ms {
        out.push(hour_partitions(i64::try_from(at).unwrap_or(i64::MAX)));
        at += hour;
    }
    out
}

/// Every key under `prefix` in `bucket`.
async fn keys(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut pages = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.aws("s3", "ListObjectsV2")?;
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
    }
    Ok(keys)
}

async fn object(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Result<bytes::Bytes> {
    Ok(s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .aws("s3", "GetObject")?
        .body
        .collect()
        .await
        .with_context(|| format!("reading s3://{bucket}/{key}"))?
        .into_bytes())
}

/// The run's quarantined messages (`quarantine/<hour>/<thing>/<received>-<fingerprint>.json`),
/// counted once per thing and fingerprint, since the run began.
///
/// # Errors
/// An S3 call failed, or a quarantine object is not the router's JSON.
pub async fn quarantined(stack: &Stack, layout: &Layout, from_ms: u64) -> Result<Quarantined> {
    let s3 = stack.factory.s3();
    let mut wanted: BTreeMap<(String, String), String> = BTreeMap::new();
    for hour in hours(from_ms, now_ms() + 60_000) {
        for key in keys(&s3, names::ARCHIVE_BUCKET, &format!("quarantine/{hour}/")).await? {
            let mut parts = key.rsplit('/');
            let (Some(file), Some(thing)) = (parts.next(), parts.next()) else {
                continue;
            };
            if layout.model_of(thing).is_none() {
                continue;
            }
            let fingerprint = file
                .trim_end_matches(".json")
                .rsplit('-')
                .next()
                .unwrap_or(file)
                .to_owned();
            wanted.entry((thing.to_owned(), fingerprint)).or_insert(key);
        }
    }
    let bodies: Vec<Result<Value>> = concurrently(wanted.values(), |key| {
        let s3 = s3.clone();
        async move {
            let body = object(&s3, names::ARCHIVE_BUCKET, key).await?;
            serde_json::from_slice::<Value>(&body)
                .with_context(|| format!("quarantine object {key} is not JSON"))
        }
    })
    .await;
    let mut q = Quarantined::default();
    // Each refused reading once, by thing and time; a reading whose time cannot be read is
    // counted by its message instead.
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    for body in bodies {
        let body = body?;
        q.messages += 1;
        let thing = body["thing_name"].as_str().unwrap_or_default().to_owned();
        let times = reading_times(&body);
        let refused = body["refused"].as_array().cloned().unwrap_or_default();
        let code = |r: &Value| r["reason_code"].as_str().unwrap_or("refused").to_owned();
        let mut count = |key: String, reason: String| {
            if seen.insert((thing.clone(), key)) {
                q.readings += 1;
                *q.reasons.entry(reason).or_default() += 1;
            }
        };
        let id = body["message_id"].as_str().unwrap_or_default();
        for r in &refused {
            match r["reading"].as_u64().and_then(|i| usize::try_from(i).ok()) {
                Some(i) => count(
                    times
                        .get(i)
                        .copied()
                        .flatten()
                        .map_or_else(|| format!("{id}#{i}"), |t| t.to_string()),
                    code(r),
                ),
                // The whole message: every reading it holds.
                None => {
                    let n = body["refused_readings"].as_u64().unwrap_or(1).max(1);
                    for i in 0..usize::try_from(n).unwrap_or(1) {
                        count(
                            times
                                .get(i)
                                .copied()
                                .flatten()
                                .map_or_else(|| format!("{id}#{i}"), |t| t.to_string()),
                            code(r),
                        );
                    }
                }
            }
        }
    }
    Ok(q)
}

fn now_ms() -> u64 {
    u64::try_from(shoal_core::clock::now_ms()).unwrap_or_default()
}

/// The run's readings in the Parquet archive: (thing, time ms), distinct (a redelivered reading
/// is archived again under the same `reading_id`).
///
/// # Errors
/// An S3 call failed, or an object is not Parquet of the archive's schema.
pub async fn archived_readings(
    stack: &Stack,
    layout: &Layout,
    from_ms: u64,
) -> Result<BTreeSet<(String, u64)>> {
    let s3 = stack.factory.s3();
    let mut all = Vec::new();
    for hour in hours(from_ms, now_ms() + 60_000) {
        all.extend(keys(&s3, names::ARCHIVE_BUCKET, &format!("telemetry/{hour}/")).await?);
    }
    let files: Vec<Result<bytes::Bytes>> = concurrently(&all, |key| {
        let s3 = s3.clone();
        async move { object(&s3, names::ARCHIVE_BUCKET, key).await }
    })
    .await;
    let mut readings = BTreeSet::new();
    for file in files {
        let reader =
            SerializedFileReader::new(file?).context("an archive object is not Parquet")?;
        let rows = reader
            .get_row_iter(None)
            .context("reading an archive object")?;
        for row in rows {
            let row = row.context("reading an archive row")?;
            let thing = row.get_string(0).context("thing_name")?;
            if layout.model_of(thing).is_none() {
                continue;
            }
            let time = row.get_timestamp_millis(2).context("time")?;
            readings.insert((thing.clone(), u64::try_from(time).unwrap_or_default()));
        }
    }
    Ok(readings)
}

/// A thing as the registry holds it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RegisteredThing {
    pub attributes: HashMap<String, String>,
    /// Its principals' certificate ids.
    pub certificates: Vec<String>,
}

/// The registry's view of the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Registry {
    /// The run's things by name.
    pub things: BTreeMap<String, RegisteredThing>,
    /// Certificate status by certificate id (every certificate of the account).
    pub certificate_status: HashMap<String, String>,
    /// Policies attached to the run's things' certificates: name → certificates.
    pub policies: BTreeMap<String, usize>,
    /// Rogue serials that have a thing (must be none).
    pub rogue_things: Vec<String>,
    /// The members of each of the run's thing groups.
    pub groups: BTreeMap<String, BTreeSet<String>>,
}

/// Reads the run's things, their certificates and policies, and its groups.
///
/// # Errors
/// An IoT call failed.
pub async fn registry(stack: &Stack, layout: &Layout) -> Result<Registry> {
    let iot = stack.factory.iot();
    let mut out = Registry::default();
    let mut pages = iot.list_things().max_results(250).into_paginator().send();
    while let Some(page) = pages.next().await {
        for thing in page.aws("iot", "ListThings")?.things() {
            let Some(name) = thing.thing_name() else {
                continue;
            };
            if layout.model_of(name).is_some() {
                out.things.insert(
                    name.to_owned(),
                    RegisteredThing {
                        attributes: thing.attributes().cloned().unwrap_or_default(),
                        certificates: Vec::new(),
                    },
                );
            } else if layout.rogue.iter().any(|r| r == name) {
                out.rogue_things.push(name.to_owned());
            }
        }
    }
    let principals: Vec<Result<(String, Vec<String>)>> =
        concurrently(out.things.keys().cloned(), |thing| {
            let iot = iot.clone();
            async move {
                let answer = iot
                    .list_thing_principals()
                    .thing_name(&thing)
                    .send()
                    .await
                    .aws("iot", "ListThingPrincipals")?;
                Ok((thing, answer.principals().to_vec()))
            }
        })
        .await;
    let mut arns = Vec::new();
    for read in principals {
        let (thing, found) = read?;
        for arn in found {
            let id = arn.rsplit('/').next().unwrap_or_default().to_owned();
            if let Some(t) = out.things.get_mut(&thing) {
                t.certificates.push(id);
            }
            arns.push(arn);
        }
    }
    let mut certificates = iot
        .list_certificates()
        .page_size(250)
        .into_paginator()
        .send();
    while let Some(page) = certificates.next().await {
        for c in page.aws("iot", "ListCertificates")?.certificates() {
            if let (Some(id), Some(status)) = (c.certificate_id(), c.status()) {
                out.certificate_status
                    .insert(id.to_owned(), status.as_str().to_owned());
            }
        }
    }
    let attached: Vec<Result<Vec<String>>> = concurrently(arns, |arn| {
        let iot = iot.clone();
        async move {
            let answer = iot
                .list_attached_policies()
                .target(&arn)
                .send()
                .await
                .aws("iot", "ListAttachedPolicies")?;
            Ok(answer
                .policies()
                .iter()
                .filter_map(|p| p.policy_name().map(str::to_owned))
                .collect())
        }
    })
    .await;
    for names in attached {
        for name in names? {
            *out.policies.entry(name).or_default() += 1;
        }
    }
    for n in 1..=crate::layout::BUILDINGS {
        let group = layout.building(n);
        let mut members = BTreeSet::new();
        let mut pages = iot
            .list_things_in_thing_group()
            .thing_group_name(&group)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            members.extend(
                page.aws("iot", "ListThingsInThingGroup")?
                    .things()
                    .iter()
                    .cloned(),
            );
        }
        out.groups.insert(group, members);
    }
    Ok(out)
}

/// The summary: every number the demo prints and plots, read back from the stores.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Manifest devices.
    pub devices: usize,
    /// The registry's view.
    pub registry: Registry,
    /// The run's things with an ACTIVE certificate.
    pub active: usize,
    /// The run's things whose registry attributes are the manifest's (model, hardware,
    /// building, serial).
    pub attributes_match: usize,
    /// Readings in Timestream (distinct thing and time).
    pub timestream: u64,
    /// Readings in the Parquet archive (distinct thing and time).
    pub archived: u64,
    /// What the quarantine holds.
    pub quarantine: Quarantined,
    /// Readings devices had acknowledged by IoT Core (the simulator's count, for the balance).
    pub acknowledged: u64,
    /// Readings published but unacknowledged when the devices stopped.
    pub unacknowledged: u64,
    /// Timestream readings per device model, per minute, measured over windows of
    /// [`RATE_WINDOW_MS`] from the run's start: model → (window start ms → readings / minute).
    pub per_minute: BTreeMap<String, BTreeMap<u64, u64>>,
    /// Devices of the configured building, and when each reported the configuration (epoch s).
    pub building_members: usize,
    pub converged: Vec<(String, u64)>,
    /// What the device table says each device runs: version → devices.
    pub running: BTreeMap<String, usize>,
    /// Per rollout: when each targeted device was targeted (ms).
    pub targeted_at: BTreeMap<String, Vec<u64>>,
}

impl Summary {
    /// Accepted + quarantined readings, against what devices had acknowledged: equal, but for
    /// readings in flight when the fleet stopped (which may or may not have arrived).
    pub fn balanced(&self) -> bool {
        let landed = self.timestream + self.quarantine.readings;
        landed >= self.acknowledged && landed <= self.acknowledged + self.unacknowledged
    }
}

/// The window the rate of readings is measured over, ms (a run lasts a few minutes).
pub const RATE_WINDOW_MS: u64 = 15_000;

/// The start of the [`RATE_WINDOW_MS`] window, counted from `started_ms`, that `time_ms` is in
/// (a reading timed before the start is in the first).
fn window_start(time_ms: u64, started_ms: u64) -> u64 {
    started_ms + time_ms.saturating_sub(started_ms) / RATE_WINDOW_MS * RATE_WINDOW_MS
}

/// Reads everything back.
///
/// # Errors
/// A read failed.
pub async fn summarise(stack: &Stack, outcome: &Outcome) -> Result<Summary> {
    let layout = &outcome.layout;
    let registry = registry(stack, layout).await?;
    let active = registry
        .things
        .values()
        .filter(|t| {
            t.certificates.len() == 1
                && registry
                    .certificate_status
                    .get(&t.certificates[0])
                    .map(String::as_str)
                    == Some("ACTIVE")
        })
        .count();
    let attributes_match = layout
        .devices
        .iter()
        .filter(|d| {
            registry.things.get(&d.serial).is_some_and(|t| {
                let a = &t.attributes;
                a.get("model") == Some(&d.model)
                    && a.get("hardware") == Some(&d.hardware)
                    && a.get("serial") == Some(&d.serial)
                    && a.get("building").map(String::as_str) == d.group.rsplit('-').next()
            })
        })
        .count();
    let state = stack.timestream_state().await?;
    let stored = timestream_readings(&state, layout);
    let mut per_minute: BTreeMap<String, BTreeMap<u64, u64>> = BTreeMap::new();
    for (thing, time) in &stored {
        if let Some(model) = layout.model_of(thing) {
            *per_minute
                .entry(model.to_owned())
                .or_default()
                .entry(window_start(*time, outcome.started_ms))
                .or_default() += 1;
        }
    }
    // Counts per window → readings per minute.
    for windows in per_minute.values_mut() {
        for n in windows.values_mut() {
            *n *= 60_000 / RATE_WINDOW_MS;
        }
    }
    let archived = archived_readings(stack, layout, outcome.started_ms).await?;
    let quarantine = quarantined(stack, layout, outcome.started_ms).await?;
    let members: Vec<shoal_core::ids::ThingName> =
        crate::scenario::members(layout, &outcome.configured_group)
            .iter()
            .map(|d| d.serial.parse())
            .collect::<Result<_, _>>()?;
    let desired = shoal_cli::group_config::parse_desired(&outcome.desired.to_string())?;
    let store = IotShadowStore::new(stack.data_plane.clone());
    let written_at_s = outcome
        .marks
        .iter()
        .find(|m| m.what == "config set")
        .map_or(0, |m| m.at_ms / 1000);
    let state = convergence(&store, &members, None, &desired, written_at_s).await;
    if let Some((thing, why)) = state.unread.first() {
        bail!("reading the shadow of {thing}: {why}");
    }
    let devices = DeviceTable::new(stack.factory.dynamodb(), names::DEVICE_TABLE.parse()?);
    let things: Vec<String> = layout.devices.iter().map(|d| d.serial.clone()).collect();
    let mut running = BTreeMap::new();
    for device in devices.fleet(&things).await? {
        let version = device
            .running
            .map_or_else(|| "unknown".to_owned(), |v| v.to_string());
        *running.entry(version).or_default() += 1;
    }
    let rollouts = RolloutTable::new(stack.factory.dynamodb(), names::ROLLOUT_TABLE.parse()?);
    let mut targeted_at = BTreeMap::new();
    for run in &outcome.rollouts {
        let mut times: Vec<u64> = rollouts
            .devices(&run.id)
            .await?
            .into_iter()
            .map(|r| r.targeted_at_ms)
            .collect();
        times.sort_unstable();
        targeted_at.insert(run.id.clone(), times);
    }
    Ok(Summary {
        devices: layout.devices.len(),
        active,
        attributes_match,
        registry,
        timestream: stored.len() as u64,
        archived: archived.len() as u64,
        quarantine,
        acknowledged: outcome.fleet.readings_acknowledged,
        unacknowledged: outcome.fleet.readings_unacknowledged,
        per_minute,
        building_members: members.len(),
        converged: state
            .converged
            .into_iter()
            .map(|(t, at)| (t.to_string(), at))
            .collect(),
        running,
        targeted_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::PACKED_MODEL;

    #[test]
    fn timestream_readings_are_the_runs_distinct_thing_and_time() {
        let layout = Layout::new("d1", 4, 0);
        let record = |thing: &str, time: &str| {
            serde_json::json!({
                "Dimensions": [{"Name": "thing_name", "Value": thing}, {"Name": "app", "Value": "greenhouse"}],
                "MeasureName": "reading", "Time": time
            })
        };
        let state = serde_json::json!({"timestreamwrite": {"TimestreamTable": [
            {"db_name": "shoal_local", "name": "telemetry", "records": [
                record("D1-00001", "1000"), record("D1-00001", "1000"), record("D1-00002", "1000"),
                record("OTHER-00001", "1000"), {"Time": "5"}
            ]},
            {"db_name": "other", "name": "telemetry", "records": [record("D1-00003", "7")]}
        ]}});
        let readings = timestream_readings(&state, &layout);
        assert_eq!(
            readings.into_iter().collect::<Vec<_>>(),
            [("D1-00001".to_owned(), 1000), ("D1-00002".to_owned(), 1000)]
        );
    }

    #[test]
    fn quarantined_readings_are_timed_as_the_router_reads_their_event() {
        use base64::Engine as _;
        let topic = "dt/greenhouse/D1-00000/telemetry";
        let event = |extra: serde_json::Value| {
            let mut e =
                serde_json::json!({"_topic": topic, "_received_at": 1, "_client_id": "D1-00000"});
            e.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            serde_json::json!({"message": e.to_string()})
        };
        assert_eq!(
            reading_times(&event(serde_json::json!({"ts": 7, "temperature": 1.0}))),
            [Some(7)]
        );
        assert_eq!(
            reading_times(&event(serde_json::json!({"readings": [
                {"ts": 8, "temperature": 1.0}, {"temperature": 2.0}
            ]}))),
            [Some(8), None]
        );
        // A binary topic's event: the device's packed records, base64 in `_payload` (once read
        // as one reading with no time, so a resent reading was counted twice).
        let mut packed = Vec::new();
        shoal_wire::packed::encode_record(11, &[1.0, 2.0], &mut packed);
        shoal_wire::packed::encode_record(12, &[3.0, 4.0], &mut packed);
        let binary = serde_json::json!({"message": serde_json::json!({
            "_topic": format!("{topic}/{PACKED_MODEL}"), "_received_at": 1,
            "_payload": base64::engine::general_purpose::STANDARD.encode(&packed),
        }).to_string()});
        assert_eq!(reading_times(&binary), [Some(11), Some(12)]);
        // An event that is not UTF-8 comes as `message_base64`.
        let raw = serde_json::json!({"message_base64":
            base64::engine::general_purpose::STANDARD.encode(b"\xff{")});
        assert!(reading_times(&raw).is_empty());
    }

    #[test]
    fn rate_windows_count_from_the_runs_start() {
        assert_eq!(window_start(1_000, 1_000), 1_000);
        assert_eq!(window_start(15_999, 1_000), 16_000 - RATE_WINDOW_MS);
        assert_eq!(window_start(16_000, 1_000), 16_000);
        assert_eq!(window_start(500, 1_000), 1_000);
    }

    #[test]
    fn hours_cover_both_ends() {
        let h = 3_600_000;
        assert_eq!(hours(10 * h + 5, 10 * h + 6).len(), 1);
        assert_eq!(hours(10 * h + 5, 12 * h).len(), 3);
    }
}
