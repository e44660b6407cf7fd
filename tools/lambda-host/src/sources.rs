//! Event source mappings and schedules: what polls moto's SQS queues and Kinesis streams and
//! invokes the template's functions with Lambda's event shapes, settling each batch as Lambda
//! does (partial batch responses, bisection, retries, on-failure records), and what invokes the
//! scheduled functions with EventBridge's scheduled event.
//!
//! <https://docs.aws.amazon.com/lambda/latest/dg/with-sqs.html>,
//! <https://docs.aws.amazon.com/lambda/latest/dg/with-kinesis.html>,
//! <https://docs.aws.amazon.com/lambda/latest/dg/services-kinesis-errors.html>

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::types::{Record as KinesisRecord, ShardIteratorType};
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use base64::Engine;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::functions::{MappingSpec, ScheduleSpec, Source};
use crate::host::{Destinations, Function, Host, now_iso};
use crate::runtime::Outcome;

/// How long a poller waits before trying again after its source failed.
const BACKOFF: Duration = Duration::from_secs(1);

/// Starts a poller for every mapping whose function the host runs; returns when each has found
/// its source (a Kinesis mapping at `LATEST` has its iterators: records put after this are seen).
pub async fn start<D: Destinations>(
    host: &Arc<Host<D>>,
    mappings: Vec<MappingSpec>,
    sqs: aws_sdk_sqs::Client,
    kinesis: aws_sdk_kinesis::Client,
) {
    for mapping in mappings {
        let Some(function) = host.function(&mapping.function).cloned() else {
            continue;
        };
        match mapping.source.clone() {
            Source::Sqs { queue } => {
                let url = loop {
                    match sqs.get_queue_url().queue_name(&queue).send().await {
                        Ok(found) => break found.queue_url.unwrap_or_default(),
                        Err(e) => {
                            tracing::warn!(mapping = mapping.id, queue, error = %aws_sdk_sqs::error::DisplayErrorContext(e), "queue not found yet");
                            tokio::time::sleep(BACKOFF).await;
                        }
                    }
                };
                tracing::info!(
                    mapping = mapping.id,
                    function = function.spec.name,
                    url,
                    "polling SQS"
                );
                tokio::spawn(poll_sqs(mapping, function, sqs.clone(), url));
            }
            Source::Kinesis {
                stream,
                starting_position,
            } => {
                let shards = loop {
                    match kinesis.list_shards().stream_name(&stream).send().await {
                        Ok(listed) => break listed.shards.unwrap_or_default(),
                        Err(e) => {
                            tracing::warn!(mapping = mapping.id, stream, error = %aws_sdk_kinesis::error::DisplayErrorContext(e), "stream not found yet");
                            tokio::time::sleep(BACKOFF).await;
                        }
                    }
                };
                for shard in shards {
                    let iterator = kinesis
                        .get_shard_iterator()
                        .stream_name(&stream)
                        .shard_id(shard.shard_id())
                        .shard_iterator_type(ShardIteratorType::from(starting_position.as_str()))
                        .send()
                        .await;
                    match iterator {
                        Ok(got) => {
                            tracing::info!(
                                mapping = mapping.id,
                                function = function.spec.name,
                                shard = shard.shard_id(),
                                "polling Kinesis"
                            );
                            tokio::spawn(poll_shard(
                                mapping.clone(),
                                function.clone(),
                                host.destinations().clone(),
                                kinesis.clone(),
                                shard.shard_id().to_owned(),
                                got.shard_iterator.unwrap_or_default(),
                            ));
                        }
                        Err(e) => {
                            tracing::error!(mapping = mapping.id, shard = shard.shard_id(), error = %aws_sdk_kinesis::error::DisplayErrorContext(e), "no shard iterator: shard not polled")
                        }
                    }
                }
            }
        }
    }
}

