//! Fleet provisioning by claim over a real connection: `shoal-firmware`'s [`Provisioning`] state
//! machine driven over a [`Link`] made with the claim certificate (client id
//! `claim.<serial>.<boot>`, as the template's claim policy requires).
//!
//! With [`KeyMode::Device`] the device's P-256 key is generated here and never leaves it: only
//! its CSR is sent (`CreateCertificateFromCsr`); with [`KeyMode::Aws`] AWS makes the key
//! (`CreateKeysAndCertificate`).

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use shoal_firmware::provisioning::{Claim, KeySource, Provisioning, Step};
use shoal_firmware::sampling::Backoff;
use tokio::time::Instant;

use crate::link::{Endpoint, Link, LinkEvent};

/// Where the device's key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KeyMode {
    /// Generated on the device; a CSR is sent (proof-of-possession manifests need this).
    #[default]
    Device,
    /// Made by AWS and sent back with the certificate.
    Aws,
}

/// What provisioning is asked for.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// The claim certificate and key (PEM).
    pub claim: (Vec<u8>, Vec<u8>),
    /// The provisioning template's name.
    pub template: String,
    /// The device's serial.
    pub serial: String,
    /// The factory secret of its manifest row, if any.
    pub factory_secret: Option<String>,
    /// Where the key comes from.
    pub key: KeyMode,
    /// How long to keep trying (answers, backoffs and reconnects included).
    pub deadline: Duration,
}

/// The identity a device keeps and connects with (`identity.json`, mode 0600, for the agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceIdentity {
    /// The thing name (the serial).
    pub thing_name: String,
    /// The certificate's id.
    pub certificate_id: String,
    /// The certificate (PEM).
    pub certificate_pem: String,
    /// The private key (PEM).
    pub private_key_pem: String,
}

/// Why provisioning ended without an identity.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The cloud refused for good (not in the manifest, wrong proof): its reason.
    #[error("provisioning refused: {0}")]
    Refused(String),
    /// No identity within the deadline: the last thing that went wrong.
    #[error("provisioning did not finish in time: {0}")]
    TimedOut(String),
    /// The device's key or CSR could not be made.
    #[error("the device key: {0}")]
    Key(String),
}

/// A new P-256 key and its CSR (PEM) with `serial` as the common name.
///
/// # Errors
/// rcgen could not generate or sign.
pub fn key_and_csr(serial: &str) -> Result<(String, String), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, serial);
    let csr = params.serialize_request(&key).map_err(|e| e.to_string())?;
    Ok((key.serialize_pem(), csr.pem().map_err(|e| e.to_string())?))
}

/// Provisions the device of `request` through `endpoint`.
///
/// # Errors
/// [`ProvisionError`]: refused, out of time, or no key.
pub async fn provision(
    endpoint: &Endpoint,
    request: &ClaimRequest,
    seed: u64,
) -> Result<DeviceIdentity, ProvisionError> {
    let mut random = StdRng::seed_from_u64(seed);
    let (device_key, key) = match request.key {
        KeyMode::Device => {
            let (key, csr) = key_and_csr(&request.serial).map_err(ProvisionError::Key)?;
            (Some(key), KeySource::Csr(csr))
        }
        KeyMode::Aws => (None, KeySource::Aws),
    };
    let mut provisioning = Provisioning::new(
        Claim {
            template: request.template.clone(),
            serial: request.serial.clone(),
            factory_secret: request.factory_secret.clone(),
            key,
        },
        Backoff {
            base_ms: 500,
            cap_ms: 20_000,
        },
    );
    let client_id = format!("claim.{}.{:08x}", request.serial, random.random::<u32>());
    let mut link = Link::connect(
        endpoint,
        &client_id,
        &request.claim.0,
        &request.claim.1,
        random.random(),
    );
    let give_up = Instant::now() + request.deadline;
    let mut last = String::from("no answer");
    let mut started = false;
    // When the pending wait ends: (deadline, whether it waits for an answer).
    let mut waiting: Option<(Instant, bool)> = None;
    let mut steps: Vec<Step> = Vec::new();
    let outcome = loop {
        // Do what the state machine asked.
        let mut published = false;
        let mut finished = None;
        for step in std::mem::take(&mut steps) {
            match step {
                Step::Publish { topic, payload } => {
                    published = true;
                    if let Err(e) = link.publish(&topic, payload, true).await {
                        last = e;
                    }
                }
                Step::Wait(ms) => {
                    waiting = Some((Instant::now() + Duration::from_millis(ms), published));
                }
                Step::Keep(identity) => {
                    let private_key_pem = match (identity.private_key, &device_key) {
                        (Some(key), _) => key,
                        (None, Some(key)) => key.clone(),
                        (None, None) => {
                            finished =
                                Some(Err(ProvisionError::Key("no private key came back".into())));
                            break;
                        }
                    };
                    finished = Some(Ok(DeviceIdentity {
                        thing_name: identity.thing_name,
                        certificate_id: identity.certificate_id,
                        certificate_pem: identity.certificate_pem,
                        private_key_pem,
                    }));
                    break;
                }
                Step::Refused(why) => {
                    finished = Some(Err(ProvisionError::Refused(why)));
                    break;
                }
            }
        }
        if let Some(finished) = finished {
            break finished;
        }
        let wake = waiting.map_or(give_up, |(at, _)| at.min(give_up));
        if Instant::now() >= give_up {
            break Err(ProvisionError::TimedOut(last));
        }
        tokio::select! {
            event = link.next() => match event {
                Some(LinkEvent::Connected) => {
                    if let Err(e) = link.subscribe(&provisioning.subscriptions()).await {
                        last = e;
                    }
                }
                Some(LinkEvent::Subscribed(true)) => {
                    steps = if started { provisioning.resend() } else { provisioning.start() };
                    started = true;
                }
                Some(LinkEvent::Subscribed(false)) => {
                    last = "the claim's subscriptions were refused (claim policy?)".into();
                }
                Some(LinkEvent::Message { topic, payload }) => {
                    steps = provisioning.handle(&topic, &payload, random.random());
                    if !steps.is_empty() {
                        waiting = None;
                    }
                }
                Some(LinkEvent::Disconnected(why)) => {
                    tracing::warn!(serial = %request.serial, error = %why,
                        "the claim connection failed; trying again");
                    last = why;
                    waiting = None;
                }
                Some(LinkEvent::PubAck) => {}
                None => break Err(ProvisionError::TimedOut(last)),
            },
            () = tokio::time::sleep_until(wake) => {
                if let Some((_, for_answer)) = waiting.take() {
                    steps = if for_answer {
                        last = "no answer in time".into();
                        provisioning.retry(random.random())
                    } else {
                        provisioning.resend()
                    };
                }
            }
        }
    };
    link.disconnect().await;
    outcome
}
