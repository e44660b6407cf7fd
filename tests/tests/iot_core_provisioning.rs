//! Fleet provisioning's certificate APIs on the local IoT Core, as a device with a claim
//! certificate calls them: CreateKeysAndCertificate and CreateCertificateFromCsr answer on the
//! asking connection alone, the new certificate is registered `PENDING_ACTIVATION` (so it cannot
//! connect until RegisterThing activates it), and a CSR's certificate carries the device's own
//! key.

use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet};
use rumqttc::v5::{AsyncClient, ConnectionError, Event};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use shoal_integration_tests::local::{self, unique_name};
use shoal_integration_tests::mqtt5::{Client, certificate, options};
use shoal_integration_tests::provisioned::{
    claim_certificate, create_thing_group, groups_of, manifest_row_in,
};

async fn status(certificate_id: &str) -> String {
    let iot = local::factory().await.iot();
    shoal_aws::fleet::certificate_status(&iot, certificate_id)
        .await
        .expect("DescribeCertificate")
        .expect("registered")
}

fn der(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("a PEM certificate")
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn create_keys_and_certificate_answers_the_asking_connection_only() {
    let claim = certificate().await;
    let mut device = Client::connect(&unique_name("claim"), &claim).await;
    let mut bystander = Client::connect(&unique_name("claim"), &claim).await;
    for client in [&mut device, &mut bystander] {
        client
            .subscribe("$aws/certificates/create/json/accepted")
            .await;
        client
            .subscribe("$aws/certificates/create/json/rejected")
            .await;
    }
    device.publish("$aws/certificates/create/json", "{}").await;
    let (topic, created) = device.next_json().await;
    assert_eq!(topic, "$aws/certificates/create/json/accepted", "{created}");
    let id = created["certificateId"].as_str().expect("certificateId");
    let pem = created["certificatePem"].as_str().expect("certificatePem");
    assert!(
        created["privateKey"]
            .as_str()
            .is_some_and(|k| k.contains("PRIVATE KEY"))
    );
    assert!(
        created["certificateOwnershipToken"]
            .as_str()
            .is_some_and(|t| t.len() >= 32)
    );
    assert_eq!(
        hex_sha256(&der(pem)),
        id,
        "the id is the SHA-256 of the DER"
    );
    assert_eq!(status(id).await, "PENDING_ACTIVATION");

    // The other client, subscribed to the same topic, never sees the key.
    bystander
        .publish("$aws/certificates/create/json", "{}")
        .await;
    let (_, own) = bystander.next_json().await;
    assert_ne!(
        own["certificateId"], created["certificateId"],
        "its own answer, not the other's"
    );
}

#[tokio::test]
async fn a_csr_is_signed_with_the_devices_key_and_cannot_connect_until_activated() {
    let claim = certificate().await;
    let mut device = Client::connect(&unique_name("claim"), &claim).await;
    device
        .subscribe("$aws/certificates/create-from-csr/json/+")
        .await;

    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "a device");
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    device
        .publish(
            "$aws/certificates/create-from-csr/json",
            json!({"certificateSigningRequest": csr}).to_string(),
        )
        .await;
    let (topic, created) = device.next_json().await;
    assert_eq!(
        topic, "$aws/certificates/create-from-csr/json/accepted",
        "{created}"
    );
    assert!(
        created.get("privateKey").is_none(),
        "the device keeps its key"
    );
    let id = created["certificateId"].as_str().unwrap();
    let pem = created["certificatePem"].as_str().unwrap();
    assert_eq!(hex_sha256(&der(pem)), id);
    assert_eq!(status(id).await, "PENDING_ACTIVATION");

    // The certificate holds the CSR's key: the device connects with it and its own key, and is
    // refused only because the certificate is not ACTIVE yet.
    let pair = (pem.as_bytes().to_vec(), key.serialize_pem().into_bytes());
    let (_client, mut events) = AsyncClient::new(options(&unique_name("new-dev"), &pair), 8);
    let refused = loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => break Ok(ack.code),
            Ok(_) => continue,
            Err(e) => break Err(e),
        }
    };
    assert!(
        matches!(
            refused,
            Err(ConnectionError::ConnectionRefused(
                ConnectReturnCode::NotAuthorized
            ))
        ),
        "{refused:?}"
    );

    // A CSR that is not one is refused with the reason.
    device
        .publish(
            "$aws/certificates/create-from-csr/json",
            r#"{"certificateSigningRequest": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----"}"#,
        )
        .await;
    let (topic, rejected): (String, Value) = device.next_json().await;
    assert_eq!(topic, "$aws/certificates/create-from-csr/json/rejected");
    assert_eq!(rejected["statusCode"], 400, "{rejected}");
}

