//! `shoal config set`: one desired state for every thing of a thing group (or with an attribute
//! value), written with bounded concurrency through the optimistic shadow write, per-path
//! policies applied on every 409. Each thing's result is appended to a JSON-lines report as soon
//! as it is known; `--resume` reads that report and skips the things already done, so an
//! interrupted run continues where it stopped.

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use shoal_shared::aws::{AwsError, AwsResultExt};
use shoal_shared::ids::{ShadowName, ThingName};
use shoal_shared::shadow::intent::{DesiredIntent, plan_intent};
use shoal_shared::shadow::{PolicyTable, ShadowRef, StateMap};
use shoal_shared::shadow_store::{ShadowStore, WriteOutcome, write_optimistic};
use thiserror::Error;

/// Which things a group update is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// A thing group (with its child groups).
    Group(String),
    /// Things whose registry attribute has this value.
    Where { attribute: String, value: String },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Group(g) => write!(f, "group {g}"),
            Self::Where { attribute, value } => write!(f, "{attribute}={value}"),
        }
    }
}

/// Lists the things of a target.
pub trait Fleet: Sync {
    fn things(
        &self,
        target: &Target,
    ) -> impl Future<Output = Result<Vec<ThingName>, AwsError>> + Send;
}

pub struct IotFleet(pub aws_sdk_iot::Client);

impl Fleet for IotFleet {
    async fn things(&self, target: &Target) -> Result<Vec<ThingName>, AwsError> {
        let mut names = Vec::new();
        let mut token = None;
        loop {
            let (page, next) = match target {
                Target::Group(group) => {
                    let out = self
                        .0
                        .list_things_in_thing_group()
                        .thing_group_name(group)
                        .recursive(true)
                        .set_next_token(token)
                        .send()
                        .await
                        .aws("iot", "ListThingsInThingGroup")?;
                    (out.things.unwrap_or_default(), out.next_token)
                }
                Target::Where { attribute, value } => {
                    let out = self
                        .0
                        .list_things()
                        .attribute_name(attribute)
                        .attribute_value(value)
                        .set_next_token(token)
                        .send()
                        .await
                        .aws("iot", "ListThings")?;
                    let things = out.things.unwrap_or_default();
                    (
                        things.into_iter().filter_map(|t| t.thing_name).collect(),
                        out.next_token,
                    )
                }
            };
            names.extend(page.into_iter().filter_map(|n| n.parse().ok()));
            match next.filter(|t| !t.is_empty()) {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }
}

/// The request, as the report's first line records it (a resume must repeat it exactly).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupRequest {
    pub target: Target,
    pub shadow: Option<ShadowName>,
    pub desired: StateMap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Written,
    Unchanged,
    Failed,
}

/// One line of the report per thing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThingResult {
    pub thing: String,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default)]
    pub attempts: u32,
    /// Leaves left as they were, with why (a newer or concurrent write won).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<(String, String)>,
    /// Values that lost a concurrent-write decision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GroupSummary {
    pub targeted: usize,
    /// Done by an earlier run of this report (`--resume`).
    pub already_done: usize,
    pub written: usize,
    pub unchanged: usize,
    pub failed: usize,
}

#[derive(Debug, Error)]
pub enum GroupError {
    #[error("report {0}: {1}")]
    Report(String, String),
    #[error(transparent)]
    Aws(#[from] AwsError),
}

pub struct Options<'a> {
    pub policies: &'a PolicyTable,
    pub concurrency: usize,
    pub max_attempts: u32,
    pub resume: bool,
    pub decided_at_s: u64,
}

/// The things an existing report says are done, after checking it is for the same request.
fn done_in_report(path: &Path, request: &GroupRequest) -> Result<BTreeSet<String>, GroupError> {
    let bad = |why: String| GroupError::Report(path.display().to_string(), why);
    let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut lines = std::io::BufReader::new(file).lines();
    let header = lines
        .next()
        .ok_or_else(|| bad("is empty".into()))?
        .map_err(|e| bad(e.to_string()))?;
    let recorded: GroupRequest = serde_json::from_str(&header)
        .map_err(|e| bad(format!("first line is not a config-set request: {e}")))?;
    if &recorded != request {
        return Err(bad(
            "was written for another request (target, shadow or desired differ); use another --report".into(),
        ));
    }
    let mut done = BTreeSet::new();
    for line in lines {
        let line = line.map_err(|e| bad(e.to_string()))?;
        // A line cut short by the interruption is simply not done.
        if let Ok(result) = serde_json::from_str::<ThingResult>(&line) {
            if result.status == Status::Failed {
                done.remove(&result.thing);
            } else {
                done.insert(result.thing);
            }
        }
    }
    Ok(done)
}

