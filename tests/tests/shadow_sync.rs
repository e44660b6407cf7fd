//! Shadow sync and presence against the local stack: the shadows, the device table and the
//! alerts are real calls, read back.

use std::sync::Arc;

use serde_json::{Value, json};
use shadow_sync::documents::{SyncConfig, SyncSummary, handle};
use shadow_sync::edges::{IotAlerts, PresenceRegistry, Registry};
use shadow_sync::presence::{
    self, FOREIGN_PRINCIPAL, PresenceAnswer, PresenceConfig, PresenceSummary, SweepSummary,
};
use shoal_aws::client::{AwsResultExt, ClientFactory, EdgeError};
use shoal_aws::config::vars;
use shoal_aws::device_table::DeviceTable;
use shoal_aws::shadow_store::IotShadowStore;
use shoal_core::ids::ThingName;
use shoal_core::shadow::document::UpdateState;
use shoal_core::shadow::intent::{DesiredIntent, plan_intent};
use shoal_core::shadow::store::{ShadowStore, WriteError, WriteOutcome, write_optimistic};
use shoal_core::shadow::{PolicyTable, ShadowDocument, ShadowRef, ShadowUpdate};
use shoal_integration_tests::local::{self, unique_name};

async fn thing(factory: &ClientFactory, prefix: &str) -> ThingName {
    let name = unique_name(prefix);
    factory
        .iot()
        .create_thing()
        .thing_name(&name)
        .send()
        .await
        .aws("iot", "CreateThing")
        .unwrap();
    name.parse().unwrap()
}

async fn device_table(factory: &ClientFactory) -> DeviceTable {
    let table = DeviceTable::new(factory.dynamodb(), unique_name("devices").parse().unwrap());
    table.ensure_exists().await.unwrap();
    table
}

fn shadow(thing: &ThingName, name: Option<&str>) -> ShadowRef {
    ShadowRef {
        thing: thing.clone(),
        name: name.map(|n| n.parse().unwrap()),
    }
}

/// An update as a device or an application sends it (no version).
async fn send(store: &IotShadowStore, at: &ShadowRef, state: Value) {
    let section = |name: &str| state.get(name).and_then(Value::as_object).cloned();
    let update = ShadowUpdate {
        state: UpdateState {
            desired: section("desired"),
            reported: section("reported"),
        },
        client_token: None,
        version: None,
    };
    store
        .update(at, &update)
        .await
        .unwrap()
        .expect("an unversioned update is accepted");
}

async fn read(store: &IotShadowStore, at: &ShadowRef) -> ShadowDocument {
    store.get(at).await.unwrap().expect("the shadow exists")
}

/// The `update/documents` event the rule would deliver for the update between two reads.
fn documents(at: &ShadowRef, previous: &ShadowDocument, current: &ShadowDocument) -> Value {
    let topic = match &at.name {
        None => format!("$aws/things/{}/shadow/update/documents", at.thing),
        Some(n) => format!("$aws/things/{}/shadow/name/{n}/update/documents", at.thing),
    };
    json!({"topic": topic, "previous": previous, "current": current, "timestamp": current.timestamp})
}

fn sync_config(policies: &str) -> SyncConfig {
    SyncConfig::from_source(&std::collections::BTreeMap::from([
        (vars::SHADOW_POLICIES, policies),
        (vars::DEVICE_TABLE, "devices"),
    ]))
    .unwrap()
}

async fn run_documents(
    store: &IotShadowStore,
    registry: &Registry,
    at: &ShadowRef,
    before: &ShadowDocument,
    current: &ShadowDocument,
    config: &SyncConfig,
) -> SyncSummary {
    handle(documents(at, before, current), config, store, registry)
        .await
        .unwrap()
}

/// A fresh thing's shadow, the shadow store, and a fresh device table.
struct Fixture {
    store: IotShadowStore,
    table: DeviceTable,
    registry: Registry,
    thing: ThingName,
    at: ShadowRef,
}

