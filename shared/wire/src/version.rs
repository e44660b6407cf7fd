//! Firmware versions are semantic versions and compare by SemVer precedence
//! (<https://semver.org/#spec-item-11>): 1.10.0 > 1.9.0 (the seed compared strings, which ranks
//! 1.10.0 below 1.9.0), 1.0.0-rc.1 < 1.0.0, and build metadata is ignored (spec item 10):
//! `1.10.0+build.42` and `1.10.0` are the same version for eligibility, success and
//! anti-rollback.

use alloc::string::{String, ToString};
use core::cmp::Ordering;
use core::fmt;
use core::hash::{Hash, Hasher};
use core::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A firmware version: its text keeps any build metadata (`1.10.0+build.42` is shown and stored
/// as published), while equality, order and hashing follow SemVer precedence, which ignores it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FirmwareVersion(semver::Version);

impl FirmwareVersion {
    /// The parsed semantic version, build metadata included.
    #[must_use]
    pub fn semver(&self) -> &semver::Version {
        &self.0
    }

    /// The version without its build metadata (`1.10.0-rc.1+b7` → `1.10.0-rc.1`): one text per
    /// precedence, e.g. to key a registry so that two builds of one version cannot both be
    /// published.
    pub fn precedence_text(&self) -> String {
        let mut bare = self.0.clone();
        bare.build = semver::BuildMetadata::EMPTY;
        bare.to_string()
    }
}

impl PartialEq for FirmwareVersion {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for FirmwareVersion {}

impl Ord for FirmwareVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.cmp_precedence(&other.0)
    }
}

impl PartialOrd for FirmwareVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Hash for FirmwareVersion {
    /// What precedence compares (equal versions hash alike): never the build metadata.
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self.0.major, self.0.minor, self.0.patch, &self.0.pre).hash(state);
    }
}

/// A text that is not a semantic version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a semantic version (MAJOR.MINOR.PATCH[-pre][+build]): {reason}")]
pub struct VersionError {
    /// The text, trimmed.
    pub text: String,
    /// What semver found wrong with it.
    pub reason: String,
}

impl FromStr for FirmwareVersion {
    type Err = VersionError;
    /// `MAJOR.MINOR.PATCH[-pre][+build]` (SemVer 2.0.0), surrounding blanks and one leading `v`
    /// ignored.
    ///
    /// # Errors
    /// [`VersionError`] when the text is not a semantic version.
    fn from_str(text: &str) -> Result<Self, VersionError> {
        let text = text.trim();
        let bare = text.strip_prefix('v').unwrap_or(text);
        semver::Version::parse(bare)
            .map(Self)
            .map_err(|e| VersionError {
                text: text.into(),
                reason: e.to_string(),
            })
    }
}

impl TryFrom<String> for FirmwareVersion {
    type Error = VersionError;
    fn try_from(text: String) -> Result<Self, VersionError> {
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

/// Why a version may not be published.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PublishRefusal {
    #[error(
        "{new} is already published as {current} (build metadata is not part of a version's precedence; images are immutable)"
    )]
    /// A version of the same precedence is published already.
    SamePrecedence {
        /// The version asked for.
        new: FirmwareVersion,
        /// The published version of the same precedence.
        current: FirmwareVersion,
    },
    #[error(
        "version {new} is below the current {current} (anti-rollback); pass --allow-downgrade --reason \"…\" to publish it anyway"
    )]
    /// The version is below the newest published one and no downgrade was asked for.
    NotNewer {
        /// The version asked for.
        new: FirmwareVersion,
        /// The newest published version.
        current: FirmwareVersion,
    },
    /// A downgrade was asked for with an empty reason.
    #[error("a downgrade needs a reason (--reason)")]
    DowngradeWithoutReason,
    #[error("min_version {min} is above the version {version} itself")]
    /// `min_version` is above the version itself.
    MinAboveVersion {
        /// The minimum version asked for.
        min: FirmwareVersion,
        /// The version being published.
        version: FirmwareVersion,
    },
}

