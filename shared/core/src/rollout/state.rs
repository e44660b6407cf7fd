//! A rollout's state and the transitions operators and the advancer make, each one checked here
//! and appended to the audit log by the store (under the rollout's revision, so two advancers
//! racing can never both move it); and how a device's OTA report counts for a rollout.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use shoal_wire::ids::{NameError, name_char};
use shoal_wire::validated_string;

use super::image::{DeviceModel, HardwareRevision};
use super::phases::{PhaseCounts, RolloutPlan};
use super::version::FirmwareVersion;
use crate::shadow::ota::{OtaReport, OtaStatus};

/// The longest rollout id, in bytes.
pub const ROLLOUT_ID_MAX: usize = 128;

validated_string!(
    /// A rollout's id: 1–128 of `[A-Za-z0-9._-]`. It becomes an MQTT topic level (the rollout's
    /// alert topic `shoal/alerts/ota/<id>`), a key in the rollout table and, sanitised, part of its
    /// IoT job's id.
    RolloutId,
    NameError,
    |value| check_rollout_id(value).map_err(NameError::of("rollout id"))
);

fn check_rollout_id(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > ROLLOUT_ID_MAX {
        return Err(format!(
            "is {} bytes long; it must be 1 to {ROLLOUT_ID_MAX}",
            value.len()
        ));
    }
    match value.chars().find(|c| !name_char(*c)) {
        Some(c) => Err(format!(
            "contains {c:?}; only letters, digits, '.', '_' and '-' are allowed (it becomes an \
             MQTT topic level)"
        )),
        None => Ok(()),
    }
}

/// Where a rollout stands in its lifecycle; serialised in snake_case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutStatus {
    /// Targeting devices and moving through its phases.
    Active,
    /// Stopped by an operator or a failure-rate breach: no new targets nor fresh URLs until
    /// resumed.
    Paused,
    /// Final: its devices are sent back to the rollback version.
    RolledBack,
    /// Final: every phase passed; devices that come back online are still targeted.
    Completed,
}

/// A rollout of one firmware version to one model and hardware revision, as the rollout table
/// stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// The rollout's unique id; also the seed of its devices' cohort points.
    pub id: RolloutId,
    /// The device model it targets.
    pub model: DeviceModel,
    /// The hardware revision of that model it targets.
    pub hardware: HardwareRevision,
    /// The firmware version it installs.
    pub version: FirmwareVersion,
    /// What devices that took this version go back to on rollback (the last good version).
    pub rollback_version: Option<FirmwareVersion>,
    /// The phases it moves through.
    pub plan: RolloutPlan,
    /// The current phase: index into `plan.phases`.
    pub phase: usize,
    /// When the current phase started, or last resumed (ms since the Unix epoch); its soak
    /// time counts from here.
    pub phase_started_ms: u64,
    /// Where it stands in its lifecycle.
    pub status: RolloutStatus,
    /// Why it is paused, rolled back or completed.
    pub reason: Option<String>,
    /// Bumped by every transition; the store writes only over the revision it read.
    pub revision: u64,
    /// Thundering-herd guard: devices newly targeted per minute, at most.
    pub max_new_per_minute: u32,
    /// When the rollout was created (ms since the Unix epoch).
    pub created_ms: u64,
}

/// A change to a rollout that an operator or the advancer asks for, checked by
/// [`Rollout::apply`]; serialised with a `command` tag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Move an active rollout to its next phase.
    Advance {
        /// The phase to move to: index into the plan's phases, the current one plus one.
        to: usize,
    },
    /// Finish an active rollout that is in its last phase.
    Complete,
    /// Stop an active rollout from targeting devices.
    Pause {
        /// Why, kept in [`Rollout::reason`].
        reason: String,
    },
    /// Restart a paused rollout; the current phase soaks again from the resume.
    Resume,
    /// Send an active or paused rollout's devices back to its rollback version.
    Rollback {
        /// Why, kept in [`Rollout::reason`].
        reason: String,
    },
}

