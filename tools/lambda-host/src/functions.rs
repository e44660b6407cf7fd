//! The template's functions and event sources as the local host runs them: every deployed
//! `AWS::Serverless::Function` (Globals merged in, environment resolved to local names), every
//! `AWS::Lambda::EventSourceMapping` and SAM `SQS`/`Kinesis` event, and every `Schedule` event.
//! What cannot run as written (a reference without a local name, a missing binary, a source this
//! host does not poll) is left out with the reason: never half a function.
//!
//! <https://docs.aws.amazon.com/serverless-application-model/latest/developerguide/sam-resource-function.html>,
//! <https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/aws-resource-lambda-eventsourcemapping.html>

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_norway::Value;
use shoal_template::{Resolved, Template};

/// AWS's default for a function without `Timeout`, seconds.
pub const DEFAULT_TIMEOUT_S: u64 = 3;
/// AWS's default memory, MB.
pub const DEFAULT_MEMORY_MB: u32 = 128;
/// AWS's default retries of an asynchronous invocation.
pub const DEFAULT_ASYNC_RETRIES: u32 = 2;
/// AWS's default maximum age of an asynchronous event, seconds (6 hours).
pub const DEFAULT_EVENT_AGE_S: u64 = 21_600;

/// A function as deployed.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSpec {
    /// Its name (`FunctionName`, else the logical id).
    pub name: String,
    /// Its ARN (`arn:aws:lambda:…:function:<name>`).
    pub arn: String,
    /// The built binary (`<bin dir>/<Metadata.BuildProperties.Binary or the crate's name>`).
    pub binary: PathBuf,
    /// Its environment: `Globals` then its own, resolved.
    pub environment: BTreeMap<String, String>,
    /// `Timeout`.
    pub timeout: Duration,
    /// `MemorySize`, MB.
    pub memory_mb: u32,
    /// `ReservedConcurrentExecutions`, when set.
    pub reserved_concurrency: Option<u32>,
    /// `LoggingConfig.ApplicationLogLevel` (`AWS_LAMBDA_LOG_LEVEL`), when set.
    pub log_level: Option<String>,
    /// `LoggingConfig.LogFormat` (`AWS_LAMBDA_LOG_FORMAT`), when set.
    pub log_format: Option<String>,
    /// `EventInvokeConfig`.
    pub async_config: AsyncConfig,
}

/// How asynchronous invocations are retried and where they go when they fail for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsyncConfig {
    /// `MaximumRetryAttempts` (0–2; AWS's default 2).
    pub max_retries: u32,
    /// `MaximumEventAgeInSeconds` (AWS's default 6 hours).
    pub max_event_age: Duration,
    /// `DestinationConfig.OnFailure.Destination`, an SQS queue's ARN.
    pub on_failure: Option<String>,
}

impl Default for AsyncConfig {
    fn default() -> Self {
        Self {
            max_retries: DEFAULT_ASYNC_RETRIES,
            max_event_age: Duration::from_secs(DEFAULT_EVENT_AGE_S),
            on_failure: None,
        }
    }
}

/// Where a mapping reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An SQS queue, by name.
    Sqs {
        /// The queue's name.
        queue: String,
    },
    /// A Kinesis stream, by name.
    Kinesis {
        /// The stream's name.
        stream: String,
        /// `LATEST` or `TRIM_HORIZON`.
        starting_position: String,
    },
}

/// An event source mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct MappingSpec {
    /// Its logical id (or `<function>.<event>` for a SAM event).
    pub id: String,
    /// The function it invokes.
    pub function: String,
    /// The source's ARN, as the events carry it (`eventSourceARN`).
    pub source_arn: String,
    /// What it reads.
    pub source: Source,
    /// `BatchSize` (AWS's defaults: 10 for SQS, 100 for Kinesis).
    pub batch_size: usize,
    /// `MaximumBatchingWindowInSeconds`.
    pub batching_window: Duration,
    /// `FunctionResponseTypes` has `ReportBatchItemFailures`.
    pub report_batch_item_failures: bool,
    /// Kinesis: `BisectBatchOnFunctionError`.
    pub bisect_on_error: bool,
    /// Kinesis: `MaximumRetryAttempts` (`None`: until the records expire, AWS's -1 default).
    pub max_retries: Option<u32>,
    /// Kinesis: `DestinationConfig.OnFailure.Destination`, an SQS queue's ARN.
    pub on_failure: Option<String>,
}

