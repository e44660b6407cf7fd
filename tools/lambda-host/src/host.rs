//! The functions, their environments and their asynchronous event queues: synchronous
//! invocations wait for (or, for a function with reserved concurrency, are throttled at) a free
//! environment; asynchronous ones are queued, retried as the function's `EventInvokeConfig`
//! says, and recorded in its `OnFailure` destination when they fail for good.
//!
//! <https://docs.aws.amazon.com/lambda/latest/dg/invocation-async.html>,
//! <https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-retain-records.html>

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc};

use crate::functions::FunctionSpec;
use crate::runtime::{Environment, Instance, Outcome};

/// The largest payload of a synchronous invocation (6 MB).
pub const MAX_SYNC_PAYLOAD: usize = 6 * 1024 * 1024;
/// The largest payload of an asynchronous invocation (1 MB).
pub const MAX_ASYNC_PAYLOAD: usize = 1024 * 1024;
/// Asynchronous events a function's queue holds at most: more are refused with
/// `TooManyRequestsException` (AWS's queue is not bounded this way; memory here is).
pub const ASYNC_QUEUE: usize = 10_000;

/// Sends the records of events that failed for good (an SQS destination).
pub trait Destinations: Send + Sync + 'static {
    /// SQS SendMessage of `record` (JSON) to the queue whose ARN is `queue_arn`.
    fn send(
        &self,
        queue_arn: &str,
        record: String,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// Why an invocation was not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No such function.
    #[error("Function not found: {0}")]
    NotFound(String),
    /// Its reserved concurrency is in use (or its asynchronous queue is full).
    #[error("Rate Exceeded.")]
    Throttled {
        /// `ReservedFunctionConcurrentInvocationLimitExceeded` or `EventQueueFull`.
        reason: &'static str,
    },
    /// The payload is larger than the invocation type allows.
    #[error(
        "{size} byte payload is too large for the {kind} invocation type (limit {limit} bytes)"
    )]
    TooLarge {
        /// The payload's size.
        size: usize,
        /// The limit.
        limit: usize,
        /// `RequestResponse` or `Event`.
        kind: &'static str,
    },
}

/// How the host runs things.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Environments per function without reserved concurrency.
    pub concurrency: u32,
    /// The first retry delay of a failed asynchronous invocation, doubled for the second
    /// (AWS: about 1 minute, then 2).
    pub async_retry_delay: Duration,
    /// What every environment is given.
    pub environment: Environment,
}

/// One function: its idle environments, its concurrency and its asynchronous queue.
pub struct Function {
    /// What it is.
    pub spec: FunctionSpec,
    idle: Mutex<Vec<Instance>>,
    slots: Arc<Semaphore>,
    environment: Environment,
    events: mpsc::Sender<Event>,
    invocations: std::sync::atomic::AtomicU64,
}

struct Event {
    request_id: String,
    payload: Bytes,
    queued: Instant,
    attempts: u32,
}

