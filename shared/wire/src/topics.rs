//! MQTT topics of the contract: Shoal's telemetry topic and the AWS IoT reserved topics a device
//! and the cloud exchange (device shadows, jobs, fleet provisioning, lifecycle events).
//!
//! Each topic kind parses from its text, borrowing the levels (no allocation), and formats back to
//! exactly that text with `Display`. Thing and shadow names are checked as [`crate::ids`] checks
//! them. The reserved topics are AWS's:
//! <https://docs.aws.amazon.com/iot/latest/developerguide/reserved-topics.html>.

use core::fmt;

use thiserror::Error;

use crate::ids::{IdError, ShadowName, ThingName};

/// Why a topic was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TopicError {
    /// The levels do not follow the kind's pattern (the pattern is named).
    #[error("topic does not follow {0}")]
    Pattern(&'static str),
    /// A level that names a thing, shadow or job is not a valid name.
    #[error("{0}")]
    Name(#[from] IdError),
    /// A job id level is not 1–64 characters of `[a-zA-Z0-9_-]` (AWS IoT's job id rule).
    #[error("job id is not 1-64 characters of [a-zA-Z0-9_-]")]
    JobId,
}

/// Splits `topic` into at most `N` levels; `None` when it has more.
fn levels<const N: usize>(topic: &str) -> Option<([&str; N], usize)> {
    let mut out = [""; N];
    let mut count = 0;
    for level in topic.split('/') {
        *out.get_mut(count)? = level;
        count += 1;
    }
    Some((out, count))
}

fn thing(level: &str) -> Result<&str, TopicError> {
    ThingName::check(level)?;
    Ok(level)
}

/// `dt/<app>/<thing>/telemetry[/<model>]`: a device's readings, JSON on the four-level topic,
/// a binary payload (packed records of `<model>`, or a self-describing format) on the five-level
/// one. `<app>` is any non-empty level without wildcards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TelemetryTopic<'a> {
    /// The application, the topic's second level.
    pub app: &'a str,
    /// The sending device's thing name.
    pub thing: &'a str,
    /// The device model of a binary payload; `None` on the JSON topic. An empty fifth level is a
    /// binary topic without a model (`Some("")`: self-describing payloads only).
    pub model: Option<&'a str>,
}

impl<'a> TelemetryTopic<'a> {
    /// The pattern, as errors name it.
    pub const PATTERN: &'static str = "dt/<app>/<thing>/telemetry[/<model>]";

    /// Reads a telemetry topic.
    ///
    /// # Errors
    /// [`TopicError::Pattern`] when the levels differ (an empty app level, a wildcard, more
    /// levels); [`TopicError::Name`] when the thing level is not a thing name.
    pub fn parse(topic: &'a str) -> Result<Self, TopicError> {
        let bad = TopicError::Pattern(Self::PATTERN);
        let (l, n) = levels::<5>(topic).ok_or(bad.clone())?;
        let ok_level = |s: &str| !s.is_empty() && !s.contains(['+', '#']);
        if n < 4 || l[0] != "dt" || !ok_level(l[1]) || l[3] != "telemetry" {
            return Err(bad);
        }
        let model = match n {
            5 if !l[4].contains(['+', '#']) => Some(l[4]),
            5 => return Err(bad),
            _ => None,
        };
        Ok(Self {
            app: l[1],
            thing: thing(l[2])?,
            model,
        })
    }
}

impl fmt::Display for TelemetryTopic<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dt/{}/{}/telemetry", self.app, self.thing)?;
        match self.model {
            Some(model) => write!(f, "/{model}"),
            None => Ok(()),
        }
    }
}

/// A shadow operation a device or the cloud requests by publishing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShadowOperation {
    /// `get`: the whole document.
    Get,
    /// `update`: a change of `desired` and/or `reported`.
    Update,
    /// `delete`: the document.
    Delete,
}

impl ShadowOperation {
    fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::Update => "update",
            Self::Delete => "delete",
        }
    }
}

/// What AWS IoT publishes about a shadow operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShadowResponse {
    /// `accepted`: the operation's result.
    Accepted,
    /// `rejected`: an error document (`code`, `message`, `clientToken`).
    Rejected,
    /// `delta` (update only): `desired` that differs from `reported`.
    Delta,
    /// `documents` (update only): the previous and current documents.
    Documents,
}

