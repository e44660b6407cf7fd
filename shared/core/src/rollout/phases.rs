//! Rollout phases — canary → staged steps → general — and the advancer's decision for the
//! current phase: wait for the soak time and enough reports, pause when the failure rate is
//! above the phase's threshold, else advance (one phase at a time) or complete.

use serde::{Deserialize, Serialize};

/// One step of a rollout plan: how much of the fleet it reaches and what it must show to pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    /// The phase's name: `canary`, `staged-<n>` (from 1) or `general`.
    pub name: String,
    /// Share of the eligible fleet targeted once this phase is reached (cumulative).
    pub percent: f64,
    /// Time the phase must run before the next one may start.
    pub soak_ms: u64,
    /// Failed + rolled back over reported, above which the rollout pauses.
    pub max_failure_rate: f64,
    /// Reports (success, failed, rolled back) needed before the phase may be judged passed.
    pub min_reports: u64,
}

/// The phases a rollout moves through, in order (see [`RolloutPlan::new`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutPlan {
    /// The phases, in order: canary first, `general` (100%) last; percentages increase.
    pub phases: Vec<Phase>,
}

/// The knobs of a plan (CLI flags / rollout request).
#[derive(Debug, Clone, PartialEq)]
pub struct PlanSettings {
    /// Share of the eligible fleet in the canary phase (percent, in (0, 100)).
    pub canary_percent: f64,
    /// Cumulative share reached by each staged phase, in order (percent, each in (0, 100),
    /// increasing and above `canary_percent`).
    pub staged_percents: Vec<f64>,
    /// Soak time of every phase (ms).
    pub soak_ms: u64,
    /// Failure-rate threshold of the canary phase (rate, 0–1).
    pub canary_max_failure_rate: f64,
    /// Failure-rate threshold of the staged phases and the general one (rate, 0–1).
    pub staged_max_failure_rate: f64,
    /// Reports each phase needs before it may pass.
    pub min_reports: u64,
}

impl Default for PlanSettings {
    /// The seed's: 1% canary (5% failures tolerated), staged 10% and 50% (2%), one hour of soak.
    fn default() -> Self {
        Self {
            canary_percent: 1.0,
            staged_percents: vec![10.0, 50.0],
            soak_ms: 3_600_000,
            canary_max_failure_rate: 0.05,
            staged_max_failure_rate: 0.02,
            min_reports: 10,
        }
    }
}

/// Why [`PlanSettings`] make no rollout plan.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// A canary or staged percentage outside (0, 100); the phases' percentages, in order.
    #[error("canary and staged percentages must be in (0, 100): {0:?}")]
    PercentOutOfRange(Vec<f64>),
    /// A phase's percentage not above the one before it; the phases' percentages, in order.
    #[error("percentages must increase from phase to phase: {0:?}")]
    NotIncreasing(Vec<f64>),
    /// A failure-rate threshold outside [0, 1].
    #[error("a failure-rate threshold must be in [0, 1]: {0}")]
    FailureRateOutOfRange(f64),
}

impl RolloutPlan {
    /// The canary phase, then one staged phase per staged percentage, then the full fleet
    /// (100%), each with the settings' soak time and minimum reports.
    ///
    /// # Errors
    /// [`PlanError`] when a percentage is outside (0, 100), the percentages do not increase, or
    /// a failure-rate threshold is outside [0, 1].
    pub fn new(settings: &PlanSettings) -> Result<Self, PlanError> {
        let mut percents = vec![settings.canary_percent];
        percents.extend(&settings.staged_percents);
        if percents.iter().any(|p| !(*p > 0.0 && *p < 100.0)) {
            return Err(PlanError::PercentOutOfRange(percents));
        }
        if percents.windows(2).any(|w| w[0] >= w[1]) {
            return Err(PlanError::NotIncreasing(percents));
        }
        for rate in [
            settings.canary_max_failure_rate,
            settings.staged_max_failure_rate,
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(PlanError::FailureRateOutOfRange(rate));
            }
        }
        let phase = |name: String, percent, max_failure_rate| Phase {
            name,
            percent,
            soak_ms: settings.soak_ms,
            max_failure_rate,
            min_reports: settings.min_reports,
        };
        let mut phases = vec![phase(
            "canary".into(),
            settings.canary_percent,
            settings.canary_max_failure_rate,
        )];
        for (i, p) in settings.staged_percents.iter().enumerate() {
            phases.push(phase(
                format!("staged-{}", i + 1),
                *p,
                settings.staged_max_failure_rate,
            ));
        }
        phases.push(phase(
            "general".into(),
            100.0,
            settings.staged_max_failure_rate,
        ));
        Ok(Self { phases })
    }
}

