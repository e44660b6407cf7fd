//! The rules engine at work: every message the broker routes is offered to every rule; a rule
//! whose statement selects it queues a job, and a worker runs the job's actions, and the rule's
//! error action with AWS's error payload when one fails
//! (<https://docs.aws.amazon.com/iot/latest/developerguide/rule-error-handling.html>).
//!
//! Jobs wait in a bounded queue: when it is full a job is dropped and counted, never the
//! broker's routing held up. Actions write through [`Sinks`] (SQS, Kinesis, S3 on AWS's APIs;
//! republish through the broker).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use base64::Engine;
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};

use super::sql::{self, Output};
use super::template::{Action, Rule};
use crate::broker::{Broker, Message, Publisher, Service};
use crate::lifecycle::now_ms;

/// Jobs waiting for the worker at most; more are dropped (and counted).
pub const JOB_QUEUE: usize = 100_000;
/// Bytes of waiting jobs (payloads and outputs) at most; more are dropped (and counted): a
/// burst of large messages cannot take the machine's memory.
pub const JOB_QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// Jobs whose actions run at once at most.
pub const CONCURRENT_JOBS: usize = 64;

/// Where actions write.
pub trait Sinks: Send + Sync + 'static {
    /// SQS SendMessage of `body` to `queue_url`.
    fn sqs(&self, queue_url: &str, body: String)
    -> impl Future<Output = Result<(), String>> + Send;
    /// Kinesis PutRecord of `data` to `stream` under `partition_key`.
    fn kinesis(
        &self,
        stream: &str,
        partition_key: &str,
        data: Vec<u8>,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// S3 PutObject of `body` at `bucket`/`key`.
    fn s3(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Lambda Invoke of `function` (ARN or name) with `payload`, asynchronously (`Event`): done
    /// when Lambda has queued the event.
    fn lambda(
        &self,
        function: &str,
        payload: Vec<u8>,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// One message a rule selected, with what the actions need to render their templates.
#[derive(Debug, Clone)]
pub struct Job {
    /// The service's count of queued bytes, given back when the job is done.
    queued_bytes: Arc<AtomicUsize>,
    rule: Arc<Rule>,
    topic: String,
    payload: bytes::Bytes,
    client_id: String,
    principal: String,
    timestamp_ms: i64,
    output: Output,
}

impl Job {
    /// What the job holds, as counted against [`JOB_QUEUE_BYTES`].
    fn size(&self) -> usize {
        let output = match &self.output {
            Output::Json(text) => text.len(),
            Output::Bytes(bytes) => bytes.len(),
        };
        self.payload.len() + output + self.topic.len() + self.client_id.len() + self.principal.len()
    }

    fn message(&self) -> sql::Message<'_> {
        sql::Message {
            topic: &self.topic,
            payload: &self.payload,
            client_id: &self.client_id,
            principal: &self.principal,
            timestamp_ms: self.timestamp_ms,
        }
    }
}

/// The rules as a broker service: it answers nothing itself, it queues jobs.
#[derive(Debug)]
pub struct RulesService {
    rules: Vec<Arc<Rule>>,
    jobs: mpsc::Sender<Job>,
    dropped: AtomicU64,
    queued_bytes: Arc<AtomicUsize>,
}

impl RulesService {
    /// The service for `rules`, and the queue of jobs its worker ([`run`]) reads.
    pub fn new(rules: Vec<Rule>) -> (Self, mpsc::Receiver<Job>) {
        let (jobs, queue) = mpsc::channel(JOB_QUEUE);
        let service = Self {
            rules: rules.into_iter().map(Arc::new).collect(),
            jobs,
            dropped: AtomicU64::new(0),
            queued_bytes: Arc::new(AtomicUsize::new(0)),
        };
        (service, queue)
    }

    /// Jobs dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Service for RulesService {
    fn answer(&self, message: &Message, publisher: Option<&Publisher>) -> Vec<Message> {
        let (client_id, principal) =
            publisher.map_or(("", ""), |p| (p.client_id.as_str(), p.principal.as_str()));
        let timestamp_ms = now_ms();
        let input = sql::Message {
            topic: &message.topic,
            payload: &message.payload,
            client_id,
            principal,
            timestamp_ms,
        };
        for rule in self
            .rules
            .iter()
            .filter(|r| r.statement.matches(&message.topic))
        {
            let output = match rule.statement.apply(&input) {
                Ok(Some(output)) => output,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(rule = rule.name, topic = message.topic, error = %e, "rule not applied");
                    continue;
                }
            };
            let job = Job {
                queued_bytes: self.queued_bytes.clone(),
                rule: rule.clone(),
                topic: message.topic.clone(),
                payload: message.payload.clone(),
                client_id: client_id.to_owned(),
                principal: principal.to_owned(),
                timestamp_ms,
                output,
            };
            let size = job.size();
            let fits = self
                .queued_bytes
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                    (queued + size <= JOB_QUEUE_BYTES).then_some(queued + size)
                })
                .is_ok();
            let sent = fits && self.jobs.try_send(job).is_ok();
            if fits && !sent {
                self.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            }
            if !sent {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(
                    rule = rule.name,
                    dropped,
                    "rule job dropped: the queue is full"
                );
            }
        }
        Vec::new()
    }
}

