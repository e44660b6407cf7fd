//! Deterministic cohorts: a thing's point in [0, 1) for a rollout is a hash of (rollout id,
//! thing name), so a device inside the 1% is inside every larger percentage, and every run of the
//! advancer (or a replay) picks the same devices. Different rollouts shuffle the fleet
//! differently, so the same devices are not always first.

use serde::Serialize;

use super::version::FirmwareVersion;

/// FNV-1a (64-bit) over `rollout`, a 0 byte and `thing`, then the SplitMix64 finalizer for an
/// even spread; the top 53 bits as a fraction. Stable across processes, platforms and releases
/// (a std `Hasher` is not).
pub fn cohort_point(rollout: &str, thing: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in rollout
        .as_bytes()
        .iter()
        .chain(&[0u8])
        .chain(thing.as_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Whether a thing at `point` is inside the first `percent` of the fleet.
pub fn in_cohort(point: f64, percent: f64) -> bool {
    point * 100.0 < percent
}

/// What the advancer knows of a device when it decides whether the image is for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device<'a> {
    /// The device's model name, compared as text with the target's.
    pub model: &'a str,
    /// The device's hardware revision, compared as text with the target's.
    pub hardware: &'a str,
    /// The version the device last reported running.
    pub running: Option<&'a FirmwareVersion>,
}

/// What an image asks of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    /// The device model the image is built for.
    pub model: &'a str,
    /// The hardware revision the image is built for.
    pub hardware: &'a str,
    /// The version the image installs.
    pub version: &'a FirmwareVersion,
    /// The lowest version that may take the image directly; `None`: no lower bound.
    pub min_version: Option<&'a FirmwareVersion>,
}

/// Why an image is not for a device (see [`eligibility`]); serialised in snake_case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ineligible {
    /// The device is of another model than the image's.
    OtherModel,
    /// The device is of another hardware revision than the image's.
    OtherHardware,
    /// It never reported a version: it may be anything, so it is not guessed at.
    UnknownVersion,
    /// Below the image's `min_version`: it needs an intermediate image first.
    BelowMinVersion,
    /// Already on the target (or newer).
    AlreadyCurrent,
}

/// Whether the image `target` describes is for `device`: same model and hardware revision, and
/// a known running version at or above `min_version` and below the target version (compared by
/// SemVer precedence, so build metadata does not count).
///
/// # Errors
/// The first [`Ineligible`] reason that applies, checked in this order: [`OtherModel`],
/// [`OtherHardware`], [`UnknownVersion`], [`BelowMinVersion`], [`AlreadyCurrent`].
///
/// [`OtherModel`]: Ineligible::OtherModel
/// [`OtherHardware`]: Ineligible::OtherHardware
/// [`UnknownVersion`]: Ineligible::UnknownVersion
/// [`BelowMinVersion`]: Ineligible::BelowMinVersion
/// [`AlreadyCurrent`]: Ineligible::AlreadyCurrent
pub fn eligibility(target: &Target<'_>, device: &Device<'_>) -> Result<(), Ineligible> {
    if device.model != target.model {
        return Err(Ineligible::OtherModel);
    }
    if device.hardware != target.hardware {
        return Err(Ineligible::OtherHardware);
    }
    let running = device.running.ok_or(Ineligible::UnknownVersion)?;
    if target.min_version.is_some_and(|min| running < min) {
        return Err(Ineligible::BelowMinVersion);
    }
    if running >= target.version {
        return Err(Ineligible::AlreadyCurrent);
    }
    Ok(())
}

/// A device of a rollout's population, as the advancer sees it on one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate<'a> {
    /// The AWS IoT thing name.
    pub thing: &'a str,
    /// Its cohort point for the rollout, in [0, 1) (see [`cohort_point`]).
    pub point: f64,
    /// Whether the rollout has targeted it already.
    pub targeted: bool,
}