impl Function {
    /// How many invocations it has run (any outcome).
    pub fn invocations(&self) -> u64 {
        self.invocations.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `payload` in an environment: waits for one when `wait` (event sources, the
    /// asynchronous queue), else is throttled when a reserved concurrency is in use.
    ///
    /// # Errors
    /// [`Refusal::Throttled`] (only when not `wait`).
    pub async fn invoke(
        &self,
        request_id: &str,
        payload: Bytes,
        wait: bool,
    ) -> Result<Outcome, Refusal> {
        let permit = if wait || self.spec.reserved_concurrency.is_none() {
            self.slots.clone().acquire_owned().await.ok()
        } else {
            self.slots.clone().try_acquire_owned().ok()
        }
        .ok_or(Refusal::Throttled {
            reason: "ReservedFunctionConcurrentInvocationLimitExceeded",
        })?;
        self.invocations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let idle = self.idle.lock().expect("idle").pop();
        let mut instance = match idle {
            Some(instance) => instance,
            None => match Instance::start(&self.spec, &self.environment).await {
                Ok(instance) => instance,
                Err(e) => {
                    return Ok(Outcome::error(
                        "Runtime.InvalidEntrypoint",
                        &format!("{}: {e}", self.spec.binary.display()),
                    ));
                }
            },
        };
        let outcome = match instance
            .invoke(request_id, payload, self.spec.timeout)
            .await
        {
            Ok(outcome) => {
                self.idle.lock().expect("idle").push(instance);
                outcome
            }
            Err(outcome) => {
                tracing::warn!(
                    function = self.spec.name,
                    request_id,
                    error = %String::from_utf8_lossy(outcome.payload()),
                    "environment discarded"
                );
                outcome
            }
        };
        drop(permit);
        Ok(outcome)
    }
}

/// Every function of the template.
pub struct Host<D> {
    functions: BTreeMap<String, Arc<Function>>,
    destinations: Arc<D>,
}

impl<D: Destinations> Host<D> {
    /// The host of `functions`; starts each one's asynchronous workers.
    pub fn start(
        functions: Vec<FunctionSpec>,
        settings: &Settings,
        destinations: Arc<D>,
    ) -> Arc<Self> {
        let mut map = BTreeMap::new();
        for spec in functions {
            let concurrency = spec
                .reserved_concurrency
                .unwrap_or(settings.concurrency)
                .max(1);
            let (events, queue) = mpsc::channel(ASYNC_QUEUE);
            let function = Arc::new(Function {
                spec,
                idle: Mutex::new(Vec::new()),
                slots: Arc::new(Semaphore::new(concurrency as usize)),
                environment: settings.environment.clone(),
                events: events.clone(),
                invocations: std::sync::atomic::AtomicU64::new(0),
            });
            let queue = Arc::new(tokio::sync::Mutex::new(queue));
            for _ in 0..concurrency {
                tokio::spawn(worker(
                    function.clone(),
                    queue.clone(),
                    events.clone(),
                    destinations.clone(),
                    settings.async_retry_delay,
                ));
            }
            map.insert(function.spec.name.clone(), function);
        }
        Arc::new(Self {
            functions: map,
            destinations,
        })
    }

    /// The function a name, ARN or partial ARN (`123456789012:function:name`) of this account
    /// and region means, with an optional `:$LATEST` qualifier.
    pub fn function(&self, reference: &str) -> Option<&Arc<Function>> {
        let (name, qualifier) = parse_reference(reference)?;
        if qualifier.is_some_and(|q| q != "$LATEST") {
            return None;
        }
        self.functions.get(name)
    }

    /// Every function.
    pub fn functions(&self) -> impl Iterator<Item = &Arc<Function>> {
        self.functions.values()
    }

    /// The destinations.
    pub fn destinations(&self) -> &Arc<D> {
        &self.destinations
    }

    /// Queues `payload` for `function` (an `Event` invocation). Returns the request id.
    ///
    /// # Errors
    /// [`Refusal::TooLarge`] over 1 MB; [`Refusal::Throttled`] when its queue is full.
    pub fn invoke_async(&self, function: &Function, payload: Bytes) -> Result<String, Refusal> {
        if payload.len() > MAX_ASYNC_PAYLOAD {
            return Err(Refusal::TooLarge {
                size: payload.len(),
                limit: MAX_ASYNC_PAYLOAD,
                kind: "Event",
            });
        }
        let request_id = uuid::Uuid::new_v4().to_string();
        function
            .events
            .try_send(Event {
                request_id: request_id.clone(),
                payload,
                queued: Instant::now(),
                attempts: 0,
            })
            .map_err(|_| Refusal::Throttled {
                reason: "EventQueueFull",
            })?;
        Ok(request_id)
    }
}

async fn worker<D: Destinations>(
    function: Arc<Function>,
    queue: Arc<tokio::sync::Mutex<mpsc::Receiver<Event>>>,
    requeue: mpsc::Sender<Event>,
    destinations: Arc<D>,
    first_delay: Duration,
) {
    loop {
        let event = {
            let mut queue = queue.lock().await;
            queue.recv().await
        };
        let Some(mut event) = event else { return };
        let config = &function.spec.async_config;
        if event.queued.elapsed() > config.max_event_age {
            fail(&function, &*destinations, &event, "EventAgeExceeded", None).await;
            continue;
        }
        let outcome = match function
            .invoke(&event.request_id, event.payload.clone(), true)
            .await
        {
            Ok(outcome) => outcome,
            Err(refusal) => Outcome::error("TooManyRequestsException", &refusal.to_string()),
        };
        event.attempts += 1;
        if !outcome.is_error() {
            continue;
        }
        if event.attempts > config.max_retries {
            fail(
                &function,
                &*destinations,
                &event,
                "RetriesExhausted",
                Some(&outcome),
            )
            .await;
            continue;
        }
        let delay = first_delay * 2u32.saturating_pow(event.attempts - 1);
        tracing::info!(
            function = function.spec.name,
            request_id = event.request_id,
            attempt = event.attempts,
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "asynchronous invocation failed; retrying"
        );
        let requeue = requeue.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = requeue.send(event).await;
        });
    }
}