/// A `Schedule` event: the function invoked asynchronously with an EventBridge scheduled event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleSpec {
    /// `<function>.<event>`.
    pub id: String,
    /// The function.
    pub function: String,
    /// The `rate(…)` period.
    pub every: Duration,
}

/// What the template holds for the host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Loaded {
    /// The functions.
    pub functions: Vec<FunctionSpec>,
    /// The mappings of loaded functions.
    pub mappings: Vec<MappingSpec>,
    /// The schedules of loaded functions.
    pub schedules: Vec<ScheduleSpec>,
    /// What was left out: (logical id, why).
    pub skipped: Vec<(String, String)>,
}

/// Reads the functions of `template`, whose file is at `template_path` (`CodeUri` is relative to
/// it), their binaries in `bin_dir` (`target/debug`).
pub fn load(template: &Template, template_path: &Path, bin_dir: &Path) -> Loaded {
    let mut loaded = Loaded::default();
    let base = template_path.parent().unwrap_or(Path::new("."));
    let globals = template
        .section("Globals")
        .and_then(|g| g.get("Function"))
        .cloned()
        .unwrap_or(Value::Null);
    for (id, resource) in template.resources_of("AWS::Serverless::Function") {
        match template.deployed(resource) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(why) => {
                loaded.skipped.push((id.to_owned(), why));
                continue;
            }
        }
        match function(template, id, resource, &globals, base, bin_dir) {
            Ok((spec, events)) => {
                for (event, kind, properties) in events {
                    let event_id = format!("{id}.{event}");
                    let result = match kind.as_str() {
                        "SQS" | "Kinesis" => {
                            mapping(template, &event_id, &spec.name, &kind, properties)
                                .map(|m| loaded.mappings.push(m))
                        }
                        "Schedule" => schedule(template, &event_id, &spec.name, properties)
                            .map(|s| s.into_iter().for_each(|s| loaded.schedules.push(s))),
                        other => Err(format!("{other} events are not emulated")),
                    };
                    if let Err(why) = result {
                        loaded.skipped.push((event_id, why));
                    }
                }
                loaded.functions.push(spec);
            }
            Err(why) => loaded.skipped.push((id.to_owned(), why)),
        }
    }
    for (id, resource) in template.resources_of("AWS::Lambda::EventSourceMapping") {
        let result = template.deployed(resource).and_then(|deployed| {
            if !deployed {
                return Ok(None);
            }
            let properties = resource.get("Properties").ok_or("no Properties")?;
            let function =
                template.text(properties.get("FunctionName").ok_or("no FunctionName")?)?;
            let function = function.rsplit(':').next().unwrap_or(&function).to_owned();
            if !loaded.functions.iter().any(|f| f.name == function) {
                return Err(format!("its function {function} is not run"));
            }
            let arn = template.text(
                properties
                    .get("EventSourceArn")
                    .ok_or("no EventSourceArn")?,
            )?;
            let kind = match arn.split(':').nth(2) {
                Some("sqs") => "SQS",
                Some("kinesis") => "Kinesis",
                _ => return Err(format!("event source {arn} is not emulated")),
            };
            mapping(template, id, &function, kind, properties).map(Some)
        });
        match result {
            Ok(Some(m)) => loaded.mappings.push(m),
            Ok(None) => {}
            Err(why) => loaded.skipped.push((id.to_owned(), why)),
        }
    }
    loaded
}

type Events<'a> = Vec<(String, String, &'a Value)>;

