//! OTA rollouts end to end against the local stack: images published and signed through KMS,
//! things registered in IoT with model/hardware attributes, presence and firmware in the device
//! table, the advancer run with a controlled clock, devices simulated by recording their OTA
//! reports as the shadow-documents function does (that path is tested in shadow_sync.rs).
//!
//! Covered: a 1,000-thing rollout through canary → staged → general → completed, with the herd
//! budget, offline devices targeted when they return, presigned URLs that fetch the image and
//! are refreshed before expiry, racing advancers; failures above the threshold → auto-pause with
//! an alert; rollback restoring who took the image (self-rolled-back devices counted rolled
//! back, never successes) and withdrawing the request from who did not.

use std::collections::HashMap;
use std::sync::Mutex;

use aws_sdk_kms::types::{KeySpec, KeyUsageType};
use ota_scheduler::edges::{Devices, Registry};
use ota_scheduler::{AdvancerConfig, Edges, RolloutRun, advance, handle};
use serde_json::Value;
use shoal_aws::client::{AwsResultExt, ClientFactory, EdgeError};
use shoal_aws::device_table::DeviceTable;
use shoal_aws::firmware_table::FirmwareTable;
use shoal_aws::rollout_table::RolloutTable;
use shoal_aws::shadow_store::IotShadowStore;
use shoal_cli::firmware::{PublishRequest, Publisher};
use shoal_cli::group_config::IotFleet;
use shoal_cli::rollout::{StartRequest, operate, start, status};
use shoal_core::alerts::Alerts;
use shoal_core::ids::{ShadowName, ThingName};
use shoal_core::presence::{LifecycleEvent, PresenceEvent};
use shoal_core::rollout::advance::DeviceRecord;
use shoal_core::rollout::cohort::Ineligible;
use shoal_core::rollout::delivery;
use shoal_core::rollout::image::FirmwareImage;
use shoal_core::rollout::phases::{Decision, PlanSettings};
use shoal_core::rollout::state::{Command, DeviceOutcome, RolloutStatus};
use shoal_core::shadow::ShadowRef;
use shoal_core::shadow::ota::{OtaReport, OtaStatus};
use shoal_core::shadow::store::ShadowStore;
use shoal_core::shadow::sync::ReportedFacts;
use shoal_integration_tests::firmware::registry;
use shoal_integration_tests::local::{self, unique_name};

const GOOD: &str = "1.9.0";
const NEW: &str = "1.10.0";
const MINUTE: u64 = 60_000;

/// Alerts kept in memory: moto accepts IoT data Publish but keeps nothing to read back.
#[derive(Default)]
struct Recorded(Mutex<Vec<(String, Value)>>);

impl Alerts for Recorded {
    async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), EdgeError> {
        let body = serde_json::from_slice(&payload).expect("alerts are JSON");
        self.0.lock().unwrap().push((topic.to_owned(), body));
        Ok(())
    }
}

struct Stack {
    factory: ClientFactory,
    rollouts: RolloutTable,
    firmware: FirmwareTable,
    devices: DeviceTable,
    registry: Registry,
    delivery: Devices,
    alerts: Recorded,
    model: String,
    images: HashMap<&'static str, Vec<u8>>,
}

impl Stack {
    /// Fresh tables, bucket and signing key; versions 1.9.0 and 1.10.0 published for a model
    /// no other test uses (ListThings sees the whole registry).
    async fn new() -> Self {
        let (factory, firmware, bucket, key) =
            registry(KeySpec::EccNistP256, KeyUsageType::SignVerify).await;
        let dynamo = factory.dynamodb();
        let rollouts = RolloutTable::new(dynamo.clone(), unique_name("rollouts").parse().unwrap());
        let devices = DeviceTable::new(dynamo.clone(), unique_name("devices").parse().unwrap());
        rollouts.ensure_exists().await.unwrap();
        devices.ensure_exists().await.unwrap();
        let model = unique_name("m");
        let publisher = Publisher {
            factory: &factory,
            table: &firmware,
            bucket: &bucket,
            key: &key,
        };
        let mut images = HashMap::new();
        for version in [GOOD, NEW] {
            let image = format!("firmware {model} {version} ")
                .repeat(64)
                .into_bytes();
            let request = PublishRequest {
                model: model.parse().unwrap(),
                hardware: "rev-b".parse().unwrap(),
                version: version.parse().unwrap(),
                min_version: Some("1.0.0".parse().unwrap()),
                downgrade_reason: None,
            };
            publisher.publish(&image, &request).await.unwrap();
            images.insert(version, image);
        }
        let registry = Registry {
            iot: factory.iot(),
            devices: devices.clone(),
            firmware: firmware.clone(),
        };
        let delivery = Devices {
            s3: factory.s3(),
            bucket: bucket.as_str().to_owned(),
            shadows: IotShadowStore::new(factory.iot_data()),
            jobs: None,
        };
        Self {
            factory,
            rollouts,
            firmware,
            devices,
            registry,
            delivery,
            alerts: Recorded::default(),
            model,
            images,
        }
    }