/// One audit-log entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// The rollout's revision after the transition.
    pub revision: u64,
    /// When it was made (ms since the Unix epoch).
    pub at_ms: u64,
    /// Who made it: `advancer`, or `operator:<user>` from the CLI.
    pub actor: String,
    /// The command applied.
    pub command: Command,
    /// The status before.
    pub from_status: RolloutStatus,
    /// The status after.
    pub to_status: RolloutStatus,
    /// The phase index before.
    pub from_phase: usize,
    /// The phase index after.
    pub to_phase: usize,
}

/// Why [`Rollout::apply`] refused a command.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TransitionError {
    /// The command does not apply in the rollout's status (nor, for complete, before the last
    /// phase).
    #[error("rollout {id} is {status:?}: {command} is not possible now")]
    NotAllowed {
        /// The rollout's id.
        id: RolloutId,
        /// Its status when the command came.
        status: RolloutStatus,
        /// The command's name, e.g. `roll back`.
        command: &'static str,
    },
    /// An advance to another phase than the next, or past the last one.
    #[error("rollout {id} is in phase {phase}: it can only advance to {next}")]
    SkipsAPhase {
        /// The rollout's id.
        id: RolloutId,
        /// The current phase index.
        phase: usize,
        /// The only phase index it may advance to (current + 1).
        next: usize,
    },
    /// A rollback of a rollout without a `rollback_version`.
    #[error("rollout {id} has no version to roll back to")]
    NoRollbackVersion {
        /// The rollout's id.
        id: RolloutId,
    },
}

impl Rollout {
    /// The rollout after `command`, and the audit entry for it.
    ///
    /// # Errors
    /// [`TransitionError::NotAllowed`] when the command does not apply in the current status:
    /// advance and pause need `Active`, complete needs `Active` and the last phase, resume needs
    /// `Paused`, roll back needs `Active` or `Paused`. [`TransitionError::SkipsAPhase`] when an
    /// advance is not to the next phase or goes past the last one.
    /// [`TransitionError::NoRollbackVersion`] when rolling back without a `rollback_version`.
    pub fn apply(
        &self,
        command: Command,
        actor: &str,
        now_ms: u64,
    ) -> Result<(Rollout, Transition), TransitionError> {
        use RolloutStatus::*;
        let not_allowed = |name| TransitionError::NotAllowed {
            id: self.id.clone(),
            status: self.status,
            command: name,
        };
        let mut next = self.clone();
        match (&command, self.status) {
            (Command::Advance { to }, Active) => {
                if *to != self.phase + 1 || *to >= self.plan.phases.len() {
                    return Err(TransitionError::SkipsAPhase {
                        id: self.id.clone(),
                        phase: self.phase,
                        next: self.phase + 1,
                    });
                }
                next.phase = *to;
                next.phase_started_ms = now_ms;
            }
            (Command::Advance { .. }, _) => return Err(not_allowed("advance")),
            (Command::Complete, Active) if self.phase + 1 == self.plan.phases.len() => {
                next.status = Completed;
                next.reason = Some("every phase passed".into());
            }
            (Command::Complete, _) => return Err(not_allowed("complete")),
            (Command::Pause { reason }, Active) => {
                next.status = Paused;
                next.reason = Some(reason.clone());
            }
            (Command::Pause { .. }, _) => return Err(not_allowed("pause")),
            (Command::Resume, Paused) => {
                next.status = Active;
                next.reason = None;
                // The phase soaks again from the resume.
                next.phase_started_ms = now_ms;
            }
            (Command::Resume, _) => return Err(not_allowed("resume")),
            (Command::Rollback { reason }, Active | Paused) => {
                if self.rollback_version.is_none() {
                    return Err(TransitionError::NoRollbackVersion {
                        id: self.id.clone(),
                    });
                }
                next.status = RolledBack;
                next.reason = Some(reason.clone());
            }
            (Command::Rollback { .. }, _) => return Err(not_allowed("roll back")),
        }
        next.revision = self.revision + 1;
        let transition = Transition {
            revision: next.revision,
            at_ms: now_ms,
            actor: actor.to_owned(),
            command,
            from_status: self.status,
            to_status: next.status,
            from_phase: self.phase,
            to_phase: next.phase,
        };
        Ok((next, transition))
    }
}