async fn fixture(prefix: &str, named: Option<&str>) -> Fixture {
    let factory = local::factory().await;
    let table = device_table(&factory).await;
    let thing = thing(&factory, prefix).await;
    Fixture {
        store: IotShadowStore::new(factory.iot_data()),
        registry: Registry(table.clone()),
        table,
        at: shadow(&thing, named),
        thing,
    }
}

async fn desired_change_then_report_clears_desired(named: Option<&str>) {
    let Fixture {
        store,
        table,
        registry,
        thing,
        at,
    } = fixture("sync", named).await;

    send(
        &store,
        &at,
        json!({"desired": {"interval_s": 30, "mode": "eco"}}),
    )
    .await;
    let before = read(&store, &at).await;
    assert_eq!(before.delta()["interval_s"], 30);
    // The device applies interval_s (not yet mode) and reports its firmware.
    send(
        &store,
        &at,
        json!({"reported": {"interval_s": 30, "firmware": {"version": "1.4.0"}}}),
    )
    .await;
    let current = read(&store, &at).await;

    let summary: SyncSummary =
        run_documents(&store, &registry, &at, &before, &current, &sync_config("")).await;
    assert_eq!(summary.converged, ["interval_s"], "{summary:?}");
    assert_eq!(summary.written_version, Some(current.version + 1));
    assert_eq!(summary.facts, Some("recorded"));

    let after = read(&store, &at).await;
    assert_eq!(after.version, current.version + 1);
    let desired = after.state.desired.clone().unwrap_or_default();
    assert!(!desired.contains_key("interval_s"), "cleared: {desired:?}");
    assert_eq!(desired["mode"], "eco", "pending desired stays");
    assert_eq!(after.state.reported.as_ref().unwrap()["interval_s"], 30);

    let item = table.get(thing.as_str(), "device").await.unwrap().unwrap();
    assert_eq!(item["firmware_version"], "1.4.0");
    assert_eq!(
        item[&format!("shadow_version_{}", at.label())],
        current.version
    );

    // The same message again (AWS may deliver twice): nothing more is written.
    let replay = run_documents(&store, &registry, &at, &before, &current, &sync_config("")).await;
    assert_eq!(replay.written_version, None, "{replay:?}");
    assert_eq!(replay.facts, Some("stale"));
    assert_eq!(read(&store, &at).await.version, after.version);
}

#[tokio::test]
async fn classic_shadow_desired_is_cleared_once_reported() {
    desired_change_then_report_clears_desired(None).await;
}

#[tokio::test]
async fn named_shadow_desired_is_cleared_once_reported() {
    desired_change_then_report_clears_desired(Some("config")).await;
}

#[tokio::test]
async fn a_stale_clear_never_wipes_a_newer_desired_value() {
    let Fixture {
        store,
        registry,
        at,
        ..
    } = fixture("stale-clear", None).await;
    send(&store, &at, json!({"desired": {"mode": "eco"}})).await;
    let before = read(&store, &at).await;
    send(&store, &at, json!({"reported": {"mode": "eco"}})).await;
    let current = read(&store, &at).await;
    // An operator sets boost before the documents message is handled.
    send(&store, &at, json!({"desired": {"mode": "boost"}})).await;

    let summary = run_documents(&store, &registry, &at, &before, &current, &sync_config("")).await;
    assert_eq!(
        summary.attempts, 2,
        "409, re-read, nothing left to clear: {summary:?}"
    );
    assert_eq!(summary.written_version, None);
    let after = read(&store, &at).await;
    assert_eq!(after.state.desired.as_ref().unwrap()["mode"], "boost");
    assert_eq!(after.delta()["mode"], "boost");
}

