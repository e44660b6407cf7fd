//! Just-in-time registration against the local stack: a device certificate signed by a registered
//! CA, with the serial as subject CN, is activated with its thing, policy, principal and shadow
//! (all read back); a replayed event changes nothing; an unknown serial's certificate is revoked.

use std::collections::BTreeMap;

use aws_sdk_iot::types::CertificateStatus;
use provisioning::jitr::{JitrConfig, Outcome, RegistrationEvent, handle_registration};
use provisioning::registry::IotRegistry;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::{Value, json};
use shoal_aws::client::{AwsResultExt, ClientFactory};
use shoal_aws::device_table::DeviceTable;
use shoal_aws::manifest_table::ManifestTable;
use shoal_core::provisioning::{DeviceStatus, ManifestEntry, Proof, Serial};
use shoal_integration_tests::local::{self, unique_name};

/// A CA registered with the local IoT registry, that signs device certificates.
struct Factory<'a> {
    issuer: CertifiedIssuer<'a, KeyPair>,
}

impl Factory<'_> {
    async fn new(iot: &aws_sdk_iot::Client) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, unique_name("shoal-test-ca"));
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        iot.register_ca_certificate()
            .ca_certificate(issuer.pem())
            .set_as_active(true)
            .send()
            .await
            .aws("iot", "RegisterCACertificate")
            .unwrap();
        Self { issuer }
    }

    /// Registers a device certificate with CN = `serial`, as AWS IoT does on a device's first
    /// connection: PENDING_ACTIVATION. Returns its id.
    async fn device(&self, iot: &aws_sdk_iot::Client, serial: &str) -> String {
        self.device_with_key(iot, serial, &KeyPair::generate().unwrap())
            .await
    }

    /// The same for a device whose key pair is `key`.
    async fn device_with_key(
        &self,
        iot: &aws_sdk_iot::Client,
        serial: &str,
        key: &KeyPair,
    ) -> String {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, serial);
        let cert = params.signed_by(key, &self.issuer).unwrap();
        iot.register_certificate()
            .certificate_pem(cert.pem())
            .ca_certificate_pem(self.issuer.pem())
            .status(CertificateStatus::PendingActivation)
            .send()
            .await
            .aws("iot", "RegisterCertificate")
            .unwrap()
            .certificate_id()
            .unwrap()
            .to_owned()
    }
}

async fn status(iot: &aws_sdk_iot::Client, certificate_id: &str) -> String {
    iot.describe_certificate()
        .certificate_id(certificate_id)
        .send()
        .await
        .aws("iot", "DescribeCertificate")
        .unwrap()
        .certificate_description()
        .and_then(|d| d.status())
        .map(|s| s.as_str().to_owned())
        .unwrap()
}

async fn certificate_arn(iot: &aws_sdk_iot::Client, certificate_id: &str) -> String {
    iot.describe_certificate()
        .certificate_id(certificate_id)
        .send()
        .await
        .aws("iot", "DescribeCertificate")
        .unwrap()
        .certificate_description()
        .and_then(|d| d.certificate_arn())
        .unwrap()
        .to_owned()
}

/// Policy names attached to the certificate, and the principals of the thing.
async fn attachments(
    iot: &aws_sdk_iot::Client,
    certificate_arn: &str,
    thing: &str,
) -> (Vec<String>, Vec<String>) {
    let policies = iot
        .list_attached_policies()
        .target(certificate_arn)
        .send()
        .await
        .aws("iot", "ListAttachedPolicies")
        .unwrap();
    let principals = iot
        .list_thing_principals()
        .thing_name(thing)
        .send()
        .await
        .aws("iot", "ListThingPrincipals")
        .unwrap();
    (
        policies
            .policies()
            .iter()
            .filter_map(|p| p.policy_name().map(str::to_owned))
            .collect(),
        principals.principals().to_vec(),
    )
}

async fn shadow(factory: &ClientFactory, thing: &str) -> Value {
    let got = factory
        .iot_data()
        .get_thing_shadow()
        .thing_name(thing)
        .send()
        .await
        .aws("iot-data", "GetThingShadow")
        .unwrap();
    serde_json::from_slice(got.payload().unwrap().as_ref()).unwrap()
}

struct Setup {
    factory: ClientFactory,
    manifest: ManifestTable,
    devices: DeviceTable,
    config: JitrConfig,
}

