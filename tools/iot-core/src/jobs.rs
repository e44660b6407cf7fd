//! The IoT Jobs device API on its reserved topics (`$aws/things/<thing>/jobs/get`,
//! `start-next`, `<jobId>/get`, `<jobId>/update`, with `notify` and `notify-next`), for the jobs
//! the registry holds (moto's CreateJob locally, which has no jobs data plane): a job targets a
//! thing directly or through a thing group it belongs to; the executions' states (status,
//! details, versions) are kept here, one store for every connection.
//!
//! <https://docs.aws.amazon.com/iot/latest/developerguide/jobs-mqtt-api.html>

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};
use shoal_core::edge::EdgeError;
use shoal_wire::topics::{JobsApi, JobsTopic};
use tokio::sync::mpsc;

use crate::broker::{Broker, Message, Publisher, Service};

/// Requests waiting for the worker at most; more are dropped unanswered (and logged).
pub const REQUEST_QUEUE: usize = 1_000;

/// A job that targets a thing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Its id.
    pub id: String,
    /// Its document (JSON text).
    pub document: String,
    /// When it was created, epoch seconds.
    pub created_at_s: i64,
}

/// The registry as the jobs API needs it.
pub trait JobsRegistry: Send + Sync + 'static {
    /// The jobs in progress that target `thing` (directly or through one of its groups), oldest
    /// first.
    ///
    /// # Errors
    /// [`EdgeError`] when the registry could not be asked.
    fn jobs_for(&self, thing: &str) -> impl Future<Output = Result<Vec<Job>, EdgeError>> + Send;
}

/// An execution's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Waiting for the device.
    Queued,
    /// Started by the device.
    InProgress,
    /// Done.
    Succeeded,
    /// Failed.
    Failed,
    /// Refused by the device.
    Rejected,
}

impl Status {
    fn name(self) -> &'static str {
        match self {
            Self::Queued => "QUEUED",
            Self::InProgress => "IN_PROGRESS",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
            Self::Rejected => "REJECTED",
        }
    }

    /// What a device may set with UpdateJobExecution.
    fn parse_update(text: &str) -> Option<Self> {
        match text {
            "IN_PROGRESS" => Some(Self::InProgress),
            "SUCCEEDED" => Some(Self::Succeeded),
            "FAILED" => Some(Self::Failed),
            "REJECTED" => Some(Self::Rejected),
            _ => None,
        }
    }

    fn pending(self) -> bool {
        matches!(self, Self::Queued | Self::InProgress)
    }
}

/// One job execution's state.
#[derive(Debug, Clone, PartialEq)]
struct Execution {
    /// The job's creation time the state belongs to: a job deleted and created again with the
    /// same id starts anew.
    job_created_at: i64,
    status: Status,
    details: Map<String, Value>,
    queued_at: i64,
    started_at: Option<i64>,
    updated_at: i64,
    version: u64,
}

/// Every execution's state, by (thing, job id).
#[derive(Debug, Default)]
pub struct Executions(Mutex<HashMap<(String, String), Execution>>);

/// A refused request: `rejected`'s `code` and `message`.
#[derive(Debug, Clone, PartialEq)]
struct Refused {
    code: &'static str,
    message: String,
    state: Option<Value>,
}

fn refused(code: &'static str, message: impl Into<String>) -> Refused {
    Refused {
        code,
        message: message.into(),
        state: None,
    }
}

impl Executions {
    /// The executions of `thing` for `jobs` (those not seen before start `QUEUED` at the job's
    /// creation), in `jobs`' order: (job, state).
    fn of(&self, thing: &str, jobs: &[Job]) -> Vec<(Job, Execution)> {
        let mut all = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        jobs.iter()
            .map(|job| {
                let fresh = || Execution {
                    job_created_at: job.created_at_s,
                    status: Status::Queued,
                    details: Map::new(),
                    queued_at: job.created_at_s,
                    started_at: None,
                    updated_at: job.created_at_s,
                    version: 1,
                };
                let state = all
                    .entry((thing.to_owned(), job.id.clone()))
                    .and_modify(|s| {
                        if s.job_created_at != job.created_at_s {
                            *s = fresh();
                        }
                    })
                    .or_insert_with(fresh)
                    .clone();
                (job.clone(), state)
            })
            .collect()
    }