fn function<'a>(
    template: &Template,
    id: &str,
    resource: &'a Value,
    globals: &Value,
    base: &Path,
    bin_dir: &Path,
) -> Result<(FunctionSpec, Events<'a>), String> {
    let properties = resource.get("Properties").ok_or("no Properties")?;
    let setting = |name: &str| properties.get(name).or_else(|| globals.get(name));
    let text = |value: Option<&Value>| -> Result<Option<String>, String> {
        match value {
            None => Ok(None),
            Some(v) => match template.resolve(v)? {
                Resolved::Text(t) => Ok(Some(t)),
                Resolved::NoValue => Ok(None),
                Resolved::List(l) => Err(format!("{l:?} is a list")),
            },
        }
    };
    let number = |name: &str| -> Result<Option<u64>, String> {
        text(setting(name))?
            .map(|t| {
                t.parse()
                    .map_err(|_| format!("{name} {t:?} is not a number"))
            })
            .transpose()
    };
    let name = text(properties.get("FunctionName"))?.unwrap_or_else(|| id.to_owned());
    let binary_name = match resource
        .get("Metadata")
        .and_then(|m| m.get("BuildProperties"))
        .and_then(|b| b.get("Binary"))
        .and_then(Value::as_str)
    {
        Some(binary) => binary.to_owned(),
        None => {
            let code = text(properties.get("CodeUri"))?.ok_or("no CodeUri")?;
            crate_name(&base.join(code))?
        }
    };
    let binary = bin_dir.join(&binary_name);
    if !binary.is_file() {
        return Err(format!(
            "binary {} not built (cargo build -p <its crate>)",
            binary.display()
        ));
    }
    let mut environment = BTreeMap::new();
    for section in [globals.get("Environment"), properties.get("Environment")]
        .into_iter()
        .flatten()
    {
        let variables = section
            .get("Variables")
            .and_then(Value::as_mapping)
            .into_iter()
            .flatten();
        for (key, value) in variables {
            let key = key
                .as_str()
                .ok_or("an environment variable's name is text")?;
            match text(Some(value)).map_err(|e| format!("{key}: {e}"))? {
                Some(value) => environment.insert(key.to_owned(), value),
                None => environment.remove(key),
            };
        }
    }
    let logging = setting("LoggingConfig");
    let invoke = properties.get("EventInvokeConfig");
    let async_config = AsyncConfig {
        max_retries: text(invoke.and_then(|c| c.get("MaximumRetryAttempts")))?
            .map(|t| {
                t.parse::<u32>()
                    .map_err(|_| format!("MaximumRetryAttempts {t:?}"))
            })
            .transpose()?
            .unwrap_or(DEFAULT_ASYNC_RETRIES)
            .min(2),
        max_event_age: Duration::from_secs(
            text(invoke.and_then(|c| c.get("MaximumEventAgeInSeconds")))?
                .map(|t| {
                    t.parse::<u64>()
                        .map_err(|_| format!("MaximumEventAgeInSeconds {t:?}"))
                })
                .transpose()?
                .unwrap_or(DEFAULT_EVENT_AGE_S),
        ),
        on_failure: destination(template, invoke)?,
    };
    let spec = FunctionSpec {
        arn: shoal_template::arn("AWS::Serverless::Function", &name),
        name,
        binary,
        environment,
        timeout: Duration::from_secs(number("Timeout")?.unwrap_or(DEFAULT_TIMEOUT_S)),
        memory_mb: number("MemorySize")?
            .map_or(DEFAULT_MEMORY_MB, |m| u32::try_from(m).unwrap_or(u32::MAX)),
        reserved_concurrency: number("ReservedConcurrentExecutions")?
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
        log_level: text(logging.and_then(|l| l.get("ApplicationLogLevel")))?,
        log_format: text(logging.and_then(|l| l.get("LogFormat")))?,
        async_config,
    };
    let events = properties
        .get("Events")
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
        .filter_map(|(event, body)| {
            Some((
                event.as_str()?.to_owned(),
                body.get("Type")?.as_str()?.to_owned(),
                body.get("Properties")?,
            ))
        })
        .collect();
    Ok((spec, events))
}