/// Invokes each schedule's function asynchronously every period (the first after one period).
pub fn schedule<D: Destinations>(host: &Arc<Host<D>>, schedules: Vec<ScheduleSpec>) {
    for schedule in schedules {
        let host = host.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval_at(
                tokio::time::Instant::now() + schedule.every,
                schedule.every,
            );
            loop {
                every.tick().await;
                let Some(function) = host.function(&schedule.function).cloned() else {
                    return;
                };
                let event = json!({
                    "version": "0",
                    "id": uuid::Uuid::new_v4().to_string(),
                    "detail-type": "Scheduled Event",
                    "source": "aws.events",
                    "account": shoal_template::ACCOUNT_ID,
                    "time": now_iso().split('.').next().unwrap_or_default().to_owned() + "Z",
                    "region": shoal_template::REGION,
                    "resources": [format!("arn:aws:events:{}:{}:rule/{}", shoal_template::REGION, shoal_template::ACCOUNT_ID, schedule.id.replace('.', "-"))],
                    "detail": {},
                });
                if let Err(e) = host.invoke_async(&function, Bytes::from(event.to_string())) {
                    tracing::warn!(schedule = schedule.id, error = %e, "scheduled invocation refused");
                }
            }
        });
    }
}

/// What a function's answer to a batch says about its items (a partial batch response).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Every item succeeded.
    All,
    /// These item identifiers failed.
    Failed(Vec<String>),
    /// The whole batch failed (a function error, or an invalid partial response).
    Batch,
}

/// Reads `outcome` for a batch whose item identifiers are `ids`, as Lambda does: an error fails
/// the batch; with `report` (`ReportBatchItemFailures`), `batchItemFailures` names the failed
/// items and an identifier that is empty, missing or not in the batch fails it all; without
/// `report`, any response succeeds the batch.
pub fn settle(outcome: &Outcome, report: bool, ids: &[&str]) -> Settled {
    let Outcome::Response(body) = outcome else {
        return Settled::Batch;
    };
    if !report {
        return Settled::All;
    }
    let Ok(response) = serde_json::from_slice::<Value>(body) else {
        return Settled::All;
    };
    let failures = match response.get("batchItemFailures") {
        None | Some(Value::Null) => return Settled::All,
        Some(Value::Array(failures)) => failures,
        Some(_) => return Settled::Batch,
    };
    let mut failed = Vec::new();
    for failure in failures {
        match failure.get("itemIdentifier").and_then(Value::as_str) {
            Some(id) if !id.is_empty() && ids.contains(&id) => failed.push(id.to_owned()),
            _ => return Settled::Batch,
        }
    }
    if failed.is_empty() {
        Settled::All
    } else {
        Settled::Failed(failed)
    }
}

/// Invokes `function` with the event of `records` (`{"Records": [...]}`), waiting for an
/// environment: (request id, outcome).
async fn invoke_batch(function: &Function, records: Vec<Value>) -> (String, Outcome) {
    let event = json!({ "Records": records });
    let request_id = uuid::Uuid::new_v4().to_string();
    let outcome = match function
        .invoke(&request_id, Bytes::from(event.to_string()), true)
        .await
    {
        Ok(outcome) => outcome,
        Err(refusal) => Outcome::error("TooManyRequestsException", &refusal.to_string()),
    };
    (request_id, outcome)
}

/// The largest event a batch may make (Lambda's 6 MB synchronous payload), with room for the
/// event's own envelope.
const MAX_BATCH_BYTES: usize = 6 * 1024 * 1024 - 64 * 1024;
/// What a record's envelope adds to its body, at most (ids, receipt handle, attributes).
const RECORD_OVERHEAD: usize = 2 * 1024;

/// The first messages of `received` that fit one event (at least one); the rest are carried to
/// the next batch (still invisible on the queue under this poller's receipt).
fn fit(mut received: Vec<Message>) -> (Vec<Message>, Vec<Message>) {
    let mut bytes = 0;
    let fits = received
        .iter()
        .take_while(|m| {
            bytes += m.body().map_or(0, str::len) + RECORD_OVERHEAD;
            bytes <= MAX_BATCH_BYTES
        })
        .count()
        .max(1)
        .min(received.len());
    let rest = received.split_off(fits);
    (received, rest)
}