/// Whether `new` may be published beside the model's `published` versions (any order). A
/// version of the same precedence as a published one (another build of it included) is refused
/// whatever the flags: an image is immutable. A version below the newest published one needs an
/// explicit downgrade with a non-empty reason.
///
/// # Errors
/// The [`PublishRefusal`] that applies first: min_version above the version, same precedence as
/// a published version, not newer without a reason, an empty reason.
pub fn check_publish(
    published: &[FirmwareVersion],
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
    if let Some(same) = published.iter().find(|v| *v == new) {
        return Err(PublishRefusal::SamePrecedence {
            new: new.clone(),
            current: same.clone(),
        });
    }
    match (published.iter().max(), downgrade_reason.map(str::trim)) {
        (Some(current), None) if new < current => Err(PublishRefusal::NotNewer {
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
        let short = " 1.2 ".parse::<FirmwareVersion>().unwrap_err();
        assert_eq!(short.text, "1.2");
        assert!(short.to_string().contains("semantic version"));
        assert!("01.2.3".parse::<FirmwareVersion>().is_err());
    }

    #[test]
    fn build_metadata_is_not_part_of_precedence() {
        // SemVer §10: 1.10.0+build.42 and 1.10.0 are one version.
        assert_eq!(v("1.10.0+build.42"), v("1.10.0"));
        assert_eq!(v("1.10.0+build.100"), v("1.10.0+build.41"));
        assert!(v("1.10.0+build.100") < v("1.10.1"));
        assert!(v("1.10.0-rc.1+b9") < v("1.10.0"));
        // The text keeps it; the precedence text drops it.
        assert_eq!(v("1.10.0+build.42").to_string(), "1.10.0+build.42");
        assert_eq!(v("1.10.0-rc.1+b7").precedence_text(), "1.10.0-rc.1");
        // Equal versions hash alike (a set holds one of them).
        let set: std::collections::HashSet<_> = [v("2.0.0+a"), v("2.0.0+b"), v("2.0.0")].into();
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn anti_rollback() {
        let published = [v("1.9.0"), v("1.10.0")];
        assert_eq!(check_publish(&published, &v("1.11.0"), None, None), Ok(()));
        assert_eq!(check_publish(&[], &v("0.1.0"), None, None), Ok(()));
        for older in ["1.9.1", "1.10.0-rc.1"] {
            let refused = check_publish(&published, &v(older), None, None);
            assert!(
                matches!(refused, Err(PublishRefusal::NotNewer { .. })),
                "{older}"
            );
        }
        assert_eq!(
            check_publish(&published, &v("1.9.1"), None, Some("bad 1.10 radio")),
            Ok(())
        );
        assert_eq!(
            check_publish(&published, &v("1.9.1"), None, Some("  ")),
            Err(PublishRefusal::DowngradeWithoutReason)
        );
        assert!(matches!(
            check_publish(&[], &v("1.0.0"), Some(&v("1.1.0")), None),
            Err(PublishRefusal::MinAboveVersion { .. })
        ));
    }

    #[test]
    fn another_build_of_a_published_version_is_already_published() {
        // Published as 1.10.0+build.42: +build.100 is not "newer", +build.41 not a downgrade;
        // both are the published version, whatever the flags.
        let published = [v("1.9.0"), v("1.10.0+build.42")];
        for build in ["1.10.0+build.100", "1.10.0+build.41", "1.10.0"] {
            for reason in [None, Some("hotfix")] {
                assert_eq!(
                    check_publish(&published, &v(build), None, reason),
                    Err(PublishRefusal::SamePrecedence {
                        new: v(build),
                        current: v("1.10.0+build.42"),
                    }),
                    "{build} {reason:?}"
                );
            }
        }
        // An older published version's other build too, even as an allowed downgrade.
        assert!(matches!(
            check_publish(&published, &v("1.9.0+b2"), None, Some("back")),
            Err(PublishRefusal::SamePrecedence { .. })
        ));
    }
}