async fn set_one<S: ShadowStore>(
    store: &S,
    shadow: ShadowRef,
    intent: &DesiredIntent,
    policies: &PolicyTable,
    max_attempts: u32,
) -> ThingResult {
    let mut base = None;
    let mut last = None;
    let outcome = write_optimistic(store, &shadow, None, max_attempts, |fresh| {
        let base = base.get_or_insert_with(|| fresh.cloned());
        let plan = plan_intent(base.as_ref(), fresh, intent, policies);
        let update = plan.update();
        last = Some(plan);
        update
    })
    .await;
    let plan = last.unwrap_or_default();
    let mut result = ThingResult {
        thing: shadow.thing.to_string(),
        status: Status::Failed,
        version: None,
        attempts: 0,
        kept: plan.kept,
        lost: plan
            .lost
            .iter()
            .filter_map(|c| serde_json::to_value(c).ok())
            .collect(),
        error: None,
    };
    match outcome {
        Ok(WriteOutcome::Written { version, attempts }) => {
            result.status = Status::Written;
            result.version = Some(version);
            result.attempts = attempts;
        }
        Ok(WriteOutcome::Unchanged { attempts }) => {
            result.status = Status::Unchanged;
            result.attempts = attempts;
        }
        Err(e) => result.error = Some(e.to_string()),
    }
    result
}

/// Runs the request, appending each thing's result to `report` and calling `progress` with it.
pub async fn set_desired<S, F>(
    fleet: &F,
    store: Arc<S>,
    request: &GroupRequest,
    report: &Path,
    options: Options<'_>,
    mut progress: impl FnMut(usize, usize, &ThingResult),
) -> Result<GroupSummary, GroupError>
where
    S: ShadowStore + Send + 'static,
    F: Fleet,
{
    let bad = |e: std::io::Error| GroupError::Report(report.display().to_string(), e.to_string());
    let done = if options.resume {
        done_in_report(report, request)?
    } else {
        if report.exists() {
            return Err(GroupError::Report(
                report.display().to_string(),
                "exists: pass --resume to continue that run, or choose another --report".into(),
            ));
        }
        BTreeSet::new()
    };
    let things = fleet.things(&request.target).await?;
    let mut summary = GroupSummary {
        targeted: things.len(),
        ..GroupSummary::default()
    };
    let todo: Vec<ThingName> = things
        .into_iter()
        .filter(|t| !done.contains(t.as_str()))
        .collect();
    summary.already_done = summary.targeted - todo.len();
    let total = todo.len();

    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(report)
        .map_err(bad)?;
    if !options.resume {
        let header = serde_json::to_string(request).expect("a request is JSON");
        writeln!(out, "{header}").map_err(bad)?;
    }
    let intent = Arc::new(DesiredIntent {
        desired: request.desired.clone(),
        decided_at_s: options.decided_at_s,
    });
    let policies = Arc::new(options.policies.clone());
    let limit = Arc::new(tokio::sync::Semaphore::new(options.concurrency.max(1)));
    let mut running = tokio::task::JoinSet::new();
    for thing in todo {
        let permit = limit.clone().acquire_owned().await.expect("never closed");
        let (store, intent, policies) = (store.clone(), intent.clone(), policies.clone());
        let shadow = ShadowRef {
            thing,
            name: request.shadow.clone(),
        };
        let max_attempts = options.max_attempts;
        running.spawn(async move {
            let result = set_one(&*store, shadow, &intent, &policies, max_attempts).await;
            drop(permit);
            result
        });
        // Record what finished while we waited for a permit.
        while let Some(joined) = running.try_join_next() {
            record(&mut out, &mut summary, &mut progress, total, joined)?;
        }
    }
    while let Some(joined) = running.join_next().await {
        record(&mut out, &mut summary, &mut progress, total, joined)?;
    }
    Ok(summary)
}

fn record(
    out: &mut std::fs::File,
    summary: &mut GroupSummary,
    progress: &mut impl FnMut(usize, usize, &ThingResult),
    total: usize,
    joined: Result<ThingResult, tokio::task::JoinError>,
) -> Result<(), GroupError> {
    let result = joined.map_err(|e| GroupError::Report("task".into(), e.to_string()))?;
    match result.status {
        Status::Written => summary.written += 1,
        Status::Unchanged => summary.unchanged += 1,
        Status::Failed => summary.failed += 1,
    }
    let line = serde_json::to_string(&result).expect("a result is JSON");
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| GroupError::Report("append".into(), e.to_string()))?;
    progress(
        summary.written + summary.unchanged + summary.failed,
        total,
        &result,
    );
    Ok(())
}