async fn setup(serials: &[&str]) -> Setup {
    let rows: Vec<_> = serials.iter().map(|s| (*s, None)).collect();
    setup_with_proofs(&rows).await
}

async fn setup_with_proofs(rows: &[(&str, Option<Proof>)]) -> Setup {
    let factory = local::factory().await;
    let manifest = ManifestTable::new(factory.dynamodb(), unique_name("manifest").parse().unwrap());
    manifest.ensure_exists().await.unwrap();
    for (serial, proof) in rows {
        manifest
            .insert(&ManifestEntry {
                serial: Serial::parse(serial).unwrap(),
                model: "th-v2".into(),
                batch: "2026-11".into(),
                status: DeviceStatus::Pending,
                certificate_id: None,
                thing_name: None,
                thing_group: None,
                attributes: [("site".to_owned(), "lyon".to_owned())].into(),
                proof: proof.clone(),
                created_at_ms: 1,
                updated_at_ms: 1,
            })
            .await
            .unwrap();
    }
    let devices = DeviceTable::new(factory.dynamodb(), unique_name("devices").parse().unwrap());
    devices.ensure_exists().await.unwrap();
    let policy = unique_name("device-policy");
    factory
        .iot()
        .create_policy()
        .policy_name(&policy)
        .policy_document(
            json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}]})
                .to_string(),
        )
        .send()
        .await
        .aws("iot", "CreatePolicy")
        .unwrap();
    let config = JitrConfig {
        manifest_table: manifest.name().clone(),
        device_table: devices.name().clone(),
        device_policy: policy,
        model_defaults: BTreeMap::from([(
            "th-v2".to_owned(),
            json!({"sample_interval_s": 60, "led": "off"})
                .as_object()
                .unwrap()
                .clone(),
        )]),
    };
    Setup {
        factory,
        manifest,
        devices,
        config,
    }
}

impl Setup {
    /// JITR's handling of the registration event of `certificate_id`, as deployed.
    async fn register(&self, registry: &IotRegistry, certificate_id: &str) -> Outcome {
        handle_registration(
            &event(certificate_id),
            registry,
            &self.manifest,
            &self.devices,
            &self.config,
        )
        .await
        .unwrap()
    }
}

fn event(certificate_id: &str) -> RegistrationEvent {
    serde_json::from_value(json!({
        "certificateId": certificate_id,
        "caCertificateId": "ca",
        "timestamp": 1795600000000_i64,
        "certificateStatus": "PENDING_ACTIVATION",
        "awsAccountId": "123456789012",
        "certificateRegistrationTimestamp": "1795600000000"
    }))
    .unwrap()
}