    fn set(&self, thing: &str, job: &str, state: Execution) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((thing.to_owned(), job.to_owned()), state);
    }
}

fn summary(job: &Job, state: &Execution) -> Value {
    let mut out = json!({
        "jobId": job.id,
        "queuedAt": state.queued_at,
        "lastUpdatedAt": state.updated_at,
        "versionNumber": state.version,
        "executionNumber": 1,
    });
    if let Some(started) = state.started_at {
        out["startedAt"] = started.into();
    }
    out
}

fn execution(thing: &str, job: &Job, state: &Execution, with_document: bool) -> Value {
    let mut out = summary(job, state);
    out["thingName"] = thing.into();
    out["status"] = state.status.name().into();
    if !state.details.is_empty() {
        out["statusDetails"] = Value::Object(state.details.clone());
    }
    if with_document {
        out["jobDocument"] = serde_json::from_str(&job.document)
            .unwrap_or_else(|_| Value::String(job.document.clone()));
    }
    out
}

/// The next pending execution: the one in progress, else the oldest queued.
fn next(executions: &[(Job, Execution)]) -> Option<&(Job, Execution)> {
    executions
        .iter()
        .find(|(_, s)| s.status == Status::InProgress)
        .or_else(|| executions.iter().find(|(_, s)| s.status == Status::Queued))
}

fn details(request: &Value) -> Result<Option<Map<String, Value>>, Refused> {
    match request.get("statusDetails") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) if map.values().all(Value::is_string) => Ok(Some(map.clone())),
        Some(_) => Err(refused(
            "InvalidRequest",
            "statusDetails is a map of strings",
        )),
    }
}

/// The answers to a jobs request on `topic` with `payload`, given the `jobs` that target its
/// thing, at `now_s`: `(topic, payload)`, `accepted` or `rejected` first, then `notify` and
/// `notify-next` when the pending executions changed. Empty when `topic` is not a request.
pub fn serve(
    executions: &Executions,
    topic: &JobsTopic<'_>,
    payload: &[u8],
    jobs: &[Job],
    now_s: i64,
) -> Vec<(String, Vec<u8>)> {
    if topic.accepted.is_some() || matches!(topic.api, JobsApi::Notify | JobsApi::NotifyNext) {
        return Vec::new();
    }
    let thing = topic.thing;
    let request: Value = if payload.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(payload) {
            Ok(v @ Value::Object(_)) => v,
            _ => Value::Null,
        }
    };
    let token = request.get("clientToken").cloned();
    let answer = |accepted: bool, mut document: Value| {
        document["timestamp"] = now_s.into();
        if let Some(token) = &token {
            document["clientToken"] = token.clone();
        }
        let reply = JobsTopic {
            accepted: Some(accepted),
            ..*topic
        };
        (reply.to_string(), document.to_string().into_bytes())
    };
    if request.is_null() {
        return vec![answer(
            false,
            json!({"code": "InvalidJson", "message": "the request is not a JSON object"}),
        )];
    }
    let before = executions.of(thing, jobs);
    let result = respond(executions, thing, topic.api, &request, &before, now_s);
    let mut out = vec![match result {
        Ok(document) => answer(true, document),
        Err(refusal) => {
            let mut document = json!({"code": refusal.code, "message": refusal.message});
            if let Some(state) = refusal.state {
                document["executionState"] = state;
            }
            answer(false, document)
        }
    }];
    let after = executions.of(thing, jobs);
    let pending = |all: &[(Job, Execution)]| -> Vec<(String, Status)> {
        all.iter()
            .filter(|(_, s)| s.status.pending())
            .map(|(j, s)| (j.id.clone(), s.status))
            .collect()
    };
    if pending(&before) != pending(&after) {
        let list = |status: Status| -> Vec<Value> {
            after
                .iter()
                .filter(|(_, s)| s.status == status)
                .map(|(j, s)| summary(j, s))
                .collect()
        };
        let mut jobs = Map::new();
        for status in [Status::InProgress, Status::Queued] {
            let listed = list(status);
            if !listed.is_empty() {
                jobs.insert(status.name().into(), listed.into());
            }
        }
        out.push((
            format!("$aws/things/{thing}/jobs/notify"),
            json!({"timestamp": now_s, "jobs": jobs})
                .to_string()
                .into_bytes(),
        ));
        // notify-next: when another execution becomes the next one (or none is left).
        let next_of = |all: &[(Job, Execution)]| next(all).map(|(j, _)| j.id.clone());
        if next_of(&before) != next_of(&after) {
            let mut document = json!({"timestamp": now_s});
            if let Some((job, state)) = next(&after) {
                document["execution"] = execution(thing, job, state, true);
            }
            out.push((
                format!("$aws/things/{thing}/jobs/notify-next"),
                document.to_string().into_bytes(),
            ));
        }
    }
    out
}

