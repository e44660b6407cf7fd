//! The fleet simulator (`shoal-agent`'s virtual devices, each a real MQTT connection driven by
//! `shoal-firmware`) against the whole local stack: the local IoT Core, the template's functions
//! under the local Lambda host (pre-provisioning hook, shadow documents, presence, the telemetry
//! router, the OTA advancer) and moto.
//!
//! 100 manifest devices provision by claim (two rogue serials are refused); a desired
//! configuration reaches devices and comes back reported; readings land in Timestream; a rollout
//! of an image that fails its self-test on one hardware revision pauses at the canary, the
//! operator rolls back, and the devices report running the old version — every count read from
//! the cloud's tables and shadows, not from the simulator.

use std::collections::BTreeSet;
use std::time::Duration;

use aws_sdk_iotdataplane::primitives::Blob;
use serde_json::{Value, json};
use shoal_agent::link::{Endpoint, MqttVersion};
use shoal_agent::provision::KeyMode;
use shoal_agent::simulate::{Faults, Fleet, FleetPlan, SelfTestFailure, manifest_devices};
use shoal_aws::client::AwsResultExt;
use shoal_aws::device_table::DeviceTable;
use shoal_aws::firmware_table::FirmwareTable;
use shoal_aws::rollout_table::RolloutTable;
use shoal_cli::firmware::{PublishRequest, Publisher};
use shoal_cli::group_config::IotFleet;
use shoal_cli::rollout::{StartRequest, operate, start, status};
use shoal_core::rollout::cohort::{cohort_point, in_cohort};
use shoal_core::rollout::phases::PlanSettings;
use shoal_core::rollout::state::{Command, RolloutStatus};
use shoal_firmware::sampling::Backoff;
use shoal_integration_tests::local::{self, unique_name};
use shoal_integration_tests::provisioned::claim_certificate;
use shoal_iot_core::lambda::{InvocationType, LambdaClient};
use tokio::time::Instant;

const DEVICES: usize = 100;
const GOOD: &str = "1.0.0";
const BAD: &str = "1.1.0";

/// Now, ms since the Unix epoch, as the rollout commands take it.
fn now_ms() -> u64 {
    u64::try_from(shoal_core::clock::now_ms()).unwrap()
}