#[tokio::test]
async fn a_manifest_device_is_registered_end_to_end_and_a_replay_changes_nothing() {
    let serial = unique_name("SN-JITR");
    let s = setup(&[serial.as_str()]).await;
    let iot = s.factory.iot();
    let ca = Factory::new(&iot).await;
    let certificate_id = ca.device(&iot, &serial).await;
    let registry = IotRegistry::new(&s.factory);

    let outcome = s.register(&registry, &certificate_id).await;
    assert!(matches!(&outcome, Outcome::Activated { thing, .. } if thing.as_str() == serial));
    assert_eq!(status(&iot, &certificate_id).await, "ACTIVE");

    let thing = iot
        .describe_thing()
        .thing_name(&serial)
        .send()
        .await
        .aws("iot", "DescribeThing")
        .unwrap();
    let attributes = thing.attributes().unwrap();
    assert_eq!(attributes["serial"], serial);
    assert_eq!(attributes["model"], "th-v2");
    assert_eq!(attributes["site"], "lyon");

    let arn = certificate_arn(&iot, &certificate_id).await;
    let (policies, principals) = attachments(&iot, &arn, &serial).await;
    assert_eq!(policies, std::slice::from_ref(&s.config.device_policy));
    assert_eq!(principals, std::slice::from_ref(&arn));

    let first_shadow = shadow(&s.factory, &serial).await;
    assert_eq!(
        first_shadow["state"]["desired"],
        json!({"sample_interval_s": 60, "led": "off"})
    );
    let entry = s
        .manifest
        .get(&Serial::parse(&serial).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(entry.status, DeviceStatus::Provisioned);
    assert_eq!(
        entry.certificate_id.as_deref(),
        Some(certificate_id.as_str())
    );
    let device = s.devices.get(&serial, "device").await.unwrap().unwrap();
    assert_eq!(
        device["certificate_id"], certificate_id,
        "presence will accept only this certificate's lifecycle events"
    );

    // The same event again: same outcome, no error, nothing duplicated or rewritten.
    let replay = s.register(&registry, &certificate_id).await;
    assert_eq!(replay, outcome);
    assert_eq!(
        shadow(&s.factory, &serial).await["version"],
        first_shadow["version"]
    );
    let arn = certificate_arn(&iot, &certificate_id).await;
    assert_eq!(attachments(&iot, &arn, &serial).await.1.len(), 1);
}

#[tokio::test]
async fn an_unknown_serial_and_a_second_certificate_are_revoked() {
    let serial = unique_name("SN-JITR");
    let s = setup(&[serial.as_str()]).await;
    let iot = s.factory.iot();
    let ca = Factory::new(&iot).await;
    let registry = IotRegistry::new(&s.factory);

    let stranger = ca.device(&iot, "SN-NEVER-BUILT").await;
    let outcome = s.register(&registry, &stranger).await;
    assert!(
        matches!(&outcome, Outcome::Revoked { reason } if reason.contains("not in the factory manifest")),
        "{outcome:?}"
    );
    assert_eq!(status(&iot, &stranger).await, "REVOKED");

    // The real device registers; a clone with the same serial but another key is revoked.
    let original = ca.device(&iot, &serial).await;
    s.register(&registry, &original).await;
    let clone = ca.device(&iot, &serial).await;
    let outcome = s.register(&registry, &clone).await;
    assert!(
        matches!(&outcome, Outcome::Revoked { reason } if reason.contains("already provisioned")),
        "{outcome:?}"
    );
    assert_eq!(status(&iot, &clone).await, "REVOKED");
    assert_eq!(status(&iot, &original).await, "ACTIVE");
    // Why is kept in the serial's audit trail.
    let audit = s
        .manifest
        .audit(&Serial::parse(&serial).unwrap())
        .await
        .unwrap();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].0, "jitr_refused");
    assert!(
        audit[0].1.contains("already provisioned to certificate"),
        "{audit:?}"
    );
}

/// Case 3 of issue 12 on the JITR path: a row naming the device's key accepts only a certificate
/// of that key, even one the fleet CA signed with the right serial (a mis-flashed or cloned unit).
#[tokio::test]
async fn a_row_naming_the_device_key_refuses_a_certificate_of_another_key() {
    use sha2::Digest;
    let serial = unique_name("SN-JITR-KEY");
    let key = KeyPair::generate().unwrap();
    let fingerprint: [u8; 32] =
        sha2::Sha256::digest(rcgen::PublicKeyData::subject_public_key_info(&key)).into();
    let s = setup_with_proofs(&[(serial.as_str(), Some(Proof::KeySha256(fingerprint)))]).await;
    let iot = s.factory.iot();
    let ca = Factory::new(&iot).await;
    let registry = IotRegistry::new(&s.factory);

    let other = ca.device(&iot, &serial).await;
    let outcome = s.register(&registry, &other).await;
    assert!(
        matches!(&outcome, Outcome::Revoked { reason } if reason.contains("does not match")),
        "{outcome:?}"
    );
    assert_eq!(status(&iot, &other).await, "REVOKED");
    let serial_id = Serial::parse(&serial).unwrap();
    assert_eq!(
        s.manifest.get(&serial_id).await.unwrap().unwrap().status,
        DeviceStatus::Pending
    );

    let own = ca.device_with_key(&iot, &serial, &key).await;
    let outcome = s.register(&registry, &own).await;
    assert!(matches!(outcome, Outcome::Activated { .. }), "{outcome:?}");
    assert_eq!(status(&iot, &own).await, "ACTIVE");
    let audit = s.manifest.audit(&serial_id).await.unwrap();
    assert!(
        audit.iter().any(|(action, reason)| action == "jitr_refused"
            && reason.contains("proof of possession does not match")),
        "{audit:?}"
    );
}