async fn poll_sqs(
    mapping: MappingSpec,
    function: Arc<Function>,
    sqs: aws_sdk_sqs::Client,
    url: String,
) {
    let mut carried: Vec<Message> = Vec::new();
    loop {
        let mut batch: Vec<Message> = std::mem::take(&mut carried);
        let mut window_end: Option<Instant> = None;
        loop {
            if batch.len() >= mapping.batch_size {
                break;
            }
            let wanted = mapping.batch_size - batch.len();
            let wait_s = match window_end {
                None => 20,
                Some(end) => end
                    .saturating_duration_since(Instant::now())
                    .as_secs()
                    .min(20),
            };
            let received = sqs
                .receive_message()
                .queue_url(&url)
                .max_number_of_messages(i32::try_from(wanted.min(10)).unwrap_or(10))
                .wait_time_seconds(i32::try_from(wait_s).unwrap_or(20))
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .message_attribute_names("All")
                .send()
                .await;
            match received {
                Ok(got) => batch.extend(got.messages.unwrap_or_default()),
                Err(e) => {
                    tracing::warn!(mapping = mapping.id, error = %aws_sdk_sqs::error::DisplayErrorContext(e), "ReceiveMessage failed");
                    tokio::time::sleep(BACKOFF).await;
                }
            }
            if batch.is_empty() {
                continue;
            }
            let end = *window_end.get_or_insert_with(|| Instant::now() + mapping.batching_window);
            if batch.len() >= mapping.batch_size || Instant::now() >= end {
                break;
            }
        }
        let (batch, rest) = fit(batch);
        carried = rest;
        let records: Vec<Value> = batch
            .iter()
            .map(|m| sqs_record(m, &mapping.source_arn))
            .collect();
        let (_, outcome) = invoke_batch(&function, records).await;
        let ids: Vec<&str> = batch
            .iter()
            .map(|m| m.message_id().unwrap_or_default())
            .collect();
        let settled = settle(&outcome, mapping.report_batch_item_failures, &ids);
        let done: Vec<&Message> = match &settled {
            Settled::All => batch.iter().collect(),
            Settled::Failed(failed) => batch
                .iter()
                .filter(|m| !failed.iter().any(|f| Some(f.as_str()) == m.message_id()))
                .collect(),
            Settled::Batch => Vec::new(),
        };
        if done.len() < batch.len() {
            tracing::warn!(
                mapping = mapping.id,
                failed = batch.len() - done.len(),
                of = batch.len(),
                "messages left on the queue: they return after the visibility timeout"
            );
        }
        for chunk in done.chunks(10) {
            let entries = chunk.iter().enumerate().map(|(i, m)| {
                aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .build()
                    .expect("id and receipt handle are set")
            });
            if let Err(e) = sqs
                .delete_message_batch()
                .queue_url(&url)
                .set_entries(Some(entries.collect()))
                .send()
                .await
            {
                tracing::warn!(mapping = mapping.id, error = %aws_sdk_sqs::error::DisplayErrorContext(e), "DeleteMessageBatch failed: the messages will be delivered again");
            }
        }
    }
}

