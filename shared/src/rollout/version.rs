//! Firmware versions are semantic versions and compare as such: 1.10.0 > 1.9.0 (the seed
//! compared strings, which ranks 1.10.0 below 1.9.0), 1.0.0-rc.1 < 1.0.0.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FirmwareVersion(semver::Version);

impl FirmwareVersion {
    pub fn semver(&self) -> &semver::Version {
        &self.0
    }
}

impl FromStr for FirmwareVersion {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bare = text.strip_prefix('v').unwrap_or(text);
        semver::Version::parse(bare).map(Self).map_err(|e| {
            format!("{text:?} is not a semantic version (MAJOR.MINOR.PATCH[-pre][+build]): {e}")
        })
    }
}

impl TryFrom<String> for FirmwareVersion {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<FirmwareVersion> for String {
    fn from(v: FirmwareVersion) -> String {
        v.to_string()
    }
}

impl fmt::Display for FirmwareVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PublishRefusal {
    #[error(
        "version {new} is not greater than the current {current} (anti-rollback); pass --allow-downgrade --reason \"…\" to publish it anyway"
    )]
    NotNewer {
        new: FirmwareVersion,
        current: FirmwareVersion,
    },
    #[error("a downgrade needs a reason (--reason)")]
    DowngradeWithoutReason,
    #[error("min_version {min} is above the version {version} itself")]
    MinAboveVersion {
        min: FirmwareVersion,
        version: FirmwareVersion,
    },
}

/// Whether `new` may be published over the model's `current` version. A version not greater
/// than the current one (equal included: an image is immutable) needs an explicit downgrade with
/// a non-empty reason.
pub fn check_publish(
    current: Option<&FirmwareVersion>,
    new: &FirmwareVersion,
    min_version: Option<&FirmwareVersion>,
    downgrade_reason: Option<&str>,
) -> Result<(), PublishRefusal> {
    if let Some(min) = min_version.filter(|min| *min > new) {
        return Err(PublishRefusal::MinAboveVersion {
            min: min.clone(),
            version: new.clone(),
        });
    }
    match (current, downgrade_reason.map(str::trim)) {
        (Some(current), None) if new <= current => Err(PublishRefusal::NotNewer {
            new: new.clone(),
            current: current.clone(),
        }),
        (_, Some("")) => Err(PublishRefusal::DowngradeWithoutReason),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> FirmwareVersion {
        text.parse().unwrap()
    }

    #[test]
    fn versions_compare_as_semver_not_as_strings() {
        assert!(v("1.10.0") > v("1.9.0"));
        assert!(v("2.0.0") > v("1.99.99"));
        assert!(v("1.0.0-rc.1") < v("1.0.0"));
        assert!(v("1.0.0-alpha") < v("1.0.0-beta"));
        assert!(v("1.0.0-rc.2") < v("1.0.0-rc.10"));
        assert_eq!(v("v1.2.3"), v("1.2.3"));
        assert!(
            "1.2"
                .parse::<FirmwareVersion>()
                .unwrap_err()
                .contains("semantic version")
        );
        assert!("01.2.3".parse::<FirmwareVersion>().is_err());
    }

    #[test]
    fn anti_rollback() {
        let current = v("1.10.0");
        assert_eq!(
            check_publish(Some(&current), &v("1.11.0"), None, None),
            Ok(())
        );
        assert_eq!(check_publish(None, &v("0.1.0"), None, None), Ok(()));
        for older_or_same in ["1.9.0", "1.10.0", "1.10.0-rc.1"] {
            let refused = check_publish(Some(&current), &v(older_or_same), None, None);
            assert!(
                matches!(refused, Err(PublishRefusal::NotNewer { .. })),
                "{older_or_same}"
            );
        }
        assert_eq!(
            check_publish(Some(&current), &v("1.9.0"), None, Some("bad 1.10 radio")),
            Ok(())
        );
        assert_eq!(
            check_publish(Some(&current), &v("1.9.0"), None, Some("  ")),
            Err(PublishRefusal::DowngradeWithoutReason)
        );
        assert!(matches!(
            check_publish(None, &v("1.0.0"), Some(&v("1.1.0")), None),
            Err(PublishRefusal::MinAboveVersion { .. })
        ));
    }
}
