//! Fleet provisioning by claim as a device runs it
//! (<https://docs.aws.amazon.com/iot/latest/developerguide/fleet-provision-api.html>): connected
//! with the claim certificate, the device asks for its own certificate — from a CSR whose key it
//! generated and never sends (`CreateCertificateFromCsr`, for proof-of-possession manifests), or
//! keys made by AWS (`CreateKeysAndCertificate`) — then registers it with the provisioning
//! template and its parameters (`SerialNumber`, and `FactorySecret` when its manifest row has a
//! secret). The identity it ends with is what it keeps ([`Step::Keep`]) and connects with from
//! then on. A service error or a lost answer is retried with backoff; a refusal (4xx: the serial
//! is not the manifest's, the proof does not match) is final and says why.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde_json::{Value, json};

use crate::sampling::Backoff;

/// How the device gets its key pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The device generated it: the CSR (PEM) of its key.
    Csr(String),
    /// AWS generates it (`CreateKeysAndCertificate`): the private key arrives in the answer.
    Aws,
}

/// What the device is provisioned as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The provisioning template's name.
    pub template: String,
    /// The device's serial (its thing name once provisioned).
    pub serial: String,
    /// The factory secret, when its manifest row has one.
    pub factory_secret: Option<String>,
    /// Where its key comes from.
    pub key: KeySource,
}

/// The identity provisioning gave the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The certificate's id.
    pub certificate_id: String,
    /// The certificate (PEM).
    pub certificate_pem: String,
    /// The private key (PEM) when AWS made it; `None` when the device's own key goes with it.
    pub private_key: Option<String>,
    /// The thing the device is.
    pub thing_name: String,
}

/// What the device does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Publish this request (subscribed to its answers first: [`Provisioning::subscriptions`]).
    Publish {
        /// The topic.
        topic: String,
        /// The payload (JSON).
        payload: Vec<u8>,
    },
    /// Call [`Provisioning::retry`] after this many milliseconds (no answer by then counts as
    /// a failure too).
    Wait(u64),
    /// Keep this identity (persist it): provisioning is done.
    Keep(Identity),
    /// Provisioning was refused for good: why.
    Refused(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Creating,
    Registering {
        certificate_id: String,
        certificate_pem: String,
        private_key: Option<String>,
        token: String,
    },
    Done,
}

/// The provisioning state machine.
#[derive(Debug, Clone)]
pub struct Provisioning {
    claim: Claim,
    state: State,
    attempts: u32,
    backoff: Backoff,
}

/// How long a request may go unanswered before it is sent again, ms.
pub const ANSWER_TIMEOUT_MS: u64 = 10_000;

impl Provisioning {
    /// Provisioning of `claim`, retried with `backoff`.
    pub fn new(claim: Claim, backoff: Backoff) -> Self {
        Self {
            claim,
            state: State::Creating,
            attempts: 0,
            backoff,
        }
    }

