//! `shoal-agent` as a Linux gateway runs it (`gateway::identity_or_provision`, `gateway::run`,
//! what `shoal-agent provision` and `run` call), from a configuration file, against the local
//! stack on the ALPN port (443's protocol, `x-amzn-mqtt-ca`) with MQTT 3.1.1 and AWS-made keys —
//! the other choices of the simulator's test (8883, MQTT 5, the device's own key):
//!
//! the claim certificate and fleet key made by `shoal provisioning`, provisioning by claim kept
//! in the state directory (0600) and not repeated, the firmware reported, an OTA request with a
//! presigned URL downloaded to the file-backed slot, verified, trial-booted, self-tested by the
//! configured command and committed — `success` reported only then — and readings stored.

use std::time::Duration;

use aws_sdk_iotdataplane::primitives::Blob;
use aws_sdk_s3::presigning::PresigningConfig;
use serde_json::{Value, json};
use shoal_agent::gateway::{self, AgentConfig};
use shoal_agent::slots::AbSlots;
use shoal_aws::firmware_table::FirmwareTable;
use shoal_cli::firmware::{PublishRequest, Publisher};
use shoal_core::rollout::{delivery, image::object_key};
use shoal_firmware::ota::Slots;
use shoal_integration_tests::local::{self, unique_name};
use shoal_integration_tests::provisioned::manifest_row_in;
use tokio::sync::watch;
use tokio::time::Instant;

async fn shadow(thing: &str, name: Option<&str>) -> Value {
    let data = local::iot_core_data_plane().await;
    match data
        .get_thing_shadow()
        .thing_name(thing)
        .set_shadow_name(name.map(str::to_owned))
        .send()
        .await
    {
        Ok(got) => serde_json::from_slice(&got.payload.unwrap().into_inner()).unwrap(),
        Err(_) => Value::Null,
    }
}