/// Writer B lands first; writer A computed from the shadow before B and loses the version race
/// (a real 409 from the endpoint), re-reads and applies the policy.
async fn race(
    policies: &str,
    a_decided: i64,
    a_value: Value,
) -> (
    ShadowDocument,
    Result<WriteOutcome, WriteError>,
    Vec<String>,
) {
    let Fixture { store, at, .. } = fixture("race", None).await;
    send(
        &store,
        &at,
        json!({"desired": {"setpoint": 20, "fan": "auto"}}),
    )
    .await;
    let base = read(&store, &at).await;
    let policies: PolicyTable = policies.parse().unwrap();
    let now_s = shoal_core::clock::now_ms() / 1000;
    let b = DesiredIntent {
        desired: json!({"setpoint": 22}).as_object().unwrap().clone(),
        decided_at_s: u64::try_from(now_s).unwrap(),
    };
    let b_write = write_optimistic(&store, &at, Some(base.clone()), 3, |fresh| {
        plan_intent(Some(&base), fresh, &b, &policies).update()
    })
    .await
    .unwrap();
    assert!(matches!(b_write, WriteOutcome::Written { attempts: 1, .. }));

    let a = DesiredIntent {
        desired: json!({"setpoint": a_value, "light": "on"})
            .as_object()
            .unwrap()
            .clone(),
        decided_at_s: u64::try_from(now_s + a_decided).unwrap(),
    };
    let mut kept = Vec::new();
    let a_write = write_optimistic(&store, &at, Some(base.clone()), 3, |fresh| {
        let plan = plan_intent(Some(&base), fresh, &a, &policies);
        kept = plan.kept.iter().map(|(p, _)| p.clone()).collect();
        plan.update()
    })
    .await;
    (read(&store, &at).await, a_write, kept)
}

#[tokio::test]
async fn racing_cloud_writers_are_resolved_per_policy() {
    // lww: A decided before B: B's setpoint stays; A's other key applies.
    let (doc, a, kept) = race("*=lww", -100, json!(18)).await;
    assert!(
        matches!(a, Ok(WriteOutcome::Written { attempts: 2, .. })),
        "{a:?}"
    );
    let desired = doc.state.desired.unwrap();
    assert_eq!(
        (desired["setpoint"].clone(), desired["light"].clone()),
        (json!(22), json!("on"))
    );
    assert_eq!(kept, ["setpoint"]);
    // lww: A decided after B: A wins.
    let (doc, _, _) = race("*=lww", 100, json!(18)).await;
    assert_eq!(doc.state.desired.unwrap()["setpoint"], 18);
    // merge: the committed cloud value wins whatever the times.
    let (doc, _, kept) = race("*=merge", 100, json!(18)).await;
    assert_eq!(doc.state.desired.unwrap()["setpoint"], 22);
    assert_eq!(kept, ["setpoint"]);
    // vclock:max: concurrent writes, the larger setpoint wins either way round.
    let (doc, _, _) = race("*=vclock:max", -100, json!(25)).await;
    let desired = doc.state.desired.unwrap();
    assert_eq!(desired["setpoint"], 25);
    assert!(desired["_clock"]["setpoint"]["cloud"].as_u64().unwrap() >= 1);
    let (doc, _, kept) = race("*=vclock:max", 100, json!(18)).await;
    assert_eq!(doc.state.desired.unwrap()["setpoint"], 22);
    assert_eq!(kept, ["setpoint"]);
}