fn respond(
    executions: &Executions,
    thing: &str,
    api: JobsApi<'_>,
    request: &Value,
    all: &[(Job, Execution)],
    now_s: i64,
) -> Result<Value, Refused> {
    match api {
        JobsApi::GetPending => {
            let list = |status: Status| -> Vec<Value> {
                all.iter()
                    .filter(|(_, s)| s.status == status)
                    .map(|(j, s)| summary(j, s))
                    .collect()
            };
            Ok(json!({
                "inProgressJobs": list(Status::InProgress),
                "queuedJobs": list(Status::Queued),
            }))
        }
        JobsApi::StartNext => {
            let details = details(request)?;
            let Some((job, state)) = next(all) else {
                return Ok(json!({}));
            };
            let mut state = state.clone();
            let mut changed = false;
            if state.status == Status::Queued {
                state.status = Status::InProgress;
                state.started_at = Some(now_s);
                changed = true;
            }
            if let Some(details) = details
                && details != state.details
            {
                state.details = details;
                changed = true;
            }
            if changed {
                state.version += 1;
                state.updated_at = now_s;
            }
            executions.set(thing, &job.id, state.clone());
            Ok(json!({"execution": execution(thing, job, &state, true)}))
        }
        JobsApi::Describe(id) => {
            let found = if id == "$next" {
                next(all)
            } else {
                all.iter().find(|(j, _)| j.id == id)
            };
            let (job, state) = found.ok_or_else(|| {
                refused(
                    "ResourceNotFound",
                    format!("no execution of job {id} for thing {thing}"),
                )
            })?;
            let with_document = request
                .get("includeJobDocument")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            Ok(json!({"execution": execution(thing, job, state, with_document)}))
        }
        JobsApi::Update(id) => {
            let (job, state) = all.iter().find(|(j, _)| j.id == id).ok_or_else(|| {
                refused(
                    "ResourceNotFound",
                    format!("no execution of job {id} for thing {thing}"),
                )
            })?;
            let status = request
                .get("status")
                .and_then(Value::as_str)
                .ok_or_else(|| refused("InvalidRequest", "status is required"))?;
            let status = Status::parse_update(status).ok_or_else(|| {
                refused(
                    "InvalidRequest",
                    format!("status {status}: IN_PROGRESS, SUCCEEDED, FAILED or REJECTED"),
                )
            })?;
            let details = details(request)?;
            let current = json!({
                "status": state.status.name(),
                "statusDetails": state.details,
                "versionNumber": state.version,
            });
            if let Some(expected) = request.get("expectedVersion") {
                let expected = expected
                    .as_u64()
                    .or_else(|| expected.as_str().and_then(|s| s.parse().ok()));
                if expected != Some(state.version) {
                    return Err(Refused {
                        state: Some(current),
                        ..refused(
                            "VersionMismatch",
                            "expectedVersion is not the execution's version",
                        )
                    });
                }
            }
            if !state.status.pending() {
                return Err(Refused {
                    state: Some(current),
                    ..refused(
                        "InvalidStateTransition",
                        format!("the execution is {}: a terminal state", state.status.name()),
                    )
                });
            }
            let mut state = state.clone();
            if state.status == Status::Queued && status != Status::Queued {
                state.started_at = Some(now_s);
            }
            state.status = status;
            if let Some(details) = details {
                state.details = details;
            }
            state.version += 1;
            state.updated_at = now_s;
            executions.set(thing, &job.id, state.clone());
            let mut out = json!({});
            if request
                .get("includeJobExecutionState")
                .and_then(Value::as_bool)
                == Some(true)
            {
                out["executionState"] = json!({
                    "status": state.status.name(),
                    "statusDetails": state.details,
                    "versionNumber": state.version,
                });
            }
            if request.get("includeJobDocument").and_then(Value::as_bool) == Some(true) {
                out["jobDocument"] = serde_json::from_str(&job.document)
                    .unwrap_or_else(|_| Value::String(job.document.clone()));
            }
            Ok(out)
        }
        JobsApi::Notify | JobsApi::NotifyNext => Ok(json!({})),
    }
}