/// Connects as `claim.<uuid>`, asks for keys and a certificate, then RegisterThing with
/// `parameters`: (the new certificate's id, PEM, key, RegisterThing's answer topic and document).
async fn provision(parameters: Value) -> (String, String, String, String, Value) {
    let claim = claim_certificate().await;
    let client_id = format!("claim.{}", uuid::Uuid::new_v4().simple());
    let mut device = Client::connect(&client_id, &claim).await;
    device
        .subscribe("$aws/certificates/create/json/accepted")
        .await;
    device
        .subscribe("$aws/provisioning-templates/shoal-fleet/provision/json/accepted")
        .await;
    device
        .subscribe("$aws/provisioning-templates/shoal-fleet/provision/json/rejected")
        .await;
    device.publish("$aws/certificates/create/json", "{}").await;
    let created = device
        .next_on("$aws/certificates/create/json/accepted")
        .await;
    device
        .publish(
            "$aws/provisioning-templates/shoal-fleet/provision/json",
            json!({
                "certificateOwnershipToken": created["certificateOwnershipToken"],
                "parameters": parameters,
            })
            .to_string(),
        )
        .await;
    let (topic, answer) = device.next_json().await;
    (
        created["certificateId"].as_str().unwrap().to_owned(),
        created["certificatePem"].as_str().unwrap().to_owned(),
        created["privateKey"].as_str().unwrap().to_owned(),
        topic,
        answer,
    )
}

#[tokio::test]
async fn register_thing_provisions_a_manifest_serial_through_the_templates_hook() {
    let group = unique_name("greenhouse");
    create_thing_group(&group).await;
    let serial = manifest_row_in(&group, "hardware=rev-b;site=lyon").await;
    let (certificate_id, pem, key, topic, answer) =
        provision(json!({"SerialNumber": serial})).await;
    assert_eq!(
        topic, "$aws/provisioning-templates/shoal-fleet/provision/json/accepted",
        "{answer}"
    );
    assert_eq!(
        answer,
        json!({"deviceConfiguration": {}, "thingName": serial})
    );

    let iot = local::factory().await.iot();
    assert_eq!(status(&certificate_id).await, "ACTIVE");
    let thing = iot
        .describe_thing()
        .thing_name(&serial)
        .send()
        .await
        .expect("the thing");
    let attributes = thing.attributes().cloned().unwrap_or_default();
    assert_eq!(
        thing.thing_type_name(),
        Some("shoal-local-device"),
        "typed: more than 3 attributes"
    );
    // Every manifest attribute, `hardware` (what rollouts target) among them, and the template's.
    for (key, value) in [
        ("serial", serial.as_str()),
        ("model", "th-v2"),
        ("batch", "2026-12"),
        ("hardware", "rev-b"),
        ("site", "lyon"),
    ] {
        assert_eq!(
            attributes.get(key).map(String::as_str),
            Some(value),
            "{attributes:?}"
        );
    }
    assert_eq!(
        groups_of(&serial).await,
        std::slice::from_ref(&group),
        "the manifest's group"
    );
    let arn = format!("arn:aws:iot:us-east-1:123456789012:cert/{certificate_id}");
    let principals = iot
        .list_thing_principals()
        .thing_name(&serial)
        .send()
        .await
        .unwrap();
    assert_eq!(principals.principals(), std::slice::from_ref(&arn));
    let policies = iot
        .list_attached_policies()
        .target(&arn)
        .send()
        .await
        .unwrap();
    let names: Vec<&str> = policies
        .policies()
        .iter()
        .filter_map(|p| p.policy_name())
        .collect();
    assert_eq!(names, ["shoal-local-device"]);

    // The new certificate connects as its thing and is held to the device policy.
    let device = (pem.into_bytes(), key.into_bytes());
    let mut connected = Client::connect(&serial, &device).await;
    connected
        .subscribe(&format!("$aws/things/{serial}/shadow/get/+"))
        .await;
    connected
        .publish(&format!("$aws/things/{serial}/shadow/get"), "{}")
        .await;
    let (topic, _) = connected.next_json().await;
    assert!(
        topic.starts_with(&format!("$aws/things/{serial}/shadow/get/")),
        "{topic}"
    );
}