/// Runs jobs until the queue closes, [`CONCURRENT_JOBS`] at a time.
pub async fn run<S: Sinks>(mut queue: mpsc::Receiver<Job>, sinks: Arc<S>, broker: Arc<Broker>) {
    let slots = Arc::new(Semaphore::new(CONCURRENT_JOBS));
    while let Some(job) = queue.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (sinks, broker) = (sinks.clone(), broker.clone());
        tokio::spawn(async move {
            let _slot = slot;
            execute(&job, sinks.as_ref(), &broker).await;
        });
    }
}

/// Runs a job's actions; when any fails, its rule's error action gets AWS's error payload. The
/// job's bytes leave the queue's count when it is done.
pub async fn execute<S: Sinks>(job: &Job, sinks: &S, broker: &Broker) {
    run_actions(job, sinks, broker).await;
    job.queued_bytes.fetch_sub(job.size(), Ordering::AcqRel);
}

async fn run_actions<S: Sinks>(job: &Job, sinks: &S, broker: &Broker) {
    let body = job.output.to_bytes();
    let mut failures = Vec::new();
    for action in &job.rule.actions {
        if let Err(e) = perform(action, job, body.clone(), sinks, broker).await {
            tracing::warn!(
                rule = job.rule.name,
                action = action.kind(),
                error = e,
                "rule action failed"
            );
            failures.push(json!({
                "failedAction": action.kind(),
                "failedResource": action.resource(),
                "errorMessage": e,
            }));
        }
    }
    if failures.is_empty() {
        return;
    }
    let Some(error_action) = &job.rule.error_action else {
        return;
    };
    let report = json!({
        "ruleName": job.rule.name,
        "topic": job.topic,
        "cloudwatchTraceId": uuid::Uuid::new_v4().to_string(),
        "clientId": job.client_id,
        "base64OriginalPayload": base64::engine::general_purpose::STANDARD.encode(&job.payload),
        "failures": failures,
    });
    if let Err(e) = perform(
        error_action,
        job,
        report.to_string().into_bytes(),
        sinks,
        broker,
    )
    .await
    {
        tracing::error!(
            rule = job.rule.name,
            action = error_action.kind(),
            error = e,
            "rule error action failed"
        );
    }
}

async fn perform<S: Sinks>(
    action: &Action,
    job: &Job,
    body: Vec<u8>,
    sinks: &S,
    broker: &Broker,
) -> Result<(), String> {
    let message = job.message();
    match action {
        Action::Sqs {
            queue_url,
            use_base64,
        } => {
            let text = if *use_base64 {
                base64::engine::general_purpose::STANDARD.encode(&body)
            } else {
                String::from_utf8(body)
                    .map_err(|_| "the payload is not UTF-8 text: set UseBase64".to_owned())?
            };
            sinks.sqs(queue_url, text).await
        }
        Action::Kinesis {
            stream,
            partition_key,
        } => {
            sinks
                .kinesis(stream, &partition_key.render(&message), body)
                .await
        }
        Action::S3 { bucket, key } => sinks.s3(bucket, &key.render(&message), body).await,
        Action::Lambda { function } => sinks.lambda(function, body).await,
        Action::Republish { topic, qos } => {
            let topic = topic.render(&message);
            crate::topic::check_name(&topic).map_err(|e| format!("republish to {topic:?}: {e}"))?;
            let mut out = Message::from_service(topic, body);
            if *qos == 0 {
                out.qos = rumqttc::QoS::AtMostOnce;
            }
            broker.publish(out);
            Ok(())
        }
    }
}