/// A request the worker answers.
#[derive(Debug)]
pub struct Request {
    topic: String,
    payload: bytes::Bytes,
}

/// Workers answering jobs requests: a thing's requests always go to the same one, in order.
pub const WORKERS: usize = 16;

/// The service on the broker: it queues jobs requests for [`run`], by thing.
#[derive(Debug)]
pub struct JobsService {
    requests: Vec<mpsc::Sender<Request>>,
}

impl JobsService {
    /// The service, and the queues its [`WORKERS`] workers read.
    pub fn new() -> (Self, Vec<mpsc::Receiver<Request>>) {
        let (requests, queues) = (0..WORKERS)
            .map(|_| mpsc::channel(REQUEST_QUEUE / WORKERS))
            .unzip();
        (Self { requests }, queues)
    }
}

impl Service for JobsService {
    fn answer(&self, message: &Message, _publisher: Option<&Publisher>) -> Vec<Message> {
        let Ok(topic) = JobsTopic::parse(&message.topic) else {
            return Vec::new();
        };
        if topic.accepted.is_some() || matches!(topic.api, JobsApi::Notify | JobsApi::NotifyNext) {
            return Vec::new();
        }
        let request = Request {
            topic: message.topic.clone(),
            payload: message.payload.clone(),
        };
        let worker = {
            use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
            let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(topic.thing);
            usize::try_from(hash % WORKERS as u64).unwrap_or(0)
        };
        if self.requests[worker].try_send(request).is_err() {
            tracing::warn!(
                topic = message.topic,
                "jobs request dropped: the queue is full"
            );
        }
        Vec::new()
    }
}

/// Runs one worker per queue ([`JobsService::new`]'s).
pub fn spawn<R: JobsRegistry>(
    queues: Vec<mpsc::Receiver<Request>>,
    registry: Arc<R>,
    executions: Arc<Executions>,
    broker: Arc<Broker>,
) {
    for queue in queues {
        tokio::spawn(run(
            queue,
            registry.clone(),
            executions.clone(),
            broker.clone(),
        ));
    }
}

/// Answers requests until the queue closes: the thing's jobs read from `registry`, then
/// [`serve`], its answers published. One thing's requests are answered in order.
pub async fn run<R: JobsRegistry>(
    mut queue: mpsc::Receiver<Request>,
    registry: Arc<R>,
    executions: Arc<Executions>,
    broker: Arc<Broker>,
) {
    while let Some(request) = queue.recv().await {
        let Ok(topic) = JobsTopic::parse(&request.topic) else {
            continue;
        };
        let now_s = crate::lifecycle::now_ms() / 1000;
        let answers = match registry.jobs_for(topic.thing).await {
            Ok(jobs) => serve(&executions, &topic, &request.payload, &jobs, now_s),
            Err(e) => {
                tracing::warn!(thing = topic.thing, error = %e, "jobs of a thing could not be read");
                let reply = JobsTopic {
                    accepted: Some(false),
                    ..topic
                };
                vec![(
                    reply.to_string(),
                    json!({"code": "InternalError", "message": "the jobs could not be read", "timestamp": now_s})
                        .to_string()
                        .into_bytes(),
                )]
            }
        };
        for (topic, payload) in answers {
            broker.publish(Message::from_service(topic, payload));
        }
    }
}

