//! `shoal config set`: one desired state for every thing of a thing group (or with an attribute
//! value), written with bounded concurrency through the optimistic shadow write, per-path
//! policies applied on every 409. Each thing's result is appended to a JSON-lines report as soon
//! as it is known; `--resume` reads that report and skips the things already done, so an
//! interrupted run continues where it stopped.

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shoal_aws::client::{AwsResultExt, ClientFactory, EdgeError};
use shoal_aws::config::vars;
use shoal_aws::shadow_store::IotShadowStore;
use shoal_core::ids::{ShadowName, ThingName};
use shoal_core::shadow::document::{Section, ShadowDocument};
use shoal_core::shadow::intent::{DesiredIntent, plan_intent};
use shoal_core::shadow::store::{ShadowStore, WriteOutcome, write_optimistic};
use shoal_core::shadow::{PolicyTable, ShadowRef, ShadowUpdate, StateMap, check_update};
use thiserror::Error;

/// `shoal config …`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Set desired state on every thing of a thing group (or with an attribute value), with
    /// bounded concurrency, a progress bar and a per-device JSON-lines report; failures are
    /// reported and skipped, and `--resume` continues an interrupted run from its report.
    Set(SetArgs),
}

/// `shoal config set`'s arguments.
#[derive(Debug, clap::Args)]
pub struct SetArgs {
    /// Thing group (child groups included).
    #[arg(long, required_unless_present = "where_", conflicts_with = "where_")]
    pub group: Option<String>,
    /// Registry attribute filter, ATTR=VALUE.
    #[arg(long = "where", value_name = "ATTR=VALUE")]
    pub where_: Option<String>,
    /// Named shadow (default: the classic shadow).
    #[arg(long)]
    pub shadow: Option<ShadowName>,
    /// Conflict policies per attribute path, as the shadow-sync function reads them.
    #[arg(long, env = vars::SHADOW_POLICIES, default_value = "*=lww")]
    pub policies: PolicyTable,
    /// Things updated at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// UpdateThingShadow attempts per thing (each 409 re-reads and re-applies the policy).
    #[arg(long, default_value_t = 5)]
    pub max_attempts: u32,
    /// The per-device report (JSON lines; default config-set-<time>.jsonl).
    #[arg(long)]
    pub report: Option<std::path::PathBuf>,
    /// Continue the run recorded in --report: things already done are skipped.
    #[arg(long, requires = "report")]
    pub resume: bool,
    /// Then wait up to this many seconds for every targeted thing to report the desired state,
    /// showing how many have (0: do not wait). Things still behind are listed and the command
    /// fails.
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    pub wait: u64,
    /// The desired state, a JSON object: '{"sample_interval_s": 30}'.
    pub desired: String,
}

impl SetArgs {
    /// The things asked for: `--group`, or `--where ATTR=VALUE` (split at the first `=`).
    ///
    /// # Errors
    /// Neither given, or a `--where` without `=` or with an empty attribute.
    pub fn target(&self) -> anyhow::Result<Target> {
        match (&self.group, &self.where_) {
            (Some(group), _) => Ok(Target::Group(group.clone())),
            (None, Some(filter)) => {
                let (attribute, value) = filter
                    .split_once('=')
                    .filter(|(attribute, _)| !attribute.is_empty())
                    .context("--where takes ATTR=VALUE")?;
                Ok(Target::Where {
                    attribute: attribute.to_owned(),
                    value: value.to_owned(),
                })
            }
            (None, None) => anyhow::bail!("give --group or --where"),
        }
    }
}

/// The desired state as given on the command line: a JSON object that a shadow can take (AWS's
/// limits: size, depth), checked before any call.
///
/// # Errors
/// Not JSON, not an object, or past a shadow limit.
pub fn parse_desired(text: &str) -> anyhow::Result<StateMap> {
    let desired: Value = serde_json::from_str(text).context("the desired state is not JSON")?;
    let Value::Object(desired) = desired else {
        anyhow::bail!("the desired state must be a JSON object");
    };
    check_update(
        &Default::default(),
        &ShadowUpdate::desired(desired.clone(), None),
    )?;
    Ok(desired)
}