impl ShadowResponse {
    fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Rejected => "rejected",
            Self::Delta => "delta",
            Self::Documents => "documents",
        }
    }
}

/// `$aws/things/<thing>/shadow[/name/<shadow>]/<operation>[/<response>]`: a request (no response
/// level) or AWS IoT's answer about the classic shadow or a named one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShadowTopic<'a> {
    /// The thing the shadow belongs to.
    pub thing: &'a str,
    /// The named shadow; `None` for the classic shadow.
    pub name: Option<&'a str>,
    /// The operation requested or answered.
    pub operation: ShadowOperation,
    /// The answer's kind; `None` on the request topic.
    pub response: Option<ShadowResponse>,
}

impl<'a> ShadowTopic<'a> {
    /// The pattern, as errors name it.
    pub const PATTERN: &'static str =
        "$aws/things/<thing>/shadow[/name/<shadow>]/get|update|delete[/<response>]";

    /// Reads a shadow topic. `delta` and `documents` exist for `update` only.
    ///
    /// # Errors
    /// [`TopicError::Pattern`] when the levels differ; [`TopicError::Name`] when the thing or
    /// shadow level is not a valid name.
    pub fn parse(topic: &'a str) -> Result<Self, TopicError> {
        let bad = TopicError::Pattern(Self::PATTERN);
        let (l, n) = levels::<8>(topic).ok_or(bad.clone())?;
        if n < 5 || l[0] != "$aws" || l[1] != "things" || l[3] != "shadow" {
            return Err(bad);
        }
        let (name, rest) = if l[4] == "name" {
            (Some(l[5]), &l[6..n.max(6)])
        } else {
            (None, &l[4..n])
        };
        let operation = match rest.first().copied() {
            Some("get") => ShadowOperation::Get,
            Some("update") => ShadowOperation::Update,
            Some("delete") => ShadowOperation::Delete,
            _ => return Err(bad),
        };
        let response = match (rest.get(1).copied(), operation) {
            (None, _) => None,
            (Some("accepted"), _) => Some(ShadowResponse::Accepted),
            (Some("rejected"), _) => Some(ShadowResponse::Rejected),
            (Some("delta"), ShadowOperation::Update) => Some(ShadowResponse::Delta),
            (Some("documents"), ShadowOperation::Update) => Some(ShadowResponse::Documents),
            _ => return Err(bad),
        };
        if rest.len() > 2 {
            return Err(bad);
        }
        if let Some(name) = name {
            ShadowName::check(name)?;
        }
        Ok(Self {
            thing: thing(l[2])?,
            name,
            operation,
            response,
        })
    }
}

impl fmt::Display for ShadowTopic<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "$aws/things/{}/shadow", self.thing)?;
        if let Some(name) = self.name {
            write!(f, "/name/{name}")?;
        }
        f.write_str("/")?;
        f.write_str(self.operation.as_str())?;
        match self.response {
            Some(response) => write!(f, "/{}", response.as_str()),
            None => Ok(()),
        }
    }
}

/// The jobs API a topic is about (AWS IoT jobs device MQTT API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobsApi<'a> {
    /// `notify`: the list of pending executions changed (AWS publishes).
    Notify,
    /// `notify-next`: the next pending execution changed (AWS publishes).
    NotifyNext,
    /// `get`: GetPendingJobExecutions.
    GetPending,
    /// `start-next`: StartNextPendingJobExecution.
    StartNext,
    /// `<jobId>/get`: DescribeJobExecution (`$next` names the next pending one).
    Describe(&'a str),
    /// `<jobId>/update`: UpdateJobExecution (a real job id; `$next` is refused).
    Update(&'a str),
}

/// `$aws/things/<thing>/jobs/...`: a jobs request, its `accepted`/`rejected` answer, or a
/// notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JobsTopic<'a> {
    /// The thing whose job executions these are.
    pub thing: &'a str,
    /// The API or notification.
    pub api: JobsApi<'a>,
    /// `Some(true)` on `accepted`, `Some(false)` on `rejected`, `None` on the request or a
    /// notification.
    pub accepted: Option<bool>,
}

