//! The pre-provisioning hook against the manifest in the local DynamoDB, called with the event
//! AWS documents (moto has no CreateProvisioningTemplate, so the hook is invoked directly).

use std::collections::BTreeMap;
use std::time::Duration;

use provisioning::hook::{DEFAULT_CLAIM_LEASE, DEFAULT_DEADLINE, Gate};
use provisioning::registry::IotCertificates;
use serde_json::json;
use shoal_aws::client::AwsResultExt;
use shoal_aws::device_table::DeviceTable;
use shoal_aws::manifest_table::ManifestTable;
use shoal_core::provisioning::{
    DeviceStatus, HookRequest, HookResponse, ManifestEntry, Serial, TemplateModels,
};
use shoal_integration_tests::local::{self, unique_name};

async fn manifest(entries: &[(&str, &str, DeviceStatus)]) -> ManifestTable {
    let factory = local::factory().await;
    let table = ManifestTable::new(factory.dynamodb(), unique_name("manifest").parse().unwrap());
    table.ensure_exists().await.unwrap();
    ensure_devices(&table).await;
    for (serial, model, status) in entries {
        let inserted = table
            .insert(&ManifestEntry {
                serial: Serial::parse(serial).unwrap(),
                model: (*model).into(),
                batch: "2026-11".into(),
                status: *status,
                certificate_id: None,
                thing_name: None,
                thing_group: Some("greenhouse".into()),
                attributes: BTreeMap::new(),
                proof: None,
                created_at_ms: 1,
                updated_at_ms: 1,
            })
            .await
            .unwrap();
        assert!(inserted);
    }
    table
}

/// The hook input exactly as AWS IoT documents it.
fn request(serial: &str, certificate_id: &str) -> HookRequest {
    serde_json::from_value(json!({
        "claimCertificateId": "0f8a2f3bc2a0cb5d9d6b2c8e4a1e3f5d7c9b1a3e5f7d9c1b3a5e7f9d1c3b5a7e",
        "certificateId": certificate_id,
        "certificatePem": "-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----\n",
        "templateArn": "arn:aws:iot:us-east-1:123456789012:provisioningtemplate/shoal-fleet",
        "clientId": "221a6d10-9c7f-42f1-9153-e52e6fc869c1",
        "parameters": {"SerialNumber": serial}
    }))
    .unwrap()
}

fn models() -> TemplateModels {
    "shoal-fleet=th-v2".parse().unwrap()
}

/// The hook as deployed: this manifest, the local IoT registry's certificates, the default lease.
async fn handle(
    request: &HookRequest,
    table: &ManifestTable,
    models: &TemplateModels,
    deadline: Duration,
) -> HookResponse {
    handle_with_lease(request, table, models, DEFAULT_CLAIM_LEASE, deadline).await
}

async fn handle_with_lease(
    request: &HookRequest,
    table: &ManifestTable,
    models: &TemplateModels,
    claim_lease: Duration,
    deadline: Duration,
) -> HookResponse {
    let certificates = IotCertificates::new(local::factory().await.iot());
    let devices = devices(table).await;
    let gate = Gate {
        manifest: table,
        certificates: &certificates,
        devices: &devices,
        models,
        claim_lease,
    };
    provisioning::hook::handle(request, &gate, deadline).await
}

/// The device registry the hook records allowed certificates in: one per manifest table, so
/// tests that reuse a serial never share a device item. Created with the manifest table
/// ([`manifest`], [`ensure_devices`]), before any concurrent call.
async fn devices(manifest: &ManifestTable) -> DeviceTable {
    let name = format!("{}-devices", manifest.name().as_str());
    DeviceTable::new(local::factory().await.dynamodb(), name.parse().unwrap())
}

async fn ensure_devices(manifest: &ManifestTable) {
    devices(manifest).await.ensure_exists().await.unwrap();
}

/// The certificate the device registry (of `manifest`'s hook) holds for `thing`.
async fn recorded_certificate(manifest: &ManifestTable, thing: &str) -> Option<String> {
    devices(manifest)
        .await
        .get(thing, "device")
        .await
        .unwrap()
        .and_then(|item| item["certificate_id"].as_str().map(str::to_owned))
}

/// A certificate in the local IoT registry, ACTIVE or not; its id.
async fn certificate(active: bool) -> String {
    let created = local::factory()
        .await
        .iot()
        .create_keys_and_certificate()
        .set_as_active(active)
        .send()
        .await
        .aws("iot", "CreateKeysAndCertificate")
        .unwrap();
    created.certificate_id().unwrap().to_owned()
}