/// The devices to target now: inside `percent`, not targeted yet, lowest cohort point first (so
/// the canary's devices always go before the staged ones), at most `budget`.
pub fn next_targets<'a>(candidates: &[Candidate<'a>], percent: f64, budget: usize) -> Vec<&'a str> {
    let mut open: Vec<&Candidate<'a>> = candidates
        .iter()
        .filter(|c| !c.targeted && in_cohort(c.point, percent))
        .collect();
    open.sort_by(|a, b| {
        a.point
            .total_cmp(&b.point)
            .then_with(|| a.thing.cmp(b.thing))
    });
    open.into_iter().take(budget).map(|c| c.thing).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_device_in_a_cohort_is_in_every_larger_one(
            rollout in "[a-z0-9-]{1,20}",
            thing in "[A-Za-z0-9:_-]{1,128}",
            a in 0.0f64..=100.0,
            b in 0.0f64..=100.0,
        ) {
            let (small, large) = if a <= b { (a, b) } else { (b, a) };
            let point = cohort_point(&rollout, &thing);
            prop_assert!((0.0..1.0).contains(&point));
            prop_assert_eq!(point, cohort_point(&rollout, &thing));
            if in_cohort(point, small) {
                prop_assert!(in_cohort(point, large));
            }
            prop_assert!(in_cohort(point, 100.0));
            prop_assert!(!in_cohort(point, 0.0));
        }
    }

    #[test]
    fn cohorts_have_their_size_and_differ_per_rollout() {
        let things: Vec<String> = (0..100_000).map(|i| format!("thing-{i:06}")).collect();
        for percent in [1.0, 10.0, 50.0] {
            let n = things
                .iter()
                .filter(|t| in_cohort(cohort_point("rollout-a", t), percent))
                .count();
            let expected = 1000.0 * percent;
            assert!(
                (n as f64 - expected).abs() < expected * 0.1 + 30.0,
                "{percent}%: {n} of 100000"
            );
        }
        let first = |r: &str| -> Vec<&String> {
            things
                .iter()
                .filter(|t| in_cohort(cohort_point(r, t), 1.0))
                .collect()
        };
        let (a, b) = (first("rollout-a"), first("rollout-b"));
        let shared = a.iter().filter(|t| b.contains(t)).count();
        assert!(shared < a.len() / 5, "{shared} of {} shared", a.len());
    }

    #[test]
    fn targets_respect_the_cohort_the_budget_and_the_order() {
        let names: Vec<String> = (0..2_000).map(|i| format!("d-{i}")).collect();
        let mut candidates: Vec<Candidate> = names
            .iter()
            .map(|t| Candidate {
                thing: t,
                point: cohort_point("r", t),
                targeted: false,
            })
            .collect();
        let inside_10: usize = candidates
            .iter()
            .filter(|c| in_cohort(c.point, 10.0))
            .count();
        // Budget smaller than the cohort: the lowest points first, never outside 10%.
        let first = next_targets(&candidates, 10.0, 50);
        assert_eq!(first.len(), 50);
        let max_point = first
            .iter()
            .map(|t| cohort_point("r", t))
            .fold(0.0, f64::max);
        let skipped_lower = candidates
            .iter()
            .filter(|c| c.point < max_point && !first.contains(&c.thing))
            .count();
        assert_eq!(skipped_lower, 0);
        for c in candidates.iter_mut() {
            c.targeted |= first.contains(&c.thing);
        }
        let rest = next_targets(&candidates, 10.0, usize::MAX);
        assert_eq!(rest.len(), inside_10 - 50);
        assert!(rest.iter().all(|t| !first.contains(t)));
        assert!(rest.iter().all(|t| in_cohort(cohort_point("r", t), 10.0)));
        assert_eq!(
            next_targets(&candidates, 10.0, 7),
            next_targets(&candidates, 10.0, 7),
            "deterministic"
        );
    }

    #[test]
    fn eligibility_needs_model_hardware_and_a_version_in_range() {
        let v = |s: &str| s.parse::<FirmwareVersion>().unwrap();
        let (target_v, min) = (v("1.10.0"), v("1.4.0"));
        let target = Target {
            model: "th-v2",
            hardware: "rev-b",
            version: &target_v,
            min_version: Some(&min),
        };
        let device = |model, hardware, running| Device {
            model,
            hardware,
            running,
        };
        let (old, ancient, same, newer) = (v("1.9.0"), v("1.3.9"), v("1.10.0"), v("1.11.0"));
        assert_eq!(
            eligibility(&target, &device("th-v2", "rev-b", Some(&old))),
            Ok(())
        );
        let refused = |d| eligibility(&target, &d).unwrap_err();
        assert_eq!(
            refused(device("th-v3", "rev-b", Some(&old))),
            Ineligible::OtherModel
        );
        assert_eq!(
            refused(device("th-v2", "rev-a", Some(&old))),
            Ineligible::OtherHardware
        );
        assert_eq!(
            refused(device("th-v2", "rev-b", None)),
            Ineligible::UnknownVersion
        );
        assert_eq!(
            refused(device("th-v2", "rev-b", Some(&ancient))),
            Ineligible::BelowMinVersion
        );
        assert_eq!(
            refused(device("th-v2", "rev-b", Some(&same))),
            Ineligible::AlreadyCurrent
        );
        assert_eq!(
            refused(device("th-v2", "rev-b", Some(&newer))),
            Ineligible::AlreadyCurrent
        );
        // Build metadata is not precedence: a device running 1.10.0 already runs
        // 1.10.0+build.42, and one running another build of it too.
        let build = v("1.10.0+build.42");
        let of_build = Target {
            version: &build,
            ..target
        };
        let builds = [v("1.10.0"), v("1.10.0+build.7")];
        for running in &builds {
            assert_eq!(
                eligibility(&of_build, &device("th-v2", "rev-b", Some(running))),
                Err(Ineligible::AlreadyCurrent),
                "{running}"
            );
        }
        let min_build = v("1.4.0+b1");
        let at_min = Target {
            min_version: Some(&min_build),
            ..target
        };
        let at_min_version = v("1.4.0");
        assert_eq!(
            eligibility(&at_min, &device("th-v2", "rev-b", Some(&at_min_version))),
            Ok(())
        );
    }
}