#[tokio::test]
async fn register_thing_refuses_what_the_hook_refuses() {
    let (certificate_id, _, _, topic, answer) =
        provision(json!({"SerialNumber": unique_name("SN-unknown")})).await;
    assert_eq!(
        topic, "$aws/provisioning-templates/shoal-fleet/provision/json/rejected",
        "{answer}"
    );
    assert_eq!(answer["statusCode"], 403, "{answer}");
    assert_eq!(
        status(&certificate_id).await,
        "PENDING_ACTIVATION",
        "never activated"
    );
    let (_, _, _, topic, answer) = provision(json!({})).await;
    assert!(topic.ends_with("/rejected"), "no serial: {answer}");
}

/// A CA registered ACTIVE in the local registry (auto-registration allowed), and a device
/// certificate it signed with CN `serial`: (the device's chain PEM — its certificate then the
/// CA's, as JITR devices present them —, its key PEM, the CA's certificate id).
async fn jitr_device(serial: &str) -> (Vec<u8>, Vec<u8>, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, unique_name("shoal-fleet-ca"));
    let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let registered = local::factory()
        .await
        .iot()
        .register_ca_certificate()
        .ca_certificate(issuer.pem())
        .set_as_active(true)
        .allow_auto_registration(true)
        .send()
        .await
        .expect("RegisterCACertificate");
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, serial);
    let key = KeyPair::generate().unwrap();
    let device = params.signed_by(&key, &issuer).unwrap();
    let chain = format!("{}{}", device.pem(), issuer.pem());
    (
        chain.into_bytes(),
        key.serialize_pem().into_bytes(),
        registered.certificate_id().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn a_ca_signed_certificate_is_registered_just_in_time_and_activated_by_the_templates_jitr() {
    let group = unique_name("field");
    create_thing_group(&group).await;
    let serial = manifest_row_in(&group, "hardware=rev-c").await;
    let (chain, key, ca_id) = jitr_device(&serial).await;
    let device_id = {
        let (_, pem) = x509_parser::pem::parse_x509_pem(&chain).unwrap();
        hex_sha256(&pem.contents)
    };
    // Someone watching the registration events (as the template's JITR rule does).
    let mut watcher = Client::connect(&unique_name("watcher"), &certificate().await).await;
    watcher
        .subscribe(&format!("$aws/events/certificates/registered/{ca_id}"))
        .await;

    // The first connection registers the certificate and is closed, as AWS IoT does.
    let pair = (chain.clone(), key.clone());
    let (_client, mut events) = AsyncClient::new(options(&serial, &pair), 8);
    let first = loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => break Ok(ack.code),
            Ok(_) => continue,
            Err(e) => break Err(e),
        }
    };
    assert!(first.is_err(), "the first connection is closed: {first:?}");
    let event = watcher
        .next_on(&format!("$aws/events/certificates/registered/{ca_id}"))
        .await;
    assert_eq!(event["certificateId"], device_id.as_str());
    assert_eq!(event["caCertificateId"], ca_id.as_str());
    assert_eq!(event["certificateStatus"], "PENDING_ACTIVATION");

    // JitrRule -> the JITR function (local Lambda host) activates it, with thing and policy.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while status(&device_id).await != "ACTIVE" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "activated within 30 s (.local/lambda/JitrFunction.log)"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let thing = local::factory()
        .await
        .iot()
        .describe_thing()
        .thing_name(&serial)
        .send()
        .await
        .expect("the thing JITR made");
    assert_eq!(thing.thing_type_name(), Some("shoal-local-device"));
    let attributes = thing.attributes().cloned().unwrap_or_default();
    assert_eq!(
        attributes.get("hardware").map(String::as_str),
        Some("rev-c"),
        "{attributes:?}"
    );
    assert_eq!(
        groups_of(&serial).await,
        std::slice::from_ref(&group),
        "the manifest's group"
    );

    // Connected again, it is the thing, held to the device policy.
    let mut device = Client::connect(&serial, &pair).await;
    device
        .subscribe(&format!("$aws/things/{serial}/shadow/get/+"))
        .await;
    device
        .publish(&format!("$aws/things/{serial}/shadow/get"), "{}")
        .await;
    let (topic, _) = device.next_json().await;
    assert!(
        topic.starts_with(&format!("$aws/things/{serial}/shadow/get/")),
        "{topic}"
    );
}