/// How one targeted device stands in a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceOutcome {
    /// No report about this rollout's version yet (offline devices stay here until they return).
    Pending,
    /// Downloading, verifying or applying the target; also a success report that does not name
    /// the running version.
    InProgress,
    /// Reported success and runs the target version.
    Succeeded,
    /// Reported failure and is not back on an older version.
    Failed,
    /// Back on an older version — by itself or by a rollback. Never a success.
    RolledBack,
}

/// Reconciles a device's last OTA report with the version it was asked to run: a report is only
/// a success if the device actually runs `target`; running the version it had before (or any
/// older one) after trying is a rollback, whatever the status says.
pub fn classify(target: &FirmwareVersion, report: Option<&OtaReport>) -> DeviceOutcome {
    let Some(report) = report else {
        return DeviceOutcome::Pending;
    };
    let about_target = report
        .target_version
        .as_deref()
        .and_then(|v| v.parse::<FirmwareVersion>().ok())
        .is_some_and(|v| v == *target);
    if !about_target {
        return DeviceOutcome::Pending;
    }
    let running = report
        .running_version
        .as_deref()
        .and_then(|v| v.parse::<FirmwareVersion>().ok());
    match (report.status, running) {
        (OtaStatus::Downloading | OtaStatus::Verifying | OtaStatus::Applying, _) => {
            DeviceOutcome::InProgress
        }
        (OtaStatus::Success | OtaStatus::Failed, Some(r)) if r < *target => {
            DeviceOutcome::RolledBack
        }
        (OtaStatus::Success, Some(_)) => DeviceOutcome::Succeeded,
        // A success without the running version proves nothing: not counted as one.
        (OtaStatus::Success, None) => DeviceOutcome::InProgress,
        (OtaStatus::Failed, _) => DeviceOutcome::Failed,
    }
}