/// The jobs of the registry (AWS IoT's, moto's locally), each described once per version (its
/// `lastUpdatedAt`): a job's targets and document are read once, not per request.
#[derive(Debug, Clone)]
pub struct RegistryJobs {
    iot: aws_sdk_iot::Client,
    described: Arc<Mutex<HashMap<String, Cached>>>,
}

/// A job as described at a version (`lastUpdatedAt`, seconds): `None` for a job that is done.
type Cached = (i64, Option<Described>);

/// What a job is, for the devices.
#[derive(Debug, Clone)]
struct Described {
    targets: Vec<String>,
    document: String,
    created_at_s: i64,
}

impl RegistryJobs {
    /// The jobs of `iot`'s registry.
    pub fn new(iot: aws_sdk_iot::Client) -> Self {
        Self {
            iot,
            described: Arc::default(),
        }
    }

    async fn describe(&self, id: &str) -> Result<Option<Described>, EdgeError> {
        use shoal_aws::client::AwsResultExt;
        let described = self
            .iot
            .describe_job()
            .job_id(id)
            .send()
            .await
            .aws("iot", "DescribeJob")?;
        let Some(job) = described.job else {
            return Ok(None);
        };
        // AWS's new jobs are IN_PROGRESS; moto's stay QUEUED. Done ones have no executions
        // left to work on.
        if matches!(
            job.status.as_ref().map(|s| s.as_str()),
            Some("CANCELED" | "COMPLETED" | "DELETION_IN_PROGRESS")
        ) {
            return Ok(None);
        }
        let document = self
            .iot
            .get_job_document()
            .job_id(id)
            .send()
            .await
            .aws("iot", "GetJobDocument")?
            .document
            .unwrap_or_default();
        Ok(Some(Described {
            targets: job.targets.unwrap_or_default(),
            document,
            created_at_s: job.created_at.map_or(0, |t| t.secs()),
        }))
    }
}

impl JobsRegistry for RegistryJobs {
    async fn jobs_for(&self, thing: &str) -> Result<Vec<Job>, EdgeError> {
        use shoal_aws::client::AwsResultExt;
        let groups = self
            .iot
            .list_thing_groups_for_thing()
            .thing_name(thing)
            .send()
            .await
            .aws("iot", "ListThingGroupsForThing")
            .map(|g| {
                g.thing_groups
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|g| g.group_arn)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let thing_arn = format!(
            "arn:aws:iot:{}:{}:thing/{thing}",
            shoal_template::REGION,
            shoal_template::ACCOUNT_ID
        );
        let mut jobs = Vec::new();
        let mut pages = self.iot.list_jobs().into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.aws("iot", "ListJobs")?;
            for summary in page.jobs.unwrap_or_default() {
                let Some(id) = summary.job_id else { continue };
                let version = summary
                    .last_updated_at
                    .or(summary.created_at)
                    .map_or(0, |t| t.secs());
                let cached = self
                    .described
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get(&id)
                    .filter(|(v, _)| *v == version)
                    .map(|(_, d)| d.clone());
                let described = match cached {
                    Some(described) => described,
                    None => {
                        let described = self.describe(&id).await?;
                        self.described
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .insert(id.clone(), (version, described.clone()));
                        described
                    }
                };
                let Some(described) = described else { continue };
                if described
                    .targets
                    .iter()
                    .any(|t| *t == thing_arn || groups.contains(t))
                {
                    jobs.push(Job {
                        id,
                        document: described.document,
                        created_at_s: described.created_at_s,
                    });
                }
            }
        }
        jobs.sort_by(|a, b| (a.created_at_s, &a.id).cmp(&(b.created_at_s, &b.id)));
        Ok(jobs)
    }
}

#[cfg(test)]
#[path = "jobs/tests.rs"]
mod tests;
