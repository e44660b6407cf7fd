//! MQTT topic names and filters as AWS IoT Core takes them: MQTT 3.1.1 §4.7 (levels separated by
//! `/`, `+` one level, `#` the rest, a filter starting with a wildcard never matching a topic
//! that starts with `$`) plus AWS IoT's limits — at most 256 bytes of UTF-8 and at most 7 `/`
//! (<https://docs.aws.amazon.com/general/latest/gr/iot-core.html>: "Topic size", "Maximum number
//! of slashes in topic and topic filter").

/// The longest topic name or filter AWS IoT Core takes, in bytes.
pub const MAX_TOPIC_BYTES: usize = 256;
/// The most `/` a topic name or filter may hold (8 levels).
pub const MAX_SLASHES: usize = 7;

/// Why a topic name or filter is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Empty.
    #[error("the topic is empty")]
    Empty,
    /// Longer than [`MAX_TOPIC_BYTES`].
    #[error("the topic is longer than {MAX_TOPIC_BYTES} bytes")]
    TooLong,
    /// More than [`MAX_SLASHES`] levels separators.
    #[error("the topic has more than {MAX_SLASHES} '/'")]
    TooDeep,
    /// A wildcard in a topic name, or one that is not a whole level (or `#` not last) in a filter.
    #[error("a wildcard ('+' or '#') out of place")]
    Wildcard,
    /// A NUL character (MQTT 3.1.1 §1.5.3).
    #[error("the topic holds a NUL character")]
    Nul,
}

fn check_common(text: &str) -> Result<(), TopicError> {
    if text.is_empty() {
        return Err(TopicError::Empty);
    }
    if text.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong);
    }
    if text.bytes().filter(|b| *b == b'/').count() > MAX_SLASHES {
        return Err(TopicError::TooDeep);
    }
    if text.contains('\0') {
        return Err(TopicError::Nul);
    }
    Ok(())
}

/// Checks a topic name a client publishes to (or a will's topic): no wildcard.
///
/// # Errors
/// [`TopicError`] naming the rule broken.
pub fn check_name(topic: &str) -> Result<(), TopicError> {
    check_common(topic)?;
    if topic.contains(['+', '#']) {
        return Err(TopicError::Wildcard);
    }
    Ok(())
}

/// Why a client may not publish on `topic` (`retain` as asked), though its policy may allow it:
/// AWS IoT's reserved topics (`$aws/…`) take publishes only on their request topics (shadow
/// get/update/delete, the jobs API's requests, fleet provisioning's requests; Basic Ingest's
/// `$aws/rules/<rule>/…` is not emulated) and never retained; their answers, notifications and events
/// (`…/accepted`, `…/delta`, `$aws/events/…`) are the service's alone
/// (<https://docs.aws.amazon.com/iot/latest/developerguide/reserved-topics.html>).
pub fn reserved_publish_refusal(topic: &str, retain: bool) -> Option<String> {
    use shoal_wire::topics::{JobsApi, JobsTopic, ProvisioningTopic, ShadowTopic};
    if !topic.starts_with("$aws/") {
        return None;
    }
    if retain {
        return Some(format!(
            "{topic}: a reserved topic takes no retained message"
        ));
    }
    let request = ShadowTopic::parse(topic).is_ok_and(|t| t.response.is_none())
        || JobsTopic::parse(topic).is_ok_and(|t| {
            t.accepted.is_none() && !matches!(t.api, JobsApi::Notify | JobsApi::NotifyNext)
        })
        || ProvisioningTopic::parse(topic).is_ok_and(|t| t.accepted.is_none());
    if topic.starts_with("$aws/rules/") {
        return Some(format!(
            "{topic}: Basic Ingest is not emulated by the local IoT Core"
        ));
    }
    (!request).then(|| format!("{topic}: a reserved topic only AWS IoT publishes on"))
}

/// Checks a topic filter a client subscribes with: `+` only as a whole level, `#` only as the
/// whole last level.
///
/// # Errors
/// [`TopicError`] naming the rule broken.
pub fn check_filter(filter: &str) -> Result<(), TopicError> {
    check_common(filter)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        let ok = match level {
            "+" => true,
            "#" => last,
            other => !other.contains(['+', '#']),
        };
        if !ok {
            return Err(TopicError::Wildcard);
        }
    }
    Ok(())
}