/// Runs `shoal config set`: a progress bar while it runs, then a summary line.
///
/// # Errors
/// Bad arguments (before any call), a report that does not match a resumed request, or things
/// that failed (the report names each).
pub async fn run(factory: &ClientFactory, command: Command) -> anyhow::Result<()> {
    let Command::Set(args) = command;
    let target = args.target()?;
    let desired = parse_desired(&args.desired)?;
    let now_s = u64::try_from(shoal_core::clock::now_ms() / 1000).unwrap_or_default();
    let report = args
        .report
        .unwrap_or_else(|| format!("config-set-{now_s}.jsonl").into());
    let request = GroupRequest {
        target,
        shadow: args.shadow,
        desired,
    };
    let bar = ProgressBar::no_length().with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} things {msg}")
            .expect("a valid template"),
    );
    let fleet = IotFleet(factory.iot());
    let store = Arc::new(IotShadowStore::new(factory.iot_data()));
    let options = Options {
        policies: &args.policies,
        concurrency: args.concurrency,
        max_attempts: args.max_attempts,
        resume: args.resume,
        decided_at_s: now_s,
    };
    let mut failed = 0;
    let summary = set_desired(
        &fleet,
        store,
        &request,
        &report,
        options,
        |n, total, result| {
            bar.set_length(total as u64);
            bar.set_position(n as u64);
            if result.status == Status::Failed {
                failed += 1;
                bar.set_message(format!("{failed} failed"));
            }
        },
    )
    .await?;
    bar.finish_and_clear();
    println!(
        "{} things for {}: {} written, {} unchanged, {} failed, {} done earlier; report {}",
        summary.targeted,
        request.target,
        summary.written,
        summary.unchanged,
        summary.failed,
        summary.already_done,
        report.display()
    );
    if summary.failed > 0 {
        anyhow::bail!(
            "{} things failed (see the report); run again with --resume --report {}",
            summary.failed,
            report.display()
        );
    }
    if args.wait > 0 {
        wait_converged(
            &fleet,
            &IotShadowStore::new(factory.iot_data()),
            &request,
            now_s,
            Duration::from_secs(args.wait),
        )
        .await?;
    }
    Ok(())
}