/// The sinks on AWS's APIs (moto's, locally).
#[derive(Debug, Clone)]
pub struct AwsSinks {
    /// SQS.
    pub sqs: aws_sdk_sqs::Client,
    /// Kinesis.
    pub kinesis: aws_sdk_kinesis::Client,
    /// S3 (path style against a local endpoint).
    pub s3: aws_sdk_s3::Client,
    /// Lambda's Invoke API (the local Lambda host's), when there is one.
    pub lambda: Option<crate::lambda::LambdaClient>,
}

impl Sinks for AwsSinks {
    async fn sqs(&self, queue_url: &str, body: String) -> Result<(), String> {
        self.sqs
            .send_message()
            .queue_url(queue_url)
            .message_body(body)
            .send()
            .await
            .map(drop)
            .map_err(|e| {
                format!(
                    "SendMessage: {}",
                    aws_sdk_sqs::error::DisplayErrorContext(e)
                )
            })
    }

    async fn kinesis(
        &self,
        stream: &str,
        partition_key: &str,
        data: Vec<u8>,
    ) -> Result<(), String> {
        self.kinesis
            .put_record()
            .stream_name(stream)
            .partition_key(partition_key)
            .data(aws_sdk_kinesis::primitives::Blob::new(data))
            .send()
            .await
            .map(drop)
            .map_err(|e| {
                format!(
                    "PutRecord: {}",
                    aws_sdk_kinesis::error::DisplayErrorContext(e)
                )
            })
    }

    async fn s3(&self, bucket: &str, key: &str, body: Vec<u8>) -> Result<(), String> {
        self.s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(body.into())
            .send()
            .await
            .map(drop)
            .map_err(|e| format!("PutObject: {}", aws_sdk_s3::error::DisplayErrorContext(e)))
    }