/// Records an event that failed for good in the function's `OnFailure` destination (AWS's
/// invocation record), or logs it when it has none.
async fn fail<D: Destinations>(
    function: &Function,
    destinations: &D,
    event: &Event,
    condition: &str,
    outcome: Option<&Outcome>,
) {
    let Some(queue) = &function.spec.async_config.on_failure else {
        tracing::error!(
            function = function.spec.name,
            request_id = event.request_id,
            condition,
            "asynchronous event dropped: the function has no OnFailure destination"
        );
        return;
    };
    let payload: serde_json::Value = serde_json::from_slice(&event.payload)
        .unwrap_or_else(|_| String::from_utf8_lossy(&event.payload).into_owned().into());
    let mut record = serde_json::json!({
        "version": "1.0",
        "timestamp": now_iso(),
        "requestContext": {
            "requestId": event.request_id,
            "functionArn": format!("{}:$LATEST", function.spec.arn),
            "condition": condition,
            "approximateInvokeCount": event.attempts,
        },
        "requestPayload": payload,
    });
    if let Some(outcome) = outcome {
        record["responseContext"] = serde_json::json!({
            "statusCode": 200,
            "executedVersion": "$LATEST",
            "functionError": "Unhandled",
        });
        record["responsePayload"] =
            serde_json::from_slice(outcome.payload()).unwrap_or_else(|_| {
                String::from_utf8_lossy(outcome.payload())
                    .into_owned()
                    .into()
            });
    }
    if let Err(e) = destinations.send(queue, record.to_string()).await {
        tracing::error!(
            function = function.spec.name,
            request_id = event.request_id,
            queue,
            error = e,
            "could not record a failed asynchronous event"
        );
    }
}

/// A function reference as Lambda's Invoke takes it: `name`, `account:function:name` or
/// `arn:aws:lambda:region:account:function:name`, each with an optional `:qualifier`, in this
/// host's account and region: `(name, qualifier)`. `None` for anything else (another account,
/// region or service, a malformed reference).
pub fn parse_reference(reference: &str) -> Option<(&str, Option<&str>)> {
    let parts: Vec<&str> = reference.split(':').collect();
    let rest = match parts.as_slice() {
        [
            "arn",
            "aws",
            "lambda",
            region,
            account,
            "function",
            rest @ ..,
        ] if *region == shoal_template::REGION && *account == shoal_template::ACCOUNT_ID => rest,
        [account, "function", rest @ ..] if *account == shoal_template::ACCOUNT_ID => rest,
        [name] => return valid_name(name).then_some((*name, None)),
        [name, qualifier] if !parts.contains(&"function") => {
            return valid_name(name).then_some((*name, Some(*qualifier)));
        }
        _ => return None,
    };
    match rest {
        [name] if valid_name(name) => Some((name, None)),
        [name, qualifier] if valid_name(name) && !qualifier.is_empty() => {
            Some((name, Some(qualifier)))
        }
        _ => None,
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

/// Now as ISO 8601 with milliseconds (`2019-11-14T18:16:05.568Z`).
pub fn now_iso() -> String {
    let now = time::OffsetDateTime::now_utc();
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    now.format(&format).unwrap_or_default()
}