/// The counts the advancer judges a phase by.
pub fn count<'a>(outcomes: impl IntoIterator<Item = &'a DeviceOutcome>) -> PhaseCounts {
    let mut counts = PhaseCounts::default();
    for outcome in outcomes {
        counts.targeted += 1;
        match outcome {
            DeviceOutcome::Succeeded => counts.succeeded += 1,
            DeviceOutcome::Failed => counts.failed += 1,
            DeviceOutcome::RolledBack => counts.rolled_back += 1,
            DeviceOutcome::Pending | DeviceOutcome::InProgress => {}
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout() -> Rollout {
        crate::test_util::rollout("r-1")
    }

    #[test]
    fn rollout_ids_are_one_mqtt_topic_level_and_checked_when_read() {
        assert!(RolloutId::parse("th-v2-rev-b-1.10.0_build.42-1795600000").is_ok());
        let long = "x".repeat(ROLLOUT_ID_MAX + 1);
        for bad in ["", "a/b", "a+", "a#", "é", long.as_str()] {
            let err = RolloutId::parse(bad).unwrap_err();
            assert_eq!(err.kind, "rollout id", "{bad:?}");
        }
        let mut stored = serde_json::to_value(rollout()).unwrap();
        stored["id"] = "a/b".into();
        assert!(serde_json::from_value::<Rollout>(stored).is_err());
    }

    #[test]
    fn transitions_follow_the_lifecycle() {
        let r = rollout();
        let (r1, t) = r.apply(Command::Advance { to: 1 }, "advancer", 10).unwrap();
        assert_eq!((r1.phase, r1.revision, r1.phase_started_ms), (1, 2, 10));
        assert_eq!((t.from_phase, t.to_phase, t.revision), (0, 1, 2));
        assert!(matches!(
            r.apply(Command::Advance { to: 2 }, "advancer", 10),
            Err(TransitionError::SkipsAPhase { .. })
        ));
        let (paused, _) = r1
            .apply(
                Command::Pause {
                    reason: "5%".into(),
                },
                "advancer",
                20,
            )
            .unwrap();
        assert!(
            paused
                .apply(Command::Advance { to: 2 }, "advancer", 30)
                .is_err()
        );
        let (resumed, _) = paused.apply(Command::Resume, "ops", 40).unwrap();
        assert_eq!(
            (resumed.status, resumed.phase_started_ms),
            (RolloutStatus::Active, 40)
        );
        let (rolled, t) = resumed
            .apply(
                Command::Rollback {
                    reason: "radio".into(),
                },
                "ops",
                50,
            )
            .unwrap();
        assert_eq!(t.to_status, RolloutStatus::RolledBack);
        assert!(rolled.apply(Command::Resume, "ops", 60).is_err());
        assert!(
            r.apply(Command::Complete, "advancer", 1).is_err(),
            "not in the last phase"
        );
        let last = Rollout {
            phase: 3,
            ..rollout()
        };
        assert_eq!(
            last.apply(Command::Complete, "advancer", 1)
                .unwrap()
                .0
                .status,
            RolloutStatus::Completed
        );
        let no_way_back = Rollout {
            rollback_version: None,
            ..rollout()
        };
        assert!(matches!(
            no_way_back.apply(Command::Rollback { reason: "x".into() }, "ops", 1),
            Err(TransitionError::NoRollbackVersion { .. })
        ));
    }

    fn report(status: OtaStatus, target: &str, running: Option<&str>) -> OtaReport {
        OtaReport {
            status,
            target_version: Some(target.into()),
            running_version: running.map(str::to_owned),
            reason: (status == OtaStatus::Failed).then(|| "x".into()),
        }
    }

    #[test]
    fn a_device_that_fell_back_by_itself_is_rolled_back_never_a_success() {
        let target: FirmwareVersion = "1.10.0".parse().unwrap();
        use DeviceOutcome::{InProgress, Pending, RolledBack, Succeeded};
        use OtaStatus::{Downloading, Success};
        let failed = DeviceOutcome::Failed;
        let cases = [
            (None, Pending),
            (
                Some(report(Downloading, "1.10.0", Some("1.9.0"))),
                InProgress,
            ),
            (Some(report(Success, "1.10.0", Some("1.10.0"))), Succeeded),
            // Says success but runs the old image: it fell back by itself.
            (Some(report(Success, "1.10.0", Some("1.9.0"))), RolledBack),
            (
                Some(report(OtaStatus::Failed, "1.10.0", Some("1.9.0"))),
                RolledBack,
            ),
            (
                Some(report(OtaStatus::Failed, "1.10.0", Some("1.10.0"))),
                failed,
            ),
            (Some(report(OtaStatus::Failed, "1.10.0", None)), failed),
            (Some(report(Success, "1.10.0", None)), InProgress),
            // A report about another version is not about this rollout.
            (Some(report(Success, "1.8.0", Some("1.8.0"))), Pending),
        ];
        for (r, expected) in cases {
            assert_eq!(classify(&target, r.as_ref()), expected, "{r:?}");
        }
        // Published as 1.10.0+build.42, the device reports the version it runs without the build
        // metadata (or with another build's): that is the target, a success, never a rollback.
        let build: FirmwareVersion = "1.10.0+build.42".parse().unwrap();
        for (target_text, running) in [
            ("1.10.0+build.42", "1.10.0"),
            ("1.10.0", "1.10.0+build.42"),
            ("1.10.0+build.42", "1.10.0+build.43"),
        ] {
            let r = report(Success, target_text, Some(running));
            assert_eq!(
                classify(&build, Some(&r)),
                Succeeded,
                "{target_text} {running}"
            );
        }
        let r = report(Success, "1.10.0+build.42", Some("1.9.0+build.42"));
        assert_eq!(classify(&build, Some(&r)), RolledBack);
        let counts = count(&[Succeeded, failed, RolledBack, Pending, InProgress]);
        assert_eq!(
            counts,
            PhaseCounts {
                targeted: 5,
                succeeded: 1,
                failed: 1,
                rolled_back: 1
            }
        );
    }
}