    fn create_topic(&self) -> &'static str {
        match self.claim.key {
            KeySource::Csr(_) => "$aws/certificates/create-from-csr/json",
            KeySource::Aws => "$aws/certificates/create/json",
        }
    }

    fn register_topic(&self) -> String {
        format!(
            "$aws/provisioning-templates/{}/provision/json",
            self.claim.template
        )
    }

    /// The topics to subscribe to before [`Provisioning::start`]: the answers of both requests.
    pub fn subscriptions(&self) -> Vec<String> {
        let create = self.create_topic();
        let register = self.register_topic();
        Vec::from([
            format!("{create}/accepted"),
            format!("{create}/rejected"),
            format!("{register}/accepted"),
            format!("{register}/rejected"),
        ])
    }

    /// The first request (and the wait for its answer).
    pub fn start(&mut self) -> Vec<Step> {
        self.state = State::Creating;
        self.send()
    }

    fn send(&self) -> Vec<Step> {
        let (topic, payload) = match &self.state {
            State::Creating => (
                self.create_topic().to_string(),
                match &self.claim.key {
                    KeySource::Csr(csr) => json!({ "certificateSigningRequest": csr }),
                    KeySource::Aws => json!({}),
                },
            ),
            State::Registering { token, .. } => {
                let mut parameters = json!({ "SerialNumber": self.claim.serial });
                if let Some(secret) = &self.claim.factory_secret {
                    parameters["FactorySecret"] = secret.clone().into();
                }
                (
                    self.register_topic(),
                    json!({ "certificateOwnershipToken": token, "parameters": parameters }),
                )
            }
            State::Done => return Vec::new(),
        };
        Vec::from([
            Step::Publish {
                topic,
                payload: payload.to_string().into_bytes(),
            },
            Step::Wait(ANSWER_TIMEOUT_MS),
        ])
    }

    /// The answer was not there in time, or the connection dropped: the request again, after
    /// a backoff (`random`: any `u32` from the device's RNG, for the jitter).
    pub fn retry(&mut self, random: u32) -> Vec<Step> {
        if self.state == State::Done {
            return Vec::new();
        }
        let delay = self.backoff.delay_ms(self.attempts, random);
        self.attempts = self.attempts.saturating_add(1);
        // After the wait the caller calls `resend`.
        Vec::from([Step::Wait(delay)])
    }

    /// The request of the current stage again (after [`Provisioning::retry`]'s wait).
    pub fn resend(&mut self) -> Vec<Step> {
        self.send()
    }

    /// An answer on one of [`Provisioning::subscriptions`].
    pub fn handle(&mut self, topic: &str, payload: &[u8], random: u32) -> Vec<Step> {
        let Ok(Value::Object(answer)) = serde_json::from_slice::<Value>(payload) else {
            return Vec::new();
        };
        let text = |key: &str| answer.get(key).and_then(Value::as_str).map(str::to_string);
        let create = self.create_topic();
        let register = self.register_topic();
        let rejected = |answer: &serde_json::Map<String, Value>| {
            let status = answer
                .get("statusCode")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let why = format!(
                "{} {}: {}",
                status,
                answer
                    .get("errorCode")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
                answer
                    .get("errorMessage")
                    .and_then(Value::as_str)
                    .unwrap_or("")
            );
            (status, why)
        };
        match (&self.state, topic) {
            (State::Creating, t) if t == format!("{create}/accepted") => {
                let (Some(certificate_id), Some(certificate_pem), Some(token)) = (
                    text("certificateId"),
                    text("certificatePem"),
                    text("certificateOwnershipToken"),
                ) else {
                    return self.retry(random);
                };
                self.state = State::Registering {
                    certificate_id,
                    certificate_pem,
                    private_key: text("privateKey"),
                    token,
                };
                self.attempts = 0;
                self.send()
            }
            (State::Registering { .. }, t) if t == format!("{register}/accepted") => {
                let State::Registering {
                    certificate_id,
                    certificate_pem,
                    private_key,
                    ..
                } = core::mem::replace(&mut self.state, State::Done)
                else {
                    return Vec::new();
                };
                Vec::from([Step::Keep(Identity {
                    certificate_id,
                    certificate_pem,
                    private_key,
                    thing_name: text("thingName").unwrap_or_else(|| self.claim.serial.clone()),
                })])
            }
            (State::Creating, t) if t == format!("{create}/rejected") => {
                let (status, why) = rejected(&answer);
                self.after_rejection(status, why, random)
            }
            (State::Registering { .. }, t) if t == format!("{register}/rejected") => {
                let (status, why) = rejected(&answer);
                // AWS documents status codes only: a refusal that names the ownership token
                // (used, expired) starts over with a new certificate; any other 4xx is final.
                if status == 403 && why.contains("ownership token") {
                    self.state = State::Creating;
                    return self.retry(random);
                }
                self.after_rejection(status, why, random)
            }
            _ => Vec::new(),
        }
    }

    fn after_rejection(&mut self, status: u64, why: String, random: u32) -> Vec<Step> {
        if status == 429 || status >= 500 {
            return self.retry(random);
        }
        self.state = State::Done;
        Vec::from([Step::Refused(why)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn claim(key: KeySource, secret: Option<&str>) -> Provisioning {
        Provisioning::new(
            Claim {
                template: "shoal-fleet".into(),
                serial: "SN-1".into(),
                factory_secret: secret.map(str::to_string),
                key,
            },
            Backoff {
                base_ms: 1_000,
                cap_ms: 60_000,
            },
        )
    }

    fn payload(step: &Step) -> (String, Value) {
        let Step::Publish { topic, payload } = step else {
            panic!("{step:?}")
        };
        (topic.clone(), serde_json::from_slice(payload).unwrap())
    }

    #[test]
    fn a_csr_device_registers_its_serial_and_secret_and_keeps_its_identity() {
        let mut device = claim(
            KeySource::Csr("-----BEGIN CERTIFICATE REQUEST-----".into()),
            Some("s3cret"),
        );
        assert_eq!(device.subscriptions().len(), 4);
        let steps = device.start();
        let (topic, request) = payload(&steps[0]);
        assert_eq!(topic, "$aws/certificates/create-from-csr/json");
        assert!(
            request["certificateSigningRequest"]
                .as_str()
                .unwrap()
                .contains("REQUEST")
        );
        assert_eq!(steps[1], Step::Wait(ANSWER_TIMEOUT_MS));

        let created = json!({"certificateId": "c1", "certificatePem": "PEM", "certificateOwnershipToken": "tok"});
        let steps = device.handle(
            "$aws/certificates/create-from-csr/json/accepted",
            created.to_string().as_bytes(),
            0,
        );
        let (topic, request) = payload(&steps[0]);
        assert_eq!(
            topic,
            "$aws/provisioning-templates/shoal-fleet/provision/json"
        );
        assert_eq!(
            request,
            json!({"certificateOwnershipToken": "tok", "parameters": {"SerialNumber": "SN-1", "FactorySecret": "s3cret"}})
        );
        let registered = json!({"deviceConfiguration": {}, "thingName": "SN-1"});
        let steps = device.handle(
            "$aws/provisioning-templates/shoal-fleet/provision/json/accepted",
            registered.to_string().as_bytes(),
            0,
        );
        assert_eq!(
            steps,
            vec![Step::Keep(Identity {
                certificate_id: "c1".into(),
                certificate_pem: "PEM".into(),
                private_key: None,
                thing_name: "SN-1".into(),
            })]
        );
    }

    #[test]
    fn service_errors_back_off_and_refusals_are_final() {
        let mut device = claim(KeySource::Aws, None);
        device.start();
        let busy =
            json!({"statusCode": 503, "errorCode": "ServiceUnavailable", "errorMessage": "later"});
        let first = device.handle(
            "$aws/certificates/create/json/rejected",
            busy.to_string().as_bytes(),
            u32::MAX,
        );
        assert_eq!(first, vec![Step::Wait(1_000)], "the first ceiling");
        let second = device.handle(
            "$aws/certificates/create/json/rejected",
            busy.to_string().as_bytes(),
            u32::MAX,
        );
        assert_eq!(second, vec![Step::Wait(2_000)], "doubled");
        let (topic, request) = payload(&device.resend()[0]);
        assert_eq!(
            (topic.as_str(), request),
            ("$aws/certificates/create/json", json!({}))
        );

        let created = json!({"certificateId": "c1", "certificatePem": "PEM", "privateKey": "KEY", "certificateOwnershipToken": "tok"});
        device.handle(
            "$aws/certificates/create/json/accepted",
            created.to_string().as_bytes(),
            0,
        );
        let refused = json!({"statusCode": 403, "errorCode": "Forbidden", "errorMessage": "the pre-provisioning hook did not allow provisioning"});
        let steps = device.handle(
            "$aws/provisioning-templates/shoal-fleet/provision/json/rejected",
            refused.to_string().as_bytes(),
            0,
        );
        assert!(
            matches!(&steps[..], [Step::Refused(why)] if why.contains("did not allow")),
            "{steps:?}"
        );
        assert!(device.resend().is_empty(), "done");
    }

    #[test]
    fn a_token_that_is_no_longer_good_starts_over_with_a_new_certificate() {
        let mut device = claim(KeySource::Aws, None);
        device.start();
        let created = json!({"certificateId": "c1", "certificatePem": "PEM", "privateKey": "KEY", "certificateOwnershipToken": "tok"});
        device.handle(
            "$aws/certificates/create/json/accepted",
            created.to_string().as_bytes(),
            0,
        );
        let expired = json!({"statusCode": 403, "errorCode": "Forbidden", "errorMessage": "the certificate ownership token is not valid"});
        let steps = device.handle(
            "$aws/provisioning-templates/shoal-fleet/provision/json/rejected",
            expired.to_string().as_bytes(),
            0,
        );
        assert!(matches!(steps[..], [Step::Wait(_)]));
        let (topic, _) = payload(&device.resend()[0]);
        assert_eq!(topic, "$aws/certificates/create/json");
    }
}
