//! Provisioning: the factory manifest and the pre-provisioning hook's decision.
//!
//! The manifest lists every device the factory built, keyed by serial. Fleet provisioning by claim
//! asks the hook (AWS's documented contract: [`HookRequest`] in, [`HookResponse`] out) before a
//! device gets a thing and a certificate; the hook allows only a serial that is in the manifest,
//! not revoked or retired, of a model the template may provision, and not already provisioned to
//! another certificate. The same certificate asking again gets the same answer.

use shoal_wire::ids::NameError;
use shoal_wire::validated_string;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::ids::ThingName;

mod proof;
pub use proof::{
    CertificateError, FACTORY_SECRET_PARAMETER, MAX_FACTORY_SECRET_LEN, Proof, ProofError,
    ProofTextError, public_key_fingerprint,
};

/// Every connection made with the fleet's claim certificate uses a client id starting with this
/// (e.g. `claim.<serial>.<boot>`); the claim policy allows no other. `.` is in neither the serial
/// nor the thing-name alphabet, so a claim connection can never take a device's client id (AWS
/// would disconnect the device: a fleet-wide denial of service from one leaked firmware image),
/// and presence never mistakes one for a device.
pub const CLAIM_CLIENT_ID_PREFIX: &str = "claim.";

/// The device parameter of the provisioning template that carries the serial.
pub const SERIAL_PARAMETER: &str = "SerialNumber";
/// The override that names the thing.
pub const THING_NAME_PARAMETER: &str = "ThingName";
/// The override that names the thing group (empty when the manifest has none).
pub const THING_GROUP_PARAMETER: &str = "ThingGroup";
/// The override that carries the device model.
pub const MODEL_PARAMETER: &str = "Model";
/// The override that carries the factory batch.
pub const BATCH_PARAMETER: &str = "Batch";

validated_string!(
    /// A factory serial number: 1–64 of `[A-Za-z0-9_-]`, so that it is a valid thing name too.
    Serial,
    NameError,
    |value| check_serial(value).map_err(NameError::of("serial"))
);

fn check_serial(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > 64 {
        return Err(format!(
            "is {} characters long; it must be 1 to 64",
            value.len()
        ));
    }
    match value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-')))
    {
        Some(c) => Err(format!(
            "contains {c:?}; only letters, digits, '_' and '-' are allowed"
        )),
        None => Ok(()),
    }
}

impl Serial {
    /// The thing a serial becomes: the serial itself, which the serial's alphabet makes a valid
    /// thing name. One rule, so the hook, JITR and the CLI always agree.
    pub fn thing_name(&self) -> ThingName {
        ThingName::parse(self.as_str()).expect("a serial is a valid thing name")
    }
}

/// Where a device is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    /// Built, never provisioned.
    Pending,
    /// Has a certificate and a thing.
    Provisioned,
    /// Refused for good: its certificate is revoked.
    Revoked,
    /// Decommissioned by an operator.
    Retired,
}

impl DeviceStatus {
    /// The status's lowercase name (`pending`, `provisioned`, `revoked`, `retired`), as stored
    /// and as `parse` reads it.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Pending => "pending",
            DeviceStatus::Provisioned => "provisioned",
            DeviceStatus::Revoked => "revoked",
            DeviceStatus::Retired => "retired",
        }
    }
}