/// A message as Lambda's SQS event carries it.
fn sqs_record(message: &Message, source_arn: &str) -> Value {
    let attributes: serde_json::Map<String, Value> = message
        .attributes()
        .map(|a| {
            a.iter()
                .map(|(k, v)| (k.as_str().to_owned(), Value::String(v.clone())))
                .collect()
        })
        .unwrap_or_default();
    let message_attributes: serde_json::Map<String, Value> = message
        .message_attributes()
        .map(|a| {
            a.iter()
                .map(|(k, v)| {
                    let mut value = json!({
                        "dataType": v.data_type(),
                        "stringListValues": [],
                        "binaryListValues": [],
                    });
                    if let Some(s) = v.string_value() {
                        value["stringValue"] = s.into();
                    }
                    if let Some(b) = v.binary_value() {
                        value["binaryValue"] = base64::engine::general_purpose::STANDARD
                            .encode(b.as_ref())
                            .into();
                    }
                    (k.clone(), value)
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "messageId": message.message_id(),
        "receiptHandle": message.receipt_handle(),
        "body": message.body().unwrap_or_default(),
        "attributes": attributes,
        "messageAttributes": message_attributes,
        "md5OfBody": message.md5_of_body().unwrap_or_default(),
        "eventSource": "aws:sqs",
        "eventSourceARN": source_arn,
        "awsRegion": shoal_template::REGION,
    })
}

/// A record as Lambda's Kinesis event carries it.
fn kinesis_record(record: &KinesisRecord, shard: &str, source_arn: &str) -> Value {
    let arrival = record
        .approximate_arrival_timestamp()
        .map_or(0.0, |t| t.as_secs_f64());
    json!({
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": record.partition_key(),
            "sequenceNumber": record.sequence_number(),
            "data": base64::engine::general_purpose::STANDARD.encode(record.data().as_ref()),
            "approximateArrivalTimestamp": (arrival * 1000.0).round() / 1000.0,
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": format!("{shard}:{}", record.sequence_number()),
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": format!("arn:aws:iam::{}:role/shoal-local-lambda", shoal_template::ACCOUNT_ID),
        "awsRegion": shoal_template::REGION,
        "eventSourceARN": source_arn,
    })
}

async fn poll_shard<D: Destinations>(
    mapping: MappingSpec,
    function: Arc<Function>,
    destinations: Arc<D>,
    kinesis: aws_sdk_kinesis::Client,
    shard: String,
    mut iterator: String,
) {
    let mut pending: Vec<KinesisRecord> = Vec::new();
    let mut window_end: Option<Instant> = None;
    loop {
        let limit = mapping.batch_size.saturating_sub(pending.len()).max(1);
        match kinesis
            .get_records()
            .shard_iterator(&iterator)
            .limit(i32::try_from(limit).unwrap_or(10_000))
            .send()
            .await
        {
            Ok(got) => {
                if let Some(next) = got.next_shard_iterator {
                    iterator = next;
                }
                pending.extend(got.records);
            }
            Err(e) => {
                tracing::warn!(mapping = mapping.id, shard, error = %aws_sdk_kinesis::error::DisplayErrorContext(e), "GetRecords failed");
            }
        }
        if pending.is_empty() {
            // Lambda reads each shard about once a second.
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let end = *window_end.get_or_insert_with(|| Instant::now() + mapping.batching_window);
        if pending.len() < mapping.batch_size && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(250).min(end - Instant::now())).await;
            continue;
        }
        let batch = std::mem::take(&mut pending);
        window_end = None;
        deliver(&mapping, &function, &*destinations, &shard, batch).await;
    }
}

/// Delivers one batch of a shard until every record succeeded or was given up on, in order:
/// a partial batch response retries from the first failed record; a function error bisects the
/// batch (with `BisectBatchOnFunctionError`) or retries it, up to `MaximumRetryAttempts`; what is
/// given up on is recorded in the `OnFailure` destination.
async fn deliver<D: Destinations>(
    mapping: &MappingSpec,
    function: &Function,
    destinations: &D,
    shard: &str,
    batch: Vec<KinesisRecord>,
) {
    let mut queue: VecDeque<(Vec<KinesisRecord>, u32)> = VecDeque::from([(batch, 0)]);
    while let Some((records, retries)) = queue.pop_front() {
        if records.is_empty() {
            continue;
        }
        let events: Vec<Value> = records
            .iter()
            .map(|r| kinesis_record(r, shard, &mapping.source_arn))
            .collect();
        let (request_id, outcome) = invoke_batch(function, events).await;
        let ids: Vec<&str> = records.iter().map(KinesisRecord::sequence_number).collect();
        let exhausted = mapping.max_retries.is_some_and(|max| retries >= max);
        match settle(&outcome, mapping.report_batch_item_failures, &ids) {
            Settled::All => {}
            Settled::Failed(failed) => {
                // The checkpoint: everything before the lowest failed sequence number is done.
                let first = records
                    .iter()
                    .position(|r| failed.iter().any(|f| f == r.sequence_number()))
                    .unwrap_or(0);
                let rest = records[first..].to_vec();
                if exhausted {
                    give_up(
                        mapping,
                        function,
                        destinations,
                        shard,
                        &rest,
                        retries + 1,
                        &request_id,
                    )
                    .await;
                } else {
                    queue.push_front((rest, retries + 1));
                }
            }
            Settled::Batch if mapping.bisect_on_error && records.len() > 1 && !exhausted => {
                let mut first = records;
                let second = first.split_off(first.len() / 2);
                queue.push_front((second, retries + 1));
                queue.push_front((first, retries + 1));
            }
            Settled::Batch if exhausted => {
                give_up(
                    mapping,
                    function,
                    destinations,
                    shard,
                    &records,
                    retries + 1,
                    &request_id,
                )
                .await;
            }
            Settled::Batch => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                queue.push_front((records, retries + 1));
            }
        }
    }
}