fn job_id(level: &str) -> Result<&str, TopicError> {
    let ok = level == "$next"
        || (!level.is_empty()
            && level.len() <= 64
            && level
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-')));
    if ok {
        Ok(level)
    } else {
        Err(TopicError::JobId)
    }
}

impl<'a> JobsTopic<'a> {
    /// The pattern, as errors name it.
    pub const PATTERN: &'static str = "$aws/things/<thing>/jobs/notify|notify-next|get|start-next|<jobId>/get|<jobId>/update[/accepted|rejected]";

    /// Reads a jobs topic.
    ///
    /// # Errors
    /// [`TopicError::Pattern`] when the levels differ (notifications have no answer level);
    /// [`TopicError::Name`] for a bad thing name, [`TopicError::JobId`] for a bad job id.
    pub fn parse(topic: &'a str) -> Result<Self, TopicError> {
        let bad = TopicError::Pattern(Self::PATTERN);
        let (l, n) = levels::<7>(topic).ok_or(bad.clone())?;
        if n < 5 || l[0] != "$aws" || l[1] != "things" || l[3] != "jobs" {
            return Err(bad);
        }
        // A job id level is followed by `get` or `update`; a job may be called `get` itself.
        let (api, rest) = match (l[4], l.get(5).copied().filter(|_| n > 5)) {
            (id, Some("get")) => (JobsApi::Describe(job_id(id)?), &l[6..n]),
            // `$next` names the next pending execution for DescribeJobExecution only.
            ("$next", Some("update")) => return Err(TopicError::JobId),
            (id, Some("update")) => (JobsApi::Update(job_id(id)?), &l[6..n]),
            ("notify", _) => (JobsApi::Notify, &l[5..n]),
            ("notify-next", _) => (JobsApi::NotifyNext, &l[5..n]),
            ("get", _) => (JobsApi::GetPending, &l[5..n]),
            ("start-next", _) => (JobsApi::StartNext, &l[5..n]),
            _ => return Err(bad),
        };
        let notification = matches!(api, JobsApi::Notify | JobsApi::NotifyNext);
        let accepted = match rest {
            [] => None,
            ["accepted"] if !notification => Some(true),
            ["rejected"] if !notification => Some(false),
            _ => return Err(bad),
        };
        Ok(Self {
            thing: thing(l[2])?,
            api,
            accepted,
        })
    }
}

impl fmt::Display for JobsTopic<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "$aws/things/{}/jobs/", self.thing)?;
        match self.api {
            JobsApi::Notify => f.write_str("notify")?,
            JobsApi::NotifyNext => f.write_str("notify-next")?,
            JobsApi::GetPending => f.write_str("get")?,
            JobsApi::StartNext => f.write_str("start-next")?,
            JobsApi::Describe(id) => write!(f, "{id}/get")?,
            JobsApi::Update(id) => write!(f, "{id}/update")?,
        }
        match self.accepted {
            Some(true) => f.write_str("/accepted"),
            Some(false) => f.write_str("/rejected"),
            None => Ok(()),
        }
    }
}

/// The payload format of a fleet-provisioning API: `json` or `cbor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadFormat {
    /// `json`.
    Json,
    /// `cbor`.
    Cbor,
}

/// The fleet-provisioning MQTT API a topic is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProvisioningApi<'a> {
    /// `$aws/certificates/create/<format>`: CreateKeysAndCertificate.
    CreateKeysAndCertificate,
    /// `$aws/certificates/create-from-csr/<format>`: CreateCertificateFromCsr.
    CreateCertificateFromCsr,
    /// `$aws/provisioning-templates/<template>/provision/<format>`: RegisterThing.
    RegisterThing {
        /// The provisioning template's name.
        template: &'a str,
    },
}

/// A fleet-provisioning topic: the request or its `accepted`/`rejected` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProvisioningTopic<'a> {
    /// The API.
    pub api: ProvisioningApi<'a>,
    /// The payload format.
    pub format: PayloadFormat,
    /// `Some(true)` on `accepted`, `Some(false)` on `rejected`, `None` on the request.
    pub accepted: Option<bool>,
}

impl<'a> ProvisioningTopic<'a> {
    /// The pattern, as errors name it.
    pub const PATTERN: &'static str = "$aws/certificates/create|create-from-csr/<format>[/accepted|rejected] or $aws/provisioning-templates/<template>/provision/<format>[/accepted|rejected]";