/// Outcomes among the devices a phase (and the ones before it) targeted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseCounts {
    /// Devices targeted, whether they reported or not.
    pub targeted: u64,
    /// Devices that reported success and run the target version.
    pub succeeded: u64,
    /// Devices that reported failure and are not back on an older version.
    pub failed: u64,
    /// Reported running the old version again: never counted as a success.
    pub rolled_back: u64,
}

impl PhaseCounts {
    /// These counts with one more device of `outcome`.
    pub fn plus(self, outcome: super::state::DeviceOutcome) -> Self {
        super::state::count(std::iter::once(&outcome)).sum(self)
    }

    fn sum(self, other: Self) -> Self {
        Self {
            targeted: self.targeted + other.targeted,
            succeeded: self.succeeded + other.succeeded,
            failed: self.failed + other.failed,
            rolled_back: self.rolled_back + other.rolled_back,
        }
    }

    /// Devices with a final outcome: succeeded + failed + rolled back.
    pub fn reported(&self) -> u64 {
        self.succeeded + self.failed + self.rolled_back
    }

    /// (Failed + rolled back) over [`reported`](Self::reported), a rate in 0–1; 0 when nothing
    /// is reported yet.
    pub fn failure_rate(&self) -> f64 {
        match self.reported() {
            0 => 0.0,
            n => (self.failed + self.rolled_back) as f64 / n as f64,
        }
    }
}

/// What the advancer should do with a rollout now; serialised with a `decision` tag.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Nothing yet: the phase is still soaking or short of reports.
    Wait {
        /// What it waits for, for people (e.g. `canary soaking for 120 s more`).
        reason: String,
    },
    /// Move to the next phase.
    Advance {
        /// The phase to move to: index into the plan's phases, the current one plus one.
        to: usize,
    },
    /// The last phase passed (or the phase index is past the plan's end): the rollout is done.
    Complete,
    /// Stop targeting: a failure rate is above its phase's threshold.
    Pause {
        /// The breach, for people: phase, rate and counts (see [`breach`]).
        reason: String,
    },
}

/// Why `counts`, the outcomes of the devices targeted during `phase`, break its failure-rate
/// threshold (judged once it has any of its minimum reports... at least one), if they do.
pub fn breach(phase: &Phase, counts: &PhaseCounts) -> Option<String> {
    let rate = counts.failure_rate();
    (counts.reported() >= phase.min_reports.max(1) && rate > phase.max_failure_rate).then(|| {
        format!(
            "{} failure rate {:.1}% ({} failed, {} rolled back of {} reported) is above {:.1}%",
            phase.name,
            rate * 100.0,
            counts.failed,
            counts.rolled_back,
            counts.reported(),
            phase.max_failure_rate * 100.0
        )
    })
}

