//! The OTA status a device reports in its `ota` named shadow, handed to the OTA flow.
//!
//! `reported`: `status` (downloading, verifying, applying, success, failed), `version` (the
//! image being installed), `running_version` (what actually runs: a device that fell back by
//! itself reports the old one here) and `reason` (required with `failed`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::document::{Section, ShadowDocument, json_eq};

pub const OTA_SHADOW: &str = "ota";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OtaStatus {
    Downloading,
    Verifying,
    Applying,
    Success,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtaReport {
    pub status: OtaStatus,
    #[serde(default, rename = "version", skip_serializing_if = "Option::is_none")]
    pub target_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The report in `current`, if the device changed its `reported` state in this update (`None`
/// for a desired-only update, so the OTA flow's own writes are not echoed back to it).
pub fn changed_report(
    previous: Option<&ShadowDocument>,
    current: &ShadowDocument,
) -> Option<Result<OtaReport, String>> {
    let now = current.section(Section::Reported)?;
    let before = previous.and_then(|p| p.section(Section::Reported));
    if before.is_some_and(|b| json_eq(&Value::Object(b.clone()), &Value::Object(now.clone()))) {
        return None;
    }
    Some(parse(&Value::Object(now.clone())))
}

fn parse(reported: &Value) -> Result<OtaReport, String> {
    let report: OtaReport = serde_json::from_value(reported.clone())
        .map_err(|e| format!("the ota shadow's reported state is not an OTA report: {e}"))?;
    if report.status == OtaStatus::Failed && report.reason.as_deref().is_none_or(str::is_empty) {
        return Err("an OTA report with status failed must say why (reason)".into());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(reported: Value) -> ShadowDocument {
        serde_json::from_value(json!({"state": {"reported": reported}, "version": 2})).unwrap()
    }

    #[test]
    fn reports_are_read_when_the_device_changed_them() {
        let before = doc(json!({"status": "downloading", "version": "1.2.0"}));
        let now = doc(json!({"status": "success", "version": "1.2.0", "running_version": "1.2.0"}));
        let report = changed_report(Some(&before), &now).unwrap().unwrap();
        assert_eq!(report.status, OtaStatus::Success);
        assert_eq!(report.running_version.as_deref(), Some("1.2.0"));
        assert_eq!(changed_report(Some(&now), &now), None);
    }

    #[test]
    fn bad_reports_say_why() {
        let failed = doc(json!({"status": "failed", "version": "1.2.0"}));
        assert!(
            changed_report(None, &failed)
                .unwrap()
                .unwrap_err()
                .contains("reason")
        );
        let unknown = doc(json!({"status": "exploded"}));
        assert!(changed_report(None, &unknown).unwrap().is_err());
    }
}