async fn give_up<D: Destinations>(
    mapping: &MappingSpec,
    function: &Function,
    destinations: &D,
    shard: &str,
    records: &[KinesisRecord],
    invocations: u32,
    request_id: &str,
) {
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return;
    };
    let arrival = |r: &KinesisRecord| {
        r.approximate_arrival_timestamp()
            .and_then(|t| time::OffsetDateTime::from_unix_timestamp_nanos(t.as_nanos()).ok())
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
    };
    let record = json!({
        "requestContext": {
            "requestId": request_id,
            "functionArn": function.spec.arn,
            "condition": "RetryAttemptsExhausted",
            "approximateInvokeCount": invocations,
        },
        "responseContext": {
            "statusCode": 200,
            "executedVersion": "$LATEST",
            "functionError": "Unhandled",
        },
        "version": "1.0",
        "timestamp": now_iso(),
        "KinesisBatchInfo": {
            "shardId": shard,
            "startSequenceNumber": first.sequence_number(),
            "endSequenceNumber": last.sequence_number(),
            "approximateArrivalOfFirstRecord": arrival(first),
            "approximateArrivalOfLastRecord": arrival(last),
            "batchSize": records.len(),
            "streamArn": mapping.source_arn,
        },
    });
    tracing::warn!(
        mapping = mapping.id,
        shard,
        records = records.len(),
        "retries exhausted: records skipped"
    );
    if let Some(queue) = &mapping.on_failure
        && let Err(e) = destinations.send(queue, record.to_string()).await
    {
        tracing::error!(
            mapping = mapping.id,
            queue,
            error = e,
            "could not record skipped records"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(body: &str) -> Outcome {
        Outcome::Response(Bytes::from(body.to_owned()))
    }

    #[test]
    fn a_batch_fits_lambdas_payload_limit_and_carries_the_rest() {
        let message = |kb: usize| Message::builder().body("x".repeat(kb * 1024)).build();
        let (batch, rest) = fit((0..30).map(|_| message(250)).collect());
        assert_eq!(
            (batch.len(), rest.len()),
            (24, 6),
            "24 x 252 KiB fit 6 MiB - 64 KiB"
        );
        let (one, none) = fit(vec![message(7 * 1024)]);
        assert_eq!(
            (one.len(), none.len()),
            (1, 0),
            "a message alone always goes"
        );
        let (all, none) = fit((0..10).map(|_| message(1)).collect());
        assert_eq!((all.len(), none.len()), (10, 0));
    }

    #[test]
    fn partial_batch_responses_settle_as_lambda_documents() {
        let ids = ["a", "b", "c"];
        assert_eq!(settle(&response("null"), true, &ids), Settled::All);
        assert_eq!(
            settle(&response(r#"{"batchItemFailures":[]}"#), true, &ids),
            Settled::All
        );
        assert_eq!(
            settle(
                &response(r#"{"batchItemFailures":[{"itemIdentifier":"b"}]}"#),
                true,
                &ids
            ),
            Settled::Failed(vec!["b".into()])
        );
        for invalid in [
            r#"{"batchItemFailures":[{"itemIdentifier":""}]}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":"zz"}]}"#,
            r#"{"batchItemFailures":[{}]}"#,
            r#"{"batchItemFailures":"b"}"#,
        ] {
            assert_eq!(
                settle(&response(invalid), true, &ids),
                Settled::Batch,
                "{invalid}"
            );
        }
        assert_eq!(
            settle(
                &response(r#"{"batchItemFailures":[{"itemIdentifier":"b"}]}"#),
                false,
                &ids
            ),
            Settled::All,
            "without ReportBatchItemFailures the response is not read"
        );
        assert_eq!(
            settle(&Outcome::error("Unhandled", "boom"), true, &ids),
            Settled::Batch
        );
    }
}