/// Case: the hook allowed certificate A, but A's RegisterThing failed (A never became ACTIVE).
/// After the claim lease, the device's retry with a new certificate B takes the serial over,
/// audited; a claim whose certificate is ACTIVE is never taken over.
#[tokio::test]
async fn a_lapsed_claim_is_taken_over_and_an_active_claim_holds() {
    let table = manifest(&[
        ("SN-0101", "th-v2", DeviceStatus::Pending),
        ("SN-0102", "th-v2", DeviceStatus::Pending),
    ])
    .await;
    let lease = Duration::from_millis(300);
    // A's RegisterThing never ran: AWS deleted the unused certificate (moto creates no
    // PENDING_ACTIVATION certificate; that status is covered by the hook's unit tests).
    let a = format!("{:064x}", rand_id());
    let b = certificate(false).await;
    let call = |serial: &'static str, cert: String| {
        let table = &table;
        async move {
            handle_with_lease(
                &request(serial, &cert),
                table,
                &models(),
                lease,
                DEFAULT_DEADLINE,
            )
            .await
        }
    };
    assert!(call("SN-0101", a.clone()).await.allow_provisioning);
    assert!(
        !call("SN-0101", b.clone()).await.allow_provisioning,
        "within the lease the claim holds"
    );
    tokio::time::sleep(lease + Duration::from_millis(50)).await;
    let taken = call("SN-0101", b.clone()).await;
    assert!(taken.allow_provisioning, "{taken:?}");
    assert_eq!(taken.parameter_overrides["ThingName"], "SN-0101");
    assert_eq!(
        recorded_certificate(&table, "SN-0101").await.as_deref(),
        Some(b.as_str()),
        "the device registry follows the takeover"
    );
    let serial = Serial::parse("SN-0101").unwrap();
    let entry = table.get(&serial).await.unwrap().unwrap();
    assert_eq!(entry.certificate_id.as_deref(), Some(b.as_str()));
    let audit = table.audit(&serial).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|(action, reason)| action == "claim_taken_over" && reason.contains(&a)),
        "{audit:?}"
    );

    // An ACTIVE certificate keeps its serial, lease or not; so does one an operator set
    // INACTIVE (B, now SN-0101's, is INACTIVE in moto).
    let active = certificate(true).await;
    assert!(call("SN-0102", active).await.allow_provisioning);
    tokio::time::sleep(lease + Duration::from_millis(50)).await;
    assert!(
        !call("SN-0102", certificate(false).await)
            .await
            .allow_provisioning
    );
    assert!(
        !call("SN-0101", certificate(false).await)
            .await
            .allow_provisioning
    );
}

/// A certificate id no registry holds (64 hex digits, as AWS's).
fn rand_id() -> u128 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        ^ 0x5eed_0000_0000_0000
}

#[tokio::test]
async fn a_manifest_serial_is_allowed_once_and_claimed_for_its_certificate() {
    let table = manifest(&[("SN-0001", "th-v2", DeviceStatus::Pending)]).await;
    let serial = Serial::parse("SN-0001").unwrap();

    let answer = handle(
        &request("SN-0001", "cert-a"),
        &table,
        &models(),
        DEFAULT_DEADLINE,
    )
    .await;
    assert!(answer.allow_provisioning);
    assert_eq!(answer.parameter_overrides["ThingName"], "SN-0001");
    assert_eq!(answer.parameter_overrides["ThingGroup"], "greenhouse");
    assert_eq!(answer.parameter_overrides["Model"], "th-v2");

    let stored = table.get(&serial).await.unwrap().unwrap();
    assert_eq!(stored.status, DeviceStatus::Provisioned);
    assert_eq!(stored.certificate_id.as_deref(), Some("cert-a"));
    assert_eq!(stored.thing_name.unwrap().as_str(), "SN-0001");
    assert_eq!(
        recorded_certificate(&table, "SN-0001").await.as_deref(),
        Some("cert-a"),
        "the allowed certificate is the thing's in the device registry"
    );

    // The same certificate again: the same answer. Another certificate: denied.
    let again = handle(
        &request("SN-0001", "cert-a"),
        &table,
        &models(),
        DEFAULT_DEADLINE,
    )
    .await;
    assert_eq!(again, answer);
    let other = handle(
        &request("SN-0001", "cert-b"),
        &table,
        &models(),
        DEFAULT_DEADLINE,
    )
    .await;
    assert_eq!(other, HookResponse::deny());
    let stored = table.get(&serial).await.unwrap().unwrap();
    assert_eq!(stored.certificate_id.as_deref(), Some("cert-a"));
}