    fn edges(&self) -> Edges<'_, RolloutTable, Registry, Devices, Recorded> {
        Edges {
            rollouts: &self.rollouts,
            fleet: &self.registry,
            delivery: &self.delivery,
            alerts: &self.alerts,
        }
    }

    /// `n` things of the model: hardware `rev-b` (every 50th `rev-a`), running 1.9.0 (every
    /// 40th 0.9.0, below the image's min_version), online (every 20th offline).
    /// Names are fixed per test (`prefix`), and so are rollout ids, so cohorts are the same on
    /// every run; a rerun against the same emulator re-creates the things with the new model.
    async fn register(&self, prefix: &str, n: usize) -> Vec<String> {
        let names: Vec<String> = (0..n).map(|i| format!("{prefix}-{i:04}")).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for chunk in names.chunks(n.div_ceil(8)) {
            let (iot, devices, model) =
                (self.factory.iot(), self.devices.clone(), self.model.clone());
            let chunk: Vec<(usize, String)> = chunk
                .iter()
                .map(|t| (t.rsplit('-').next().unwrap().parse().unwrap(), t.clone()))
                .collect();
            tasks.spawn(async move {
                for (i, thing) in chunk {
                    let hardware = if i % 50 == 49 { "rev-a" } else { "rev-b" };
                    let attributes = aws_sdk_iot::types::AttributePayload::builder()
                        .attributes("model", &model)
                        .attributes("hardware", hardware)
                        .build();
                    iot.create_thing()
                        .thing_name(&thing)
                        .attribute_payload(attributes)
                        .send()
                        .await
                        .aws("iot", "CreateThing")
                        .unwrap();
                    let running = if i % 40 == 39 { "0.9.0" } else { GOOD };
                    report_firmware(&devices, &thing, running, 1).await;
                    presence(&devices, &thing, i % 20 != 19, 1).await;
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        names
    }

    async fn run(&self, id: &str, now: u64) -> RolloutRun {
        let run = advance(id, &self.edges(), &config(), now).await.unwrap();
        assert_eq!(run.delivery_failures, 0, "{run:?}");
        run
    }

    /// The greatest published image of the model (1.10.0).
    async fn newest_image(&self) -> FirmwareImage {
        let (model, hardware) = (self.model.parse().unwrap(), "rev-b".parse().unwrap());
        self.firmware
            .images(&model, &hardware)
            .await
            .unwrap()
            .pop()
            .unwrap()
    }

    async fn records(&self, id: &str) -> Vec<DeviceRecord> {
        self.rollouts.devices(id).await.unwrap()
    }

    async fn ota_desired(&self, thing: &str) -> Option<serde_json::Map<String, Value>> {
        let shadow = ShadowRef {
            thing: ThingName::parse(thing).unwrap(),
            name: Some(ShadowName::parse("ota").unwrap()),
        };
        let doc = self.delivery.shadows.get(&shadow).await.unwrap()?;
        doc.state.desired
    }
}

async fn report_firmware(devices: &DeviceTable, thing: &str, version: &str, shadow_version: u64) {
    let shadow = ShadowRef {
        thing: ThingName::parse(thing).unwrap(),
        name: None,
    };
    let facts = ReportedFacts {
        firmware: Some(version.into()),
        config: None,
    };
    devices
        .record_facts(&shadow, shadow_version, &facts, shadow_version)
        .await
        .unwrap();
}

/// The certificate every registered thing was provisioned with.
const DEVICE_CERT: &str = "7c8d9e0f1a2b3c4d5e2d9b1f4c0e5a6b5e6f708192a3b4c5d6e7f8091a2b3c4d";

/// What provisioning records and then the presence trigger writes for a device's connection.
async fn presence(devices: &DeviceTable, thing: &str, online: bool, version_number: u64) {
    let event = LifecycleEvent {
        client_id: thing.into(),
        thing_name: Some(thing.into()),
        timestamp: version_number * 1000,
        event_type: if online {
            PresenceEvent::Connected
        } else {
            PresenceEvent::Disconnected
        },
        session_identifier: Some(format!("s-{version_number}")),
        principal_identifier: Some(DEVICE_CERT.into()),
        ip_address: None,
        version_number,
        client_initiated_disconnect: None,
        disconnect_reason: (!online).then(|| "CONNECTION_LOST".into()),
    };
    devices
        .record_certificate(thing, DEVICE_CERT, 0)
        .await
        .unwrap();
    let recorded = devices.record_presence(thing, &event, 0).await.unwrap();
    assert_eq!(recorded, shoal_core::presence::Recorded::Applied);
}

/// What the shadow-documents function records when the device reports in its `ota` shadow.
async fn device_reports(
    devices: &DeviceTable,
    thing: &str,
    status: OtaStatus,
    (target, running): (&str, &str),
    shadow_version: u64,
) {
    let report = OtaReport {
        status,
        target_version: Some(target.into()),
        running_version: Some(running.into()),
        reason: (status == OtaStatus::Failed).then(|| "signature check failed".into()),
    };
    assert!(
        devices
            .record_ota(thing, shadow_version, &report, shadow_version)
            .await
            .unwrap()
    );
}

fn config() -> AdvancerConfig {
    AdvancerConfig {
        rollout_table: "rollouts".parse().unwrap(),
        device_table: "devices".parse().unwrap(),
        firmware_table: "firmware".parse().unwrap(),
        firmware_bucket: "firmware-images".parse().unwrap(),
        url_ttl_s: 3600,
        url_refresh_margin_s: 600,
        alerts_topic: "shoal/alerts".into(),
        jobs_role_arn: None,
    }
}

fn settings(canary: f64, staged: &[f64], min_reports: u64) -> PlanSettings {
    PlanSettings {
        canary_percent: canary,
        staged_percents: staged.to_vec(),
        soak_ms: 10 * MINUTE,
        canary_max_failure_rate: 0.05,
        staged_max_failure_rate: 0.02,
        min_reports,
    }
}

async fn start_rollout(stack: &Stack, id: &str, settings: PlanSettings, per_minute: u32) -> String {
    let request = StartRequest {
        id: Some(id.into()),
        model: stack.model.parse().unwrap(),
        hardware: "rev-b".parse().unwrap(),
        version: NEW.parse().unwrap(),
        rollback_to: None,
        settings,
        max_new_per_minute: per_minute,
    };
    let rollout = start(&stack.rollouts, &stack.firmware, request, 0)
        .await
        .unwrap();
    assert_eq!(rollout.rollback_version, Some(GOOD.parse().unwrap()));
    rollout.id.to_string()
}

/// Every targeted device that has not reported yet installs the image and reports success.
async fn devices_succeed(stack: &Stack, records: &[DeviceRecord], reported: &mut Vec<String>) {
    for record in records {
        if !reported.contains(&record.thing) {
            device_reports(
                &stack.devices,
                &record.thing,
                OtaStatus::Success,
                (NEW, NEW),
                2,
            )
            .await;
            reported.push(record.thing.clone());
        }
    }
}

#[tokio::test]
async fn a_rollout_over_1000_things_advances_through_every_phase() {
    let stack = Stack::new().await;
    let things = stack.register("ota-phases", 1_000).await;
    let id = start_rollout(&stack, "phases", settings(1.0, &[10.0, 50.0], 3), 200).await;
    let mut reported = Vec::new();
    let mut now = MINUTE;
    let mut phases_seen = Vec::new();

    // Canary: ~1% of the eligible devices, and no one else.
    let first = stack.run(&id, now).await;
    assert!((3..=25).contains(&first.targeted), "{first:?}");
    let records = stack.records(&id).await;
    let eligible = |i: usize| i % 50 != 49 && i % 40 != 39;
    for record in &records {
        let i: usize = record.thing.rsplit('-').next().unwrap().parse().unwrap();
        assert!(
            eligible(i) && i % 20 != 19,
            "{} is not a target",
            record.thing
        );
        assert!(record.point < 0.01);
    }

    // The device's `ota` shadow asks for the image with a URL that fetches it.
    let desired = stack.ota_desired(&records[0].thing).await.unwrap();
    assert_eq!(desired["version"], NEW);
    assert_eq!(desired["rollout"], id.as_str());
    let image = &stack.images[NEW];
    assert_eq!(desired["size"], image.len());
    let sha = shoal_core::rollout::image::hex(&shoal_core::rollout::image::sha256(image));
    assert_eq!(desired["sha256"], sha.as_str());
    let url = desired["url"].as_str().unwrap();
    assert!(url.contains("X-Amz-Expires=3600"), "{url}");
    let path = url.strip_prefix(&local::endpoint()).unwrap();
    let fetched = local::get(path).unwrap();
    assert_eq!(fetched.as_bytes(), image.as_slice());
    assert_eq!(desired["url_expires_ms"], now + 3_600_000);

    // Soak: before the soak time nothing moves, whatever the reports.
    devices_succeed(&stack, &records, &mut reported).await;
    now += 5 * MINUTE;
    let waiting = stack.run(&id, now).await;
    assert!(matches!(waiting.decision, Some(Decision::Wait { .. })));
    assert_eq!(waiting.targeted, 0, "the canary is fully targeted");

    // Two advancers racing at the end of the soak: one advances, the other stops.
    now += 6 * MINUTE;
    let (edges, config) = (stack.edges(), config());
    let (a, b) = tokio::join!(
        advance(&id, &edges, &config, now),
        advance(&id, &edges, &config, now)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(u8::from(a.raced) + u8::from(b.raced), 1, "{a:?} {b:?}");
    assert_eq!(stack.rollouts.audit(&id).await.unwrap().len(), 1);
    let winner = if a.raced { b } else { a };
    phases_seen.push(winner.phase.clone().unwrap());

    // The herd guard: at most 200 new devices per minute; every phase soaks, gets its reports
    // and advances until the rollout completes.
    for _ in 0..40 {
        let records = stack.records(&id).await;
        devices_succeed(&stack, &records, &mut reported).await;
        now += MINUTE + 1;
        let run = stack.run(&id, now).await;
        assert!(run.targeted <= 200, "{run:?}");
        if let Some(phase) = &run.phase
            && phases_seen.last() != Some(phase)
        {
            phases_seen.push(phase.clone());
        }
        if run.status == Some(RolloutStatus::Completed) {
            break;
        }
        now += 9 * MINUTE;
    }
    assert_eq!(phases_seen, ["staged-1", "staged-2", "general"]);
    let rollout = stack.rollouts.get(&id).await.unwrap().unwrap();
    assert_eq!(rollout.status, RolloutStatus::Completed);
    let audit = stack.rollouts.audit(&id).await.unwrap();
    let commands: Vec<&Command> = audit.iter().map(|t| &t.command).collect();
    assert_eq!(
        commands,
        [
            &Command::Advance { to: 1 },
            &Command::Advance { to: 2 },
            &Command::Advance { to: 3 },
            &Command::Complete
        ]
    );

    // Every eligible online device was targeted once; offline ones wait.
    let records = stack.records(&id).await;
    let targeted: Vec<&str> = records.iter().map(|r| r.thing.as_str()).collect();
    let expected: Vec<&str> = things
        .iter()
        .enumerate()
        .filter(|(i, _)| eligible(*i) && i % 20 != 19)
        .map(|(_, t)| t.as_str())
        .collect();
    let mut sorted = targeted.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, expected);
    devices_succeed(&stack, &records, &mut reported).await;

    // Offline devices are targeted when they come back.
    let returning: Vec<&String> = things
        .iter()
        .enumerate()
        .filter(|(i, _)| eligible(*i) && i % 20 == 19)
        .map(|(_, t)| t)
        .collect();
    assert!(!returning.is_empty());
    for thing in &returning {
        presence(&stack.devices, thing, true, 2).await;
    }
    now += MINUTE + 1;
    let run = stack.run(&id, now).await;
    assert_eq!(run.targeted as usize, returning.len());

    let report = status(
        &stack.rollouts,
        &stack.firmware,
        &stack.devices,
        &IotFleet(stack.factory.iot()),
        &id,
        now,
    )
    .await
    .unwrap();
    assert_eq!(
        report.counts.targeted as usize,
        expected.len() + returning.len()
    );
    assert_eq!(report.counts.succeeded as usize, expected.len());
    assert_eq!(
        report.outcomes[&DeviceOutcome::Pending] as usize,
        returning.len()
    );
    assert_eq!(report.failure_rate, 0.0);
    // 0.9.0 is below the image's min_version: every 40th thing, less the rev-a ones.
    assert_eq!(
        report.population.ineligible[&Ineligible::BelowMinVersion],
        20
    );

    // URLs of devices still downloading are replaced before they expire, never after.
    for thing in &returning {
        device_reports(
            &stack.devices,
            thing,
            OtaStatus::Downloading,
            (NEW, GOOD),
            3,
        )
        .await;
    }
    let refresh_at = now + 3_600_000 - 5 * MINUTE;
    let refreshed = stack.run(&id, refresh_at).await;
    assert_eq!(refreshed.refreshed as usize, returning.len());
    let desired = stack.ota_desired(returning[0]).await.unwrap();
    assert_eq!(desired["url_expires_ms"], refresh_at + 3_600_000);
    assert_eq!(stack.run(&id, refresh_at + MINUTE).await.refreshed, 0);
}

#[tokio::test]
async fn failures_pause_the_rollout_and_a_rollback_reconciles_every_device() {
    let stack = Stack::new().await;
    stack.register("ota-pause", 300).await;
    let id = start_rollout(&stack, "pause", settings(10.0, &[20.0, 50.0], 10), 1_000).await;
    // The first run as the schedule starts it (events/ota-advancer-schedule.json): every rollout
    // of the table, here the one.
    let schedule: Value = serde_json::from_str(
        &std::fs::read_to_string(
            shoal_integration_tests::repo_root().join("events/ota-advancer-schedule.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let summary = handle(&schedule, &stack.edges(), &config(), MINUTE)
        .await
        .unwrap();
    assert_eq!(summary.rollouts.len(), 1);
    assert_eq!(
        (summary.errors(), summary.rollouts[0].rollout.as_str()),
        (0, "pause")
    );
    let canary = stack.records(&id).await;
    assert!(canary.len() >= 15, "{}", canary.len());

    // The canary: three fail on the new image, two fall back by themselves (they report the
    // old version running), three never start, the rest succeed.
    let (failed, rest) = canary.split_at(3);
    let (fell_back, rest) = rest.split_at(2);
    let (silent, succeeded) = rest.split_at(3);
    for r in failed {
        device_reports(&stack.devices, &r.thing, OtaStatus::Failed, (NEW, NEW), 2).await;
    }
    for r in fell_back {
        device_reports(&stack.devices, &r.thing, OtaStatus::Failed, (NEW, GOOD), 2).await;
    }
    for r in succeeded {
        device_reports(&stack.devices, &r.thing, OtaStatus::Success, (NEW, NEW), 2).await;
    }

    // Above 5% the rollout pauses at once (no soak needed to stop), with an alert.
    let paused = stack.run(&id, 2 * MINUTE).await;
    assert_eq!(paused.status, Some(RolloutStatus::Paused), "{paused:?}");
    assert_eq!(paused.counts.failed, 3);
    assert_eq!(
        paused.counts.rolled_back, 2,
        "fallen back is never a success"
    );
    assert_eq!(paused.counts.succeeded as usize, succeeded.len());
    let alerts = stack.alerts.0.lock().unwrap().clone();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].0, format!("shoal/alerts/ota/{id}"));
    assert_eq!(alerts[0].1["alert"], "ota_rollout_paused");
    assert_eq!(alerts[0].1["counts"]["rolled_back"], 2);

    // Paused: nobody new is targeted, and nothing moves until the operator acts.
    let still = stack.run(&id, 30 * MINUTE).await;
    assert_eq!(
        (still.targeted, still.status),
        (0, Some(RolloutStatus::Paused))
    );
    assert_eq!(stack.records(&id).await.len(), canary.len());

    let (resumed, _) = operate(
        &stack.rollouts,
        &id,
        Command::Resume,
        "operator:test",
        31 * MINUTE,
    )
    .await
    .unwrap();
    assert_eq!(resumed.status, RolloutStatus::Active);
    let (rolled, _) = operate(
        &stack.rollouts,
        &id,
        Command::Rollback {
            reason: "signature failures on rev-b".into(),
        },
        "operator:test",
        32 * MINUTE,
    )
    .await
    .unwrap();
    assert_eq!(rolled.status, RolloutStatus::RolledBack);

    // The advancer sends back who took the image (or tried to), withdraws the rest.
    let run = stack.run(&id, 33 * MINUTE).await;
    let took = failed.len() + fell_back.len() + succeeded.len();
    assert_eq!(run.restored as usize, took);
    assert_eq!(run.cancelled as usize, silent.len());
    assert_eq!(run.targeted, 0);
    for r in failed.iter().chain(succeeded) {
        let desired = stack.ota_desired(&r.thing).await.unwrap();
        assert_eq!(desired["version"], GOOD, "{}", r.thing);
        let url = desired["url"].as_str().unwrap();
        let fetched = local::get(url.strip_prefix(&local::endpoint()).unwrap()).unwrap();
        assert_eq!(fetched.as_bytes(), stack.images[GOOD].as_slice());
    }
    for r in silent {
        assert_eq!(stack.ota_desired(&r.thing).await, None, "{}", r.thing);
    }

    // Reconciliation with what devices report: the fallen-back ones are restored already;
    // the others are restored once they report the good version running.
    let iot = IotFleet(stack.factory.iot());
    let report = |now| {
        status(
            &stack.rollouts,
            &stack.firmware,
            &stack.devices,
            &iot,
            &id,
            now,
        )
    };
    let before = report(34 * MINUTE).await.unwrap();
    assert_eq!(before.rollback.restored as usize, fell_back.len());
    assert_eq!(
        before.rollback.awaiting as usize,
        failed.len() + succeeded.len()
    );
    assert_eq!(before.rollback.cancelled as usize, silent.len());
    for r in failed.iter().chain(succeeded) {
        device_reports(
            &stack.devices,
            &r.thing,
            OtaStatus::Success,
            (GOOD, GOOD),
            3,
        )
        .await;
    }
    let after = report(35 * MINUTE).await.unwrap();
    assert_eq!(after.rollback.restored as usize, took);
    assert_eq!(after.rollback.awaiting, 0);
    assert_eq!(
        after.counts.succeeded, 0,
        "no one ends up on the rolled-back image"
    );
    // A second run has nothing left to send.
    let again = stack.run(&id, 36 * MINUTE).await;
    assert_eq!(
        (again.restored, again.cancelled, again.refreshed),
        (0, 0, 0)
    );
}

/// A newer rollout's request (another rollout id, a greater version) written to a device's
/// `ota` shadow, as that rollout's advancer would.
async fn newer_rollout_asks(stack: &Stack, thing: &str) {
    let mut image = stack.newest_image().await;
    image.version = "2.0.0".parse().unwrap();
    let update = delivery::update(&delivery::request(
        "newer",
        &image,
        "https://example.invalid/x".into(),
        u64::MAX,
    ));
    let shadow = ShadowRef {
        thing: ThingName::parse(thing).unwrap(),
        name: Some(ShadowName::parse("ota").unwrap()),
    };
    stack
        .delivery
        .shadows
        .update(&shadow, &update)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_older_rollout_never_undoes_a_newer_ones_request() {
    let stack = Stack::new().await;
    let things = stack.register("ota-newer", 30).await;
    let id = start_rollout(&stack, "older", settings(99.0, &[99.5], 1), 1_000).await;
    let (taken, later) = (&things[0], &things[1]);
    newer_rollout_asks(&stack, taken).await;

    let run = stack.run(&id, MINUTE).await;
    assert_eq!(run.superseded, 1, "{run:?}");
    let records = stack.records(&id).await;
    assert!(records.iter().all(|r| &r.thing != taken), "not recorded");
    assert!(records.iter().any(|r| &r.thing == later));
    assert_eq!(stack.ota_desired(taken).await.unwrap()["version"], "2.0.0");

    // The newer rollout reaches a device this one targeted; then this one is rolled back: its
    // withdrawal leaves the newer request alone and the record stops asking anything.
    newer_rollout_asks(&stack, later).await;
    operate(
        &stack.rollouts,
        &id,
        Command::Rollback {
            reason: "superseded test".into(),
        },
        "operator:test",
        2 * MINUTE,
    )
    .await
    .unwrap();
    let rolled = stack.run(&id, 3 * MINUTE).await;
    assert_eq!(rolled.superseded, 1, "{rolled:?}");
    assert_eq!(rolled.cancelled as usize, records.len() - 1);
    let desired = stack.ota_desired(later).await.unwrap();
    assert_eq!(
        (&desired["version"], &desired["rollout"]),
        (&"2.0.0".into(), &"newer".into())
    );
    let record = stack
        .records(&id)
        .await
        .into_iter()
        .find(|r| &r.thing == later)
        .unwrap();
    assert_eq!(record.desired_version, None);
    assert_eq!(
        stack.run(&id, 4 * MINUTE).await.superseded,
        0,
        "nothing asked again"
    );
}

#[tokio::test]
async fn with_jobs_configured_a_rollout_is_also_a_continuous_job_cancelled_on_rollback() {
    use aws_sdk_iot::types::{JobStatus, TargetSelection};
    use ota_scheduler::edges::JobsChannel;
    use shoal_core::rollout::delivery::job_name;

    let stack = Stack::new().await;
    stack.register("ota-jobs", 30).await;
    // Jobs and thing groups are account-wide: a fresh id per run.
    let id = unique_name("jobs");
    let id = start_rollout(&stack, &id, settings(99.0, &[99.5], 1), 1_000).await;
    let role = "arn:aws:iam::123456789012:role/shoal-jobs-presign";
    let iot = stack.factory.iot();
    let delivery = Devices {
        s3: stack.factory.s3(),
        bucket: stack.delivery.bucket.clone(),
        shadows: IotShadowStore::new(stack.factory.iot_data()),
        jobs: Some(JobsChannel {
            iot: iot.clone(),
            presign_role_arn: role.into(),
            region: "eu-west-1".into(),
            url_ttl_s: 3600,
        }),
    };
    let edges = Edges {
        delivery: &delivery,
        ..stack.edges()
    };
    let run = advance(&id, &edges, &config(), MINUTE).await.unwrap();
    assert!(run.targeted > 20, "{run:?}");

    // One continuous job over the rollout's thing group, which holds exactly the targets.
    let name = job_name(&id);
    let job = iot.describe_job().job_id(&name).send().await.unwrap();
    let job = job.job().unwrap();
    assert_eq!(job.target_selection(), Some(&TargetSelection::Continuous));
    assert!(
        job.targets()[0].ends_with(&format!("thinggroup/{name}")),
        "{:?}",
        job.targets()
    );
    let presign = job.presigned_url_config().unwrap();
    assert_eq!(
        (presign.role_arn(), presign.expires_in_sec()),
        (Some(role), Some(3600))
    );
    let document = iot.get_job_document().job_id(&name).send().await.unwrap();
    let document: Value = serde_json::from_str(document.document().unwrap()).unwrap();
    let image = stack.newest_image().await;
    assert_eq!(
        document["url"],
        format!(
            "${{aws:iot:s3-presigned-url:https://s3.eu-west-1.amazonaws.com/{}/{}}}",
            delivery.bucket, image.s3_key
        )
    );
    assert_eq!(
        (&document["version"], &document["sha256"]),
        (&NEW.into(), &image.sha256.clone().into())
    );
    let members = iot
        .list_things_in_thing_group()
        .thing_group_name(&name)
        .send()
        .await
        .unwrap();
    let mut members: Vec<String> = members.things().to_vec();
    members.sort();
    let mut targeted: Vec<String> = stack
        .records(&id)
        .await
        .into_iter()
        .map(|r| r.thing)
        .collect();
    targeted.sort();
    assert_eq!(members, targeted);

    // Rollback cancels the job, with the operator's reason.
    operate(
        &stack.rollouts,
        &id,
        Command::Rollback {
            reason: "jobs rollback test".into(),
        },
        "operator:test",
        2 * MINUTE,
    )
    .await
    .unwrap();
    let rolled = advance(&id, &edges, &config(), 3 * MINUTE).await.unwrap();
    assert_eq!(rolled.delivery_failures, 0);
    let job = iot.describe_job().job_id(&name).send().await.unwrap();
    let job = job.job().unwrap();
    assert_eq!(job.status(), Some(&JobStatus::Canceled));
    assert_eq!(job.comment(), Some("jobs rollback test"));
}