/// `DestinationConfig.OnFailure.Destination` of `config`: only SQS queues are emulated.
fn destination(template: &Template, config: Option<&Value>) -> Result<Option<String>, String> {
    let Some(target) = config
        .and_then(|c| c.get("DestinationConfig"))
        .and_then(|d| d.get("OnFailure"))
        .and_then(|o| o.get("Destination"))
    else {
        return Ok(None);
    };
    let arn = template.text(target)?;
    if arn.split(':').nth(2) != Some("sqs") {
        return Err(format!(
            "OnFailure destination {arn}: only SQS queues are emulated"
        ));
    }
    Ok(Some(arn))
}

fn mapping(
    template: &Template,
    id: &str,
    function: &str,
    kind: &str,
    properties: &Value,
) -> Result<MappingSpec, String> {
    let text = |name: &str| -> Result<Option<String>, String> {
        properties.get(name).map(|v| template.text(v)).transpose()
    };
    let number = |name: &str| -> Result<Option<u64>, String> {
        text(name)?
            .map(|t| {
                t.parse()
                    .map_err(|_| format!("{name} {t:?} is not a number"))
            })
            .transpose()
    };
    let (source_arn, source) = match kind {
        "SQS" => {
            let arn = text("Queue")?
                .or(text("EventSourceArn")?)
                .ok_or("no Queue")?;
            let queue = arn.rsplit(':').next().unwrap_or(&arn).to_owned();
            (arn, Source::Sqs { queue })
        }
        _ => {
            let arn = text("Stream")?
                .or(text("EventSourceArn")?)
                .ok_or("no Stream")?;
            let stream = arn.rsplit('/').next().unwrap_or(&arn).to_owned();
            let starting_position = text("StartingPosition")?.ok_or("no StartingPosition")?;
            if !matches!(starting_position.as_str(), "LATEST" | "TRIM_HORIZON") {
                return Err(format!(
                    "StartingPosition {starting_position} is not emulated"
                ));
            }
            (
                arn,
                Source::Kinesis {
                    stream,
                    starting_position,
                },
            )
        }
    };
    let is_sqs = matches!(source, Source::Sqs { .. });
    let report = properties
        .get("FunctionResponseTypes")
        .and_then(Value::as_sequence)
        .is_some_and(|types| {
            types
                .iter()
                .any(|t| t.as_str() == Some("ReportBatchItemFailures"))
        });
    let batch_size = number("BatchSize")?.unwrap_or(if is_sqs { 10 } else { 100 });
    let max_retries = match number_signed(text("MaximumRetryAttempts")?)? {
        None | Some(-1) => None,
        Some(n) => Some(u32::try_from(n).map_err(|_| format!("MaximumRetryAttempts {n}"))?),
    };
    Ok(MappingSpec {
        id: id.to_owned(),
        function: function.to_owned(),
        source_arn,
        source,
        batch_size: usize::try_from(batch_size.clamp(1, 10_000)).unwrap_or(10_000),
        batching_window: Duration::from_secs(
            number("MaximumBatchingWindowInSeconds")?.unwrap_or(0),
        ),
        report_batch_item_failures: report,
        bisect_on_error: properties
            .get("BisectBatchOnFunctionError")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        max_retries,
        on_failure: destination(template, Some(properties))?,
    })
}

fn number_signed(text: Option<String>) -> Result<Option<i64>, String> {
    text.map(|t| t.parse().map_err(|_| format!("{t:?} is not a number")))
        .transpose()
}

fn schedule(
    template: &Template,
    id: &str,
    function: &str,
    properties: &Value,
) -> Result<Option<ScheduleSpec>, String> {
    if properties.get("Enabled").and_then(Value::as_bool) == Some(false) {
        return Ok(None);
    }
    let expression = template.text(properties.get("Schedule").ok_or("no Schedule")?)?;
    Ok(Some(ScheduleSpec {
        id: id.to_owned(),
        function: function.to_owned(),
        every: rate(&expression)?,
    }))
}