#[tokio::test]
async fn device_and_cloud_conflicts_are_decided_and_the_loser_recorded() {
    let Fixture {
        store,
        table,
        registry,
        thing,
        at,
    } = fixture("conflict", None).await;
    send(
        &store,
        &at,
        json!({"desired": {"schedule": {"start": 7, "_x": 1}, "mode": "eco",
                                         "_clock": {"schedule.start": {"cloud": 2}}}}),
    )
    .await;
    let before = read(&store, &at).await;
    // The device changed both locally, concurrently with the cloud (its clock never saw cloud:2).
    send(&store, &at, json!({"reported": {"schedule": {"start": 9}, "mode": "boost",
                                          "_clock": {"schedule.start": {"cloud": 1, "device": 1}}}})).await;
    let current = read(&store, &at).await;
    let config = sync_config("*=lww;mode=merge;schedule=vclock:cloud-wins");
    let summary = run_documents(&store, &registry, &at, &before, &current, &config).await;
    assert_eq!(summary.conflicts, 2, "{summary:?}");
    let after = read(&store, &at).await;
    let desired = after.state.desired.unwrap();
    assert_eq!(desired["mode"], "eco", "merge: the cloud wins");
    assert_eq!(desired["schedule"]["start"], 7, "vclock cloud-wins");
    assert_eq!(
        desired["_clock"]["schedule.start"],
        json!({"cloud": 3, "device": 1})
    );
    let mut lost: Vec<Value> = table
        .conflicts(thing.as_str())
        .await
        .unwrap()
        .into_iter()
        .map(|c| c["lost"]["value"].clone())
        .collect();
    lost.sort_by_key(Value::to_string);
    assert_eq!(lost, [json!("boost"), json!(9)]);
}

#[tokio::test]
async fn an_update_over_8_kb_is_refused_before_any_call() {
    let Fixture { store, at, .. } = fixture("big", None).await;
    send(&store, &at, json!({"reported": {"log": "x".repeat(6000)}})).await;
    let version = read(&store, &at).await.version;
    let update = ShadowUpdate::desired(
        json!({"note": "y".repeat(3000)})
            .as_object()
            .unwrap()
            .clone(),
        None,
    );
    let err = write_optimistic(&store, &at, None, 3, |_| Some(update.clone()))
        .await
        .unwrap_err();
    assert!(matches!(err, WriteError::Limit { .. }), "{err}");
    assert!(err.to_string().contains("8192"), "{err}");
    assert_eq!(read(&store, &at).await.version, version, "nothing was sent");
}

/// The certificate id every test device is provisioned with (64 hex digits, as AWS's).
const DEVICE_CERT: &str = "5e6f708192a3b4c5d6e7f8091a2b3c4d5e2d9b1f4c0e5a6b7c8d9e0f1a2b3c4d";

fn lifecycle(client: &str, kind: &str, ts: u64, version: u64) -> Value {
    json!({"clientId": client, "timestamp": ts, "eventType": kind,
           "sessionIdentifier": format!("session-{version}"), "principalIdentifier": DEVICE_CERT,
           "ipAddress": "192.0.2.1", "versionNumber": version,
           "clientInitiatedDisconnect": false, "disconnectReason": "MQTT_KEEP_ALIVE_TIMEOUT"})
}

/// The presence trigger's registry as deployed, with `client` provisioned to [`DEVICE_CERT`] the
/// way fleet provisioning does it: a manifest row the pre-provisioning hook claims, recording the
/// certificate in this device table.
async fn provisioned(factory: &ClientFactory, client: &str) -> (PresenceRegistry, DeviceTable) {
    let csv = format!("serial,model,batch,thing_group,attributes\n{client},th-v2,b1,,\n");
    let request = serde_json::from_value(json!({
        "claimCertificateId": "0f8a2f3bc2a0cb5d9d6b2c8e4a1e3f5d7c9b1a3e5f7d9c1b3a5e7f9d1c3b5a7e",
        "certificateId": DEVICE_CERT,
        "templateArn": "arn:aws:iot:us-east-1:123456789012:provisioningtemplate/shoal-fleet",
        "clientId": format!("claim.{client}.1"),
        "parameters": {"SerialNumber": client}
    }))
    .unwrap();
    shoal_integration_tests::provisioned::through_the_hook(factory, &csv, &request).await
}

