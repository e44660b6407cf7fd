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