/// Polls `check` every 500 ms until it returns `Some`, or panics with `what` after `limit`.
async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() > deadline => {
                panic!("{what} within {limit:?}; last: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// The deployed OTA advancer, run now as its schedule runs it.
async fn advance() {
    let endpoint = local::lambda_endpoint();
    let schedule = std::fs::read(
        shoal_integration_tests::repo_root().join("events/ota-advancer-schedule.json"),
    )
    .unwrap();
    let invoked = LambdaClient::new(&endpoint)
        .invoke(
            "OtaAdvancerFunction",
            InvocationType::RequestResponse,
            schedule,
        )
        .await
        .expect("the advancer under the local Lambda host");
    assert_eq!(
        invoked.function_error,
        None,
        "{}",
        String::from_utf8_lossy(&invoked.payload)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_fleet_provisions_syncs_and_recovers_from_a_bad_canary() {
    let factory = local::factory().await;
    let run = unique_name("sim");
    let (good_hw, bad_hw) = (format!("{run}-a"), format!("{run}-b"));
    let serial = |i: usize| format!("{}-{i:03}", run.to_uppercase());
    // The factory manifest: half of the devices on each hardware revision.
    let mut csv = String::from("serial,model,batch,thing_group,attributes\n");
    for i in 0..DEVICES {
        let hardware = if i % 2 == 0 { &good_hw } else { &bad_hw };
        csv.push_str(&format!(
            "{},th-v2,2026-12,,hardware={hardware}\n",
            serial(i)
        ));
    }
    let manifest = shoal_aws::manifest_table::ManifestTable::new(
        factory.dynamodb(),
        "shoal-local-manifest".parse().unwrap(),
    );
    shoal_cli::manifest::import(&manifest, &csv, |_| {})
        .await
        .expect("the stack's manifest table");

    // Two images for the bad revision, signed by the stack's key.
    let firmware = FirmwareTable::new(factory.dynamodb(), "shoal-local-firmware".parse().unwrap());
    let bucket = "shoal-local-firmware".parse().unwrap();
    let key = "alias/shoal-local-firmware-signing".parse().unwrap();
    let publisher = Publisher {
        factory: &factory,
        table: &firmware,
        bucket: &bucket,
        key: &key,
    };
    for version in [GOOD, BAD] {
        let image = format!("th-v2 {bad_hw} {version} ")
            .repeat(3_000)
            .into_bytes();
        let request = PublishRequest {
            model: "th-v2".parse().unwrap(),
            hardware: bad_hw.parse().unwrap(),
            version: version.parse().unwrap(),
            min_version: None,
            downgrade_reason: None,
        };
        publisher.publish(&image, &request).await.unwrap();
    }
    let public_key = factory
        .kms()
        .get_public_key()
        .key_id("alias/shoal-local-firmware-signing")
        .send()
        .await
        .aws("kms", "GetPublicKey")
        .unwrap();

    let (host, port, ca) = local::iot_core();
    let mut devices = manifest_devices(&csv).unwrap();
    let rogue = [format!("{run}-ROGUE-1"), format!("{run}-ROGUE-2")];
    for serial in &rogue {
        devices.push(shoal_agent::simulate::VirtualDevice {
            serial: serial.clone(),
            hardware: good_hw.clone(),
            model: "th-v2".into(),
            factory_secret: None,
            clock_skew_ms: None,
        });
    }
    let plan = FleetPlan {
        endpoint: Endpoint {
            host,
            port,
            alpn: false,
            ca_pem: ca,
            version: MqttVersion::V5,
            keep_alive: Duration::from_secs(30),
            backoff: Backoff {
                base_ms: 500,
                cap_ms: 5_000,
            },
        },
        claim: claim_certificate().await,
        template: "shoal-fleet".into(),
        app: "greenhouse".into(),
        devices,
        factory_version: GOOD.parse().unwrap(),
        fleet_key_der: public_key.public_key().unwrap().as_ref().to_vec(),
        interval: Duration::from_secs(5),
        faults: Faults {
            duplicate: 2.0,
            self_test_failures: vec![SelfTestFailure {
                version: BAD.parse().unwrap(),
                hardware: bad_hw.clone(),
                percent: 100.0,
            }],
            ..Faults::default()
        },
        seed: 15,
        key: KeyMode::Device,
        // The hook's reserved concurrency is 5; a hook slowed by a loaded machine denies (and
        // AWS answers that like any refusal), so devices try again as real ones would.
        provisioning_concurrency: 5,
        provisioning_attempts: 3,
        identities: None,
        vclock_paths: Vec::new(),
        start_rate: 50.0,
        packed: std::collections::BTreeMap::new(),
    };
    let started_ms = now_ms();
    let log = std::env::temp_dir().join(format!("{run}.jsonl"));
    let fleet = Fleet::start(plan, Some(&log)).await.unwrap();

    // Provisioning by claim: every manifest device, never a rogue one.
    eventually(
        "100 devices provisioned and connected",
        Duration::from_secs(180),
        || {
            let s = fleet.status();
            async move {
                if s.provisioned == DEVICES && s.refused.len() == 2 && s.connected == DEVICES {
                    Ok(())
                } else {
                    Err(format!("{s:?}"))
                }
            }
        },
    )
    .await;
    let status_now = fleet.status();
    assert!(status_now.failed.is_empty(), "{:?}", status_now.failed);
    for serial in &rogue {
        assert!(
            status_now.refused[serial].contains("did not allow provisioning"),
            "{:?}",
            status_now.refused
        );
        let thing = factory
            .iot()
            .describe_thing()
            .thing_name(serial)
            .send()
            .await;
        assert!(thing.is_err(), "no thing for rogue {serial}");
    }
    let iot = factory.iot();
    let described = iot
        .describe_thing()
        .thing_name(serial(1))
        .send()
        .await
        .unwrap();
    assert_eq!(
        described.attributes().unwrap().get("hardware"),
        Some(&bad_hw),
        "the manifest's hardware reaches the registry"
    );

    // Shadow round trip: a desired interval reaches five devices; they report what they run.
    let data = local::iot_core_data_plane().await;
    let configured: Vec<String> = (0..5).map(serial).collect();
    for thing in &configured {
        data.update_thing_shadow()
            .thing_name(thing)
            .payload(Blob::new(
                json!({"state": {"desired": {"interval_s": 7}}}).to_string(),
            ))
            .send()
            .await
            .expect("UpdateThingShadow");
    }
    for thing in &configured {
        eventually(
            "the configuration reported",
            Duration::from_secs(30),
            || {
                let data = data.clone();
                let thing = thing.clone();
                async move {
                    let got = data
                        .get_thing_shadow()
                        .thing_name(&thing)
                        .send()
                        .await
                        .map_err(|e| e.to_string())?;
                    let doc: Value = serde_json::from_slice(&got.payload.unwrap().into_inner())
                        .map_err(|e| e.to_string())?;
                    (doc["state"]["reported"]["interval_s"] == json!(7))
                        .then_some(())
                        .ok_or_else(|| doc.to_string())
                }
            },
        )
        .await;
    }

    // A rollout of the image that fails on `bad_hw`: the canary fails, the rollout pauses.
    let rollouts = RolloutTable::new(factory.dynamodb(), "shoal-local-rollouts".parse().unwrap());
    let device_table = DeviceTable::new(factory.dynamodb(), "shoal-local-devices".parse().unwrap());
    let fleet_registry = IotFleet(factory.iot());
    // The canary is the devices of the revision whose cohort point falls in its 10%: a
    // deterministic set per rollout id. An id whose canary has 2 to 10 devices is chosen, so the
    // phase has the reports it needs and is still a canary.
    let bad_things: Vec<String> = (0..DEVICES).filter(|i| i % 2 == 1).map(serial).collect();
    let canary_of = |id: &str| -> BTreeSet<String> {
        bad_things
            .iter()
            .filter(|t| in_cohort(cohort_point(id, t), 10.0))
            .cloned()
            .collect()
    };
    let id = (0..)
        .map(|n| format!("{run}-{n}"))
        .find(|id| (2..=10).contains(&canary_of(id).len()))
        .unwrap();
    let rollout = start(
        &rollouts,
        &firmware,
        StartRequest {
            id: Some(id.clone()),
            model: "th-v2".parse().unwrap(),
            hardware: bad_hw.parse().unwrap(),
            version: BAD.parse().unwrap(),
            rollback_to: None,
            settings: PlanSettings {
                canary_percent: 10.0,
                staged_percents: vec![50.0],
                soak_ms: 600_000,
                canary_max_failure_rate: 0.05,
                staged_max_failure_rate: 0.02,
                min_reports: 2,
            },
            max_new_per_minute: 100,
        },
        now_ms(),
    )
    .await
    .unwrap();
    assert_eq!(rollout.id.to_string(), id);
    let report = || {
        status(
            &rollouts,
            &firmware,
            &device_table,
            &fleet_registry,
            &id,
            now_ms(),
        )
    };
    // Every device of the revision is known to run 1.0.0 and online (presence and the
    // classic shadow's report, through the deployed functions).
    eventually("50 eligible devices", Duration::from_secs(60), || async {
        let r = report().await.map_err(|e| e.to_string())?;
        (r.population.eligible == (DEVICES / 2) as u64)
            .then_some(())
            .ok_or_else(|| format!("{:?}", r.population))
    })
    .await;
    advance().await;
    let canary: BTreeSet<String> = rollouts
        .devices(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.thing)
        .collect();
    assert_eq!(canary, canary_of(&id), "the canary is the cohort's 10%");
    let paused = eventually("the rollout paused", Duration::from_secs(90), || async {
        advance().await;
        let r = report().await.map_err(|e| e.to_string())?;
        (r.rollout.status == RolloutStatus::Paused)
            .then_some(r.clone())
            .ok_or_else(|| format!("{:?} {:?}", r.rollout.status, r.counts))
    })
    .await;
    assert_eq!(
        paused.counts.succeeded, 0,
        "a self-test failure is never a success"
    );
    assert!(
        paused.counts.rolled_back + paused.counts.failed >= 2,
        "{:?}",
        paused.counts
    );
    assert_eq!(
        rollouts.devices(&id).await.unwrap().len(),
        canary.len(),
        "paused: no one new is asked"
    );

    // The operator rolls back; the devices that tried report the old version running.
    operate(
        &rollouts,
        &id,
        Command::Rollback {
            reason: "self-test failures on the canary".into(),
        },
        "operator:test",
        now_ms(),
    )
    .await
    .unwrap();
    let restored = eventually(
        "every canary device restored",
        Duration::from_secs(90),
        || async {
            advance().await;
            let r = report().await.map_err(|e| e.to_string())?;
            (r.rollback.restored as usize == canary.len() && r.rollback.awaiting == 0)
                .then_some(r.clone())
                .ok_or_else(|| format!("{:?}", r.rollback))
        },
    )
    .await;
    assert_eq!(restored.counts.succeeded, 0);
    for thing in &canary {
        let got = data
            .get_thing_shadow()
            .thing_name(thing)
            .shadow_name("ota")
            .send()
            .await
            .unwrap();
        let doc: Value = serde_json::from_slice(&got.payload.unwrap().into_inner()).unwrap();
        assert_eq!(doc["state"]["reported"]["running_version"], GOOD, "{doc}");
    }
    let final_status = fleet.stop().await;
    for thing in &canary {
        assert_eq!(final_status.running[thing], GOOD, "{thing}");
    }
    assert_eq!(
        final_status.versions.get(BAD),
        None,
        "no device runs the bad image"
    );
    assert!(
        final_status.ota.get("failed").copied().unwrap_or(0) >= canary.len() as u64,
        "{:?}",
        final_status.ota
    );

    // Readings reached Timestream: at least one per device (they publish every 5 s). moto keeps
    // a write's common attributes apart from its records, so they are told apart by their
    // measures and times: no other test sends `temperature` and `humidity` together.
    let stored = local::moto_timestream_records("shoal_local", "telemetry")
        .into_iter()
        .filter(|r| {
            r["Time"].as_str().and_then(|t| t.parse::<u64>().ok()) >= Some(started_ms)
                && r.to_string().contains("\"humidity\"")
                && r.to_string().contains("\"temperature\"")
        })
        .count();
    assert!(stored >= DEVICES, "{stored} readings stored");
    let log_lines = std::fs::read_to_string(&log).unwrap().lines().count();
    assert!(
        log_lines > DEVICES,
        "the event log has every device's events"
    );
}