#[tokio::test]
async fn decommission_revokes_detaches_retires_and_audits() {
    use shoal_cli::decommission::{ThingFate, decommission};

    let serial = unique_name("SN-JITR");
    let s = setup(&[serial.as_str()]).await;
    let iot = s.factory.iot();
    let ca = Factory::new(&iot).await;
    let certificate_id = ca.device(&iot, &serial).await;
    let registry = IotRegistry::new(&s.factory);
    s.register(&registry, &certificate_id).await;
    let parsed = Serial::parse(&serial).unwrap();

    // Online, with its certificate recorded, when it is decommissioned; the revocation's
    // disconnect lands first (AWS closes the connection of a revoked certificate).
    let connected = |kind: &str, ts: u64| shoal_core::presence::LifecycleEvent {
        client_id: serial.clone(),
        timestamp: ts,
        event_type: if kind == "connected" {
            shoal_core::presence::PresenceEvent::Connected
        } else {
            shoal_core::presence::PresenceEvent::Disconnected
        },
        session_identifier: Some("s-1".into()),
        principal_identifier: Some(certificate_id.clone()),
        ip_address: None,
        version_number: 1,
        client_initiated_disconnect: Some(false),
        disconnect_reason: Some("AUTH_ERROR".into()),
        thing_name: None,
    };
    let applied = shoal_core::presence::Recorded::Applied;
    assert_eq!(
        s.devices
            .record_presence(&serial, &connected("connected", 1_000), 1_000)
            .await
            .unwrap(),
        applied
    );
    assert_eq!(
        s.devices
            .record_presence(&serial, &connected("disconnected", 2_000), 2_000)
            .await
            .unwrap(),
        applied
    );
    let mut printed = Vec::new();
    decommission(
        &s.factory,
        &s.manifest,
        &s.devices,
        &parsed,
        ThingFate::Retire,
        "returned by customer",
        &mut printed,
    )
    .await
    .unwrap();

    assert_eq!(status(&iot, &certificate_id).await, "REVOKED");
    let arn = certificate_arn(&iot, &certificate_id).await;
    let (policies, principals) = attachments(&iot, &arn, &serial).await;
    assert!(policies.is_empty(), "{policies:?}");
    assert!(principals.is_empty(), "{principals:?}");
    let thing = iot
        .describe_thing()
        .thing_name(&serial)
        .send()
        .await
        .unwrap();
    assert_eq!(thing.attributes().unwrap()["retired"], "true");
    assert_eq!(
        thing.attributes().unwrap()["serial"],
        serial,
        "attributes merged, not replaced"
    );

    let entry = s.manifest.get(&parsed).await.unwrap().unwrap();
    assert_eq!(entry.status, DeviceStatus::Retired);
    assert_eq!(
        s.manifest.audit(&parsed).await.unwrap(),
        vec![(
            "decommissioned".to_owned(),
            "returned by customer".to_owned()
        )]
    );

    // Out of presence: offline, never alerted on, its certificate no longer recorded (a late
    // event of the revoked certificate is ignored).
    let device = s.devices.get(&serial, "device").await.unwrap().unwrap();
    assert_eq!(device["online"], false);
    assert!(device.get("certificate_id").is_none(), "{device}");
    assert!(device.get("offline_shard").is_none(), "{device}");
    assert!(device["retired_at"].as_u64().is_some(), "{device}");
    assert!(
        s.devices.offline_before(u64::MAX).await.unwrap().is_empty(),
        "no offline alert for a retired device"
    );
    assert_eq!(
        s.devices
            .record_presence(&serial, &connected("disconnected", 3_000), 3_000)
            .await
            .unwrap(),
        shoal_core::presence::Recorded::Unrecorded
    );

    // Again: nothing to do, no error, no second audit record.
    let mut again = Vec::new();
    decommission(
        &s.factory,
        &s.manifest,
        &s.devices,
        &parsed,
        ThingFate::Retire,
        "again",
        &mut again,
    )
    .await
    .unwrap();
    assert!(
        String::from_utf8(again)
            .unwrap()
            .contains("already retired")
    );
    assert_eq!(s.manifest.audit(&parsed).await.unwrap().len(), 1);

    // A retired serial can never be provisioned again, by JITR or the hook.
    let new_cert = ca.device(&iot, &serial).await;
    let outcome = s.register(&registry, &new_cert).await;
    assert!(matches!(outcome, Outcome::Revoked { reason } if reason.contains("retired")));
}