    /// Reads a fleet-provisioning topic. A template name is 1–36 characters of
    /// `[0-9A-Za-z_-]` (AWS's CreateProvisioningTemplate rule).
    ///
    /// # Errors
    /// [`TopicError::Pattern`] when the levels, the format or the template name differ.
    pub fn parse(topic: &'a str) -> Result<Self, TopicError> {
        let bad = TopicError::Pattern(Self::PATTERN);
        let (l, n) = levels::<6>(topic).ok_or(bad.clone())?;
        let (api, rest) = match l[..n] {
            ["$aws", "certificates", "create", ref rest @ ..] => {
                (ProvisioningApi::CreateKeysAndCertificate, rest)
            }
            ["$aws", "certificates", "create-from-csr", ref rest @ ..] => {
                (ProvisioningApi::CreateCertificateFromCsr, rest)
            }
            [
                "$aws",
                "provisioning-templates",
                template,
                "provision",
                ref rest @ ..,
            ] if !template.is_empty()
                && template.len() <= 36
                && template
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-')) =>
            {
                (ProvisioningApi::RegisterThing { template }, rest)
            }
            _ => return Err(bad),
        };
        let (format, accepted) = match rest {
            [format] => (*format, None),
            [format, "accepted"] => (*format, Some(true)),
            [format, "rejected"] => (*format, Some(false)),
            _ => return Err(bad),
        };
        let format = match format {
            "json" => PayloadFormat::Json,
            "cbor" => PayloadFormat::Cbor,
            _ => return Err(bad),
        };
        Ok(Self {
            api,
            format,
            accepted,
        })
    }
}

impl fmt::Display for ProvisioningTopic<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.api {
            ProvisioningApi::CreateKeysAndCertificate => f.write_str("$aws/certificates/create")?,
            ProvisioningApi::CreateCertificateFromCsr => {
                f.write_str("$aws/certificates/create-from-csr")?;
            }
            ProvisioningApi::RegisterThing { template } => {
                write!(f, "$aws/provisioning-templates/{template}/provision")?;
            }
        }
        f.write_str(match self.format {
            PayloadFormat::Json => "/json",
            PayloadFormat::Cbor => "/cbor",
        })?;
        match self.accepted {
            Some(true) => f.write_str("/accepted"),
            Some(false) => f.write_str("/rejected"),
            None => Ok(()),
        }
    }
}

/// `$aws/events/presence/connected|disconnected/<clientId>`: AWS IoT's lifecycle events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PresenceTopic<'a> {
    /// `true` for `connected`, `false` for `disconnected`.
    pub connected: bool,
    /// The MQTT client id (any characters but `/`, `+` and `#`; 1–128 bytes at AWS IoT).
    pub client_id: &'a str,
}

impl<'a> PresenceTopic<'a> {
    /// The pattern, as errors name it.
    pub const PATTERN: &'static str = "$aws/events/presence/connected|disconnected/<clientId>";

    /// Reads a lifecycle event topic.
    ///
    /// # Errors
    /// [`TopicError::Pattern`] when the levels differ or the client id is empty or longer than
    /// 128 bytes. A client id may hold `/`: everything after the event level is the id.
    pub fn parse(topic: &'a str) -> Result<Self, TopicError> {
        let bad = TopicError::Pattern(Self::PATTERN);
        let (connected, client_id) =
            if let Some(id) = topic.strip_prefix("$aws/events/presence/connected/") {
                (true, id)
            } else if let Some(id) = topic.strip_prefix("$aws/events/presence/disconnected/") {
                (false, id)
            } else {
                return Err(bad);
            };
        if client_id.is_empty() || client_id.len() > 128 || client_id.contains(['+', '#']) {
            return Err(bad);
        }
        Ok(Self {
            connected,
            client_id,
        })
    }
}