/// Delivers `events` in order at `now_ms`, asserting each one's outcome; the summaries.
async fn expect_outcomes(
    events: impl IntoIterator<Item = (Value, &'static str)>,
    config: &PresenceConfig,
    registry: &PresenceRegistry,
    alerts: &IotAlerts,
    now_ms: u64,
) -> Vec<PresenceSummary> {
    let mut summaries = Vec::new();
    for (event, expected) in events {
        let answer = presence::handle(event, config, registry, alerts, now_ms)
            .await
            .unwrap();
        let PresenceAnswer::Event(summary) = answer else {
            panic!("an event")
        };
        assert_eq!(summary.outcome, expected, "{summary:?}");
        summaries.push(summary);
    }
    summaries
}

/// Case 2 of issue 12: whoever connects with a device's client id but another certificate (the
/// claim certificate before its client ids were pinned, a stray certificate attached elsewhere)
/// changes nothing in the registry: the event is ignored as `foreign_principal`, compared in the
/// device item's own conditional write against the certificate the hook recorded there.
#[tokio::test]
async fn an_impostors_lifecycle_events_never_change_presence() {
    let factory = local::factory().await;
    let client = unique_name("SN-PRES");
    let (registry, table) = provisioned(&factory, &client).await;
    let alerts = IotAlerts(factory.iot_data());
    let config = PresenceConfig {
        device_table: "devices".parse().unwrap(),
        manifest_table: "manifest".parse().unwrap(),
        offline_threshold_s: 600,
        alerts_topic: "shoal/alerts".into(),
    };
    let t = 1_800_000_000_000u64;
    let impostor = |kind: &str, ts: u64, version: u64, principal: &str| {
        let mut e = lifecycle(&client, kind, ts, version);
        e["principalIdentifier"] = json!(principal);
        e["sessionIdentifier"] = json!("impostor");
        e
    };
    let claim_cert = "0f8a2f3bc2a0cb5d9d6b2c8e4a1e3f5d7c9b1a3e5f7d9c1b3a5e7f9d1c3b5a7e";
    let impostor_of = |thing: &str, principal: &str| {
        let mut e = lifecycle(thing, "connected", t + 1_000, 9);
        e["principalIdentifier"] = json!(principal);
        e
    };
    let summaries = expect_outcomes(
        [
            (lifecycle(&client, "connected", t, 5), "applied"),
            (impostor("connected", t + 60_000, 6, claim_cert), "ignored"),
            (
                impostor("disconnected", t + 90_000, 6, claim_cert),
                "ignored",
            ),
            (
                impostor("disconnected", t + 95_000, 7, "AROAEXAMPLE:x"),
                "ignored",
            ),
        ],
        &config,
        &registry,
        &alerts,
        t,
    )
    .await;
    for ignored in &summaries[1..] {
        assert_eq!(
            ignored.ignored_because,
            Some(FOREIGN_PRINCIPAL),
            "{ignored:?}"
        );
    }
    let item = table.get(&client, "device").await.unwrap().unwrap();
    assert_eq!(item["online"], true, "{item}");
    assert_eq!(item["session_id"], "session-5");
    assert_eq!(item["certificate_id"], DEVICE_CERT);
    assert!(item.get("offline_since").is_none());

    // A device provisioned before certificates were recorded (its manifest row claimed, no
    // certificate on its device item): an impostor adopts nothing, the device's first event
    // adopts the manifest's certificate once and applies.
    let legacy = unique_name("SN-OLD");
    registry
        .manifest
        .insert(&shoal_core::provisioning::ManifestEntry {
            serial: legacy.parse().unwrap(),
            model: "th-v2".into(),
            batch: "b0".into(),
            status: shoal_core::provisioning::DeviceStatus::Provisioned,
            certificate_id: Some(DEVICE_CERT.into()),
            thing_name: Some(legacy.parse().unwrap()),
            thing_group: None,
            attributes: Default::default(),
            proof: None,
            created_at_ms: 1,
            updated_at_ms: 1,
        })
        .await
        .unwrap();
    expect_outcomes(
        [
            (impostor_of(&legacy, claim_cert), "ignored"),
            (lifecycle(&legacy, "connected", t, 1), "applied"),
            (impostor_of(&legacy, claim_cert), "ignored"),
        ],
        &config,
        &registry,
        &alerts,
        t,
    )
    .await;
    let item = table.get(&legacy, "device").await.unwrap().unwrap();
    assert_eq!(item["certificate_id"], DEVICE_CERT);
    assert_eq!(item["online"], true);

    // A thing nobody provisioned: nothing is recorded for it at all.
    let stranger = unique_name("SN-NONE");
    expect_outcomes(
        [(lifecycle(&stranger, "connected", t, 1), "ignored")],
        &config,
        &registry,
        &alerts,
        t,
    )
    .await;
    assert!(table.get(&stranger, "device").await.unwrap().is_none());
}

/// AWS's session takeover: the same client id connects again, and the old session's
/// `DUPLICATE_CLIENTID` disconnect arrives stamped after the new session's connect. The device
/// item's conditional write keeps the newer connection.
#[tokio::test]
async fn a_taken_over_session_never_marks_the_new_one_offline() {
    let factory = local::factory().await;
    let alerts = IotAlerts(factory.iot_data());
    let config = PresenceConfig {
        device_table: "devices".parse().unwrap(),
        manifest_table: "manifest".parse().unwrap(),
        offline_threshold_s: 600,
        alerts_topic: "shoal/alerts".into(),
    };
    let client = unique_name("takeover");
    let (registry, table) = provisioned(&factory, &client).await;
    let t0 = 1_800_000_000_000u64;
    let mut old_session_ends = lifecycle(&client, "disconnected", t0 + 600_250, 41);
    old_session_ends["disconnectReason"] = json!("DUPLICATE_CLIENTID");
    let delivered = [
        (lifecycle(&client, "connected", t0, 41), "applied"),
        (lifecycle(&client, "connected", t0 + 600_000, 42), "applied"),
        (old_session_ends, "stale"),
    ];
    expect_outcomes(delivered, &config, &registry, &alerts, t0 + 600_300).await;
    let item = table.get(&client, "device").await.unwrap().unwrap();
    assert_eq!(item["online"], true);
    assert_eq!(item["session_id"], "session-42");
    assert!(item.get("offline_since").is_none());
    assert!(item.get("disconnect_reason").is_none());

    // Two hours offline: AWS resets versionNumber to 0, and the new connection still wins; the
    // old connection's duplicate disconnect, delivered late, does not.
    let gone = t0 + 700_000;
    let back = gone + 7_200_000;
    let later = [
        (lifecycle(&client, "disconnected", gone, 42), "applied"),
        (lifecycle(&client, "connected", back, 0), "applied"),
        (lifecycle(&client, "disconnected", gone, 42), "stale"),
    ];
    expect_outcomes(later, &config, &registry, &alerts, back).await;
    let item = table.get(&client, "device").await.unwrap().unwrap();
    assert_eq!(item["online"], true);
    assert_eq!(item["last_seen"], back);
}

#[tokio::test]
async fn lifecycle_events_out_of_order_and_duplicated_never_regress_presence() {
    let factory = local::factory().await;
    let alerts = IotAlerts(factory.iot_data());
    let config = PresenceConfig {
        device_table: "devices".parse().unwrap(),
        manifest_table: "manifest".parse().unwrap(),
        offline_threshold_s: 600,
        alerts_topic: "shoal/alerts".into(),
    };
    let client = unique_name("presence");
    let (registry, table) = provisioned(&factory, &client).await;
    let t = 1_800_000_000_000u64;
    let delivered = [
        (lifecycle(&client, "disconnected", t + 2_000, 1), "applied"),
        (lifecycle(&client, "connected", t + 3_000, 2), "applied"),
        (lifecycle(&client, "connected", t + 1_000, 1), "stale"), // late
        (lifecycle(&client, "disconnected", t + 2_000, 1), "stale"), // duplicate, late
        (lifecycle(&client, "connected", t + 3_000, 2), "stale"), // duplicate
    ];
    expect_outcomes(delivered, &config, &registry, &alerts, t).await;
    let item = table.get(&client, "device").await.unwrap().unwrap();
    assert_eq!(item["online"], true);
    assert_eq!(item["last_seen"], t + 3_000);
    assert!(item.get("offline_since").is_none());

    // Offline for good: the sweep alerts once, past the threshold only.
    let gone = t + 10_000;
    presence::handle(
        lifecycle(&client, "disconnected", gone, 2),
        &config,
        &registry,
        &alerts,
        gone,
    )
    .await
    .unwrap();
    let schedule = json!({"detail-type": "Scheduled Event", "source": "aws.events"});
    let early = presence::handle(
        schedule.clone(),
        &config,
        &registry,
        &alerts,
        gone + 599_000,
    )
    .await
    .unwrap();
    assert_eq!(early, PresenceAnswer::Sweep(SweepSummary::default()));
    let late = presence::handle(
        schedule.clone(),
        &config,
        &registry,
        &alerts,
        gone + 601_000,
    )
    .await
    .unwrap();
    let PresenceAnswer::Sweep(late) = late else {
        panic!("a sweep")
    };
    assert_eq!(
        (late.offline_past_threshold, late.alerted),
        (1, 1),
        "{late:?}"
    );
    let item = table.get(&client, "device").await.unwrap().unwrap();
    assert_eq!(item["online"], false);
    assert_eq!(item["disconnect_reason"], "MQTT_KEEP_ALIVE_TIMEOUT");
    assert!(item["offline_alerted_at"].as_u64().is_some());
    let again = presence::handle(schedule, &config, &registry, &alerts, gone + 700_000)
        .await
        .unwrap();
    assert_eq!(again, PresenceAnswer::Sweep(SweepSummary::default()));
}

/// A shadow store that fails the first update of some things, as an unreachable endpoint would.
struct Flaky {
    inner: IotShadowStore,
    fail: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl ShadowStore for Flaky {
    async fn get(&self, at: &ShadowRef) -> Result<Option<ShadowDocument>, EdgeError> {
        self.inner.get(at).await
    }
    async fn update(
        &self,
        at: &ShadowRef,
        update: &ShadowUpdate,
    ) -> Result<Option<u64>, EdgeError> {
        if self.fail.lock().unwrap().remove(at.thing.as_str()) {
            return Err(EdgeError::unreachable(
                "iot-data",
                "UpdateThingShadow",
                "injected",
            ));
        }
        self.inner.update(at, update).await
    }
}

#[tokio::test]
async fn group_update_over_200_things_reports_failures_and_resumes() {
    use shoal_cli::group_config::{
        GroupRequest, IotFleet, Options, Status, Target, ThingResult, set_desired,
    };
    let factory = local::factory().await;
    let iot = factory.iot();
    let group = unique_name("building");
    iot.create_thing_group()
        .thing_group_name(&group)
        .send()
        .await
        .aws("iot", "CreateThingGroup")
        .unwrap();
    let mut things = Vec::new();
    for _ in 0..200 {
        let t = thing(&factory, "bldg").await;
        iot.add_thing_to_thing_group()
            .thing_group_name(&group)
            .thing_name(t.as_str())
            .send()
            .await
            .aws("iot", "AddThingToThingGroup")
            .unwrap();
        things.push(t);
    }
    let store = IotShadowStore::new(factory.iot_data());
    // Three devices report so much state that the new desired would not fit: refused locally.
    for t in &things[..3] {
        send(
            &store,
            &shadow(t, None),
            json!({"reported": {"log": "x".repeat(8170)}}),
        )
        .await;
    }
    let injected: std::collections::BTreeSet<String> =
        things[10..15].iter().map(|t| t.to_string()).collect();
    let flaky = Arc::new(Flaky {
        inner: store.clone(),
        fail: std::sync::Mutex::new(injected.clone()),
    });
    let request = GroupRequest {
        target: Target::Group(group.clone()),
        shadow: None,
        desired: json!({"hvac": {"setpoint": 21}})
            .as_object()
            .unwrap()
            .clone(),
    };
    let report = std::env::temp_dir().join(format!("{}.jsonl", unique_name("config-set")));
    let policies = PolicyTable::default();
    let options = |resume| Options {
        policies: &policies,
        concurrency: 16,
        max_attempts: 3,
        resume,
        decided_at_s: 0,
    };
    let mut seen = 0;
    let summary = set_desired(
        &IotFleet(iot.clone()),
        flaky,
        &request,
        &report,
        options(false),
        |n, total, _| {
            assert!(n <= total);
            seen += 1;
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (summary.targeted, summary.written, summary.failed),
        (200, 192, 8),
        "{summary:?}"
    );
    assert_eq!(seen, 200);
    let lines: Vec<ThingResult> = std::fs::read_to_string(&report)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 200);
    let failed: Vec<&ThingResult> = lines
        .iter()
        .filter(|r| r.status == Status::Failed)
        .collect();
    assert!(failed.iter().all(|r| r.error.is_some()));
    assert_eq!(
        failed
            .iter()
            .filter(|r| r.error.as_ref().unwrap().contains("8192"))
            .count(),
        3
    );
    assert_eq!(
        failed
            .iter()
            .filter(|r| injected.contains(&r.thing))
            .count(),
        5
    );

    // Resume: only the failed ones are tried again; the injected failures now pass.
    let resumed = set_desired(
        &IotFleet(iot.clone()),
        Arc::new(store.clone()),
        &request,
        &report,
        options(true),
        |_, _, _| {},
    )
    .await
    .unwrap();
    assert_eq!(
        (resumed.already_done, resumed.written, resumed.failed),
        (192, 5, 3),
        "{resumed:?}"
    );
    for t in &things[10..15] {
        assert_eq!(
            read(&store, &shadow(t, None)).await.state.desired.unwrap()["hvac"]["setpoint"],
            21
        );
    }
    // A different request cannot resume this report.
    let other = GroupRequest {
        desired: json!({"hvac": {"setpoint": 19}})
            .as_object()
            .unwrap()
            .clone(),
        ..request
    };
    let err = set_desired(
        &IotFleet(iot),
        Arc::new(store),
        &other,
        &report,
        options(true),
        |_, _, _| {},
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("another request"), "{err}");
    std::fs::remove_file(report).ok();
}

/// Shoal's delta is the one the endpoint computes, case by case (nested objects, arrays compared
/// whole, numbers by value, keys only on one side).
#[tokio::test]
async fn delta_matches_the_endpoints() {
    let Fixture { store, at, .. } = fixture("delta", None).await;
    let cases = [
        (json!({"a": 1, "b": "x"}), json!({"a": 1, "b": "y"})),
        (
            json!({"n": {"x": 1, "y": {"z": [1, 2]}}}),
            json!({"n": {"x": 1, "y": {"z": [1, 2, 3]}}}),
        ),
        (
            json!({"list": [1, 2, 3], "t": 21}),
            json!({"list": [1, 2, 3], "t": 21.0}),
        ),
        (json!({"obj": {"k": 1}}), json!({"obj": 5, "extra": true})),
        (
            json!({"only_desired": {"deep": {"er": null, "est": 1}}}),
            json!({"other": 1}),
        ),
    ];
    for (desired, reported) in cases {
        // Replace the whole state: delete it, then write both sections.
        let update = json!({"state": null}).to_string();
        local::factory()
            .await
            .iot_data()
            .update_thing_shadow()
            .thing_name(at.thing.as_str())
            .payload(aws_smithy_types::Blob::new(update))
            .send()
            .await
            .aws("iot-data", "UpdateThingShadow")
            .unwrap();
        send(
            &store,
            &at,
            json!({"desired": desired, "reported": reported}),
        )
        .await;
        let doc = read(&store, &at).await;
        let endpoint_delta = doc.state.delta.clone().unwrap_or_default();
        assert_eq!(
            doc.delta(),
            endpoint_delta,
            "desired {desired} reported {reported}"
        );
    }
}