/// The decision for the rollout in `phase` (index into `plan.phases`, started at
/// `phase_started_ms`), given `counts` of the devices targeted during it, at `now_ms` (both ms
/// since the Unix epoch): pause on a threshold breach, even while soaking; wait until the soak
/// time has passed and the phase has its minimum reports; then advance to the next phase, or
/// complete after the last one.
pub fn decide(
    plan: &RolloutPlan,
    phase: usize,
    phase_started_ms: u64,
    counts: &PhaseCounts,
    now_ms: u64,
) -> Decision {
    let Some(current) = plan.phases.get(phase) else {
        return Decision::Complete;
    };
    if let Some(reason) = breach(current, counts) {
        return Decision::Pause { reason };
    }
    let soaked_at = phase_started_ms.saturating_add(current.soak_ms);
    if now_ms < soaked_at {
        return Decision::Wait {
            reason: format!(
                "{} soaking for {} s more",
                current.name,
                (soaked_at - now_ms).div_ceil(1000)
            ),
        };
    }
    if counts.reported() < current.min_reports {
        return Decision::Wait {
            reason: format!(
                "{} has {} of the {} reports it needs",
                current.name,
                counts.reported(),
                current.min_reports
            ),
        };
    }
    if phase + 1 == plan.phases.len() {
        Decision::Complete
    } else {
        Decision::Advance { to: phase + 1 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn plan() -> RolloutPlan {
        RolloutPlan::new(&PlanSettings::default()).unwrap()
    }

    #[test]
    fn the_default_plan_is_the_seeds() {
        let p = plan();
        let names: Vec<_> = p
            .phases
            .iter()
            .map(|p| (p.name.as_str(), p.percent))
            .collect();
        assert_eq!(
            names,
            [
                ("canary", 1.0),
                ("staged-1", 10.0),
                ("staged-2", 50.0),
                ("general", 100.0)
            ]
        );
        assert_eq!(p.phases[0].max_failure_rate, 0.05);
        assert_eq!(p.phases[1].max_failure_rate, 0.02);
    }

    #[test]
    fn bad_plans_say_why() {
        let bad = |s: PlanSettings| RolloutPlan::new(&s).unwrap_err();
        let decreasing = bad(PlanSettings {
            staged_percents: vec![50.0, 10.0],
            ..PlanSettings::default()
        });
        assert_eq!(decreasing, PlanError::NotIncreasing(vec![1.0, 50.0, 10.0]));
        assert!(decreasing.to_string().contains("increase"));
        let zero = bad(PlanSettings {
            canary_percent: 0.0,
            ..PlanSettings::default()
        });
        assert_eq!(zero, PlanError::PercentOutOfRange(vec![0.0, 10.0, 50.0]));
        assert!(zero.to_string().contains("(0, 100)"));
        let rate = bad(PlanSettings {
            staged_max_failure_rate: 2.0,
            ..PlanSettings::default()
        });
        assert_eq!(rate, PlanError::FailureRateOutOfRange(2.0));
        assert!(rate.to_string().contains("[0, 1]"));
    }

    #[test]
    fn a_phase_waits_for_soak_and_reports_then_advances() {
        let p = plan();
        let good = PhaseCounts {
            targeted: 20,
            succeeded: 12,
            failed: 0,
            rolled_back: 0,
        };
        assert!(matches!(
            decide(&p, 0, 0, &good, 1_000),
            Decision::Wait { .. }
        ));
        assert_eq!(
            decide(&p, 0, 0, &good, 3_600_000),
            Decision::Advance { to: 1 }
        );
        let few = PhaseCounts {
            succeeded: 3,
            ..good
        };
        assert!(
            matches!(decide(&p, 0, 0, &few, 3_600_000), Decision::Wait { reason } if reason.contains("3 of the 10"))
        );
        assert_eq!(decide(&p, 3, 0, &good, 3_600_000), Decision::Complete);
    }

    #[test]
    fn failures_above_the_threshold_pause_even_while_soaking() {
        let p = plan();
        // Canary: 1 failure in 12 reports = 8.3% > 5%.
        let bad = PhaseCounts {
            targeted: 20,
            succeeded: 10,
            failed: 1,
            rolled_back: 1,
        };
        assert!(
            matches!(decide(&p, 0, 0, &bad, 1), Decision::Pause { reason } if reason.contains("16.7%"))
        );
        // Staged: 2% threshold; 1 rolled back of 40 = 2.5%.
        let staged = PhaseCounts {
            targeted: 200,
            succeeded: 39,
            failed: 0,
            rolled_back: 1,
        };
        assert!(matches!(
            decide(&p, 1, 0, &staged, 9_999_999),
            Decision::Pause { .. }
        ));
    }

    proptest! {
        #[test]
        fn never_skips_a_phase_nor_advances_past_the_threshold(
            phase in 0usize..4,
            succeeded in 0u64..200,
            failed in 0u64..20,
            rolled_back in 0u64..20,
            started in 0u64..10_000_000,
            now in 0u64..20_000_000,
        ) {
            let p = plan();
            let counts = PhaseCounts { targeted: 400, succeeded, failed, rolled_back };
            match decide(&p, phase, started, &counts, now) {
                Decision::Advance { to } => {
                    prop_assert_eq!(to, phase + 1);
                    prop_assert!(counts.failure_rate() <= p.phases[phase].max_failure_rate);
                    prop_assert!(now >= started + p.phases[phase].soak_ms);
                    prop_assert!(counts.reported() >= p.phases[phase].min_reports);
                }
                Decision::Complete => prop_assert_eq!(phase, p.phases.len() - 1),
                Decision::Pause { .. } => prop_assert!(counts.failure_rate() > p.phases[phase].max_failure_rate),
                Decision::Wait { .. } => {}
            }
        }
    }
}