/// Whether `filter` (already checked) matches topic name `topic` (already checked).
pub fn matches(filter: &str, topic: &str) -> bool {
    // MQTT 3.1.1 §4.7.2: a filter starting with a wildcard does not match `$` topics.
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        match level {
            "#" => return true,
            "+" => {
                if topic_levels.next().is_none() {
                    return false;
                }
            }
            exact => {
                if topic_levels.next() != Some(exact) {
                    return false;
                }
            }
        }
    }
    topic_levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_publish_on_reserved_request_topics_only() {
        for allowed in [
            "dt/app/t/telemetry",
            "$aws/things/t/shadow/update",
            "$aws/things/t/shadow/name/cfg/get",
            "$aws/things/t/jobs/start-next",
            "$aws/things/t/jobs/job-1/update",
            "$aws/certificates/create/json",
            "$aws/provisioning-templates/fleet/provision/json",
        ] {
            assert_eq!(reserved_publish_refusal(allowed, false), None, "{allowed}");
        }
        for refused in [
            "$aws/things/t/shadow/update/accepted",
            "$aws/things/t/shadow/update/delta",
            "$aws/things/t/jobs/notify-next",
            "$aws/things/t/jobs/get/accepted",
            "$aws/certificates/create/json/accepted",
            "$aws/events/presence/connected/t",
            "$aws/anything/else",
            "$aws/rules/telemetry_rule/dt/t",
        ] {
            assert!(
                reserved_publish_refusal(refused, false).is_some(),
                "{refused}"
            );
        }
        assert!(reserved_publish_refusal("$aws/things/t/shadow/update", true).is_some());
        assert_eq!(reserved_publish_refusal("a/b", true), None);
    }
    use proptest::prelude::*;

    #[test]
    fn wildcards_match_as_mqtt_says() {
        let cases = [
            ("dt/+/d-1/telemetry", "dt/app/d-1/telemetry", true),
            ("dt/+/d-1/telemetry", "dt/app/d-2/telemetry", false),
            ("dt/#", "dt/app/d-1/telemetry/th-v2", true),
            // `#` also matches the parent level itself (§4.7.1.2).
            ("dt/app/#", "dt/app", true),
            ("#", "dt", true),
            ("+", "dt/app", false),
            ("+/+", "/x", true),
            ("a/+/c", "a//c", true),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
            // Wildcards at the first level never reach `$` topics; an explicit `$aws` does.
            ("#", "$aws/things/d-1/shadow/update", false),
            (
                "+/things/d-1/shadow/update",
                "$aws/things/d-1/shadow/update",
                false,
            ),
            (
                "$aws/things/+/shadow/#",
                "$aws/things/d-1/shadow/update/delta",
                true,
            ),
        ];
        for (filter, topic, expected) in cases {
            check_filter(filter).unwrap();
            check_name(topic).unwrap();
            assert_eq!(matches(filter, topic), expected, "{filter} ~ {topic}");
        }
    }

    #[test]
    fn filters_and_names_follow_the_rules_and_aws_limits() {
        for bad in ["a/b#", "a/#/b", "a+/b", "#/a", ""] {
            assert!(check_filter(bad).is_err(), "{bad:?}");
        }
        assert_eq!(check_name("a/+/b"), Err(TopicError::Wildcard));
        assert_eq!(check_name("a/#"), Err(TopicError::Wildcard));
        assert_eq!(check_name(&"a/".repeat(8)), Err(TopicError::TooDeep));
        assert!(check_name(&"a/".repeat(7)).is_ok());
        assert_eq!(check_name(&"x".repeat(257)), Err(TopicError::TooLong));
        assert!(check_name(&"x".repeat(256)).is_ok());
        assert_eq!(check_name("a\0b"), Err(TopicError::Nul));
    }

    proptest! {
        /// A topic name read as a filter matches itself, `#` and its own level count in `+`.
        #[test]
        fn a_topic_matches_itself_and_its_wildcard_forms(
            levels in proptest::collection::vec("[a-z0-9_-]{0,6}", 1..=8)
        ) {
            let topic = levels.join("/");
            prop_assume!(check_name(&topic).is_ok());
            prop_assert!(matches(&topic, &topic));
            prop_assert!(matches("#", &topic));
            let pluses = vec!["+"; levels.len()].join("/");
            prop_assert!(matches(&pluses, &topic));
            let deeper = format!("{pluses}/+");
            prop_assert!(!matches(&deeper, &topic));
        }
    }
}
