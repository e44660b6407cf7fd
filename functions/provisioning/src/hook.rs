//! The pre-provisioning hook: AWS IoT asks before it provisions a device by claim.
//!
//! It allows only what [`decide`] allows, then claims the serial for the certificate with a
//! conditional write, so that of two concurrent requests with different certificates exactly one
//! is allowed. Anything else — an unreachable table, a malformed item, a decision that would not
//! finish in time — denies: the hook never allows by default. AWS denies after 5 s; the hook
//! gives itself [`DEFAULT_DEADLINE`].

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use shoal_aws::config::{self, ConfigError, Source, TableName, vars};
use shoal_core::clock::now_ms;
use shoal_core::edge::EdgeError;
use shoal_core::ids::ThingName;
use shoal_core::provisioning::{
    Denial, DeviceStatus, HookRequest, HookResponse, ManifestEntry, Serial, TemplateModels, decide,
    requested_serial,
};

/// The hook's own time limit, well inside AWS's 5 seconds (cold start and network included).
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(2500);

/// The manifest as the hook needs it.
pub trait Manifest: Sync {
    fn get(
        &self,
        serial: &Serial,
    ) -> impl Future<Output = Result<Option<ManifestEntry>, EdgeError>> + Send;

    /// Marks the serial provisioned to the certificate if it is pending or already provisioned to
    /// it (`pending_only`: only if pending); `Ok(false)` when the condition failed.
    fn claim(
        &self,
        serial: &Serial,
        certificate_id: &str,
        thing: &ThingName,
        now_ms: i64,
        pending_only: bool,
    ) -> impl Future<Output = Result<bool, EdgeError>> + Send;

    /// Moves a serial claimed by `old_certificate` to `new_certificate`, only if it is still
    /// provisioned to `old_certificate` and unchanged since `unchanged_since_ms` or earlier, with
    /// an audit record; `Ok(false)` when the condition failed.
    fn take_over(
        &self,
        serial: &Serial,
        old_certificate: &str,
        new_certificate: &str,
        thing: &ThingName,
        unchanged_since_ms: i64,
        now_ms: i64,
    ) -> impl Future<Output = Result<bool, EdgeError>> + Send;

    /// Undoes this hook's own claim of the serial for `certificate_id`, written at
    /// `claimed_at_ms`, when it then had to deny: pending again only if that write is still what
    /// the entry holds; `Ok(false)` otherwise.
    fn release_own_claim(
        &self,
        serial: &Serial,
        certificate_id: &str,
        claimed_at_ms: i64,
        now_ms: i64,
    ) -> impl Future<Output = Result<bool, EdgeError>> + Send;

