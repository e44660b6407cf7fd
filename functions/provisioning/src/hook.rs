//! The pre-provisioning hook: AWS IoT asks before it provisions a device by claim.
//!
//! It allows only what [`decide`] allows, then claims the serial for the certificate with a
//! conditional write, so that of two concurrent requests with different certificates exactly one
//! is allowed. Anything else — an unreachable table, a malformed item, a decision that would not
//! finish in time — denies: the hook never allows by default. AWS denies after 5 s; the hook
//! gives itself [`DEFAULT_DEADLINE`].

use std::future::Future;
use std::time::Duration;

use shoal_shared::aws::AwsError;
use shoal_shared::clock::now_ms;
use shoal_shared::config::{self, ConfigError, Source, TableName, vars};
use shoal_shared::ids::ThingName;
use shoal_shared::manifest_table::{AuditRecord, ManifestTable};
use shoal_shared::provisioning::{
    Denial, HookRequest, HookResponse, ManifestEntry, Serial, TemplateModels, decide,
    requested_serial,
};

/// The hook's own time limit, well inside AWS's 5 seconds (cold start and network included).
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(2500);

/// The manifest as the hook needs it.
pub trait Manifest: Sync {
    fn get(
        &self,
        serial: &Serial,
    ) -> impl Future<Output = Result<Option<ManifestEntry>, AwsError>> + Send;

    /// Marks the serial provisioned to the certificate if it is pending or already provisioned to
    /// it; `Ok(false)` when the condition failed.
    fn claim(
        &self,
        serial: &Serial,
        certificate_id: &str,
        thing: &ThingName,
        now_ms: i64,
    ) -> impl Future<Output = Result<bool, AwsError>> + Send;

    /// Keeps a refusal in the serial's audit trail (the serial exists).
    fn record_refusal(
        &self,
        serial: &Serial,
        certificate_id: &str,
        reason: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<(), AwsError>> + Send;
}

impl Manifest for ManifestTable {
    async fn get(&self, serial: &Serial) -> Result<Option<ManifestEntry>, AwsError> {
        ManifestTable::get(self, serial).await
    }

    async fn claim(
        &self,
        serial: &Serial,
        certificate_id: &str,
        thing: &ThingName,
        now_ms: i64,
    ) -> Result<bool, AwsError> {
        ManifestTable::claim(self, serial, certificate_id, thing, now_ms).await
    }

