//! OTA reports as the shadow flow reads them: the contract's report document
//! ([`shoal_wire::ota`], re-exported here) and when an `update/documents` message carries one.

pub use shoal_wire::ota::*;

use serde_json::Value;

use super::document::{Section, ShadowDocument, json_eq};

/// The report in `current`, if the device changed its `reported` state in this update (`None`
/// for a desired-only update, so the OTA flow's own writes are not echoed back to it).
///
/// # Errors
/// `Some(Err(_))` with the [`OtaReportError`] when the changed `reported` state is not a valid
/// OTA report.
pub fn changed_report(
    previous: Option<&ShadowDocument>,
    current: &ShadowDocument,
) -> Option<Result<OtaReport, OtaReportError>> {
    let now = current.section(Section::Reported)?;
    let before = previous.and_then(|p| p.section(Section::Reported));
    if before.is_some_and(|b| json_eq(&Value::Object(b.clone()), &Value::Object(now.clone()))) {
        return None;
    }
    Some(OtaReport::from_reported(&Value::Object(now.clone())))
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
        let no_reason = changed_report(None, &failed).unwrap().unwrap_err();
        assert_eq!(no_reason, OtaReportError::FailedWithoutReason);
        assert!(no_reason.to_string().contains("reason"));
        let unknown = doc(json!({"status": "exploded"}));
        assert!(changed_report(None, &unknown).unwrap().is_err());
    }
}