/// EventBridge's `rate(value unit)`: `rate(1 minute)`, `rate(5 minutes)`, `rate(2 hours)`,
/// `rate(1 day)`.
///
/// # Errors
/// Any other expression (`cron(…)` is not emulated), a zero value, or a unit that does not
/// agree with the value (`rate(1 minutes)`), as EventBridge refuses.
pub fn rate(expression: &str) -> Result<Duration, String> {
    let refuse = || format!("schedule {expression:?}: only rate(value unit) is emulated");
    let inner = expression
        .trim()
        .strip_prefix("rate(")
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(refuse)?;
    let (value, unit) = inner.trim().split_once(' ').ok_or_else(refuse)?;
    let value: u64 = value.parse().map_err(|_| refuse())?;
    let seconds = match (value, unit.trim()) {
        (0, _) => return Err(refuse()),
        (1, "minute") | (2.., "minutes") => 60,
        (1, "hour") | (2.., "hours") => 3_600,
        (1, "day") | (2.., "days") => 86_400,
        _ => return Err(refuse()),
    };
    Ok(Duration::from_secs(value.saturating_mul(seconds)))
}

/// The `[package] name` of the crate at `dir` (its binary's name when it has no `[[bin]]`).
fn crate_name(dir: &Path) -> Result<String, String> {
    let manifest = dir.join("Cargo.toml");
    let text =
        std::fs::read_to_string(&manifest).map_err(|e| format!("{}: {e}", manifest.display()))?;
    let mut in_package = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
            continue;
        }
        if in_package
            && let Some(value) = line.strip_prefix("name")
            && let Some(value) = value.trim_start().strip_prefix('=')
        {
            return Ok(value.trim().trim_matches('"').to_owned());
        }
    }
    Err(format!("{}: no [package] name", manifest.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_follow_eventbridge() {
        assert_eq!(rate("rate(1 minute)"), Ok(Duration::from_secs(60)));
        assert_eq!(rate("rate(5 minutes)"), Ok(Duration::from_secs(300)));
        assert_eq!(rate("rate(2 hours)"), Ok(Duration::from_secs(7200)));
        assert_eq!(rate("rate(1 day)"), Ok(Duration::from_secs(86_400)));
        for bad in [
            "rate(1 minutes)",
            "rate(5 minute)",
            "rate(0 minutes)",
            "cron(0 * * * ? *)",
            "rate(x minutes)",
        ] {
            assert!(rate(bad).is_err(), "{bad}");
        }
    }

    fn project(parameters: &[(&str, &str)], bin_dir: &Path) -> Loaded {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../infra/template.yaml"
        ));
        let text = std::fs::read_to_string(path).unwrap();
        let resources: BTreeMap<String, String> = [
            ("TelemetryDatabase", "shoal_local"),
            ("TelemetryTable", "telemetry"),
            ("ArchiveBucket", "shoal-local-archive"),
            (
                "TelemetryQueue",
                "http://127.0.0.1:4566/123456789012/shoal-local-telemetry",
            ),
            ("TelemetryStream", "shoal-local-telemetry"),
            (
                "TelemetryDeadLetterQueue",
                "http://127.0.0.1:4566/123456789012/shoal-local-telemetry-dlq",
            ),
            (
                "AsyncFailuresQueue",
                "http://127.0.0.1:4566/123456789012/shoal-local-async-failures",
            ),
            ("ManifestTable", "shoal-local-manifest"),
            ("DeviceTable", "shoal-local-devices"),
            ("DeviceThingType", "shoal-local-device"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let parameters = parameters
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let template = Template::parse(&text, &parameters, &resources).unwrap();
        load(&template, path, bin_dir)
    }

    /// A directory with an empty file for every binary name the project builds.
    fn fake_binaries() -> tempdir::Dir {
        let dir = tempdir::Dir::new();
        for name in [
            "telemetry-router",
            "pre-provisioning-hook",
            "jitr",
            "shadow-documents",
            "presence",
            "ota-advancer",
        ] {
            std::fs::write(dir.0.join(name), b"").unwrap();
        }
        dir
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let path = std::env::temp_dir()
                    .join(format!("shoal-lambda-host-{}", uuid::Uuid::new_v4()));
                std::fs::create_dir_all(&path).unwrap();
                Self(path)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn the_projects_functions_load_with_their_environment_and_sources() {
        let bins = fake_binaries();
        let loaded = project(&[], &bins.0);
        let router = loaded
            .functions
            .iter()
            .find(|f| f.name == "TelemetryRouterFunction")
            .expect("the router");
        assert_eq!(
            router.binary,
            bins.0.join("telemetry-router"),
            "the crate's name"
        );
        assert_eq!(router.timeout, Duration::from_secs(30));
        assert_eq!(router.memory_mb, 256);
        assert_eq!(
            router.environment["SHOAL_TIMESTREAM_DATABASE"], "shoal_local",
            "Globals"
        );
        assert_eq!(
            router.environment["SHOAL_TELEMETRY_DELIVERY"], "sqs",
            "its own"
        );
        assert_eq!(router.log_format.as_deref(), Some("JSON"));
        assert_eq!(router.async_config.max_retries, 2);
        assert_eq!(
            router.async_config.on_failure.as_deref(),
            Some("arn:aws:sqs:us-east-1:123456789012:shoal-local-telemetry-dlq")
        );
        let hook = loaded
            .functions
            .iter()
            .find(|f| f.name == "PreProvisioningHookFunction")
            .expect("the hook");
        assert_eq!(hook.binary, bins.0.join("pre-provisioning-hook"));
        assert_eq!(hook.timeout, Duration::from_secs(4));
        assert_eq!(
            hook.environment["SHOAL_TEMPLATE_MODELS"], "shoal-fleet=th-v2",
            "{:?}",
            hook.environment
        );
        assert_eq!(
            hook.reserved_concurrency,
            Some(5),
            "HookReservedConcurrency"
        );
        assert_eq!(loaded.mappings.len(), 1, "{:?}", loaded.mappings);
        let queue = &loaded.mappings[0];
        assert_eq!(queue.function, "TelemetryRouterFunction");
        assert_eq!(
            queue.source,
            Source::Sqs {
                queue: "shoal-local-telemetry".into()
            }
        );
        assert_eq!(queue.batch_size, 100);
        assert_eq!(queue.batching_window, Duration::from_secs(5));
        assert!(queue.report_batch_item_failures);
        let mut schedules: Vec<_> = loaded
            .schedules
            .iter()
            .map(|s| (s.function.as_str(), s.every))
            .collect();
        schedules.sort_unstable();
        assert_eq!(
            schedules,
            [("PresenceFunction", Duration::from_secs(300))],
            "the advancer's tables are not mapped here"
        );
        assert!(
            loaded
                .skipped
                .iter()
                .any(|(id, why)| id == "OtaAdvancerFunction"
                    && why.contains("--resource RolloutTable=")),
            "{:?}",
            loaded.skipped
        );
        // Functions whose environment names resources this stack did not map are left out, named.
        assert!(
            loaded
                .skipped
                .iter()
                .any(|(id, why)| id == "JitrFunction" && why.contains("--resource DevicePolicy=")),
            "{:?}",
            loaded.skipped
        );

        let kinesis = project(&[("TelemetryDelivery", "kinesis")], &bins.0);
        let stream = &kinesis.mappings[0];
        assert_eq!(
            stream.source,
            Source::Kinesis {
                stream: "shoal-local-telemetry".into(),
                starting_position: "LATEST".into()
            }
        );
        assert!(stream.bisect_on_error);
        assert_eq!(stream.max_retries, Some(10));
        assert!(
            stream
                .on_failure
                .as_deref()
                .unwrap()
                .ends_with(":shoal-local-telemetry-dlq")
        );
    }

    #[test]
    fn a_function_without_its_binary_is_left_out_with_the_reason() {
        let empty = tempdir::Dir::new();
        let loaded = project(&[], &empty.0);
        assert!(loaded.functions.is_empty());
        assert!(loaded.mappings.is_empty());
        assert!(
            loaded
                .skipped
                .iter()
                .any(|(id, why)| id == "TelemetryRouterFunction" && why.contains("not built")),
            "{:?}",
            loaded.skipped
        );
    }
}