    /// Keeps a refusal in the serial's audit trail (the serial exists).
    fn record_refusal(
        &self,
        serial: &Serial,
        certificate_id: &str,
        reason: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<(), EdgeError>> + Send;
}

/// The IoT registry as the hook needs it.
pub trait Certificates: Sync {
    /// The certificate's status (`ACTIVE`, `INACTIVE`, `PENDING_ACTIVATION`, `REVOKED`, …);
    /// `None` when the registry has no such certificate.
    fn status(
        &self,
        certificate_id: &str,
    ) -> impl Future<Output = Result<Option<String>, EdgeError>> + Send;
    /// Creates `thing` with `attributes` (and the device thing type), or merges `attributes`
    /// into the thing that exists, and adds it to `group` (made if it does not exist). The provisioning
    /// template can only set the attributes it declares, and leaves the groups of a thing that
    /// exists as they are; this is how every manifest attribute (`hardware`, which rollouts
    /// target, among them) and the manifest's group reach the thing before RegisterThing
    /// merges the template's own.
    fn ensure_thing(
        &self,
        thing: &ThingName,
        attributes: &BTreeMap<String, String>,
        group: Option<&str>,
    ) -> impl Future<Output = Result<(), EdgeError>> + Send;
}

/// The attributes an allowed device's thing gets, from the hook's overrides: every manifest
/// attribute, and `serial`, `model` and `batch` as the provisioning template writes them.
pub fn thing_attributes(overrides: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    use shoal_core::provisioning::{
        BATCH_PARAMETER, MODEL_PARAMETER, THING_GROUP_PARAMETER, THING_NAME_PARAMETER,
    };
    let mut attributes: BTreeMap<String, String> = overrides
        .iter()
        .filter(|(k, _)| {
            ![
                THING_NAME_PARAMETER,
                THING_GROUP_PARAMETER,
                MODEL_PARAMETER,
                BATCH_PARAMETER,
            ]
            .contains(&k.as_str())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (attribute, parameter) in [
        ("serial", THING_NAME_PARAMETER),
        ("model", MODEL_PARAMETER),
        ("batch", BATCH_PARAMETER),
    ] {
        if let Some(value) = overrides.get(parameter) {
            attributes.insert(attribute.to_owned(), value.clone());
        }
    }
    attributes
}

/// The device registry as provisioning needs it: where the certificate a thing is provisioned
/// with is recorded, so that presence can tell the device's lifecycle events from an impostor's
/// without a call per event.
pub trait DeviceCertificates: Sync {
    /// Records `certificate_id` as the certificate of `thing` (replacing an earlier one).
    fn record_certificate(
        &self,
        thing: &ThingName,
        certificate_id: &str,
    ) -> impl Future<Output = Result<(), EdgeError>> + Send;
}

/// How long a claim holds a serial for a certificate that has not become ACTIVE, by default.
/// Fleet provisioning activates the certificate within seconds of the hook's answer; a claim
/// older than this whose certificate is not ACTIVE belongs to a RegisterThing that failed (or a
/// hook answer that came too late for AWS), and a new certificate may take the serial over.
pub const DEFAULT_CLAIM_LEASE: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookConfig {
    pub manifest_table: TableName,
    /// `SHOAL_DEVICE_TABLE`: where an allowed certificate is recorded as the thing's.
    pub device_table: TableName,
    pub template_models: TemplateModels,
    /// `SHOAL_CLAIM_LEASE_S` (default [`DEFAULT_CLAIM_LEASE`]).
    pub claim_lease: Duration,
}

impl HookConfig {
    /// Reads the pre-provisioning hook's settings from `source`: `SHOAL_MANIFEST_TABLE`,
    /// `SHOAL_DEVICE_TABLE` and `SHOAL_TEMPLATE_MODELS` (required) and `SHOAL_CLAIM_LEASE_S`
    /// (seconds, default [`DEFAULT_CLAIM_LEASE`]).
    ///
    /// # Errors
    /// [`ConfigError`] naming the variable: missing (a table or `SHOAL_TEMPLATE_MODELS`), or
    /// malformed (a table name that is not valid, template models that do not parse, a lease
    /// that is not a whole number of seconds).
    pub fn from_source(source: &impl Source) -> Result<Self, ConfigError> {
        let lease_s: Option<u64> = config::optional(source, vars::CLAIM_LEASE_S)?;
        Ok(Self {
            manifest_table: config::required(source, vars::MANIFEST_TABLE)?,
            device_table: config::required(source, vars::DEVICE_TABLE)?,
            template_models: config::required(source, vars::TEMPLATE_MODELS)?,
            claim_lease: lease_s.map_or(DEFAULT_CLAIM_LEASE, Duration::from_secs),
        })
    }
}

/// What the hook decides with, besides the request.
pub struct Gate<'a, M, C, D> {
    pub manifest: &'a M,
    pub certificates: &'a C,
    /// Where an allowed certificate is recorded as the thing's (after the claim, before AWS
    /// activates it: no device connects unrecorded).
    pub devices: &'a D,
    pub models: &'a TemplateModels,
    pub claim_lease: Duration,
}

fn internal(e: EdgeError) -> Denial {
    Denial::Internal(e.to_string())
}

/// The thing of an allowed device, before its serial is claimed (a thing the registry fails to
/// make denies without claiming anything): every manifest attribute and the manifest's group
/// ([`Certificates::ensure_thing`]).
async fn prepare_thing(
    gate: &Gate<'_, impl Manifest, impl Certificates, impl DeviceCertificates>,
    overrides: &BTreeMap<String, String>,
) -> Result<(), Denial> {
    let Some(thing) = overrides.get(shoal_core::provisioning::THING_NAME_PARAMETER) else {
        return Ok(());
    };
    let thing = ThingName::parse(thing).map_err(|e| Denial::Internal(e.to_string()))?;
    let group = overrides
        .get(shoal_core::provisioning::THING_GROUP_PARAMETER)
        .map(String::as_str)
        .filter(|g| !g.is_empty());
    // Boxed: the hook's future is deep enough to reach the compiler's layout limit otherwise.
    Box::pin(
        gate.certificates
            .ensure_thing(&thing, &thing_attributes(overrides), group),
    )
    .await
    .map_err(|e| Denial::Internal(format!("the thing {thing} could not be made ready: {e}")))
}

/// What a hook invocation wrote to the manifest, for undoing it when the answer is a denial.
#[derive(Debug, Default)]
struct Claimed {
    /// Set just before the claim (or takeover) is sent: the write may land from then on.
    sent: std::sync::atomic::AtomicBool,
}

async fn decide_and_claim(
    request: &HookRequest,
    gate: &Gate<'_, impl Manifest, impl Certificates, impl DeviceCertificates>,
    now: i64,
    claimed: &Claimed,
) -> Result<HookResponse, Denial> {
    let (manifest, models) = (gate.manifest, gate.models);
    let serial = requested_serial(request)?;
    let entry = manifest.get(&serial).await.map_err(internal)?;
    let thing = serial.thing_name();
    let overrides = match decide(request, entry.as_ref(), models) {
        Err(Denial::OtherCertificate { serial, existing }) => {
            // `OtherCertificate` is only ever decided on an entry.
            let entry = entry.ok_or_else(|| Denial::Internal("entry vanished".into()))?;
            return Box::pin(take_over_lapsed_claim(
                request, gate, entry, serial, existing, now, claimed,
            ))
            .await;
        }
        decided => decided?,
    };
    prepare_thing(gate, &overrides).await?;
    // Only a pending serial's claim is this invocation's to undo (a serial provisioned to this
    // certificate already was claimed by an earlier answer), so a serial read pending is claimed
    // only while it is still pending: when two invocations for one certificate race (a device's
    // retry while the first still runs), one claims it and the other sees it claimed, and only
    // the first may give it back.
    let pending = entry
        .as_ref()
        .is_some_and(|e| e.status == DeviceStatus::Pending);
    if pending {
        claimed
            .sent
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
    let took = manifest
        .claim(&serial, &request.certificate_id, &thing, now, pending)
        .await
        .map_err(internal)?;
    if !took {
        claimed
            .sent
            .store(false, std::sync::atomic::Ordering::SeqCst);
        // Someone else changed the entry between our read and our write: decide again on what
        // is there now (another certificate won, the serial was revoked meanwhile, or another
        // invocation for this certificate claimed it: then it is this device's, claimed by
        // that invocation).
        let now = manifest.get(&serial).await.map_err(internal)?;
        decide(request, now.as_ref(), models)?;
        let ours = now.as_ref().is_some_and(|e| {
            e.status == DeviceStatus::Provisioned
                && e.certificate_id.as_deref() == Some(request.certificate_id.as_str())
        });
        // Claimed by the other invocation: claim it again (a new `updated_at`), so that the
        // other one, if its deadline passes, cannot give back what this one answers.
        if !ours
            || !manifest
                .claim(&serial, &request.certificate_id, &thing, now_ms(), false)
                .await
                .map_err(internal)?
        {
            return Err(Denial::Internal(format!(
                "serial {serial} changed while it was being claimed"
            )));
        }
    }
    gate.devices
        .record_certificate(&thing, &request.certificate_id)
        .await
        .map_err(internal)?;
    Ok(HookResponse {
        allow_provisioning: true,
        parameter_overrides: overrides,
    })
}

/// A claim is a lease: the serial's certificate `existing` is still PENDING_ACTIVATION (or gone
/// from the registry) and the entry has not changed for the lease time, so the requesting
/// certificate takes the serial over (conditionally, audited). Otherwise the serial stays
/// `existing`'s.
async fn take_over_lapsed_claim(
    request: &HookRequest,
    gate: &Gate<'_, impl Manifest, impl Certificates, impl DeviceCertificates>,
    entry: ManifestEntry,
    serial: Serial,
    existing: String,
    now: i64,
    claimed: &Claimed,
) -> Result<HookResponse, Denial> {
    let lease_ms = i64::try_from(gate.claim_lease.as_millis()).unwrap_or(i64::MAX);
    let held = Denial::OtherCertificate {
        serial: serial.clone(),
        existing: existing.clone(),
    };
    if now.saturating_sub(entry.updated_at_ms) < lease_ms {
        return Err(held);
    }
    let status = gate
        .certificates
        .status(&existing)
        .await
        .map_err(internal)?;
    // A certificate fleet provisioning created stays PENDING_ACTIVATION until RegisterThing
    // activates it, and AWS deletes it an hour after its ownership token expires unused
    // (<https://docs.aws.amazon.com/iot/latest/developerguide/fleet-provision-api.html>). Any
    // other status was set on purpose (ACTIVE, or INACTIVE/REVOKED by an operator): it holds.
    if !matches!(status.as_deref(), None | Some("PENDING_ACTIVATION")) {
        return Err(held);
    }
    // Everything else must allow it as for a pending serial (model, template).
    let pending = ManifestEntry {
        status: DeviceStatus::Pending,
        certificate_id: None,
        ..entry
    };
    let overrides = decide(request, Some(&pending), gate.models)?;
    prepare_thing(gate, &overrides).await?;
    claimed
        .sent
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let taken = gate
        .manifest
        .take_over(
            &serial,
            &existing,
            &request.certificate_id,
            &serial.thing_name(),
            now - lease_ms,
            now,
        )
        .await
        .map_err(internal)?;
    if !taken {
        return Err(Denial::Internal(format!(
            "serial {serial} changed while its lapsed claim was being taken over"
        )));
    }
    gate.devices
        .record_certificate(&serial.thing_name(), &request.certificate_id)
        .await
        .map_err(internal)?;
    tracing::warn!(
        %serial,
        previous_certificate = %existing,
        previous_status = status.as_deref().unwrap_or("absent"),
        certificate_id = %request.certificate_id,
        "lapsed claim taken over"
    );
    Ok(HookResponse {
        allow_provisioning: true,
        parameter_overrides: overrides,
    })
}

/// A denial after this invocation sent its claim: the claim is given back, so the device's next
/// attempt (with a new certificate) is not refused as "provisioned to another certificate" for
/// the whole claim lease. Bounded by [`RELEASE_DEADLINE`] (AWS waits 5 s for the hook in all).
async fn release_claim(
    request: &HookRequest,
    gate: &Gate<'_, impl Manifest, impl Certificates, impl DeviceCertificates>,
    serial: &str,
    claimed_at_ms: i64,
) {
    let Ok(parsed) = Serial::parse(serial) else {
        return;
    };
    let released = tokio::time::timeout(
        RELEASE_DEADLINE,
        gate.manifest
            .release_own_claim(&parsed, &request.certificate_id, claimed_at_ms, now_ms()),
    )
    .await;
    match released {
        Ok(Ok(true)) => tracing::warn!(
            serial,
            certificate_id = %request.certificate_id,
            "claim released after the denial"
        ),
        Ok(Ok(false)) => tracing::warn!(
            serial,
            certificate_id = %request.certificate_id,
            "no claim to release (it had not landed, or the entry changed since)"
        ),
        Ok(Err(e)) => tracing::error!(serial, error = %e, "the claim could not be released"),
        Err(_) => tracing::error!(serial, "the claim could not be released in time"),
    }
}

/// How long a denial may spend giving back its claim.
pub const RELEASE_DEADLINE: Duration = Duration::from_millis(1_500);

/// The answer's CloudWatch EMF line (dimension `Function` = `pre-provisioning-hook`), stamped
/// `timestamp_ms`: `Allowed` or `Denied` (the reason is in the log line `handle` writes).
pub fn metrics_line(response: &HookResponse, timestamp_ms: i64) -> String {
    let allowed = u64::from(response.allow_provisioning);
    shoal_aws::metrics::emf_counts(
        timestamp_ms,
        &[("Function", "pre-provisioning-hook")],
        &[("Allowed", allowed), ("Denied", 1 - allowed)],
    )
}

/// Answers one hook request within `deadline`; every failure is a logged denial.
pub async fn handle(
    request: &HookRequest,
    gate: &Gate<'_, impl Manifest, impl Certificates, impl DeviceCertificates>,
    deadline: Duration,
) -> HookResponse {
    let now = now_ms();
    let claimed = Claimed::default();
    let decided = tokio::time::timeout(deadline, decide_and_claim(request, gate, now, &claimed))
        .await
        .unwrap_or_else(|_| {
            Err(Denial::Internal(format!(
                "no decision within {} ms",
                deadline.as_millis()
            )))
        });
    let serial = request
        .parameters
        .get(shoal_core::provisioning::SERIAL_PARAMETER)
        .map(String::as_str)
        .unwrap_or_default();
    if decided.is_err() && claimed.sent.load(std::sync::atomic::Ordering::SeqCst) {
        release_claim(request, gate, serial, now).await;
    }
    match decided {
        Ok(response) => {
            tracing::info!(
                serial,
                certificate_id = %request.certificate_id,
                template = request.template_name(),
                "provisioning allowed"
            );
            response
        }
        Err(denial) => {
            tracing::warn!(
                serial,
                certificate_id = %request.certificate_id,
                template = request.template_name(),
                code = denial.code(),
                reason = %denial,
                "provisioning denied"
            );
            HookResponse::deny()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::Memory;

    #[test]
    fn the_metrics_line_counts_the_answer() {
        let allowed = HookResponse {
            allow_provisioning: true,
            parameter_overrides: BTreeMap::new(),
        };
        let line: serde_json::Value = serde_json::from_str(&metrics_line(&allowed, 3)).unwrap();
        assert_eq!(line["Function"], "pre-provisioning-hook");
        assert_eq!(
            (line["Allowed"].as_u64(), line["Denied"].as_u64()),
            (Some(1), Some(0))
        );
        let line: serde_json::Value =
            serde_json::from_str(&metrics_line(&HookResponse::deny(), 3)).unwrap();
        assert_eq!(
            (line["Allowed"].as_u64(), line["Denied"].as_u64()),
            (Some(0), Some(1))
        );
    }
    use shoal_core::provisioning::DeviceStatus;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    fn memory(serial: &str) -> Memory {
        let entry = ManifestEntry {
            serial: Serial::parse(serial).unwrap(),
            model: "th-v2".into(),
            batch: "b1".into(),
            status: DeviceStatus::Pending,
            certificate_id: None,
            thing_name: None,
            thing_group: None,
            attributes: BTreeMap::new(),
            proof: None,
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        Memory {
            entries: Mutex::new([(serial.to_owned(), entry)].into()),
            ..Memory::default()
        }
    }

    fn request(serial: &str, cert: &str) -> HookRequest {
        shoal_core::test_util::hook_request(Some(serial), cert)
    }

    static MODELS: std::sync::LazyLock<TemplateModels> =
        std::sync::LazyLock::new(|| "shoal-fleet=th-v2".parse().unwrap());

    fn gate(m: &Memory) -> Gate<'_, Memory, Memory, Memory> {
        Gate {
            manifest: m,
            certificates: m,
            devices: m,
            models: &MODELS,
            claim_lease: DEFAULT_CLAIM_LEASE,
        }
    }

    #[tokio::test]
    async fn an_allowed_device_gets_its_thing_with_every_manifest_attribute() {
        let m = memory("SN-7");
        m.entries
            .lock()
            .unwrap()
            .get_mut("SN-7")
            .unwrap()
            .attributes = [("hardware", "rev-b"), ("site", "lyon")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into();
        let answer = handle(&request("SN-7", "c7"), &gate(&m), DEFAULT_DEADLINE).await;
        assert!(answer.allow_provisioning);
        let things = m.things.lock().unwrap().clone();
        let expected: BTreeMap<String, String> = [
            ("batch", "b1"),
            ("hardware", "rev-b"),
            ("model", "th-v2"),
            ("serial", "SN-7"),
            ("site", "lyon"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into();
        assert_eq!(things.get("SN-7"), Some(&expected));
        let denied = handle(&request("SN-8", "c8"), &gate(&m), DEFAULT_DEADLINE).await;
        assert!(!denied.allow_provisioning);
        assert!(
            !m.things.lock().unwrap().contains_key("SN-8"),
            "no thing for a refused serial"
        );
    }

    #[tokio::test]
    async fn a_thing_that_cannot_be_made_denies_without_claiming_the_serial() {
        let m = memory("SN-9");
        m.entries
            .lock()
            .unwrap()
            .get_mut("SN-9")
            .unwrap()
            .thing_group = Some("broken-grp".into());
        let denied = handle(&request("SN-9", "c9"), &gate(&m), DEFAULT_DEADLINE).await;
        assert!(!denied.allow_provisioning);
        let entry = m.entries.lock().unwrap()["SN-9"].clone();
        assert_eq!(entry.status, DeviceStatus::Pending, "not claimed");
        assert_eq!(entry.certificate_id, None);
        assert!(m.recorded.lock().unwrap().is_empty());
        // The group made, the next certificate is allowed.
        m.entries
            .lock()
            .unwrap()
            .get_mut("SN-9")
            .unwrap()
            .thing_group = Some("greenhouse".into());
        let allowed = handle(&request("SN-9", "c10"), &gate(&m), DEFAULT_DEADLINE).await;
        assert!(allowed.allow_provisioning);
    }

    #[tokio::test]
    async fn allows_claims_and_answers_the_same_certificate_the_same_way() {
        let m = memory("SN-1");
        let first = handle(&request("SN-1", "c1"), &gate(&m), DEFAULT_DEADLINE).await;
        assert!(first.allow_provisioning);
        assert_eq!(first.parameter_overrides["ThingName"], "SN-1");
        let stored = m.entries.lock().unwrap()["SN-1"].clone();
        assert_eq!(stored.status, DeviceStatus::Provisioned);
        assert_eq!(stored.certificate_id.as_deref(), Some("c1"));
        let again = handle(&request("SN-1", "c1"), &gate(&m), DEFAULT_DEADLINE).await;
        assert_eq!(again, first);
        let other = handle(&request("SN-1", "c2"), &gate(&m), DEFAULT_DEADLINE).await;
        assert!(!other.allow_provisioning);
        // The allowed certificate, and only it, is the thing's in the device registry.
        assert_eq!(
            *m.recorded.lock().unwrap(),
            BTreeMap::from([("SN-1".to_owned(), "c1".to_owned())])
        );
    }

    /// A claim whose certificate never became ACTIVE lapses after the lease: a new certificate
    /// takes the serial over (audited); an ACTIVE one, or a claim within its lease, holds.
    #[tokio::test]
    async fn a_lapsed_claim_is_taken_over_and_an_active_one_holds() {
        let m = memory("SN-1");
        assert!(
            handle(&request("SN-1", "c1"), &gate(&m), DEFAULT_DEADLINE)
                .await
                .allow_provisioning
        );
        // c1's RegisterThing failed: c1 is in the registry, still PENDING_ACTIVATION.
        m.statuses
            .lock()
            .unwrap()
            .insert("c1".into(), "PENDING_ACTIVATION".into());
        let within = handle(&request("SN-1", "c2"), &gate(&m), DEFAULT_DEADLINE).await;
        assert!(
            !within.allow_provisioning,
            "within the lease the claim holds"
        );
        let lease_ms = DEFAULT_CLAIM_LEASE.as_millis() as i64;
        m.entries
            .lock()
            .unwrap()
            .get_mut("SN-1")
            .unwrap()
            .updated_at_ms = now_ms() - lease_ms - 1;
        let after = handle(&request("SN-1", "c2"), &gate(&m), DEFAULT_DEADLINE).await;
        assert!(after.allow_provisioning, "a lapsed claim is taken over");
        assert_eq!(after.parameter_overrides["ThingName"], "SN-1");
        let stored = m.entries.lock().unwrap()["SN-1"].clone();
        assert_eq!(stored.certificate_id.as_deref(), Some("c2"));
        assert_eq!(*m.audit.lock().unwrap(), ["claim_taken_over c1 -> c2"]);
        assert_eq!(
            m.recorded.lock().unwrap()["SN-1"],
            "c2",
            "the thing's certificate follows"
        );
        // c2 became ACTIVE: past the lease, nobody takes it.
        m.statuses
            .lock()
            .unwrap()
            .insert("c2".into(), "ACTIVE".into());
        m.entries
            .lock()
            .unwrap()
            .get_mut("SN-1")
            .unwrap()
            .updated_at_ms = now_ms() - lease_ms - 1;
        let c3 = handle(&request("SN-1", "c3"), &gate(&m), DEFAULT_DEADLINE).await;
        assert!(
            !c3.allow_provisioning,
            "an ACTIVE certificate keeps its serial"
        );
        // Deactivated or revoked by an operator: on purpose, so it holds too.
        for status in ["INACTIVE", "REVOKED"] {
            m.statuses
                .lock()
                .unwrap()
                .insert("c2".into(), status.into());
            let c4 = handle(&request("SN-1", "c4"), &gate(&m), DEFAULT_DEADLINE).await;
            assert!(!c4.allow_provisioning, "{status} holds");
        }
        // A certificate that never reached the registry lapses too.
        let m = memory("SN-2");
        assert!(
            handle(&request("SN-2", "c1"), &gate(&m), DEFAULT_DEADLINE)
                .await
                .allow_provisioning
        );
        m.entries
            .lock()
            .unwrap()
            .get_mut("SN-2")
            .unwrap()
            .updated_at_ms = now_ms() - lease_ms - 1;
        assert!(
            handle(&request("SN-2", "c9"), &gate(&m), DEFAULT_DEADLINE)
                .await
                .allow_provisioning
        );
    }

    #[tokio::test]
    async fn internal_failures_and_timeouts_deny() {
        let m = Memory {
            down: true,
            ..memory("SN-1")
        };
        assert!(
            !handle(&request("SN-1", "c1"), &gate(&m), DEFAULT_DEADLINE)
                .await
                .allow_provisioning
        );
        let m = Memory {
            slow: true,
            ..memory("SN-1")
        };
        let started = std::time::Instant::now();
        let answer = handle(&request("SN-1", "c1"), &gate(&m), Duration::from_millis(50)).await;
        assert!(!answer.allow_provisioning);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "answered inside AWS's limit"
        );
    }

    #[tokio::test]
    async fn a_claim_denied_by_the_deadline_is_given_back() {
        let m = Memory {
            slow_after_claim: true,
            ..memory("SN-1")
        };
        let answer = handle(&request("SN-1", "c1"), &gate(&m), Duration::from_millis(50)).await;
        assert!(!answer.allow_provisioning);
        let entry = m.entries.lock().unwrap()["SN-1"].clone();
        assert_eq!(entry.status, DeviceStatus::Pending, "{entry:?}");
        assert_eq!(entry.certificate_id, None);
        assert!(
            m.audit
                .lock()
                .unwrap()
                .contains(&"claim_released c1".to_owned()),
            "{:?}",
            m.audit.lock().unwrap()
        );
        // The device's next attempt, with a new certificate, is not locked out for the lease.
        let m = Memory {
            slow_after_claim: false,
            entries: std::sync::Mutex::new(m.entries.lock().unwrap().clone()),
            ..memory("SN-1")
        };
        assert!(
            handle(&request("SN-1", "c2"), &gate(&m), DEFAULT_DEADLINE)
                .await
                .allow_provisioning
        );
    }

    #[tokio::test]
    async fn a_retry_that_times_out_keeps_the_earlier_claim() {
        let m = memory("SN-1");
        assert!(
            handle(&request("SN-1", "c1"), &gate(&m), DEFAULT_DEADLINE)
                .await
                .allow_provisioning
        );
        // The same certificate asks again (its answer was lost) and this time the deadline
        // passes: the serial stays provisioned to it.
        let m = Memory {
            slow_after_claim: true,
            entries: std::sync::Mutex::new(m.entries.lock().unwrap().clone()),
            ..memory("SN-1")
        };
        times_out_and_sn1_stays_c1s(&m).await;
    }

    /// c1's request for SN-1 is denied at a 50 ms deadline, and SN-1 stays provisioned to c1.
    async fn times_out_and_sn1_stays_c1s(m: &Memory) {
        assert!(
            !handle(&request("SN-1", "c1"), &gate(m), Duration::from_millis(50))
                .await
                .allow_provisioning
        );
        let entry = m.entries.lock().unwrap()["SN-1"].clone();
        assert_eq!(entry.status, DeviceStatus::Provisioned);
        assert_eq!(entry.certificate_id.as_deref(), Some("c1"));
    }

    #[tokio::test]
    async fn a_racing_invocation_for_the_same_certificate_never_gives_back_the_others_claim() {
        // Two invocations for c1 both read SN-1 pending; the other one's claim lands first.
        let m = Memory {
            claimed_meanwhile: std::sync::Mutex::new(Some(("c1".into(), 1))),
            ..memory("SN-1")
        };
        assert!(
            handle(&request("SN-1", "c1"), &gate(&m), DEFAULT_DEADLINE)
                .await
                .allow_provisioning,
            "the serial is this certificate's: allowed"
        );
        // This one answered allow: the other one, at its deadline, gives nothing back.
        assert!(
            !m.release_own_claim(&Serial::parse("SN-1").unwrap(), "c1", 1, now_ms())
                .await
                .unwrap()
        );
        // The same race, and this invocation's deadline passes after its claim failed: the
        // other invocation's claim (which may have answered allow) stays.
        let m = Memory {
            claimed_meanwhile: std::sync::Mutex::new(Some(("c1".into(), 1))),
            slow_after_claim: true,
            ..memory("SN-1")
        };
        times_out_and_sn1_stays_c1s(&m).await;
        assert!(m.audit.lock().unwrap().is_empty(), "{:?}", m.audit);
    }

    #[tokio::test]
    async fn unknown_serials_are_denied_and_nothing_is_written() {
        let m = memory("SN-1");
        let answer = handle(&request("SN-9", "c1"), &gate(&m), DEFAULT_DEADLINE).await;
        assert_eq!(answer, HookResponse::deny());
        assert_eq!(m.entries.lock().unwrap().len(), 1);
    }

    #[test]
    fn config_needs_the_tables_and_the_template_models() {
        let env: BTreeMap<&str, &str> = [
            (vars::MANIFEST_TABLE, "shoal-manifest"),
            (vars::DEVICE_TABLE, "shoal-devices"),
            (vars::TEMPLATE_MODELS, "shoal-fleet=th-v2,gps-v1"),
        ]
        .into();
        let config = HookConfig::from_source(&env).unwrap();
        assert!(config.template_models.allows("shoal-fleet", "gps-v1"));
        assert_eq!(config.device_table.as_str(), "shoal-devices");
        for var in [vars::TEMPLATE_MODELS, vars::DEVICE_TABLE] {
            let mut missing = env.clone();
            missing.remove(var);
            assert_eq!(
                HookConfig::from_source(&missing).unwrap_err().to_string(),
                format!("environment variable {var} is not set")
            );
        }
    }
}