#[tokio::test]
async fn unknown_revoked_and_disallowed_serials_are_denied_and_left_alone() {
    let table = manifest(&[
        ("SN-REV", "th-v2", DeviceStatus::Revoked),
        ("SN-CAM", "camera-v1", DeviceStatus::Pending),
    ])
    .await;
    for serial in ["SN-UNKNOWN", "SN-REV", "SN-CAM"] {
        let answer = handle(
            &request(serial, "cert-x"),
            &table,
            &models(),
            DEFAULT_DEADLINE,
        )
        .await;
        assert_eq!(answer, HookResponse::deny(), "{serial}");
    }
    let cam = table
        .get(&Serial::parse("SN-CAM").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cam.status, DeviceStatus::Pending);
    assert_eq!(cam.certificate_id, None);
}

#[tokio::test]
async fn of_two_concurrent_certificates_for_one_serial_exactly_one_wins() {
    let table = manifest(&[("SN-RACE", "th-v2", DeviceStatus::Pending)]).await;
    let models = models();
    let attempts: Vec<_> = (0..8)
        .map(|i| request("SN-RACE", &format!("cert-{i}")))
        .collect();
    let answers = all_at_once(&attempts, &table, &models).await;
    let winners: Vec<&HookRequest> = attempts
        .iter()
        .zip(&answers)
        .filter(|(_, a)| a.allow_provisioning)
        .map(|(r, _)| r)
        .collect();
    assert_eq!(winners.len(), 1, "{answers:?}");
    let stored = table
        .get(&Serial::parse("SN-RACE").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.certificate_id.as_deref(),
        Some(winners[0].certificate_id.as_str())
    );
}

/// Runs the hook for every request at once.
async fn all_at_once(
    requests: &[HookRequest],
    table: &ManifestTable,
    models: &TemplateModels,
) -> Vec<HookResponse> {
    let mut set = tokio::task::JoinSet::new();
    for (i, r) in requests.iter().cloned().enumerate() {
        let (table, models) = (table.clone(), models.clone());
        set.spawn(async move { (i, handle(&r, &table, &models, DEFAULT_DEADLINE).await) });
    }
    let mut answers = vec![HookResponse::deny(); requests.len()];
    while let Some(joined) = set.join_next().await {
        let (i, answer) = joined.unwrap();
        answers[i] = answer;
    }
    answers
}