/// Polls every targeted thing's shadow until each reports `request.desired` (written from
/// `written_at_s`, epoch seconds), with a progress bar; prints how long convergence took. A
/// shadow that cannot be read is read again on the next poll.
async fn wait_converged(
    fleet: &impl Fleet,
    store: &impl ShadowStore,
    request: &GroupRequest,
    written_at_s: u64,
    limit: Duration,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let things = fleet.things(&request.target).await?;
    let bar = ProgressBar::new(things.len() as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} things report it ({elapsed})")
            .expect("a valid template"),
    );
    loop {
        let state = convergence(
            store,
            &things,
            request.shadow.as_ref(),
            &request.desired,
            written_at_s,
        )
        .await;
        bar.set_position(state.converged.len() as u64);
        if state.complete() {
            bar.finish_and_clear();
            println!(
                "converged: {}/{} things report the desired state ({:.1} s after the writes)",
                state.converged.len(),
                things.len(),
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if started.elapsed() >= limit {
            bar.finish_and_clear();
            let waiting: Vec<String> = state
                .pending
                .iter()
                .map(ToString::to_string)
                .chain(
                    state
                        .unread
                        .iter()
                        .map(|(t, why)| format!("{t} (unread: {why})")),
                )
                .collect();
            let shown = waiting.len().min(10);
            anyhow::bail!(
                "after {} s, {}/{} things report the desired state; not yet: {}{} \
                 (offline devices apply it when they reconnect)",
                limit.as_secs(),
                state.converged.len(),
                things.len(),
                waiting[..shown].join(", "),
                if waiting.len() > shown { ", …" } else { "" }
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Every leaf path of `state` (objects are walked; arrays and scalars are leaves).
fn leaf_paths(state: &StateMap) -> Vec<(Vec<String>, &Value)> {
    fn walk<'a>(prefix: &[String], value: &'a Value, out: &mut Vec<(Vec<String>, &'a Value)>) {
        match value {
            Value::Object(map) if !map.is_empty() => {
                for (key, child) in map {
                    let mut path = prefix.to_vec();
                    path.push(key.clone());
                    walk(&path, child, out);
                }
            }
            leaf => out.push((prefix.to_vec(), leaf)),
        }
    }
    let mut out = Vec::new();
    for (key, value) in state {
        walk(std::slice::from_ref(key), value, &mut out);
    }
    out
}

/// When the shadow's `reported` section came to hold every leaf of `desired` with the same value
/// (epoch seconds: the latest of those leaves' reported timestamps); `None` while one differs or
/// is missing. A `null` leaf of `desired` (a deletion) is converged when the leaf is not reported.
pub fn converged_at(document: &ShadowDocument, desired: &StateMap) -> Option<u64> {
    let mut at = 0;
    for (path, wanted) in leaf_paths(desired) {
        let reported = document.value(Section::Reported, &path);
        match (wanted, reported) {
            (Value::Null, None | Some(Value::Null)) => {}
            (_, Some(got)) if got == wanted => {
                let stamp = document
                    .timestamp_of(Section::Reported, &path)
                    .or(document.timestamp)
                    .unwrap_or_default();
                at = at.max(stamp);
            }
            _ => return None,
        }
    }
    Some(at)
}

/// Where a group's shadows stand against a desired state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Convergence {
    /// Things that report it, with when they came to (epoch seconds, [`converged_at`]).
    pub converged: Vec<(ThingName, u64)>,
    /// Things that do not (yet), or have no such shadow.
    pub pending: Vec<ThingName>,
    /// Things whose shadow could not be read this time, with why (read again on the next poll).
    pub unread: Vec<(ThingName, String)>,
}

impl Convergence {
    /// Every thing read and reporting the desired state.
    pub fn complete(&self) -> bool {
        self.pending.is_empty() && self.unread.is_empty()
    }
}

/// Reads each of `things`' shadow (16 at a time) and sorts them by [`converged_at`], never
/// earlier than `written_at_s` (epoch seconds the desired state was written; a device that
/// reported the value before has nothing to change, and converged with the write). A read that
/// fails (throttled, unreachable) leaves the thing in [`Convergence::unread`]: one failed read
/// out of thousands does not end a wait.
pub async fn convergence(
    store: &impl ShadowStore,
    things: &[ThingName],
    shadow: Option<&ShadowName>,
    desired: &StateMap,
    written_at_s: u64,
) -> Convergence {
    use futures::StreamExt as _;
    let mut reads = futures::stream::iter(things.iter().map(|thing| async move {
        let shadow = ShadowRef {
            thing: thing.clone(),
            name: shadow.cloned(),
        };
        let read = store.get(&shadow).await.map(|document| {
            document
                .and_then(|d| converged_at(&d, desired))
                .map(|at| at.max(written_at_s))
        });
        (thing.clone(), read)
    }))
    .buffer_unordered(16);
    let mut state = Convergence::default();
    while let Some((thing, read)) = reads.next().await {
        match read {
            Ok(Some(at)) => state.converged.push((thing, at)),
            Ok(None) => state.pending.push(thing),
            Err(e) => state.unread.push((thing, e.to_string())),
        }
    }
    state.converged.sort();
    state.pending.sort();
    state.unread.sort();
    state
}

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
    ) -> impl Future<Output = Result<Vec<ThingName>, EdgeError>> + Send;
}

pub struct IotFleet(pub aws_sdk_iot::Client);

impl Fleet for IotFleet {
    async fn things(&self, target: &Target) -> Result<Vec<ThingName>, EdgeError> {
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
    Aws(#[from] EdgeError),
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        set: SetArgs,
    }

    fn args(extra: &[&str]) -> Result<SetArgs, clap::Error> {
        let argv = ["shoal"].iter().chain(extra).copied();
        Cli::try_parse_from(argv).map(|cli| cli.set)
    }

    #[test]
    fn targets_come_from_group_or_where() {
        let set = args(&["--group", "building-7", "{}"]).unwrap();
        assert_eq!(set.target().unwrap(), Target::Group("building-7".into()));
        let set = args(&["--where", "site=north=2", "{}"]).unwrap();
        assert_eq!(
            set.target().unwrap(),
            Target::Where {
                attribute: "site".into(),
                value: "north=2".into()
            }
        );
        for bad in ["site", "=north"] {
            let set = args(&["--where", bad, "{}"]).unwrap();
            assert!(set.target().unwrap_err().to_string().contains("ATTR=VALUE"));
        }
        assert!(args(&["{}"]).is_err(), "neither --group nor --where");
        assert!(args(&["--group", "g", "--where", "a=b", "{}"]).is_err());
    }

    #[test]
    fn convergence_is_every_desired_leaf_reported_and_the_latest_of_their_times() {
        let desired =
            parse_desired(r#"{"interval_s": 15, "display": {"units": "metric"}, "old": null}"#)
                .unwrap();
        let document: ShadowDocument = serde_json::from_value(serde_json::json!({
            "state": {"reported": {"interval_s": 15, "display": {"units": "metric", "dim": 3}}},
            "metadata": {"reported": {"interval_s": {"timestamp": 1_700_000_010},
                                      "display": {"units": {"timestamp": 1_700_000_042},
                                                  "dim": {"timestamp": 1_700_000_099}}}},
            "version": 7,
            "timestamp": 1_700_000_100
        }))
        .unwrap();
        assert_eq!(converged_at(&document, &desired), Some(1_700_000_042));
        let mut behind = document.clone();
        behind.state.reported.as_mut().unwrap()["interval_s"] = serde_json::json!(60);
        assert_eq!(converged_at(&behind, &desired), None, "a leaf differs");
        let mut kept = document;
        kept.state
            .reported
            .as_mut()
            .unwrap()
            .insert("old".into(), serde_json::json!(1));
        assert_eq!(
            converged_at(&kept, &desired),
            None,
            "a deleted leaf still reported"
        );
    }

    /// Shadows by thing; a thing missing from the map cannot be read.
    struct Shadows(std::collections::BTreeMap<String, ShadowDocument>);

    impl ShadowStore for Shadows {
        async fn get(&self, shadow: &ShadowRef) -> Result<Option<ShadowDocument>, EdgeError> {
            self.0
                .get(shadow.thing.as_str())
                .cloned()
                .map(Some)
                .ok_or_else(|| EdgeError::request("iotdata", "GetThingShadow", "timed out"))
        }
        async fn update(&self, _: &ShadowRef, _: &ShadowUpdate) -> Result<Option<u64>, EdgeError> {
            unreachable!("convergence only reads")
        }
    }

    #[tokio::test]
    async fn a_failed_read_leaves_the_thing_unread_and_an_earlier_report_converges_with_the_write()
    {
        let desired = parse_desired(r#"{"interval_s": 15}"#).unwrap();
        let reported_at = |at: u64| -> ShadowDocument {
            serde_json::from_value(serde_json::json!({
                "state": {"reported": {"interval_s": 15}},
                "metadata": {"reported": {"interval_s": {"timestamp": at}}},
                "version": 1
            }))
            .unwrap()
        };
        let store = Shadows(
            [("before", reported_at(100)), ("after", reported_at(300))]
                .into_iter()
                .map(|(t, d)| (t.to_owned(), d))
                .collect(),
        );
        let things: Vec<ThingName> = ["after", "before", "unreachable"]
            .iter()
            .map(|t| t.parse().unwrap())
            .collect();
        let state = convergence(&store, &things, None, &desired, 200).await;
        assert_eq!(
            state.converged,
            [
                ("after".parse().unwrap(), 300),
                ("before".parse().unwrap(), 200)
            ]
        );
        assert!(state.pending.is_empty());
        assert_eq!(state.unread.len(), 1);
        assert_eq!(state.unread[0].0.as_str(), "unreachable");
        assert!(!state.complete());
    }

    #[test]
    fn the_desired_state_is_an_object_a_shadow_can_take() {
        let desired = parse_desired(r#"{"sample_interval_s": 30}"#).unwrap();
        assert_eq!(desired["sample_interval_s"], 30);
        assert!(
            parse_desired("[1]")
                .unwrap_err()
                .to_string()
                .contains("JSON object")
        );
        assert!(
            parse_desired("{")
                .unwrap_err()
                .to_string()
                .contains("not JSON")
        );
        let deep = r#"{"a":{"b":{"c":{"d":{"e":{"f":{"g":1}}}}}}}"#;
        assert!(parse_desired(deep).is_err(), "deeper than a shadow allows");
    }
}