    async fn lambda(&self, function: &str, payload: Vec<u8>) -> Result<(), String> {
        let client = self
            .lambda
            .as_ref()
            .ok_or("no Lambda endpoint (--lambda-endpoint)")?;
        client
            .invoke(function, crate::lambda::InvocationType::Event, payload)
            .await
            .map(drop)
            .map_err(|e| format!("Invoke: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::rules::template::load;

    /// Sinks that keep what they are given, and fail for one queue URL.
    #[derive(Debug, Default)]
    struct Kept(Mutex<Vec<(String, String, Vec<u8>)>>);

    impl Sinks for Kept {
        async fn sqs(&self, queue_url: &str, body: String) -> Result<(), String> {
            if queue_url == "broken" {
                return Err("AWS.SimpleQueueService.NonExistentQueue".into());
            }
            self.0
                .lock()
                .unwrap()
                .push(("sqs".into(), queue_url.into(), body.into_bytes()));
            Ok(())
        }

        async fn kinesis(
            &self,
            stream: &str,
            partition_key: &str,
            data: Vec<u8>,
        ) -> Result<(), String> {
            self.0
                .lock()
                .unwrap()
                .push((format!("kinesis:{partition_key}"), stream.into(), data));
            Ok(())
        }

        async fn s3(&self, bucket: &str, key: &str, body: Vec<u8>) -> Result<(), String> {
            self.0
                .lock()
                .unwrap()
                .push(("s3".into(), format!("{bucket}/{key}"), body));
            Ok(())
        }

        async fn lambda(&self, function: &str, payload: Vec<u8>) -> Result<(), String> {
            self.0
                .lock()
                .unwrap()
                .push(("lambda".into(), function.into(), payload));
            Ok(())
        }
    }

    const RULES: &str = r#"
Resources:
  Telemetry:
    Type: AWS::IoT::TopicRule
    Properties:
      TopicRulePayload:
        AwsIotSqlVersion: "2016-03-23"
        Sql: SELECT *, topic() AS _topic, clientid() AS _client_id FROM 'dt/+/+/telemetry' WHERE temp > 0
        Actions:
          - Sqs: {QueueUrl: !Ref Queue}
          - Kinesis: {StreamName: stream, PartitionKey: "${topic(3)}"}
        ErrorAction:
          S3: {BucketName: errors, Key: "rule-errors/${topic(3)}.json"}
"#;

    fn service(queue: &str) -> (RulesService, mpsc::Receiver<Job>) {
        let resources = BTreeMap::from([("Queue".to_owned(), queue.to_owned())]);
        RulesService::new(
            load(RULES, &BTreeMap::new(), &resources, false)
                .unwrap()
                .rules,
        )
    }

    fn publisher() -> Publisher {
        Publisher {
            client_id: "dev-1".into(),
            principal: "cert".into(),
        }
    }

    #[tokio::test]
    async fn a_selected_message_reaches_every_action_with_the_rules_output() {
        let (service, mut queue) = service("q");
        let message = Message::from_service(
            "dt/app/dev-1/telemetry".into(),
            br#"{"temp": 21.0}"#.to_vec(),
        );
        assert!(service.answer(&message, Some(&publisher())).is_empty());
        let cold =
            Message::from_service("dt/app/dev-1/telemetry".into(), br#"{"temp": -1}"#.to_vec());
        service.answer(&cold, Some(&publisher()));
        let job = queue.try_recv().expect("one job");
        assert!(queue.try_recv().is_err(), "WHERE left the cold one out");
        let sinks = Kept::default();
        execute(&job, &sinks, &Broker::new(Duration::from_secs(1))).await;
        let kept = sinks.0.into_inner().unwrap();
        assert_eq!(kept.len(), 2);
        let body: serde_json::Value = serde_json::from_slice(&kept[0].2).unwrap();
        assert_eq!(
            body,
            json!({"temp": 21, "_topic": "dt/app/dev-1/telemetry", "_client_id": "dev-1"})
        );
        assert_eq!(
            (kept[1].0.as_str(), kept[1].1.as_str()),
            ("kinesis:dev-1", "stream")
        );
    }

    #[tokio::test]
    async fn a_failed_action_sends_aws_s_error_payload_to_the_error_action() {
        let (service, mut queue) = service("broken");
        let message =
            Message::from_service("dt/app/dev-9/telemetry".into(), br#"{"temp": 5}"#.to_vec());
        service.answer(&message, Some(&publisher()));
        let sinks = Kept::default();
        execute(
            &queue.try_recv().unwrap(),
            &sinks,
            &Broker::new(Duration::from_secs(1)),
        )
        .await;
        let kept = sinks.0.into_inner().unwrap();
        let (kind, at, body) = kept
            .iter()
            .find(|(k, ..)| k == "s3")
            .expect("the error action ran");
        assert_eq!(
            (kind.as_str(), at.as_str()),
            ("s3", "errors/rule-errors/dev-9.json")
        );
        let report: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(report["ruleName"], "Telemetry");
        assert_eq!(report["topic"], "dt/app/dev-9/telemetry");
        assert_eq!(report["clientId"], "dev-1");
        assert_eq!(report["base64OriginalPayload"], "eyJ0ZW1wIjogNX0=");
        assert_eq!(report["failures"][0]["failedAction"], "SqsAction");
        assert_eq!(report["failures"][0]["failedResource"], "broken");
        assert!(
            kept.iter().any(|(k, ..)| k.starts_with("kinesis")),
            "the other action still ran"
        );
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let (service, _queue) = service("q");
        let message =
            Message::from_service("dt/app/dev-1/telemetry".into(), br#"{"temp": 1}"#.to_vec());
        for _ in 0..=JOB_QUEUE {
            service.answer(&message, None);
        }
        assert_eq!(service.dropped(), 1);
    }

    #[tokio::test]
    async fn queued_bytes_are_bounded_and_given_back_when_a_job_is_done() {
        let (service, mut queue) = service("q");
        let big = format!(r#"{{"temp": 1, "blob": "{}"}}"#, "x".repeat(100 * 1024));
        let message = Message::from_service("dt/app/dev-1/telemetry".into(), big.into_bytes());
        let fit = JOB_QUEUE_BYTES / (2 * message.payload.len());
        for _ in 0..fit + 50 {
            service.answer(&message, None);
        }
        assert!(service.dropped() >= 50, "{} dropped", service.dropped());
        let job = queue.try_recv().unwrap();
        let before = service.queued_bytes.load(Ordering::Acquire);
        execute(&job, &Kept::default(), &Broker::new(Duration::from_secs(1))).await;
        assert_eq!(
            service.queued_bytes.load(Ordering::Acquire),
            before - job.size()
        );
    }
}