impl fmt::Display for DeviceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A text that is not a [`DeviceStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown device status {0:?} (pending, provisioned, revoked, retired)")]
pub struct UnknownStatus(pub String);

impl FromStr for DeviceStatus {
    type Err = UnknownStatus;
    /// `pending`, `provisioned`, `revoked` or `retired`.
    ///
    /// # Errors
    /// [`UnknownStatus`] for any other text.
    fn from_str(text: &str) -> Result<Self, UnknownStatus> {
        match text {
            "pending" => Ok(DeviceStatus::Pending),
            "provisioned" => Ok(DeviceStatus::Provisioned),
            "revoked" => Ok(DeviceStatus::Revoked),
            "retired" => Ok(DeviceStatus::Retired),
            other => Err(UnknownStatus(other.to_owned())),
        }
    }
}

/// One device of the factory manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    /// The factory serial: the manifest's key.
    pub serial: Serial,
    /// The device model, which a template must allow (see [`TemplateModels`]).
    pub model: String,
    /// The factory batch it was built in.
    pub batch: String,
    /// Where the device is in its life.
    pub status: DeviceStatus,
    /// The certificate it was provisioned with.
    pub certificate_id: Option<String>,
    /// The thing it was provisioned as; `None` while it has none.
    pub thing_name: Option<ThingName>,
    /// The thing group it joins when provisioned; `None`: no group.
    pub thing_group: Option<String>,
    /// Thing attributes the device gets (AWS allows 50 per thing).
    pub attributes: BTreeMap<String, String>,
    /// What the device must show beyond its serial to be provisioned (`None`: the serial alone).
    pub proof: Option<Proof>,
    /// When the entry was created (ms since the epoch).
    pub created_at_ms: i64,
    /// When the entry last changed (ms since the epoch).
    pub updated_at_ms: i64,
}

/// The pre-provisioning hook's input, as AWS IoT sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookRequest {
    /// The id of the claim certificate the device connected with (`claimCertificateId`).
    pub claim_certificate_id: String,
    /// The id of the device certificate being provisioned (`certificateId`).
    pub certificate_id: String,
    /// That certificate in PEM (`certificatePem`); empty when the request has none.
    #[serde(default)]
    pub certificate_pem: String,
    /// The provisioning template's ARN (`templateArn`).
    pub template_arn: String,
    /// The MQTT client id of the device's claim connection (`clientId`); empty when absent.
    #[serde(default)]
    pub client_id: String,
    /// The parameters the device sent with `RegisterThing` (e.g. `SerialNumber`,
    /// `FactorySecret`); empty when absent.
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
}

impl HookRequest {
    /// The template's name: the last part of `arn:aws:iot:<region>:<account>:provisioningtemplate/<name>`.
    pub fn template_name(&self) -> &str {
        self.template_arn
            .rsplit_once("provisioningtemplate/")
            .map_or("", |(_, name)| name)
    }
}

/// The pre-provisioning hook's answer, as AWS IoT expects it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookResponse {
    /// Whether AWS IoT may go on provisioning the device (`allowProvisioning`).
    pub allow_provisioning: bool,
    /// Template parameters to set instead of the device's (`parameterOverrides`); left out when
    /// empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameter_overrides: BTreeMap<String, String>,
}

impl HookResponse {
    /// A refusal: `allowProvisioning: false`, no overrides.
    pub fn deny() -> Self {
        Self {
            allow_provisioning: false,
            parameter_overrides: BTreeMap::new(),
        }
    }
}

/// Why the hook said no. Every path that is not an explicit yes is one of these.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Denial {
    /// The request has no `SerialNumber` parameter.
    #[error("the request has no {SERIAL_PARAMETER} parameter")]
    NoSerial,
    /// The `SerialNumber` parameter is not a valid [`Serial`]: the text sent, and what the rule
    /// found.
    #[error("serial {0:?} is malformed: {1}")]
    BadSerial(String, NameError),
    /// The serial is not in the factory manifest.
    #[error("serial {0} is not in the factory manifest")]
    UnknownSerial(Serial),
    /// The serial's status forbids provisioning: revoked, retired, or provisioned with no
    /// certificate recorded.
    #[error("serial {0} is {1}")]
    NotProvisionable(Serial, DeviceStatus),
    /// The serial is already provisioned to another certificate.
    #[error("serial {serial} is already provisioned to certificate {existing}")]
    OtherCertificate {
        /// The serial asked for.
        serial: Serial,
        /// The certificate id it is provisioned to.
        existing: String,
    },
    /// The request's template may not provision the serial's model (see [`TemplateModels`]).
    #[error("model {model:?} of serial {serial} may not be provisioned by template {template:?}")]
    ModelNotAllowed {
        /// The serial asked for.
        serial: Serial,
        /// Its model, from the manifest.
        model: String,
        /// The template's name, from the request's ARN.
        template: String,
    },
    /// The device did not show the proof of possession its manifest row requires.
    #[error("serial {0}: {1}")]
    Proof(Serial, ProofError),
    /// Deciding failed (e.g. a table could not be read), so the hook denies to be safe; the
    /// message says what failed.
    #[error("internal error, denied to be safe: {0}")]
    Internal(String),
}

impl Denial {
    /// A short stable code for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Denial::NoSerial => "no_serial",
            Denial::BadSerial(..) => "bad_serial",
            Denial::UnknownSerial(_) => "unknown_serial",
            Denial::NotProvisionable(..) => "not_provisionable",
            Denial::OtherCertificate { .. } => "other_certificate",
            Denial::ModelNotAllowed { .. } => "model_not_allowed",
            Denial::Proof(_, ProofError::Missing(_)) => "proof_missing",
            Denial::Proof(_, ProofError::Mismatch(_)) => "proof_mismatch",
            Denial::Internal(_) => "internal_error",
        }
    }
}

/// Which device models each provisioning template may provision
/// (`SHOAL_TEMPLATE_MODELS`: `template=model,model;template=model`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateModels(BTreeMap<String, Vec<String>>);

impl TemplateModels {
    /// Whether `template` (a template name, not its ARN) may provision devices of `model`.
    pub fn allows(&self, template: &str, model: &str) -> bool {
        self.0
            .get(template)
            .is_some_and(|models| models.iter().any(|m| m == model))
    }
}

impl FromStr for TemplateModels {
    type Err = String;
    /// `template=model,model;template=model` (blank entries ignored).
    ///
    /// # Errors
    /// A message naming the entry when it is not `template=model,…`, the template name is not
    /// letters, digits, `_` or `-`, a model is empty, or a template appears twice.
    fn from_str(text: &str) -> Result<Self, String> {
        crate::lists::keyed_lists(text, |_| Ok(()))
            .map(Self)
            .map_err(|e| e.to_string())
    }
}

/// The serial a request is about.
///
/// # Errors
/// [`Denial::NoSerial`] when the request has no `SerialNumber` parameter, [`Denial::BadSerial`]
/// when it is not a valid serial.
pub fn requested_serial(request: &HookRequest) -> Result<Serial, Denial> {
    let raw = request
        .parameters
        .get(SERIAL_PARAMETER)
        .ok_or(Denial::NoSerial)?;
    Serial::parse(raw).map_err(|why| Denial::BadSerial(raw.clone(), why))
}

/// The hook's decision for `request`, given the serial's manifest entry (`None`: not in the
/// manifest). An allowed request gets the overrides that name the thing and carry the manifest's
/// group, model, batch and attributes (an attribute never replaces a named override).
///
/// # Errors
/// The [`Denial`]: [`NoSerial`](Denial::NoSerial) or [`BadSerial`](Denial::BadSerial) (see
/// [`requested_serial`]), [`UnknownSerial`](Denial::UnknownSerial) without an entry,
/// [`OtherCertificate`](Denial::OtherCertificate) when it is provisioned to another certificate,
/// [`NotProvisionable`](Denial::NotProvisionable) when revoked, retired or provisioned with no
/// certificate recorded, [`ModelNotAllowed`](Denial::ModelNotAllowed) when the template may not
/// provision its model, [`Proof`](Denial::Proof) when the row's proof is missing or wrong.
pub fn decide(
    request: &HookRequest,
    entry: Option<&ManifestEntry>,
    models: &TemplateModels,
) -> Result<BTreeMap<String, String>, Denial> {
    let serial = requested_serial(request)?;
    let entry = entry.ok_or_else(|| Denial::UnknownSerial(serial.clone()))?;
    match entry.status {
        DeviceStatus::Pending => {}
        DeviceStatus::Provisioned => match &entry.certificate_id {
            Some(existing) if *existing == request.certificate_id => {}
            Some(existing) => {
                return Err(Denial::OtherCertificate {
                    serial,
                    existing: existing.clone(),
                });
            }
            None => return Err(Denial::NotProvisionable(serial, entry.status)),
        },
        status @ (DeviceStatus::Revoked | DeviceStatus::Retired) => {
            return Err(Denial::NotProvisionable(serial, status));
        }
    }
    let template = request.template_name();
    if !models.allows(template, &entry.model) {
        return Err(Denial::ModelNotAllowed {
            serial,
            model: entry.model.clone(),
            template: template.to_owned(),
        });
    }
    if let Some(proof) = &entry.proof {
        proof
            .check_request(
                &request.certificate_pem,
                request
                    .parameters
                    .get(FACTORY_SECRET_PARAMETER)
                    .map(String::as_str),
            )
            .map_err(|e| Denial::Proof(serial.clone(), e))?;
    }
    let mut overrides = entry.attributes.clone();
    overrides.insert(THING_NAME_PARAMETER.into(), serial.thing_name().to_string());
    overrides.insert(
        THING_GROUP_PARAMETER.into(),
        entry.thing_group.clone().unwrap_or_default(),
    );
    overrides.insert(MODEL_PARAMETER.into(), entry.model.clone());
    overrides.insert(BATCH_PARAMETER.into(), entry.batch.clone());
    Ok(overrides)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models() -> TemplateModels {
        "shoal-fleet=th-v2,gps-v1".parse().unwrap()
    }

    fn entry(status: DeviceStatus, cert: Option<&str>) -> ManifestEntry {
        ManifestEntry {
            batch: "2026-11".into(),
            thing_group: Some("greenhouse".into()),
            attributes: [("site".to_owned(), "lyon".to_owned())].into(),
            created_at_ms: 1,
            updated_at_ms: 1,
            ..crate::test_util::manifest_entry("SN-0001", status, cert)
        }
    }

    fn request(serial: Option<&str>, cert: &str) -> HookRequest {
        crate::test_util::hook_request(serial, cert)
    }

    #[test]
    fn a_pending_serial_of_an_allowed_model_is_allowed_with_its_overrides() {
        let overrides = decide(
            &request(Some("SN-0001"), "c1"),
            Some(&entry(DeviceStatus::Pending, None)),
            &models(),
        )
        .unwrap();
        assert_eq!(overrides["ThingName"], "SN-0001");
        assert_eq!(overrides["ThingGroup"], "greenhouse");
        assert_eq!(overrides["Model"], "th-v2");
        assert_eq!(overrides["Batch"], "2026-11");
        assert_eq!(overrides["site"], "lyon");
    }

    #[test]
    fn the_same_certificate_again_gets_the_same_answer() {
        let first = decide(
            &request(Some("SN-0001"), "c1"),
            Some(&entry(DeviceStatus::Pending, None)),
            &models(),
        );
        let again = decide(
            &request(Some("SN-0001"), "c1"),
            Some(&entry(DeviceStatus::Provisioned, Some("c1"))),
            &models(),
        );
        assert_eq!(first, again);
    }

    #[test]
    fn every_refusal_has_its_reason() {
        let pending = entry(DeviceStatus::Pending, None);
        let cases: Vec<(HookRequest, Option<ManifestEntry>, &str)> = vec![
            (request(None, "c1"), Some(pending.clone()), "no_serial"),
            (
                request(Some("SN 1"), "c1"),
                Some(pending.clone()),
                "bad_serial",
            ),
            (request(Some("SN-0001"), "c1"), None, "unknown_serial"),
            (
                request(Some("SN-0001"), "c2"),
                Some(entry(DeviceStatus::Provisioned, Some("c1"))),
                "other_certificate",
            ),
            (
                request(Some("SN-0001"), "c1"),
                Some(entry(DeviceStatus::Revoked, Some("c1"))),
                "not_provisionable",
            ),
            (
                request(Some("SN-0001"), "c1"),
                Some(entry(DeviceStatus::Retired, None)),
                "not_provisionable",
            ),
            (
                request(Some("SN-0001"), "c1"),
                Some(ManifestEntry {
                    model: "camera-v1".into(),
                    ..pending.clone()
                }),
                "model_not_allowed",
            ),
        ];
        for (req, e, code) in cases {
            let denial = decide(&req, e.as_ref(), &models()).unwrap_err();
            assert_eq!(denial.code(), code, "{denial}");
        }
        // A template the configuration does not know allows nothing.
        let mut other = request(Some("SN-0001"), "c1");
        other.template_arn = "arn:aws:iot:us-east-1:1:provisioningtemplate/unknown".into();
        assert_eq!(
            decide(&other, Some(&pending), &models())
                .unwrap_err()
                .code(),
            "model_not_allowed"
        );
    }

    #[test]
    fn a_row_with_a_proof_needs_it_on_every_path() {
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(b"s3cret-of-SN-0001").into();
        let with_secret = ManifestEntry {
            proof: Some(Proof::SecretSha256(digest)),
            ..entry(DeviceStatus::Pending, None)
        };
        let mut asked = request(Some("SN-0001"), "c1");
        let code = |r: &HookRequest, e: &ManifestEntry| {
            decide(r, Some(e), &models()).map_err(|d| (d.code(), d.to_string()))
        };
        assert_eq!(code(&asked, &with_secret).unwrap_err().0, "proof_missing");
        asked
            .parameters
            .insert(FACTORY_SECRET_PARAMETER.into(), "s3cret-of-SN-0002".into());
        let (mismatch, message) = code(&asked, &with_secret).unwrap_err();
        assert_eq!(mismatch, "proof_mismatch");
        assert!(!message.contains("s3cret"), "{message}");
        asked
            .parameters
            .insert(FACTORY_SECRET_PARAMETER.into(), "s3cret-of-SN-0001".into());
        let overrides = code(&asked, &with_secret).unwrap();
        assert!(
            !overrides.values().any(|v| v.contains("s3cret")),
            "{overrides:?}"
        );
        // The same certificate asking again must still show it.
        let again = ManifestEntry {
            proof: Some(Proof::SecretSha256(digest)),
            ..entry(DeviceStatus::Provisioned, Some("c1"))
        };
        assert!(code(&asked, &again).is_ok());
        assert_eq!(
            code(&request(Some("SN-0001"), "c1"), &again).unwrap_err().0,
            "proof_missing"
        );
        // A key row: the certificate being provisioned must carry the key; a secret does not do.
        let with_key = ManifestEntry {
            proof: Some(Proof::KeySha256(digest)),
            ..entry(DeviceStatus::Pending, None)
        };
        assert_eq!(code(&asked, &with_key).unwrap_err().0, "proof_missing");
    }

    #[test]
    fn requests_and_responses_use_aws_field_names() {
        let req: HookRequest = serde_json::from_value(serde_json::json!({
            "claimCertificateId": "aaa",
            "certificateId": "bbb",
            "certificatePem": "-----BEGIN CERTIFICATE-----",
            "templateArn": "arn:aws:iot:us-east-1:1234567890:provisioningtemplate/MyTemplate",
            "clientId": "221a6d10-9c7f-42f1-9153-e52e6fc869c1",
            "parameters": {"SerialNumber": "SN-1"}
        }))
        .unwrap();
        assert_eq!(req.template_name(), "MyTemplate");
        let allowed = HookResponse {
            allow_provisioning: true,
            parameter_overrides: [("ThingName".to_owned(), "SN-1".to_owned())].into(),
        };
        assert_eq!(
            serde_json::to_value(&allowed).unwrap(),
            serde_json::json!({"allowProvisioning": true, "parameterOverrides": {"ThingName": "SN-1"}})
        );
        assert_eq!(
            serde_json::to_value(HookResponse::deny()).unwrap(),
            serde_json::json!({"allowProvisioning": false})
        );
    }

    #[test]
    fn serials_are_thing_names() {
        assert_eq!(
            Serial::parse("SN_01-a").unwrap().thing_name().as_str(),
            "SN_01-a"
        );
        for bad in ["", "a b", "a:b", "a/b", &"x".repeat(65)] {
            assert!(Serial::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Serial::parse(&"x".repeat(64)).is_ok());
    }

    #[test]
    fn statuses_round_trip() {
        for s in [
            DeviceStatus::Pending,
            DeviceStatus::Provisioned,
            DeviceStatus::Revoked,
            DeviceStatus::Retired,
        ] {
            assert_eq!(s.as_str().parse::<DeviceStatus>(), Ok(s));
        }
        assert_eq!(
            "active".parse::<DeviceStatus>(),
            Err(UnknownStatus("active".into()))
        );
    }
}

/// A manifest CSV row that cannot be imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// 1-based line in the file (the header is line 1).
    pub line: u64,
    /// Why the row was refused.
    pub reason: String,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// AWS IoT allows 50 attributes per thing.
pub const MAX_ATTRIBUTES: usize = 50;

fn check_attribute(text: &str, max: usize, what: &str) -> Result<(), String> {
    if text.len() > max {
        return Err(format!("{what} {text:?} is longer than {max} characters"));
    }
    match text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_.,@/:#-".contains(*c)))
    {
        Some(c) => Err(format!("{what} {text:?} contains {c:?}")),
        None => Ok(()),
    }
}

fn parse_attributes(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut attributes = BTreeMap::new();
    for pair in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("attribute {pair:?} is not key=value"))?;
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() {
            return Err(format!("attribute {pair:?} has no name"));
        }
        check_attribute(key, 128, "attribute name")?;
        check_attribute(value, 800, "attribute value")?;
        if attributes
            .insert(key.to_owned(), value.to_owned())
            .is_some()
        {
            return Err(format!("attribute {key} appears twice"));
        }
    }
    if attributes.len() > MAX_ATTRIBUTES {
        return Err(format!(
            "{} attributes; a thing has at most {MAX_ATTRIBUTES}",
            attributes.len()
        ));
    }
    Ok(attributes)
}

fn parse_row(record: &csv::StringRecord, now_ms: i64) -> Result<ManifestEntry, String> {
    let field = |i: usize| record.get(i).map(str::trim).unwrap_or_default();
    let serial = Serial::parse(field(0)).map_err(|e| format!("serial {:?} {e}", field(0)))?;
    let required = |i: usize, name: &str| -> Result<String, String> {
        let value = field(i);
        if value.is_empty() {
            return Err(format!("{name} is empty"));
        }
        check_attribute(value, 128, name)?;
        Ok(value.to_owned())
    };
    let model = required(1, "model")?;
    let batch = required(2, "batch")?;
    let thing_group = match field(3) {
        "" => None,
        group => {
            check_attribute(group, 128, "thing group")?;
            Some(group.to_owned())
        }
    };
    Ok(ManifestEntry {
        serial,
        model,
        batch,
        status: DeviceStatus::Pending,
        certificate_id: None,
        thing_name: None,
        thing_group,
        attributes: parse_attributes(field(4))?,
        proof: match field(5) {
            "" => None,
            proof => Some(proof.parse().map_err(|e: ProofTextError| e.to_string())?),
        },
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
    })
}

/// Reads a manifest CSV: header `serial,model,batch,thing_group,attributes[,proof]` (the last
/// three may be empty; attributes as `key=value;key=value`; proof as [`Proof`]'s text form, the
/// column itself optional). Every row is checked; any bad row (malformed field, a serial twice, a
/// proof twice: two devices sharing a key or a secret) makes the whole file refused, with every
/// bad line listed.
///
/// # Errors
/// Every [`RowError`] found, in file order, when any row is bad; a wrong header or a file with
/// no device is one error on line 1.
pub fn parse_manifest_csv(
    text: &str,
    now_ms: i64,
) -> Result<Vec<(u64, ManifestEntry)>, Vec<RowError>> {
    const HEADER: [&str; 6] = [
        "serial",
        "model",
        "batch",
        "thing_group",
        "attributes",
        "proof",
    ];
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut errors = Vec::new();
    // `proof` is optional: a file without the column is a manifest of serials alone.
    let mut columns = HEADER.len();
    match reader.headers() {
        Ok(header) if header.iter().eq(HEADER) => {}
        Ok(header) if header.iter().eq(HEADER[..5].iter().copied()) => columns = 5,
        // A wrong header stops here: rows read against it would be misread (and their cells,
        // a proof among them, echoed in errors); the header's own cells are not echoed either,
        // since a file without a header has a device row there.
        Ok(header) => {
            return Err(vec![RowError {
                line: 1,
                reason: format!(
                    "the header ({} columns) is not {} (the last column optional); nothing was read",
                    header.len(),
                    HEADER.join(",")
                ),
            }]);
        }
        Err(e) => errors.push(RowError {
            line: 1,
            reason: e.to_string(),
        }),
    }
    let mut entries: Vec<(u64, ManifestEntry)> = Vec::new();
    let mut first_line: BTreeMap<String, u64> = BTreeMap::new();
    let mut proof_lines: std::collections::HashMap<Proof, u64> = std::collections::HashMap::new();
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                errors.push(RowError {
                    line,
                    reason: e.to_string(),
                });
                continue;
            }
        };
        let line = record.position().map_or(0, |p| p.line());
        // With the proof column, every row says whether it has a proof (an empty last field
        // for none): a short row from a broken export must not lose its proof silently.
        let short = columns == HEADER.len() && record.len() < columns;
        if record.len() > columns || short {
            let expected = if short { "exactly" } else { "at most" };
            errors.push(RowError {
                line,
                reason: format!("{} fields; expected {expected} {columns}", record.len()),
            });
            continue;
        }
        match parse_row(&record, now_ms) {
            Ok(entry) => {
                let proof_line = entry.proof.as_ref().and_then(|p| proof_lines.get(p));
                match (first_line.get(entry.serial.as_str()), proof_line) {
                    (Some(first), _) => errors.push(RowError {
                        line,
                        reason: format!("serial {} already on line {first}", entry.serial),
                    }),
                    (None, Some(first)) => errors.push(RowError {
                        line,
                        reason: format!(
                            "the same proof is already on line {first}: each device needs its own key or secret"
                        ),
                    }),
                    (None, None) => {
                        first_line.insert(entry.serial.to_string(), line);
                        if let Some(proof) = &entry.proof {
                            proof_lines.insert(proof.clone(), line);
                        }
                        entries.push((line, entry));
                    }
                }
            }
            Err(reason) => errors.push(RowError { line, reason }),
        }
    }
    if entries.is_empty() && errors.is_empty() {
        errors.push(RowError {
            line: 1,
            reason: "no devices in the file".into(),
        });
    }
    if errors.is_empty() {
        Ok(entries)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod csv_tests {
    use super::*;

    const HEADER: &str = "serial,model,batch,thing_group,attributes\n";

    #[test]
    fn a_clean_file_becomes_pending_entries() {
        let text = format!(
            "{HEADER}SN-1,th-v2,2026-11,greenhouse,site=lyon;rack=3\nSN-2,th-v2,2026-11,,\n"
        );
        let entries = parse_manifest_csv(&text, 7).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!((entries[0].0, entries[1].0), (2, 3));
        assert_eq!(entries[0].1.attributes["rack"], "3");
        assert_eq!(entries[0].1.thing_group.as_deref(), Some("greenhouse"));
        assert_eq!(entries[1].1.thing_group, None);
        assert!(
            entries
                .iter()
                .all(|(_, e)| e.status == DeviceStatus::Pending && e.created_at_ms == 7)
        );
    }

    #[test]
    fn every_bad_line_is_reported_with_its_number() {
        let text = format!(
            "{HEADER}SN-1,th-v2,b1,,\nSN 2,th-v2,b1,,\nSN-3,,b1,,\nSN-1,th-v2,b1,,\nSN-4,th-v2,b1,,site\nSN-5,th-v2,b1,,,extra\nSN-6,th-v2,b1,,\n"
        );
        let errors = parse_manifest_csv(&text, 0).unwrap_err();
        let lines: Vec<u64> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![3, 4, 5, 6, 7], "{errors:#?}");
        assert!(
            errors[0].reason.contains("serial \"SN 2\""),
            "{}",
            errors[0]
        );
        assert_eq!(errors[1].reason, "model is empty");
        assert_eq!(errors[2].reason, "serial SN-1 already on line 2");
        assert!(errors[3].reason.contains("not key=value"));
        assert!(errors[4].reason.contains("6 fields"));
        assert_eq!(
            errors[0].to_string(),
            format!("line 3: {}", errors[0].reason)
        );
    }

    #[test]
    fn the_proof_column_is_optional_checked_and_unique() {
        let key = format!("key-sha256:{}", "a1".repeat(32));
        let secret = format!("secret-sha256:{}", "b2".repeat(32));
        let text = format!(
            "serial,model,batch,thing_group,attributes,proof\nSN-1,th-v2,b1,,,{key}\nSN-2,th-v2,b1,,,\nSN-3,th-v2,b1,,,{secret}\n"
        );
        let entries = parse_manifest_csv(&text, 0).unwrap();
        assert_eq!(
            entries[0].1.proof.as_ref().map(Proof::to_string),
            Some(key.clone())
        );
        assert_eq!(entries[1].1.proof, None);
        assert_eq!(
            entries[2].1.proof.as_ref().map(Proof::scheme),
            Some("secret-sha256")
        );

        let bad = format!(
            "serial,model,batch,thing_group,attributes,proof\nSN-1,th-v2,b1,,,{key}\nSN-2,th-v2,b1,,,{key}\nSN-3,th-v2,b1,,,sha1:00\nSN-4,th-v2,b1,,,,x\n"
        );
        let errors = parse_manifest_csv(&bad, 0).unwrap_err();
        let lines: Vec<u64> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![3, 4, 5], "{errors:#?}");
        assert!(errors[0].reason.contains("same proof is already on line 2"));
        assert!(
            errors[1].reason.contains("scheme is unknown"),
            "{}",
            errors[1]
        );
        assert!(errors[2].reason.contains("7 fields; expected at most 6"));
        // Without the column, a sixth field is still an error.
        let five = format!("{HEADER}SN-1,th-v2,b1,,,{key}\n");
        assert!(
            parse_manifest_csv(&five, 0).unwrap_err()[0]
                .reason
                .contains("6 fields")
        );
        // With it, a short row is refused rather than imported without its proof.
        let short = "serial,model,batch,thing_group,attributes,proof\nSN-1,th-v2,b1,,\n";
        assert_eq!(
            parse_manifest_csv(short, 0).unwrap_err()[0].reason,
            "5 fields; expected exactly 6"
        );
    }

    #[test]
    fn a_wrong_header_or_an_empty_file_is_refused() {
        let errors = parse_manifest_csv("sn,model\nSN-1,th\n", 0).unwrap_err();
        assert_eq!(errors[0].line, 1);
        // No header (a device row first), or columns in another order: one error, no cell echoed.
        let secret = "secret-sha256:be3941a5";
        for text in [
            format!("SN-1,th-v2,b1,,,{secret}\nSN-2,th-v2,b1,,,\n"),
            format!("serial,model,batch,thing_group,proof,attributes\nSN-1,th-v2,b1,,{secret},\n"),
        ] {
            let errors = parse_manifest_csv(&text, 0).unwrap_err();
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(!errors[0].reason.contains("be3941a5"), "{}", errors[0]);
            assert!(
                errors[0].reason.contains("is not serial,model"),
                "{}",
                errors[0]
            );
        }
        assert_eq!(
            parse_manifest_csv(HEADER, 0).unwrap_err()[0].reason,
            "no devices in the file"
        );
    }
}

/// The serial a device certificate names: its subject's common name (JITR: the factory signs each
/// device certificate with the serial as CN).
///
/// # Errors
/// [`CertificateError`]: the PEM or certificate does not parse, the subject has no common name
/// that is text, or the common name is not a serial.
pub fn serial_from_certificate_pem(pem: &str) -> Result<Serial, CertificateError> {
    proof::with_certificate(pem, |certificate| {
        let cn = certificate
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .ok_or(CertificateError::NoCommonName)?;
        Serial::parse(cn).map_err(|reason| CertificateError::NotASerial {
            common_name: cn.to_owned(),
            reason,
        })
    })
}