async fn until(what: &str, mut done: impl AsyncFnMut() -> Option<Value>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if done().await.is_none() {
            return;
        }
        if Instant::now() > deadline {
            panic!("{what} within 60 s: {:?}", done().await);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn a_gateway_provisions_from_its_config_reports_and_takes_an_update() {
    let factory = local::factory().await;
    let hardware = unique_name("gw");
    let serial = manifest_row_in("", &format!("hardware={hardware}")).await;
    let dir = std::env::temp_dir().join(unique_name("shoal-agent"));
    std::fs::create_dir_all(&dir).unwrap();

    // What the factory puts in the image, as the operator makes it.
    let (_, claim_pem, claim_key) =
        shoal_cli::claim::claim_certificate(&factory, "shoal-local-claim")
            .await
            .unwrap();
    std::fs::write(dir.join("claim.pem.crt"), claim_pem).unwrap();
    std::fs::write(dir.join("claim.pem.key"), claim_key).unwrap();
    let fleet_key = shoal_cli::claim::fleet_key_pem(
        &factory,
        &"alias/shoal-local-firmware-signing".parse().unwrap(),
    )
    .await
    .unwrap();
    std::fs::write(dir.join("fleet.pem"), fleet_key).unwrap();
    let self_test = dir.join("self-test");
    let passed = dir.join("self-test-passed");
    std::fs::write(
        &self_test,
        format!(
            "#!/bin/sh\necho \"$SHOAL_TRIAL_VERSION\" > {}\n",
            passed.display()
        ),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self_test, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let (host, port) = local::iot_core_alpn();
    let (_, _, ca) = local::iot_core();
    std::fs::write(dir.join("ca.pem"), ca).unwrap();
    let state = dir.join("state");
    let config_path = dir.join("agent.toml");
    std::fs::write(
        &config_path,
        format!(
            r#"
endpoint = "{host}:{port}"
alpn = true
ca_file = "{dir}/ca.pem"
mqtt = "3.1.1"
state_dir = "{state}"
app = "greenhouse"

[claim]
certificate_file = "{dir}/claim.pem.crt"
private_key_file = "{dir}/claim.pem.key"
template = "shoal-fleet"
serial = "{serial}"
key = "aws"

[firmware]
factory_version = "1.0.0"
fleet_public_key_file = "{dir}/fleet.pem"
self_test_command = "{self_test}"

[telemetry]
interval_s = 1
"#,
            dir = dir.display(),
            state = state.display(),
            self_test = self_test.display(),
        ),
    )
    .unwrap();
    let config = AgentConfig::load(&config_path).unwrap();

    // Provisioned once; the identity is kept, readable by the owner only, and reused.
    let identity = gateway::identity_or_provision(&config).await.unwrap();
    assert_eq!(identity.thing_name, serial);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state.join("identity.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_eq!(
        gateway::identity_or_provision(&config).await.unwrap(),
        identity
    );

    let started_ms = u64::try_from(shoal_core::clock::now_ms()).unwrap();
    let (stop, stopped) = watch::channel(false);
    let agent = tokio::spawn(gateway::run(config, stopped));
    until("the firmware reported", async || {
        let doc = shadow(&serial, None).await;
        (doc["state"]["reported"]["firmware"]["version"] != "1.0.0").then_some(doc)
    })
    .await;

    // An OTA request as the advancer writes it: a published image, a presigned URL.
    let table = FirmwareTable::new(factory.dynamodb(), "shoal-local-firmware".parse().unwrap());
    let bucket = "shoal-local-firmware".parse().unwrap();
    let key = "alias/shoal-local-firmware-signing".parse().unwrap();
    let image_bytes = format!("gateway image {hardware} 1.1.0 ")
        .repeat(10_000)
        .into_bytes();
    let request = PublishRequest {
        model: "th-v2".parse().unwrap(),
        hardware: hardware.parse().unwrap(),
        version: "1.1.0".parse().unwrap(),
        min_version: None,
        downgrade_reason: None,
    };
    Publisher {
        factory: &factory,
        table: &table,
        bucket: &bucket,
        key: &key,
    }
    .publish(&image_bytes, &request)
    .await
    .unwrap();
    let image = table
        .images(&request.model, &request.hardware)
        .await
        .unwrap()
        .pop()
        .unwrap();
    let presigned = factory
        .s3()
        .get_object()
        .bucket("shoal-local-firmware")
        .key(object_key(
            &request.model,
            &request.hardware,
            &image.version,
            &image.sha256,
        ))
        .presigned(PresigningConfig::expires_in(Duration::from_secs(3600)).unwrap())
        .await
        .unwrap();
    let desired = delivery::request("gw-test", &image, presigned.uri().to_owned(), u64::MAX);
    local::iot_core_data_plane()
        .await
        .update_thing_shadow()
        .thing_name(&serial)
        .shadow_name("ota")
        .payload(Blob::new(
            json!({"state": {"desired": desired}}).to_string(),
        ))
        .send()
        .await
        .unwrap();
    until("success reported", async || {
        let doc = shadow(&serial, Some("ota")).await;
        (doc["state"]["reported"]["status"] != "success").then_some(doc)
    })
    .await;
    let ota = shadow(&serial, Some("ota")).await;
    assert_eq!(ota["state"]["reported"]["running_version"], "1.1.0");
    assert_eq!(ota["state"]["reported"].get("reason"), None, "{ota}");
    assert_eq!(
        std::fs::read_to_string(&passed).unwrap().trim(),
        "1.1.0",
        "the configured self-test ran on the trial boot"
    );
    until("the new firmware reported", async || {
        let doc = shadow(&serial, None).await;
        (doc["state"]["reported"]["firmware"]["version"] != "1.1.0").then_some(doc)
    })
    .await;
    // Readings from the gateway reached Timestream.
    until("readings stored", async || {
        let records = local::moto_timestream_records("shoal_local", "telemetry");
        // moto keeps a write's common attributes (here the thing) apart from its records:
        // the gateway's readings are the only ones with `uptime_s`.
        let found = records.iter().any(|r| {
            r["Time"].as_str().and_then(|t| t.parse::<u64>().ok()) >= Some(started_ms)
                && r.to_string().contains("uptime_s")
        });
        (!found).then(|| json!(records.len()))
    })
    .await;

    let _ = stop.send(true);
    agent.await.unwrap().unwrap();
    // The committed slot survives the process: the next start runs 1.1.0.
    let slots = AbSlots::open(&state.join("slots"), &"9.9.9".parse().unwrap()).unwrap();
    assert_eq!(slots.running().to_string(), "1.1.0");
    let _ = std::fs::remove_dir_all(&dir);
}