impl fmt::Display for PresenceTopic<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let event = if self.connected {
            "connected"
        } else {
            "disconnected"
        };
        write!(f, "$aws/events/presence/{event}/{}", self.client_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use proptest::prelude::*;

    #[test]
    fn telemetry_topics() {
        let t = TelemetryTopic::parse("dt/farm/dev-1/telemetry").unwrap();
        assert_eq!((t.app, t.thing, t.model), ("farm", "dev-1", None));
        let t = TelemetryTopic::parse("dt/farm/dev-1/telemetry/th-v2").unwrap();
        assert_eq!(t.model, Some("th-v2"));
        assert_eq!(t.to_string(), "dt/farm/dev-1/telemetry/th-v2");
        let t = TelemetryTopic::parse("dt/farm/dev-1/telemetry/").unwrap();
        assert_eq!(t.model, Some(""));
        for bad in [
            "dt/farm/dev-1",
            "dt//dev-1/telemetry",
            "dt/farm/dev-1/telemetry/a/b",
            "dt/+/dev-1/telemetry",
            "dt/farm/dev-1/status",
            "xx/farm/dev-1/telemetry",
        ] {
            assert_eq!(
                TelemetryTopic::parse(bad),
                Err(TopicError::Pattern(TelemetryTopic::PATTERN)),
                "{bad}"
            );
        }
        assert!(matches!(
            TelemetryTopic::parse("dt/farm/bad thing/telemetry"),
            Err(TopicError::Name(IdError::BadCharacter { .. }))
        ));
    }

    #[test]
    fn shadow_topics() {
        let t = ShadowTopic::parse("$aws/things/d-1/shadow/name/ota/update/documents").unwrap();
        assert_eq!(
            t,
            ShadowTopic {
                thing: "d-1",
                name: Some("ota"),
                operation: ShadowOperation::Update,
                response: Some(ShadowResponse::Documents),
            }
        );
        let t = ShadowTopic::parse("$aws/things/d-1/shadow/get").unwrap();
        assert_eq!(
            (t.name, t.operation, t.response),
            (None, ShadowOperation::Get, None)
        );
        let t = ShadowTopic::parse("$aws/things/d-1/shadow/delete/rejected").unwrap();
        assert_eq!(t.response, Some(ShadowResponse::Rejected));
        for bad in [
            "$aws/things/d-1/shadow/get/delta",
            "$aws/things/d-1/shadow/delete/documents",
            "$aws/things/d-1/shadow/update/delta/x",
            "$aws/things/d-1/shadow/name/ota",
            "$aws/things/d-1/shadow/name/ota/put",
            "$aws/things/d-1/shadow",
            "$aws/things/d-1/jobs/get",
        ] {
            assert_eq!(
                ShadowTopic::parse(bad),
                Err(TopicError::Pattern(ShadowTopic::PATTERN)),
                "{bad}"
            );
        }
        assert!(matches!(
            ShadowTopic::parse("$aws/things/d-1/shadow/name/a.b/update"),
            Err(TopicError::Name(_))
        ));
    }

    #[test]
    fn jobs_topics() {
        let t = JobsTopic::parse("$aws/things/d-1/jobs/notify-next").unwrap();
        assert_eq!((t.api, t.accepted), (JobsApi::NotifyNext, None));
        let t = JobsTopic::parse("$aws/things/d-1/jobs/$next/get/accepted").unwrap();
        assert_eq!(
            (t.api, t.accepted),
            (JobsApi::Describe("$next"), Some(true))
        );
        let t = JobsTopic::parse("$aws/things/d-1/jobs/job_7/update/rejected").unwrap();
        assert_eq!((t.api, t.accepted), (JobsApi::Update("job_7"), Some(false)));
        assert_eq!(t.to_string(), "$aws/things/d-1/jobs/job_7/update/rejected");
        let t = JobsTopic::parse("$aws/things/d-1/jobs/get").unwrap();
        assert_eq!(t.api, JobsApi::GetPending);
        for bad in [
            "$aws/things/d-1/jobs/notify/accepted",
            "$aws/things/d-1/jobs/job_7",
            "$aws/things/d-1/jobs/job_7/delete",
            "$aws/things/d-1/jobs/get/maybe",
        ] {
            assert!(JobsTopic::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            JobsTopic::parse("$aws/things/d-1/jobs/a.b/get"),
            Err(TopicError::JobId)
        );
        assert_eq!(
            JobsTopic::parse("$aws/things/d-1/jobs/$next/update"),
            Err(TopicError::JobId)
        );
    }

    #[test]
    fn provisioning_topics() {
        let t = ProvisioningTopic::parse(
            "$aws/provisioning-templates/shoal-fleet/provision/json/accepted",
        )
        .unwrap();
        assert_eq!(
            t.api,
            ProvisioningApi::RegisterThing {
                template: "shoal-fleet"
            }
        );
        assert_eq!((t.format, t.accepted), (PayloadFormat::Json, Some(true)));
        let t = ProvisioningTopic::parse("$aws/certificates/create-from-csr/cbor").unwrap();
        assert_eq!(t.api, ProvisioningApi::CreateCertificateFromCsr);
        assert_eq!(t.to_string(), "$aws/certificates/create-from-csr/cbor");
        for bad in [
            "$aws/certificates/create/xml",
            "$aws/certificates/create",
            "$aws/provisioning-templates/a.b/provision/json",
            "$aws/provisioning-templates/t/provision/json/accepted/x",
        ] {
            assert!(ProvisioningTopic::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn presence_topics() {
        let t = PresenceTopic::parse("$aws/events/presence/disconnected/client-9").unwrap();
        assert_eq!((t.connected, t.client_id), (false, "client-9"));
        assert_eq!(t.to_string(), "$aws/events/presence/disconnected/client-9");
        let t = PresenceTopic::parse("$aws/events/presence/connected/site/7/gw").unwrap();
        assert_eq!((t.connected, t.client_id), (true, "site/7/gw"));
        assert!(PresenceTopic::parse("$aws/events/presence/connected/").is_err());
        assert!(PresenceTopic::parse("$aws/events/subscriptions/subscribed/c").is_err());
    }

    fn name() -> impl Strategy<Value = alloc::string::String> {
        "[a-zA-Z0-9:_-]{1,20}"
    }

    proptest! {
        /// What a topic formats to parses back to the same topic, for every kind (`$next`, an empty
        /// model level and a client id holding `/` included).
        #[test]
        fn topics_round_trip(
            thing in name(),
            shadow in proptest::option::of("[a-zA-Z0-9:_-]{1,20}"),
            app in "[a-z0-9-]{1,10}",
            model in proptest::option::of("[a-z0-9-]{1,10}"),
            operation in 0..3usize,
            response in 0..5usize,
            job in "[a-zA-Z0-9_-]{1,64}",
            api in 0..6usize,
            accepted in proptest::option::of(any::<bool>()),
        ) {
            let t = TelemetryTopic { app: &app, thing: &thing, model: model.as_deref() };
            let text = t.to_string();
            prop_assert_eq!(TelemetryTopic::parse(&text), Ok(t));

            let operation = [ShadowOperation::Get, ShadowOperation::Update, ShadowOperation::Delete][operation];
            let response = [None, Some(ShadowResponse::Accepted), Some(ShadowResponse::Rejected),
                Some(ShadowResponse::Delta), Some(ShadowResponse::Documents)][response];
            let s = ShadowTopic { thing: &thing, name: shadow.as_deref(), operation, response };
            let valid = operation == ShadowOperation::Update
                || !matches!(response, Some(ShadowResponse::Delta | ShadowResponse::Documents));
            let text = s.to_string();
            prop_assert_eq!(ShadowTopic::parse(&text).ok(), valid.then_some(s));

            let api = [JobsApi::Notify, JobsApi::NotifyNext, JobsApi::GetPending, JobsApi::StartNext,
                JobsApi::Describe(&job), JobsApi::Update(&job)][api];
            let j = JobsTopic { thing: &thing, api, accepted };
            let text = j.to_string();
            let valid = accepted.is_none() || !matches!(api, JobsApi::Notify | JobsApi::NotifyNext);
            prop_assert_eq!(JobsTopic::parse(&text).ok(), valid.then_some(j));
            let next = JobsTopic { thing: &thing, api: JobsApi::Describe("$next"), accepted };
            let text = next.to_string();
            prop_assert_eq!(JobsTopic::parse(&text), Ok(next));

            let template = &job[..job.len().min(36)];
            let apis = [ProvisioningApi::CreateKeysAndCertificate,
                ProvisioningApi::CreateCertificateFromCsr,
                ProvisioningApi::RegisterThing { template }];
            for api in apis {
                for format in [PayloadFormat::Json, PayloadFormat::Cbor] {
                    let p = ProvisioningTopic { api, format, accepted };
                    let text = p.to_string();
                    prop_assert_eq!(ProvisioningTopic::parse(&text), Ok(p));
                }
            }
            let client_id = alloc::format!("{thing}/{app}");
            let presence = PresenceTopic { connected: accepted.unwrap_or(true), client_id: &client_id };
            let text = presence.to_string();
            prop_assert_eq!(PresenceTopic::parse(&text), Ok(presence));
            let empty_model = TelemetryTopic { app: &app, thing: &thing, model: Some("") };
            let text = empty_model.to_string();
            prop_assert_eq!(TelemetryTopic::parse(&text), Ok(empty_model));
        }
    }
}