#[tokio::test]
async fn an_unreachable_manifest_denies_inside_the_deadline() {
    let table = ManifestTable::new(
        local::unreachable_factory().dynamodb(),
        "shoal-manifest".parse().unwrap(),
    );
    let started = std::time::Instant::now();
    let answer = handle(
        &request("SN-0001", "cert-a"),
        &table,
        &models(),
        Duration::from_millis(1500),
    )
    .await;
    assert_eq!(answer, HookResponse::deny());
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_serial_whose_certificate_never_became_active_can_be_reset() {
    use shoal_aws::client::AwsResultExt;
    use shoal_cli::manifest::reset;

    let table = manifest(&[
        ("SN-RESET", "th-v2", DeviceStatus::Pending),
        ("SN-LIVE", "th-v2", DeviceStatus::Pending),
    ])
    .await;
    let factory = local::factory().await;
    let serial = Serial::parse("SN-RESET").unwrap();

    // The hook allowed cert-lost, but RegisterThing failed: that certificate never existed.
    assert!(
        handle(
            &request("SN-RESET", "cert-lost"),
            &table,
            &models(),
            DEFAULT_DEADLINE
        )
        .await
        .allow_provisioning
    );
    assert!(
        !handle(
            &request("SN-RESET", "cert-new"),
            &table,
            &models(),
            DEFAULT_DEADLINE
        )
        .await
        .allow_provisioning
    );
    let said = reset(&factory, &table, &serial, "RegisterThing failed")
        .await
        .unwrap();
    assert!(said.contains("pending again"), "{said}");
    let entry = table.get(&serial).await.unwrap().unwrap();
    assert_eq!(entry.status, DeviceStatus::Pending);
    assert_eq!(entry.certificate_id, None);
    assert_eq!(
        table.audit(&serial).await.unwrap(),
        vec![("reset".to_owned(), "RegisterThing failed".to_owned())]
    );
    assert!(
        handle(
            &request("SN-RESET", "cert-new"),
            &table,
            &models(),
            DEFAULT_DEADLINE
        )
        .await
        .allow_provisioning
    );

    // A serial whose certificate is active is not reset.
    let active = factory
        .iot()
        .create_keys_and_certificate()
        .set_as_active(true)
        .send()
        .await
        .aws("iot", "CreateKeysAndCertificate")
        .unwrap();
    let active_id = active.certificate_id().unwrap();
    assert!(
        handle(
            &request("SN-LIVE", active_id),
            &table,
            &models(),
            DEFAULT_DEADLINE
        )
        .await
        .allow_provisioning
    );
    let err = reset(&factory, &table, &Serial::parse("SN-LIVE").unwrap(), "oops")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is ACTIVE"), "{err}");
    let live = table
        .get(&Serial::parse("SN-LIVE").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(live.status, DeviceStatus::Provisioned);
}

/// A device certificate as fleet provisioning's `CreateCertificateFromCsr` issues it: the key the
/// device's CSR carried, signed by a CA (AWS's; any CA for the hook, which reads only the key).
fn certificate_for(key: &rcgen::KeyPair, serial: &str) -> String {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, serial);
    params.signed_by(key, &issuer).unwrap().pem()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Case 3 of issue 12: a serial is printed on the box, so it cannot be the only proof. The manifest
/// (imported by `shoal manifest import`, as an operator would) names the device's key for one
/// serial and the digest of a factory secret for another: a claim-certificate holder who knows
/// the serials is denied and claims nothing; the real devices are then allowed.
#[tokio::test]
async fn a_known_serial_without_the_devices_proof_is_denied_and_claims_nothing() {
    let factory = local::factory().await;
    let table = ManifestTable::new(factory.dynamodb(), unique_name("manifest").parse().unwrap());
    table.ensure_exists().await.unwrap();
    ensure_devices(&table).await;
    let device_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let attacker_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    // What the factory records: `openssl pkey -pubin -outform DER | sha256sum` of the device's
    // public key, and `printf %s <secret> | sha256sum` of the secret it flashed.
    let csv = format!(
        "serial,model,batch,thing_group,attributes,proof\n\
         SN-POP-KEY,th-v2,2026-11,,,key-sha256:{}\n\
         SN-POP-SECRET,th-v2,2026-11,,,secret-sha256:{}\n\
         SN-POP-NONE,th-v2,2026-11,,,\n",
        sha256_hex(&rcgen::PublicKeyData::subject_public_key_info(&device_key)),
        sha256_hex(b"7d1e-factory-secret"),
    );
    assert_eq!(
        shoal_cli::manifest::import(&table, &csv, |_| {})
            .await
            .unwrap(),
        3
    );
    let ask = |serial: &str, pem: String, secret: Option<&str>| {
        let mut r = request(serial, &sha256_hex(pem.as_bytes()));
        r.certificate_pem = pem;
        if let Some(secret) = secret {
            r.parameters
                .insert("FactorySecret".into(), secret.to_owned());
        }
        r
    };
    let state = |serial: &'static str| {
        let table = &table;
        async move {
            let entry = table
                .get(&Serial::parse(serial).unwrap())
                .await
                .unwrap()
                .unwrap();
            (entry.status, entry.certificate_id)
        }
    };

    // The attacker: its own key, no secret or a guessed one.
    for attempt in [
        ask(
            "SN-POP-KEY",
            certificate_for(&attacker_key, "SN-POP-KEY"),
            None,
        ),
        ask(
            "SN-POP-KEY",
            certificate_for(&attacker_key, "SN-POP-KEY"),
            Some("7d1e-factory-secret"),
        ),
        ask("SN-POP-SECRET", certificate_for(&attacker_key, "x"), None),
        ask(
            "SN-POP-SECRET",
            certificate_for(&attacker_key, "x"),
            Some("7d1e-factory-secreT"),
        ),
    ] {
        let answer = handle(&attempt, &table, &models(), DEFAULT_DEADLINE).await;
        assert_eq!(answer, HookResponse::deny(), "{:?}", attempt.parameters);
    }
    assert_eq!(state("SN-POP-KEY").await, (DeviceStatus::Pending, None));
    assert_eq!(state("SN-POP-SECRET").await, (DeviceStatus::Pending, None));
    assert_eq!(recorded_certificate(&table, "SN-POP-KEY").await, None);

    // The devices: a certificate of the factory key; the factory secret.
    let real = ask(
        "SN-POP-KEY",
        certificate_for(&device_key, "SN-POP-KEY"),
        None,
    );
    let answer = handle(&real, &table, &models(), DEFAULT_DEADLINE).await;
    assert!(answer.allow_provisioning, "{answer:?}");
    assert_eq!(
        state("SN-POP-KEY").await,
        (DeviceStatus::Provisioned, Some(real.certificate_id.clone()))
    );
    let real = ask(
        "SN-POP-SECRET",
        certificate_for(&attacker_key, "any"),
        Some("7d1e-factory-secret"),
    );
    let answer = handle(&real, &table, &models(), DEFAULT_DEADLINE).await;
    assert!(answer.allow_provisioning, "{answer:?}");
    assert!(
        !answer
            .parameter_overrides
            .values()
            .any(|v| v.contains("factory-secret")),
        "the secret never reaches the thing: {answer:?}"
    );
    // A row without a proof still provisions on its serial alone.
    let plain = handle(
        &request("SN-POP-NONE", "cert-plain"),
        &table,
        &models(),
        DEFAULT_DEADLINE,
    )
    .await;
    assert!(plain.allow_provisioning);
}