    async fn record_refusal(
        &self,
        serial: &Serial,
        certificate_id: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<(), AwsError> {
        let record = AuditRecord {
            at_ms: now_ms,
            action: "jitr_refused",
            reason,
            certificate_id: Some(certificate_id),
        };
        self.record(serial, record, None).await
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookConfig {
    pub manifest_table: TableName,
    pub template_models: TemplateModels,
}

impl HookConfig {
    pub fn from_source(source: &impl Source) -> Result<Self, ConfigError> {
        Ok(Self {
            manifest_table: config::required(source, vars::MANIFEST_TABLE)?,
            template_models: config::required(source, vars::TEMPLATE_MODELS)?,
        })
    }
}

fn internal(e: AwsError) -> Denial {
    Denial::Internal(e.to_string())
}

async fn decide_and_claim(
    request: &HookRequest,
    manifest: &impl Manifest,
    models: &TemplateModels,
) -> Result<HookResponse, Denial> {
    let serial = requested_serial(request)?;
    let entry = manifest.get(&serial).await.map_err(internal)?;
    let overrides = decide(request, entry.as_ref(), models)?;
    let thing = serial.thing_name();
    let claimed = manifest
        .claim(&serial, &request.certificate_id, &thing, now_ms())
        .await
        .map_err(internal)?;
    if !claimed {
        // Someone else changed the entry between our read and our write: decide again on what
        // is there now (another certificate won, or the serial was revoked meanwhile).
        let now = manifest.get(&serial).await.map_err(internal)?;
        decide(request, now.as_ref(), models)?;
        return Err(Denial::Internal(format!(
            "serial {serial} changed while it was being claimed"
        )));
    }
    Ok(HookResponse {
        allow_provisioning: true,
        parameter_overrides: overrides,
    })
}

/// Answers one hook request within `deadline`; every failure is a logged denial.
pub async fn handle(
    request: &HookRequest,
    manifest: &impl Manifest,
    models: &TemplateModels,
    deadline: Duration,
) -> HookResponse {
    let decided = tokio::time::timeout(deadline, decide_and_claim(request, manifest, models))
        .await
        .unwrap_or_else(|_| {
            Err(Denial::Internal(format!(
                "no decision within {} ms",
                deadline.as_millis()
            )))
        });
    let serial = request
        .parameters
        .get(shoal_shared::provisioning::SERIAL_PARAMETER)
        .map(String::as_str)
        .unwrap_or_default();
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
    use shoal_shared::aws::AwsErrorKind;
    use shoal_shared::provisioning::DeviceStatus;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// An in-memory manifest with DynamoDB's conditional-claim semantics.
    #[derive(Default)]
    struct Memory {
        entries: Mutex<BTreeMap<String, ManifestEntry>>,
        down: bool,
        slow: bool,
    }

    fn down() -> AwsError {
        AwsError {
            service: "dynamodb",
            operation: "GetItem",
            kind: AwsErrorKind::Unreachable,
            code: None,
            message: "connection refused".into(),
        }
    }

    impl Manifest for Memory {
        async fn get(&self, serial: &Serial) -> Result<Option<ManifestEntry>, AwsError> {
            if self.slow {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            if self.down {
                return Err(down());
            }
            Ok(self.entries.lock().unwrap().get(serial.as_str()).cloned())
        }

        async fn claim(
            &self,
            serial: &Serial,
            certificate_id: &str,
            thing: &ThingName,
            now_ms: i64,
        ) -> Result<bool, AwsError> {
            let mut entries = self.entries.lock().unwrap();
            let Some(e) = entries.get_mut(serial.as_str()) else {
                return Ok(false);
            };
            let ok = e.status == DeviceStatus::Pending
                || (e.status == DeviceStatus::Provisioned
                    && e.certificate_id.as_deref() == Some(certificate_id));
            if ok {
                e.status = DeviceStatus::Provisioned;
                e.certificate_id = Some(certificate_id.into());
                e.thing_name = Some(thing.clone());
                e.updated_at_ms = now_ms;
            }
            Ok(ok)
        }

        async fn record_refusal(
            &self,
            _serial: &Serial,
            _certificate_id: &str,
            _reason: &str,
            _now_ms: i64,
        ) -> Result<(), AwsError> {
            Ok(())
        }
    }

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
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        Memory {
            entries: Mutex::new([(serial.to_owned(), entry)].into()),
            ..Memory::default()
        }
    }

    fn request(serial: &str, cert: &str) -> HookRequest {
        HookRequest {
            claim_certificate_id: "claim".into(),
            certificate_id: cert.into(),
            certificate_pem: String::new(),
            template_arn: "arn:aws:iot:us-east-1:123456789012:provisioningtemplate/shoal-fleet"
                .into(),
            client_id: "c".into(),
            parameters: [("SerialNumber".to_owned(), serial.to_owned())].into(),
        }
    }

    fn models() -> TemplateModels {
        "shoal-fleet=th-v2".parse().unwrap()
    }

    #[tokio::test]
    async fn allows_claims_and_answers_the_same_certificate_the_same_way() {
        let m = memory("SN-1");
        let first = handle(&request("SN-1", "c1"), &m, &models(), DEFAULT_DEADLINE).await;
        assert!(first.allow_provisioning);
        assert_eq!(first.parameter_overrides["ThingName"], "SN-1");
        let stored = m.entries.lock().unwrap()["SN-1"].clone();
        assert_eq!(stored.status, DeviceStatus::Provisioned);
        assert_eq!(stored.certificate_id.as_deref(), Some("c1"));
        let again = handle(&request("SN-1", "c1"), &m, &models(), DEFAULT_DEADLINE).await;
        assert_eq!(again, first);
        let other = handle(&request("SN-1", "c2"), &m, &models(), DEFAULT_DEADLINE).await;
        assert!(!other.allow_provisioning);
    }

    #[tokio::test]
    async fn internal_failures_and_timeouts_deny() {
        let m = Memory {
            down: true,
            ..memory("SN-1")
        };
        assert!(
            !handle(&request("SN-1", "c1"), &m, &models(), DEFAULT_DEADLINE)
                .await
                .allow_provisioning
        );
        let m = Memory {
            slow: true,
            ..memory("SN-1")
        };
        let started = std::time::Instant::now();
        let answer = handle(
            &request("SN-1", "c1"),
            &m,
            &models(),
            Duration::from_millis(50),
        )
        .await;
        assert!(!answer.allow_provisioning);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "answered inside AWS's limit"
        );
    }

    #[tokio::test]
    async fn unknown_serials_are_denied_and_nothing_is_written() {
        let m = memory("SN-1");
        let answer = handle(&request("SN-9", "c1"), &m, &models(), DEFAULT_DEADLINE).await;
        assert_eq!(answer, HookResponse::deny());
        assert_eq!(m.entries.lock().unwrap().len(), 1);
    }

    #[test]
    fn config_needs_the_table_and_the_template_models() {
        let env: BTreeMap<&str, &str> = [
            (vars::MANIFEST_TABLE, "shoal-manifest"),
            (vars::TEMPLATE_MODELS, "shoal-fleet=th-v2,gps-v1"),
        ]
        .into();
        let config = HookConfig::from_source(&env).unwrap();
        assert!(config.template_models.allows("shoal-fleet", "gps-v1"));
        let mut missing = env.clone();
        missing.remove(vars::TEMPLATE_MODELS);
        assert_eq!(
            HookConfig::from_source(&missing).unwrap_err().to_string(),
            "environment variable SHOAL_TEMPLATE_MODELS is not set"
        );
    }
}
