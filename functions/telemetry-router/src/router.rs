//! Routing an invocation's messages: decode and validate each, write every accepted reading to
//! the telemetry sink in chunks of 100 across messages, quarantine the rest (one object per
//! message that lists its refused readings), and archive what was written as Parquet. Nothing is
//! dropped: for every invocation, `accepted + quarantined + returned-for-retry = received`.
//!
//! Work and memory are bounded whatever a batch holds: a message holds at most
//! [`MAX_READINGS_PER_MESSAGE`](shoal_core::telemetry::MAX_READINGS_PER_MESSAGE) readings (more is quarantined whole); messages are written in
//! rounds of about [`ROUND_READINGS`] readings, each round settled (written, quarantined,
//! archived) before the next is decoded; and no new work starts once the invocation's deadline is
//! near — what is left goes back for retry (`batchItemFailures`), never lost with the invocation.

use std::collections::BTreeMap;
use std::future::Future;

use serde::Serialize;
use shoal_core::clock::now_ms;
use shoal_core::edge::{EdgeError, Retryable};
use shoal_core::telemetry::archive::{ArchiveError, archive_key, to_parquet};
use shoal_core::telemetry::decode::{Context, readings_in};
use shoal_core::telemetry::records::{APP_DIMENSION, write_ranges};
use shoal_core::telemetry::{
    CheckedJson, Envelope, EnvelopeError, Limits, MeasureTypes, PackedSchemas, Payload,
    TelemetryApps, TimestreamRecord, decode_binary, decode_flat, decode_json,
    validate_with_dimensions,
};

/// AWS IoT Core's payload limit: nothing larger can have come from a device.
pub const MAX_PAYLOAD_BYTES: usize = 128 * 1024;
/// What the rule adds to a JSON payload (`_topic`, `_received_at`, `_client_id`) is allowed on top
/// of [`MAX_PAYLOAD_BYTES`] when the rule's output is measured.
const RULE_METADATA_ALLOWANCE: usize = 1024;
/// Readings decoded before they are written: one round's records, quarantine items and Parquet
/// object are in memory at a time, whatever the batch holds.
pub const ROUND_READINGS: usize = 20_000;
/// Measures (archive rows) decoded before they are written: readings of many measures end a
/// round sooner.
pub const ROUND_MEASURES: usize = 100_000;
/// Bytes of delivered messages held for the quarantine before they are written.
pub const ROUND_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// A record Timestream refused, by its index in the batch written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRecord {
    pub index: usize,
    pub reason: String,
}

/// Where accepted readings go (Timestream in production).
pub trait TelemetrySink: Sync {
    /// Writes at most 100 records in one call; returns those the store refused.
    fn write(
        &self,
        batch: &[TimestreamRecord],
    ) -> impl Future<Output = Result<Vec<RejectedRecord>, EdgeError>> + Send;
}

/// Where refused input goes, with its reasons (S3 `quarantine/` in production).
pub trait QuarantineStore: Sync {
    fn put(&self, item: &QuarantineItem) -> impl Future<Output = Result<(), EdgeError>> + Send;
}

/// Where the written readings are archived (S3 `telemetry/` in production).
pub trait ArchiveStore: Sync {
    fn put(
        &self,
        key: &str,
        parquet: Vec<u8>,
    ) -> impl Future<Output = Result<(), EdgeError>> + Send;
}

/// The three edges a router writes to.
pub struct Edges<'a, S, Q, A> {
    pub sink: &'a S,
    pub quarantine: &'a Q,
    pub archive: &'a A,
}

/// When an invocation must stop starting new work.
pub trait Deadline: Sync {
    /// True once there is no longer time for another write and the answer.
    fn expired(&self) -> bool;
}

/// No deadline (tests, benchmarks).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDeadline;

impl Deadline for NoDeadline {
    fn expired(&self) -> bool {
        false
    }
}

/// Lambda's deadline for the invocation (`Context::deadline`, ms since the epoch), less a reserve
/// for one more store call and the answer.
#[derive(Debug, Clone, Copy)]
pub struct LambdaDeadline {
    pub deadline_ms: i64,
    pub reserve_ms: i64,
}

impl LambdaDeadline {
    /// The deadline of an invocation starting now, keeping back `max_reserve_ms` — or a quarter
    /// of the time the invocation has, when that is less (a function configured with a short
    /// timeout still gets to work). A deadline already past at the start cannot be Lambda's own
    /// (Lambda stops a function at its deadline; an emulator that compiled the function first
    /// may hand a stale one): it is ignored rather than returning every message unprocessed.
    pub fn starting_now(deadline_ms: i64, max_reserve_ms: i64) -> Self {
        let remaining = deadline_ms.saturating_sub(now_ms());
        if remaining <= 0 {
            return Self {
                deadline_ms: i64::MAX,
                reserve_ms: 0,
            };
        }
        Self {
            deadline_ms,
            reserve_ms: max_reserve_ms.min(remaining / 4),
        }
    }
}

impl Deadline for LambdaDeadline {
    fn expired(&self) -> bool {
        now_ms().saturating_add(self.reserve_ms) >= self.deadline_ms
    }
}

/// What a message is checked against: the time window, the packed-record schemas, the declared
/// measure types, and the invocation's deadline.
#[derive(Clone, Copy)]
pub struct Rules<'a> {
    pub limits: Limits,
    pub schemas: &'a PackedSchemas,
    pub types: &'a MeasureTypes,
    /// The `<app>` levels accepted; another is refused whole (`unknown_app`).
    pub apps: &'a TelemetryApps,
    pub deadline: &'a dyn Deadline,
}

/// One refusal within a message: a reading (by index), or the whole message. Serialized as the
/// quarantine body's `{"reading", "reason_code", "reason"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// The reading's index within the message; `None` when the whole message was refused.
    #[serde(rename = "reading")]
    pub reading_index: Option<usize>,
    pub reason_code: &'static str,
    pub reason: String,
    /// Readings this refusal accounts for: 1 for a reading; for a message refused whole, the
    /// readings it is known to hold (at least 1).
    #[serde(skip)]
    pub readings: usize,
}

/// The quarantine object's body, serialized straight from the item (no intermediate JSON tree).
#[derive(Serialize)]
struct QuarantineBody<'a> {
    topic: Option<&'a str>,
    thing_name: Option<&'a str>,
    received_at: Option<i64>,
    message_id: &'a str,
    readings: usize,
    refused_readings: usize,
    reason_codes: Vec<&'static str>,
    refused: &'a [Refusal],
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_base64: Option<String>,
}

/// What could not be stored of one message, with everything needed to find out why and replay it:
/// one object per message, whatever it refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineItem {
    pub topic: Option<String>,
    pub thing: Option<String>,
    pub received_at_ms: Option<i64>,
    /// The time the item is filed under: IoT Core's receive time, else the queue's or stream's
    /// arrival time, else the invocation's time.
    pub filed_at_ms: i64,
    /// SQS message id or Kinesis sequence number; empty for a direct invocation.
    pub message_id: String,
    /// Readings the message held (what `received` counted for it).
    pub readings: usize,
    pub refused: Vec<Refusal>,
    /// The message exactly as the rule delivered it.
    pub original: Vec<u8>,
}

impl QuarantineItem {
    /// The distinct reason codes, sorted.
    pub fn reason_codes(&self) -> Vec<&'static str> {
        let mut codes: Vec<&'static str> = self.refused.iter().map(|r| r.reason_code).collect();
        codes.sort_unstable();
        codes.dedup();
        codes
    }

    /// Readings refused in all.
    pub fn refused_readings(&self) -> usize {
        self.refused.iter().map(|r| r.readings).sum()
    }

    /// The object's body: a JSON document with where the message came from, every refusal
    /// (`reading` index or null for the whole message, `reason_code`, `reason`) and the message
    /// exactly as delivered — `message` when it is UTF-8 text, else `message_base64`. Linear in
    /// the message and its refusals.
    pub fn body(&self) -> Vec<u8> {
        let text = std::str::from_utf8(&self.original).ok();
        let body = QuarantineBody {
            topic: self.topic.as_deref(),
            thing_name: self.thing.as_deref(),
            received_at: self.received_at_ms,
            message_id: &self.message_id,
            readings: self.readings,
            refused_readings: self.refused_readings(),
            reason_codes: self.reason_codes(),
            refused: &self.refused,
            message: text,
            message_base64: text.is_none().then(|| {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode(&self.original)
            }),
        };
        // Room for the message (escaped text grows a little) and ~100 bytes a refusal: the body
        // is written once, not regrown.
        let mut out = Vec::with_capacity(
            self.original.len() + self.original.len() / 8 + 100 * self.refused.len() + 512,
        );
        // Serializing plain structs and strings into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, &body);
        out
    }
}

/// What happened to one invocation's input, in readings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub received: usize,
    pub accepted: usize,
    /// Of the accepted, those older than the memory-store retention: written to the magnetic
    /// store (Timestream reports its rejections of them to the table's rejected-data location).
    pub accepted_late: usize,
    pub quarantined: BTreeMap<&'static str, usize>,
    pub retried: usize,
}

impl Counts {
    /// Adds another message's counts to these.
    pub fn add(&mut self, other: &Counts) {
        self.received += other.received;
        self.accepted += other.accepted;
        self.accepted_late += other.accepted_late;
        self.retried += other.retried;
        for (reason, n) in &other.quarantined {
            *self.quarantined.entry(reason).or_default() += n;
        }
    }

    pub fn quarantined_total(&self) -> usize {
        self.quarantined.values().sum()
    }

    /// The invariant every invocation keeps.
    pub fn balanced(&self) -> bool {
        self.accepted + self.quarantined_total() + self.retried == self.received
    }
}

/// A direct event's error (a batch answers with `batchItemFailures` instead): the IoT rule's
/// asynchronous invocation is retried by Lambda, then lands in the on-failure queue. Why is the
/// [`RetryCause`]. Timestream writes are idempotent upserts (same version), quarantine keys
/// deterministic and archive rows carry reading ids, so a redelivery loses nothing and is
/// counted once.
#[derive(Debug, thiserror::Error)]
#[error("{cause}; {} of {} readings returned for retry", counts.retried, counts.received)]
pub struct RetryLater {
    pub counts: Counts,
    pub cause: RetryCause,
}

/// Why messages of a batch go back for redelivery: the first failure of the invocation.
#[derive(Debug, thiserror::Error)]
pub enum RetryCause {
    /// A store (Timestream, the quarantine, the archive bucket) failed.
    #[error(transparent)]
    Store(#[from] EdgeError),
    /// The invocation's deadline came before the batch was settled.
    #[error("the invocation's deadline is near; the rest is returned for retry")]
    Deadline,
    /// The archive's Parquet file could not be encoded.
    #[error("the archive file could not be encoded: {0}")]
    Archive(#[from] ArchiveError),
}

impl Retryable for RetryCause {
    /// Whether redelivery can succeed where this invocation failed: a store that was throttled
    /// or unreachable, or a deadline that came. A store's refusal (a missing table, a denied
    /// write) or an archive that cannot be encoded fails again until someone acts; the messages
    /// still go back (nothing is lost), and the error says so.
    fn is_retryable(&self) -> bool {
        match self {
            Self::Store(e) => e.is_retryable(),
            Self::Deadline => true,
            Self::Archive(_) => false,
        }
    }
}

impl Retryable for RetryLater {
    fn is_retryable(&self) -> bool {
        self.cause.is_retryable()
    }
}

/// One message of an invocation, as delivered. It is parsed only when its turn comes, so a
/// batch's messages are never all parsed at once.
#[derive(Debug)]
pub struct Incoming {
    /// SQS message id or Kinesis sequence number; empty for a direct invocation.
    pub id: String,
    original: Vec<u8>,
    /// A direct event arrives parsed.
    parsed: Option<CheckedJson>,
    /// When the queue or stream took the message (SQS `SentTimestamp`, Kinesis
    /// `approximateArrivalTimestamp`), in ms: the same on every redelivery.
    arrived_at_ms: Option<i64>,
}

impl Incoming {
    /// A direct IoT rule event (the rule's output as JSON).
    pub fn from_rule_event(event: CheckedJson) -> Self {
        Self {
            id: String::new(),
            original: serde_json::to_vec(&event).unwrap_or_default(),
            parsed: Some(event),
            arrived_at_ms: None,
        }
    }

    /// A message as SQS or Kinesis deliver it: the rule's output as bytes, which may be anything.
    pub fn from_bytes(id: String, original: Vec<u8>) -> Self {
        Self {
            id,
            original,
            parsed: None,
            arrived_at_ms: None,
        }
    }

    fn envelope(&mut self) -> Result<Envelope, EnvelopeError> {
        match self.parsed.take() {
            Some(event) => Envelope::from_checked(event),
            None => Envelope::from_bytes(&self.original),
        }
    }

    /// The time the queue or stream took the message.
    #[must_use]
    pub fn arrived_at(mut self, ms: Option<i64>) -> Self {
        self.arrived_at_ms = ms;
        self
    }
}

/// How messages of a batch fail together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// SQS: each message is retried on its own.
    Independent,
    /// Kinesis: Lambda resumes a shard at the first failed record, so every later record is
    /// retried too.
    Ordered,
}

/// The outcome of an invocation's batch.
#[derive(Debug)]
pub struct BatchOutcome {
    pub counts: Counts,
    /// Ids of the messages to deliver again, in delivery order.
    pub failed: Vec<String>,
    /// Why, when anything failed.
    pub cause: Option<RetryCause>,
}

/// Where a message came from, for its quarantine item.
struct Source {
    topic: String,
    thing: String,
    received_at_ms: i64,
}

/// One message on its way through the router.
struct Pending {
    id: String,
    received: usize,
    refused: Vec<Refusal>,
    quarantined: BTreeMap<&'static str, usize>,
    written: usize,
    rejected: usize,
    late: usize,
    failed: bool,
    source: Option<Source>,
    arrived_at_ms: Option<i64>,
    original: Vec<u8>,
}

impl Pending {
    fn new(incoming: &mut Incoming) -> Self {
        Self {
            id: std::mem::take(&mut incoming.id),
            received: 0,
            refused: Vec::new(),
            quarantined: BTreeMap::new(),
            written: 0,
            rejected: 0,
            late: 0,
            failed: false,
            source: None,
            arrived_at_ms: incoming.arrived_at_ms,
            original: std::mem::take(&mut incoming.original),
        }
    }

    /// A message the invocation had no time (or no store) left for: returned for retry whole.
    fn unprocessed(mut incoming: Incoming) -> Self {
        let mut p = Self::new(&mut incoming);
        p.received = 1;
        p.failed = true;
        p.original = Vec::new();
        p
    }

    fn refuse(&mut self, code: &'static str, reason: String, index: Option<usize>, n: usize) {
        *self.quarantined.entry(code).or_default() += n;
        self.refused.push(Refusal {
            reading_index: index,
            reason_code: code,
            reason,
            readings: n,
        });
    }

    /// Refuses the whole message, which holds `n` readings as far as is known.
    fn refuse_whole(&mut self, code: &'static str, reason: String, n: usize) {
        self.received = n;
        self.refuse(code, reason, None, n);
    }

    fn quarantine_item(&mut self, invoked_at_ms: i64) -> QuarantineItem {
        let source = self.source.as_ref();
        QuarantineItem {
            topic: source.map(|s| s.topic.clone()),
            thing: source.map(|s| s.thing.clone()),
            received_at_ms: source.map(|s| s.received_at_ms),
            filed_at_ms: source
                .map(|s| s.received_at_ms)
                .or(self.arrived_at_ms)
                .unwrap_or(invoked_at_ms),
            message_id: self.id.clone(),
            readings: self.received,
            refused: std::mem::take(&mut self.refused),
            original: std::mem::take(&mut self.original),
        }
    }

    /// A failed message is retried whole and counted by the invocation that settles it, never
    /// twice: none of it is accepted or quarantined here.
    fn counts(&self) -> Counts {
        if self.failed {
            return Counts {
                received: self.received,
                retried: self.received,
                ..Counts::default()
            };
        }
        Counts {
            received: self.received,
            accepted: self.written - self.rejected,
            accepted_late: self.late,
            quarantined: self.quarantined.clone(),
            retried: 0,
        }
    }
}

/// Marks `from` as failed, and with [`FailurePolicy::Ordered`] every later message too.
fn fail(pending: &mut [Pending], from: usize, policy: FailurePolicy) {
    match policy {
        FailurePolicy::Independent => pending[from].failed = true,
        FailurePolicy::Ordered => pending[from..].iter_mut().for_each(|p| p.failed = true),
    }
}

/// Which message and reading a record of the round came from, and what Timestream made of it.
struct Tag {
    message: usize,
    reading: usize,
    late: bool,
    rejected: bool,
}

/// The messages decoded since the last write: their records, in order, and their tags.
#[derive(Default)]
struct Round {
    /// Index of the round's first message.
    first: usize,
    records: Vec<TimestreamRecord>,
    tags: Vec<Tag>,
    measures: usize,
    /// Refusals waiting for the quarantine, and the delivered bytes kept for them.
    refusals: usize,
    message_bytes: usize,
}

impl Round {
    /// Whether the round holds as much as one round may: readings written or refused, measures,
    /// or delivered bytes.
    fn full(&self) -> bool {
        self.records.len() + self.refusals >= ROUND_READINGS
            || self.measures >= ROUND_MEASURES
            || self.message_bytes >= ROUND_MESSAGE_BYTES
    }
}

/// Writes `records` (at most 100) and checks the answer. Timestream answers a request it finds
/// invalid as a whole (`ValidationException`) without saying which record: the batch is then
/// halved until the offending records stand alone and are refused by themselves, so one bad
/// record never fails its neighbours. `RejectedRecords` indexes are checked: one outside the
/// batch makes the answer unusable (an error, so the messages are retried).
async fn write_checked(
    sink: &impl TelemetrySink,
    records: &[TimestreamRecord],
    deadline: &dyn Deadline,
) -> Result<Vec<RejectedRecord>, RetryCause> {
    let mut rejected = BTreeMap::new();
    let mut invalid = 0;
    let mut validation = None;
    // Ranges still to write, the next one last.
    let mut todo: Vec<std::ops::Range<usize>> = Vec::with_capacity(8);
    todo.push(0..records.len());
    let mut first = true;
    while let Some(range) = todo.pop() {
        // The first call was cleared by the caller; every halving call is checked again.
        if !std::mem::take(&mut first) && deadline.expired() {
            return Err(RetryCause::Deadline);
        }
        match sink.write(&records[range.clone()]).await {
            Ok(refused) => {
                for r in refused {
                    if r.index >= range.len() {
                        return Err(RetryCause::Store(EdgeError::unreadable(
                            "timestream-write",
                            "WriteRecords",
                            format!(
                                "RejectedRecords names record {} of a request of {}",
                                r.index,
                                range.len()
                            ),
                        )));
                    }
                    rejected.entry(range.start + r.index).or_insert(r.reason);
                }
            }
            Err(e) if e.is_code("ValidationException") && range.len() > 1 => {
                let middle = range.start + range.len() / 2;
                todo.push(middle..range.end);
                todo.push(range.start..middle);
            }
            Err(e) if e.is_code("ValidationException") => {
                invalid += 1;
                rejected.insert(
                    range.start,
                    format!("Timestream refused the record: {}", e.message),
                );
                validation = Some(e);
            }
            Err(e) => return Err(e.into()),
        }
    }
    // Every record refused alone: the request, not the records, is what Timestream refuses
    // (a table or configuration problem) — retry rather than quarantine good readings.
    if records.len() > 1
        && invalid == records.len()
        && let Some(e) = validation
    {
        return Err(e.into());
    }
    Ok(rejected
        .into_iter()
        .map(|(index, reason)| RejectedRecord { index, reason })
        .collect())
}

/// An invocation's batch on its way: every message's state, the invocation's identity and the
/// first failure.
struct Batch<'r, 'e, S, Q, A> {
    pending: Vec<Pending>,
    rules: &'r Rules<'r>,
    edges: &'r Edges<'e, S, Q, A>,
    batch_id: &'r str,
    policy: FailurePolicy,
    cause: Option<RetryCause>,
    rounds: usize,
}

impl<S: TelemetrySink, Q: QuarantineStore, A: ArchiveStore> Batch<'_, '_, S, Q, A> {
    fn failure(&mut self, e: impl Into<RetryCause>) {
        self.cause.get_or_insert(e.into());
    }

    /// Fails every message of the round that is not settled yet (the deadline came).
    fn fail_round(&mut self, round: &Round) {
        for p in &mut self.pending[round.first..] {
            p.failed = true;
        }
        self.failure(RetryCause::Deadline);
    }

    /// Writes, quarantines and archives one round. Returns false when the batch must stop: a
    /// store failed or the deadline came (later messages go back unprocessed).
    async fn settle(&mut self, mut round: Round) -> bool {
        let mut healthy = true;
        // 1. Timestream, in chunks of 100 across messages. A failed chunk fails every message with
        //    a record in it or after it: nothing after a failure is written out of order.
        for range in write_ranges(round.records.len()) {
            if self.rules.deadline.expired() {
                self.fail_round(&round);
                return false;
            }
            let start = range.start;
            let written = write_checked(
                self.edges.sink,
                &round.records[range.clone()],
                self.rules.deadline,
            )
            .await;
            match written {
                Ok(rejected) => {
                    for tag in &round.tags[range.clone()] {
                        self.pending[tag.message].written += 1;
                    }
                    for r in rejected {
                        let tag = &mut round.tags[start + r.index];
                        tag.rejected = true;
                        let p = &mut self.pending[tag.message];
                        p.rejected += 1;
                        p.refuse("timestream_rejected", r.reason, Some(tag.reading), 1);
                    }
                }
                Err(e) => {
                    for tag in &round.tags[start..] {
                        self.pending[tag.message].failed = true;
                    }
                    fail(&mut self.pending, round.tags[start].message, self.policy);
                    self.failure(e);
                    healthy = false;
                    break;
                }
            }
        }
        // Refusals are kept in reading order in each message's quarantine object.
        for p in &mut self.pending[round.first..] {
            p.refused.sort_by_key(|r| r.reading_index);
        }

        // 2. The quarantine: one object per message that refused anything and is not coming back
        //    anyway.
        let invoked_at = self.rules.limits.now_ms;
        for m in round.first..self.pending.len() {
            if self.pending[m].failed || self.pending[m].refused.is_empty() {
                continue;
            }
            if self.rules.deadline.expired() {
                self.fail_round(&round);
                return false;
            }
            let item = self.pending[m].quarantine_item(invoked_at);
            if let Err(e) = self.edges.quarantine.put(&item).await {
                fail(&mut self.pending, m, self.policy);
                self.failure(e);
                healthy = false;
            }
        }
        for p in &mut self.pending[round.first..] {
            p.original = Vec::new();
        }

        // 3. The archive: every reading written for a message that succeeded, one object a round.
        let pending = &self.pending;
        let keep = |tag: &Tag| !tag.rejected && !pending[tag.message].failed;
        let archived = round
            .records
            .iter()
            .zip(&round.tags)
            .filter(|(_, t)| keep(t));
        if archived.clone().next().is_some() {
            if self.rules.deadline.expired() {
                self.fail_round(&round);
                return false;
            }
            let name = match self.rounds {
                0 => self.batch_id.to_owned(),
                n => format!("{}-{n}", self.batch_id),
            };
            let stored = match to_parquet(archived.map(|(r, _)| r)) {
                Ok(parquet) => {
                    let key = archive_key(invoked_at, &name);
                    self.edges
                        .archive
                        .put(&key, parquet)
                        .await
                        .map_err(RetryCause::from)
                }
                Err(e) => Err(RetryCause::from(e)),
            };
            if let Err(e) = stored {
                let contributed: Vec<usize> = round
                    .tags
                    .iter()
                    .filter(|t| keep(t))
                    .map(|t| t.message)
                    .collect();
                for m in contributed {
                    fail(&mut self.pending, m, self.policy);
                }
                self.failure(e);
                healthy = false;
            }
        }
        for tag in round.tags.iter().filter(|t| t.late && !t.rejected) {
            self.pending[tag.message].late += 1;
        }
        self.rounds += 1;
        healthy
    }
}

/// Routes one invocation's messages. Timestream gets ceil(n/100) calls for n valid readings of a
/// round, the archive one object a round named after `batch_id` (the Lambda request id: a
/// retried asynchronous invocation keeps it, so its archive object is overwritten, not doubled;
/// later rounds add `-<n>`).
pub async fn route_batch(
    messages: Vec<Incoming>,
    rules: &Rules<'_>,
    edges: &Edges<'_, impl TelemetrySink, impl QuarantineStore, impl ArchiveStore>,
    batch_id: &str,
    policy: FailurePolicy,
) -> BatchOutcome {
    let mut batch = Batch {
        pending: Vec::with_capacity(messages.len()),
        rules,
        edges,
        batch_id,
        policy,
        cause: None,
        rounds: 0,
    };
    let mut round = Round::default();
    let mut halted = false;
    for incoming in messages {
        if !halted && rules.deadline.expired() {
            // The round decoded so far will not be written in time: it goes back whole.
            batch.fail_round(&round);
            halted = true;
        }
        if halted {
            batch.pending.push(Pending::unprocessed(incoming));
            continue;
        }
        decode_and_validate(incoming, rules, &mut batch.pending, &mut round);
        if let Some(p) = batch.pending.last() {
            round.refusals += p.refused.len();
            round.message_bytes += p.original.len();
        }
        if round.full() {
            let next = Round {
                first: batch.pending.len(),
                ..Round::default()
            };
            halted = !batch.settle(std::mem::replace(&mut round, next)).await;
        }
    }
    if !halted {
        batch.settle(round).await;
    }

    let mut counts = Counts::default();
    for p in &batch.pending {
        counts.add(&p.counts());
    }
    BatchOutcome {
        counts,
        failed: batch
            .pending
            .iter()
            .filter(|p| p.failed)
            .map(|p| p.id.clone())
            .collect(),
        cause: batch.cause,
    }
}

/// Routes one direct IoT rule event; `Err` asks Lambda to deliver it again.
///
/// # Errors
/// [`RetryLater`] when a store failed (unreachable, throttled, or refusing: a missing table), the
/// deadline came, or the archive could not be encoded; its [`RetryCause`] says which.
pub async fn route_rule_event(
    event: CheckedJson,
    rules: &Rules<'_>,
    edges: &Edges<'_, impl TelemetrySink, impl QuarantineStore, impl ArchiveStore>,
    batch_id: &str,
) -> Result<Counts, RetryLater> {
    let outcome = route_batch(
        vec![Incoming::from_rule_event(event)],
        rules,
        edges,
        batch_id,
        FailurePolicy::Independent,
    )
    .await;
    match outcome.cause {
        Some(cause) if !outcome.failed.is_empty() => Err(RetryLater {
            counts: outcome.counts,
            cause,
        }),
        _ => Ok(outcome.counts),
    }
}

/// Decodes and checks one message: its records join the round, its refusals its own entry.
fn decode_and_validate(
    mut incoming: Incoming,
    rules: &Rules<'_>,
    pending: &mut Vec<Pending>,
    round: &mut Round,
) {
    let message = pending.len();
    let envelope = incoming.envelope();
    let mut p = Pending::new(&mut incoming);
    let envelope = match envelope {
        Ok(e) => e,
        Err(e) => {
            p.refuse_whole("bad_envelope", e.to_string(), 1);
            pending.push(p);
            return;
        }
    };
    p.source = Some(Source {
        topic: envelope.topic.clone(),
        thing: envelope.thing.to_string(),
        received_at_ms: envelope.received_at_ms,
    });
    // A JSON payload refused whole counts the readings its shape says it holds.
    let held = match &envelope.payload {
        Payload::Json(fields) => readings_in(fields),
        Payload::Flat(readings) => readings.len(),
        Payload::Binary(_) => 1,
    };
    let payload_bytes = match &envelope.payload {
        Payload::Binary(bytes) => bytes.len(),
        Payload::Json(_) | Payload::Flat(_) => {
            p.original.len().saturating_sub(RULE_METADATA_ALLOWANCE)
        }
    };
    if payload_bytes > MAX_PAYLOAD_BYTES {
        let reason =
            format!("payload is {payload_bytes} bytes; AWS IoT Core allows {MAX_PAYLOAD_BYTES}");
        p.refuse_whole("payload_too_large", reason, held);
        pending.push(p);
        return;
    }
    if let Some(key) = &envelope.duplicate_key {
        let e = shoal_core::telemetry::DecodeError::DuplicateKey(key.clone());
        p.refuse_whole(e.code(), e.to_string(), held);
        pending.push(p);
        return;
    }
    if !rules.apps.allows(envelope.app()) {
        let reason = format!(
            "app {:?} is not one of this stack's telemetry apps (TelemetryApps)",
            envelope.app()
        );
        p.refuse_whole("unknown_app", reason, held);
        pending.push(p);
        return;
    }
    let app = envelope.app().to_owned();
    let model = envelope.topic_model().map(str::to_owned);
    let Envelope {
        thing,
        received_at_ms,
        payload,
        ..
    } = envelope;
    let ctx = Context {
        thing: &thing,
        received_at_ms,
        types: rules.types,
    };
    let decoded = match payload {
        Payload::Json(fields) => decode_json(&ctx, fields),
        Payload::Flat(readings) => decode_flat(&ctx, readings),
        Payload::Binary(bytes) => decode_binary(&ctx, model.as_deref(), &bytes, rules.schemas),
    };
    let readings = match decoded {
        Ok(readings) => readings,
        Err(e) => {
            p.refuse_whole(e.code(), e.to_string(), e.readings_held().max(held));
            pending.push(p);
            return;
        }
    };
    p.received = readings.len();
    let dimensions = [(APP_DIMENSION, app.as_str())];
    for (index, reading) in readings.into_iter().enumerate() {
        match reading {
            Err(e) => p.refuse(e.code(), e.to_string(), Some(index), 1),
            Ok(reading) => match validate_with_dimensions(reading, &rules.limits, &dimensions) {
                Err(rejection) => {
                    p.refuse(rejection.code(), rejection.to_string(), Some(index), 1);
                }
                Ok(mut record) => {
                    record.version = received_at_ms;
                    round.measures += record.measures.len();
                    round.tags.push(Tag {
                        message,
                        reading: index,
                        late: rules.limits.is_late(record.time_ms),
                        rejected: false,
                    });
                    round.records.push(record);
                }
            },
        }
    }
    pending.push(p);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{FakeArchive, FakeQuarantine, FakeSink};
    use proptest::prelude::*;
    use serde_json::{Value, json};
    use shoal_core::telemetry::MeasureValue;

    const NOW: i64 = 1_764_064_800_000;
    const RULES: Rules<'static> = Rules {
        limits: Limits {
            now_ms: NOW,
            memory_retention_ms: 24 * 3_600_000,
            magnetic_retention_ms: None,
        },
        schemas: &PackedSchemas::empty(),
        types: &MeasureTypes::empty(),
        apps: &TelemetryApps::ANY,
        deadline: &NoDeadline,
    };

    fn event(payload: Value) -> Value {
        let mut event = payload;
        event["_topic"] = json!("dt/farm/dev-1/telemetry");
        event["_received_at"] = json!(NOW);
        event["_client_id"] = json!("dev-1");
        event
    }

    async fn route_with(
        event: Value,
        sink: &FakeSink,
        q: &FakeQuarantine,
        archive: &FakeArchive,
    ) -> Result<Counts, RetryLater> {
        route_rules(event, &RULES, sink, q, archive).await
    }

    async fn route_rules(
        event: Value,
        rules: &Rules<'_>,
        sink: &FakeSink,
        q: &FakeQuarantine,
        archive: &FakeArchive,
    ) -> Result<Counts, RetryLater> {
        let edges = Edges {
            sink,
            quarantine: q,
            archive,
        };
        route_rule_event(event.into(), rules, &edges, "req-1").await
    }

    async fn route(
        event: Value,
        sink: &FakeSink,
        q: &FakeQuarantine,
    ) -> Result<Counts, RetryLater> {
        route_with(event, sink, q, &FakeArchive::default()).await
    }

    #[tokio::test]
    async fn a_single_reading_is_written_with_the_receive_time_as_version() {
        let (sink, q) = (FakeSink::default(), FakeQuarantine::default());
        let counts = route(
            event(json!({"ts": NOW - 1000, "temp": 23.0, "rssi": -70})),
            &sink,
            &q,
        )
        .await
        .unwrap();
        assert_eq!(
            (counts.received, counts.accepted, counts.retried),
            (1, 1, 0)
        );
        let calls = sink.calls.lock().unwrap();
        let record = &calls[0][0];
        assert_eq!(record.time_ms, NOW - 1000);
        assert_eq!(record.version, NOW);
        assert_eq!(
            record.dimensions,
            vec![("thing_name", "dev-1".into()), ("app", "farm".into())]
        );
        assert!(q.items.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_batch_of_250_takes_three_writes() {
        let readings: Vec<Value> = (0..250)
            .map(|i| json!({"ts": NOW - i, "temp": 1.5}))
            .collect();
        let (sink, q) = (FakeSink::default(), FakeQuarantine::default());
        let counts = route(event(json!({ "readings": readings })), &sink, &q)
            .await
            .unwrap();
        assert_eq!(counts.accepted, 250);
        let sizes: Vec<usize> = sink.calls.lock().unwrap().iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![100, 100, 50]);
    }

    #[tokio::test]
    async fn bad_readings_are_quarantined_with_reason_and_index() {
        let (sink, q) = (FakeSink::default(), FakeQuarantine::default());
        let counts = route(
            event(json!({"readings": [
                {"ts": NOW + 3_600_000, "temp": 1.0},
                {"ts": NOW, "temp": 2.0},
                {"ts": NOW, "bad name": 3.0},
                {"ts": NOW, "temp": 666.0},
                {"ts": NOW, "temp": [1]},
            ]})),
            &sink,
            &q,
        )
        .await
        .unwrap();
        assert_eq!(counts.received, 5);
        assert_eq!(counts.accepted, 1);
        assert_eq!(
            counts.quarantined,
            BTreeMap::from([
                ("bad_measure_name", 1),
                ("timestamp_in_future", 1),
                ("timestream_rejected", 1),
                ("undecodable", 1)
            ])
        );
        // One quarantine object for the message, listing its refused readings in order.
        let items = q.items.lock().unwrap();
        assert_eq!(items.len(), 1);
        let by_index: Vec<_> = items[0]
            .refused
            .iter()
            .map(|r| (r.reading_index.unwrap(), r.reason_code))
            .collect();
        assert_eq!(
            by_index,
            vec![
                (0, "timestamp_in_future"),
                (2, "bad_measure_name"),
                (3, "timestream_rejected"),
                (4, "undecodable")
            ]
        );
        assert_eq!(items[0].thing.as_deref(), Some("dev-1"));
        assert_eq!(items[0].readings, 5);
        // The original message, exactly as delivered, travels with the item.
        let original: Value = serde_json::from_slice(&items[0].original).unwrap();
        assert_eq!(original["readings"].as_array().unwrap().len(), 5);
        let body: Value = serde_json::from_slice(&items[0].body()).unwrap();
        assert_eq!(body["refused_readings"], 4);
        assert_eq!(
            body["reason_codes"],
            json!([
                "bad_measure_name",
                "timestamp_in_future",
                "timestream_rejected",
                "undecodable"
            ])
        );
        assert_eq!(body["refused"][1]["reading"], 2);
        let message: Value = serde_json::from_str(body["message"].as_str().unwrap()).unwrap();
        assert_eq!(message, original);
    }

    #[tokio::test]
    async fn a_message_without_a_topic_is_quarantined_whole() {
        let (sink, q) = (FakeSink::default(), FakeQuarantine::default());
        let counts = route(json!({"temp": 1.0}), &sink, &q).await.unwrap();
        assert_eq!(counts.received, 1);
        assert_eq!(counts.quarantined, BTreeMap::from([("bad_envelope", 1)]));
        let items = q.items.lock().unwrap();
        assert_eq!(items[0].refused[0].reading_index, None);
        assert_eq!(items[0].original, br#"{"temp":1.0}"#);
        // No receive time: filed under the invocation's time, not 1970.
        assert_eq!(items[0].filed_at_ms, NOW);
    }

    #[tokio::test]
    async fn an_app_outside_the_closed_set_is_refused_whole() {
        let apps: TelemetryApps = "farm".parse().unwrap();
        let rules = Rules {
            apps: &apps,
            ..RULES
        };
        let (sink, q, archive) = (
            FakeSink::default(),
            FakeQuarantine::default(),
            FakeArchive::default(),
        );
        let mut invented = json!({"readings": [{"ts": NOW - 1000, "temp": 1.0}, {"temp": 2.0}]});
        invented["_topic"] = json!("dt/new-app-7/dev-1/telemetry");
        invented["_received_at"] = json!(NOW);
        let counts = route_rules(invented, &rules, &sink, &q, &archive)
            .await
            .unwrap();
        assert_eq!((counts.received, counts.accepted), (2, 0));
        assert_eq!(counts.quarantined, BTreeMap::from([("unknown_app", 2)]));
        assert!(
            q.items.lock().unwrap()[0].refused[0]
                .reason
                .contains("new-app-7")
        );
        let known = route_rules(
            event(json!({"ts": NOW - 1000, "temp": 1.0})),
            &rules,
            &sink,
            &q,
            &archive,
        )
        .await
        .unwrap();
        assert_eq!(known.accepted, 1);
    }

    #[tokio::test]
    async fn binary_payloads_without_a_schema_are_quarantined() {
        let (sink, q) = (FakeSink::default(), FakeQuarantine::default());
        let e = binary_event("dt/farm/dev-1/telemetry/bin", &[0, 1, 2]);
        let counts = route(e, &sink, &q).await.unwrap();
        assert_eq!(
            counts.quarantined,
            BTreeMap::from([("unknown_binary_schema", 1)])
        );
    }

    #[tokio::test]
    async fn oversized_messages_are_quarantined() {
        let (sink, q) = (FakeSink::default(), FakeQuarantine::default());
        let counts = route(
            event(json!({"note": "x".repeat(MAX_PAYLOAD_BYTES + 2048)})),
            &sink,
            &q,
        )
        .await
        .unwrap();
        assert_eq!(
            counts.quarantined,
            BTreeMap::from([("payload_too_large", 1)])
        );
    }

    #[tokio::test]
    async fn a_failing_store_returns_the_unwritten_readings_for_retry() {
        let readings: Vec<Value> = (0..250)
            .map(|i| json!({"ts": NOW - i, "temp": 1.5}))
            .collect();
        let sink = FakeSink {
            fail_call: Some(1),
            ..FakeSink::default()
        };
        let q = FakeQuarantine::default();
        let retry = route(event(json!({ "readings": readings })), &sink, &q)
            .await
            .unwrap_err();
        // The first 100 were written, but the message comes back whole (the rewrite is an
        // idempotent upsert), so nothing of it counts as accepted yet.
        assert_eq!(sink.calls.lock().unwrap().len(), 1);
        assert_eq!(retry.counts.accepted, 0);
        assert_eq!(retry.counts.retried, 250);
        assert!(retry.counts.balanced());
        assert!(
            retry
                .to_string()
                .contains("250 of 250 readings returned for retry"),
            "{retry}"
        );
    }

    #[tokio::test]
    async fn a_failing_quarantine_returns_the_message_for_retry() {
        let sink = FakeSink::default();
        let q = FakeQuarantine {
            fail_after: Some(0),
            ..FakeQuarantine::default()
        };
        let retry = route(
            event(json!({"readings": [{"a b": 1}, {"c d": 2}, {"temp": 3.0}]})),
            &sink,
            &q,
        )
        .await
        .unwrap_err();
        // Counted once, by the invocation that settles it: all of it is returned here.
        assert_eq!(retry.counts.accepted, 0);
        assert_eq!(retry.counts.quarantined_total(), 0);
        assert_eq!(retry.counts.retried, 3);
    }

    #[tokio::test]
    async fn accepted_readings_are_archived_once_per_invocation() {
        let (sink, q, archive) = (
            FakeSink::default(),
            FakeQuarantine::default(),
            FakeArchive::default(),
        );
        let counts = route_with(
            event(json!({"readings": [{"temp": 1.0}, {"temp": 666.0}, {"a b": 1}]})),
            &sink,
            &q,
            &archive,
        )
        .await
        .unwrap();
        assert_eq!(counts.accepted, 1);
        let objects = archive.objects.lock().unwrap();
        assert_eq!(objects.len(), 1);
        assert_eq!(
            objects[0].0,
            "telemetry/year=2025/month=11/day=25/hour=10/req-1.parquet"
        );
        // Only the reading Timestream took is archived.
        let reader = parquet::file::reader::SerializedFileReader::new(bytes::Bytes::from(
            objects[0].1.clone(),
        ))
        .unwrap();
        use parquet::file::reader::FileReader as _;
        assert_eq!(reader.metadata().file_metadata().num_rows(), 1);
    }

    #[tokio::test]
    async fn a_failing_archive_returns_the_message_for_retry() {
        let archive = FakeArchive {
            fail: true,
            ..FakeArchive::default()
        };
        let retry = route_with(
            event(json!({"readings": [{"temp": 1.0}, {"a b": 1}]})),
            &FakeSink::default(),
            &FakeQuarantine::default(),
            &archive,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&retry.cause, RetryCause::Store(e) if e.operation == "PutObject"),
            "{}",
            retry.cause
        );
        assert_eq!(
            (
                retry.counts.accepted,
                retry.counts.quarantined_total(),
                retry.counts.retried
            ),
            (0, 0, 2)
        );
        // Nothing to archive, nothing to fail.
        let counts = route_with(
            event(json!({"a b": 1})),
            &FakeSink::default(),
            &FakeQuarantine::default(),
            &archive,
        )
        .await
        .unwrap();
        assert_eq!(counts.quarantined_total(), 1);
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write as _;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn zlib(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write as _;
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn packed(time: i64, values: &[f32]) -> Vec<u8> {
        let mut out = (time as u64).to_be_bytes().to_vec();
        for v in values {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out
    }

    fn binary_event(topic: &str, bytes: &[u8]) -> Value {
        use base64::Engine as _;
        json!({
            "_payload": base64::engine::general_purpose::STANDARD.encode(bytes),
            "_topic": topic,
            "_received_at": NOW,
            "_client_id": "dev-7",
        })
    }

    static TH_V2: std::sync::LazyLock<PackedSchemas> =
        std::sync::LazyLock::new(|| "th-v2=temp,hum".parse().unwrap());

    fn packed_rules() -> Rules<'static> {
        Rules {
            schemas: &TH_V2,
            ..RULES
        }
    }

    /// Issue 11, case 1: two gzip members, two packed th-v2 records each. Every reading is
    /// counted and stored, in order.
    #[tokio::test]
    async fn every_gzip_member_of_a_payload_is_stored() {
        let mut first = packed(NOW - 4000, &[21.5, 40.0]);
        first.extend(packed(NOW - 3000, &[21.75, 41.0]));
        let mut second = packed(NOW - 2000, &[22.0, 42.0]);
        second.extend(packed(NOW - 1000, &[22.25, 43.0]));
        let mut payload = gzip(&first);
        payload.extend(gzip(&second));
        let fakes = crate::memory::Fakes::default();
        let edges = fakes.edges();
        let counts = route_rule_event(
            binary_event("dt/greenhouse/dev-7/telemetry/th-v2", &payload).into(),
            &packed_rules(),
            &edges,
            "req-gz",
        )
        .await
        .unwrap();
        assert_eq!((counts.received, counts.accepted), (4, 4));
        {
            let calls = fakes.sink.calls.lock().unwrap();
            let times: Vec<i64> = calls[0].iter().map(|r| r.time_ms).collect();
            assert_eq!(times, vec![NOW - 4000, NOW - 3000, NOW - 2000, NOW - 1000]);
            assert_eq!(
                calls[0][3].measures,
                vec![
                    ("temp".to_owned(), MeasureValue::Double(22.25)),
                    ("hum".to_owned(), MeasureValue::Double(43.0))
                ]
            );
        }
        // A stray byte after the last member: the whole message is quarantined, with the reason.
        payload.push(0);
        let q = FakeQuarantine::default();
        let counts = route_rules(
            binary_event("dt/greenhouse/dev-7/telemetry/th-v2", &payload),
            &packed_rules(),
            &FakeSink::default(),
            &q,
            &FakeArchive::default(),
        )
        .await
        .unwrap();
        assert_eq!(counts.quarantined, BTreeMap::from([("undecodable", 1)]));
        let items = q.items.lock().unwrap();
        assert!(
            items[0].refused[0]
                .reason
                .contains("1 bytes after the last gzip member"),
            "{:?}",
            items[0].refused
        );
    }

    /// A request Timestream finds invalid as a whole is halved until the bad record stands
    /// alone: it alone is refused, its neighbours are written.
    #[tokio::test]
    async fn an_invalid_record_never_fails_its_neighbours() {
        let sink = FakeSink {
            invalid: Some(777.0),
            ..FakeSink::default()
        };
        let q = FakeQuarantine::default();
        let readings: Vec<Value> = (0..7)
            .map(|i| json!({"ts": NOW - i, "temp": if i == 4 { 777.0 } else { 1.5 }}))
            .collect();
        let counts = route(event(json!({ "readings": readings })), &sink, &q)
            .await
            .unwrap();
        assert_eq!(counts.accepted, 6);
        assert_eq!(
            counts.quarantined,
            BTreeMap::from([("timestream_rejected", 1)])
        );
        let items = q.items.lock().unwrap();
        assert_eq!(items[0].refused[0].reading_index, Some(4));
        assert!(items[0].refused[0].reason.contains("validation error"));
        let written: usize = sink.calls.lock().unwrap().iter().map(Vec::len).sum();
        assert_eq!(written, 6);
    }

    /// A direct event over the container budget reaches the router (the Lambda event itself is
    /// read unbounded) and is quarantined with the reason, not lost with the invocation.
    #[tokio::test]
    async fn a_direct_event_over_the_container_budget_is_quarantined() {
        let arrays = vec!["[]"; shoal_core::telemetry::json::MAX_CONTAINERS + 10].join(",");
        let text = format!(
            r#"{{"x": [{arrays}], "_topic": "dt/farm/dev-1/telemetry", "_received_at": {NOW}}}"#
        );
        let event: CheckedJson = serde_json::from_str(&text).unwrap();
        let q = FakeQuarantine::default();
        let edges = Edges {
            sink: &FakeSink::default(),
            quarantine: &q,
            archive: &FakeArchive::default(),
        };
        let counts = route_rule_event(event, &RULES, &edges, "req-c")
            .await
            .unwrap();
        assert_eq!(counts.quarantined, BTreeMap::from([("bad_envelope", 1)]));
        assert!(
            q.items.lock().unwrap()[0].refused[0]
                .reason
                .contains("objects and arrays")
        );
    }

    /// Every record of a request refused alone means the request is what Timestream refuses:
    /// the messages go back for retry instead of quarantining good readings.
    #[tokio::test]
    async fn a_validation_error_on_every_record_is_retried_not_quarantined() {
        let sink = FakeSink {
            invalid: Some(777.0),
            ..FakeSink::default()
        };
        let retry = route(
            event(
                json!({"readings": [{"ts": NOW - 1, "temp": 777.0}, {"ts": NOW, "temp": 777.0}]}),
            ),
            &sink,
            &FakeQuarantine::default(),
        )
        .await
        .unwrap_err();
        assert_eq!(retry.counts.retried, 2);
        assert!(
            matches!(&retry.cause, RetryCause::Store(e) if e.is_code("ValidationException")),
            "{}",
            retry.cause
        );
    }

    #[test]
    fn the_deadline_reserve_fits_the_time_the_invocation_has() {
        let now = now_ms();
        let long = LambdaDeadline::starting_now(now + 30_000, 3_000);
        assert_eq!(long.reserve_ms, 3_000);
        assert!(!long.expired());
        // A 3 s timeout (Lambda's default) keeps back 750 ms, not all of it.
        let short = LambdaDeadline::starting_now(now + 3_000, 3_000);
        assert!((700..=750).contains(&short.reserve_ms), "{short:?}");
        assert!(!short.expired());
        // Already past at the start: not Lambda's own deadline; work goes on.
        assert!(!LambdaDeadline::starting_now(now - 60_000, 3_000).expired());
        let near = LambdaDeadline {
            deadline_ms: now + 1_000,
            reserve_ms: 3_000,
        };
        assert!(near.expired());
    }

    /// A `RejectedRecords` answer naming a record outside the request cannot be trusted: the
    /// message goes back for retry rather than be counted on a guess.
    #[tokio::test]
    async fn rejected_record_indexes_outside_the_request_mean_retry() {
        let sink = FakeSink {
            index_off_by: 5,
            ..FakeSink::default()
        };
        let retry = route(
            event(json!({"readings": [{"temp": 1.5}, {"temp": 666.0}]})),
            &sink,
            &FakeQuarantine::default(),
        )
        .await
        .unwrap_err();
        assert_eq!((retry.counts.accepted, retry.counts.retried), (0, 2));
        assert!(
            matches!(&retry.cause, RetryCause::Store(e) if e.message.contains("RejectedRecords")),
            "{}",
            retry.cause
        );
    }

    /// Issue 11, case 2: `21.5` then `22.0` (which SQL 2016-03-23 delivers as `22`): one type.
    #[tokio::test]
    async fn a_measure_keeps_its_type_however_the_number_is_spelled() {
        let fakes = crate::memory::Fakes::default();
        let edges = fakes.edges();
        for temp in [json!(21.5), json!(22)] {
            route_rule_event(event(json!({"temp": temp})).into(), &RULES, &edges, "req-t")
                .await
                .unwrap();
        }
        let calls = fakes.sink.calls.lock().unwrap();
        let types: Vec<&str> = calls
            .iter()
            .map(|c| c[0].measures[0].1.type_name())
            .collect();
        assert_eq!(types, vec!["DOUBLE", "DOUBLE"]);
        assert_eq!(calls[1][0].measures[0].1, MeasureValue::Double(22.0));
    }

    /// Issue 11, case 4: late data goes to the magnetic store when the table takes it.
    #[tokio::test]
    async fn late_readings_are_written_when_magnetic_writes_are_on() {
        let day = 86_400_000;
        let rules = Rules {
            limits: Limits {
                magnetic_retention_ms: Some(365 * day),
                ..RULES.limits
            },
            ..RULES
        };
        let (sink, q) = (FakeSink::default(), FakeQuarantine::default());
        let counts = route_rules(
            event(json!({"readings": [
                {"ts": NOW - 3 * day, "temp": 1.5},
                {"ts": NOW - 1000, "temp": 2.5},
                {"ts": NOW - 366 * day, "temp": 3.5},
            ]})),
            &rules,
            &sink,
            &q,
            &FakeArchive::default(),
        )
        .await
        .unwrap();
        assert_eq!(
            (counts.received, counts.accepted, counts.accepted_late),
            (3, 2, 1)
        );
        assert_eq!(
            counts.quarantined,
            BTreeMap::from([("timestamp_too_old", 1)])
        );
        // Without magnetic-store writes, the 3-day-old reading is quarantined too.
        let counts = route(
            event(json!({"readings": [{"ts": NOW - 3 * day, "temp": 1.5}]})),
            &FakeSink::default(),
            &FakeQuarantine::default(),
        )
        .await
        .unwrap();
        assert_eq!(
            counts.quarantined,
            BTreeMap::from([("timestamp_too_old", 1)])
        );
    }

    /// Issue 11, case 5a: 1.5 KB of gzip inflating to an interval series of 524,258 readings is
    /// refused whole, before any reading is built, and counted as what it held.
    #[tokio::test]
    async fn a_small_message_holding_half_a_million_readings_is_quarantined_whole() {
        let mut series = br#"{"interval":0.001,"measure":"t","values":["#.to_vec();
        let mut values = 1;
        while series.len() < 1024 * 1024 - 8 {
            series.extend_from_slice(b"1,");
            values += 1;
        }
        series.extend_from_slice(b"1]}");
        let body = gzip(&series);
        assert!(body.len() < 2048, "{} bytes", body.len());
        let (sink, q, archive) = (
            FakeSink::default(),
            FakeQuarantine::default(),
            FakeArchive::default(),
        );
        let counts = route_rules(
            binary_event("dt/greenhouse/dev-7/telemetry/bin", &body),
            &RULES,
            &sink,
            &q,
            &archive,
        )
        .await
        .unwrap();
        assert_eq!(counts.received, values);
        assert_eq!(
            counts.quarantined,
            BTreeMap::from([("too_many_readings", values)])
        );
        assert!(counts.balanced());
        assert!(sink.calls.lock().unwrap().is_empty());
        let items = q.items.lock().unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].readings, values);
    }

    /// Issue 11, case 5b: 8,192 refused readings make one quarantine object whose size grows
    /// with the message, not with the square of it.
    #[tokio::test]
    async fn many_refused_readings_make_one_quarantine_object() {
        // 16 KB: an interval series of 8,192 values stamped ten days ahead.
        let values = vec![json!(1); 8192];
        let ahead = NOW + 10 * 86_400_000;
        let message = event(json!({"ts": ahead, "interval": 1, "measure": "t", "values": values}));
        assert!(serde_json::to_vec(&message).unwrap().len() < 17 * 1024);
        let q = FakeQuarantine::default();
        let counts = route(message, &FakeSink::default(), &q).await.unwrap();
        assert_eq!(
            counts.quarantined,
            BTreeMap::from([("timestamp_in_future", 8192)])
        );
        let items = q.items.lock().unwrap();
        assert_eq!(items.len(), 1);
        let body = items[0].body();
        let per_refusal = (body.len() - items[0].original.len()) / 8192;
        assert!(per_refusal < 200, "{per_refusal} bytes per refusal");
    }

    #[tokio::test]
    async fn duplicate_keys_refuse_the_message_with_the_key_named() {
        let q = FakeQuarantine::default();
        let edges = Edges {
            sink: &FakeSink::default(),
            quarantine: &q,
            archive: &FakeArchive::default(),
        };
        let raw = br#"{"temp": 21.5, "temp": 99.0, "_topic": "dt/farm/dev-1/telemetry", "_received_at": 1764064800000}"#;
        let outcome = route_batch(
            vec![Incoming::from_bytes("m1".into(), raw.to_vec())],
            &RULES,
            &edges,
            "req-d",
            FailurePolicy::Independent,
        )
        .await;
        assert_eq!(
            outcome.counts.quarantined,
            BTreeMap::from([("duplicate_key", 1)])
        );
        let items = q.items.lock().unwrap();
        assert!(
            items[0].refused[0].reason.contains("\"temp\""),
            "{:?}",
            items[0]
        );
        assert_eq!(items[0].original, raw);
    }

    /// Expires after `after` checks: stands for an invocation running out of time.
    struct ExpiresAfter {
        after: usize,
        checks: std::sync::atomic::AtomicUsize,
    }

    impl Deadline for ExpiresAfter {
        fn expired(&self) -> bool {
            self.checks
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                >= self.after
        }
    }

    fn messages(n: usize) -> Vec<Incoming> {
        (0..n)
            .map(|i| {
                let body = event(json!({"ts": NOW - i as i64, "temp": 1.5}));
                Incoming::from_bytes(format!("m{i}"), serde_json::to_vec(&body).unwrap())
            })
            .collect()
    }

    #[tokio::test]
    async fn messages_not_reached_before_the_deadline_go_back_for_retry() {
        for policy in [FailurePolicy::Independent, FailurePolicy::Ordered] {
            // Three messages are decoded, then time runs out: the round they are in is never
            // written, and nothing after it is started.
            let deadline = ExpiresAfter {
                after: 3,
                checks: 0.into(),
            };
            let rules = Rules {
                apps: &TelemetryApps::ANY,
                deadline: &deadline,
                ..RULES
            };
            let fakes = crate::memory::Fakes::default();
            let outcome =
                route_batch(messages(5), &rules, &fakes.edges(), "req-late", policy).await;
            assert_eq!(
                outcome.failed,
                vec!["m0", "m1", "m2", "m3", "m4"],
                "{policy:?}"
            );
            assert_eq!((outcome.counts.received, outcome.counts.retried), (5, 5));
            assert!(matches!(outcome.cause, Some(RetryCause::Deadline)));
        }
        // With time for everything, nothing goes back.
        let fakes = crate::memory::Fakes::default();
        let outcome = route_batch(
            messages(5),
            &RULES,
            &fakes.edges(),
            "req-ok",
            FailurePolicy::Independent,
        )
        .await;
        assert!(outcome.failed.is_empty());
        assert_eq!(outcome.counts.accepted, 5);
    }

    #[tokio::test]
    async fn a_large_batch_is_settled_in_rounds_with_bounded_memory() {
        // 5 messages of 10,000 readings (interval series, 40 KB each): rounds of 20,000, one
        // archive object each.
        let incoming: Vec<Incoming> = (0..5)
            .map(|m| {
                let values = vec![json!(1.5); 10_000];
                let first = NOW - 100_000 + m * 10_000;
                let body = event(
                    json!({"ts": first, "interval": 0.001, "measure": "temp", "values": values}),
                );
                Incoming::from_bytes(format!("m{m}"), serde_json::to_vec(&body).unwrap())
            })
            .collect();
        let fakes = crate::memory::Fakes::default();
        let outcome = route_batch(
            incoming,
            &RULES,
            &fakes.edges(),
            "req-big",
            FailurePolicy::Ordered,
        )
        .await;
        assert_eq!(outcome.counts.accepted, 50_000);
        let keys: Vec<String> = fakes
            .archive
            .objects
            .lock()
            .unwrap()
            .iter()
            .map(|(k, _)| k.rsplit('/').next().unwrap().to_owned())
            .collect();
        assert_eq!(
            keys,
            vec!["req-big.parquet", "req-big-1.parquet", "req-big-2.parquet"]
        );
        assert_eq!(fakes.sink.calls.lock().unwrap().len(), 500);
    }

    #[tokio::test]
    async fn refused_readings_fill_rounds_too() {
        // 5 messages of 10,000 readings, all stamped in the future: nothing is written, and still
        // the quarantine objects go out round by round (20,000 refusals a round).
        let incoming: Vec<Incoming> = (0..5)
            .map(|m| {
                let values = vec![json!(1.5); 10_000];
                let body = event(
                    json!({"ts": NOW + 86_400_000, "interval": 1, "measure": "temp", "values": values}),
                );
                Incoming::from_bytes(format!("m{m}"), serde_json::to_vec(&body).unwrap())
            })
            .collect();
        let q = FakeQuarantine::default();
        let edges = Edges {
            sink: &FakeSink::default(),
            quarantine: &q,
            archive: &FakeArchive::default(),
        };
        // Checks: one per message, one per quarantine put. Messages 0–1 fill round 1 (checks
        // 0–3 with its two puts), 2–3 round 2 (4–7); the deadline comes at message 4's.
        let deadline = ExpiresAfter {
            after: 8,
            checks: 0.into(),
        };
        let rules = Rules {
            apps: &TelemetryApps::ANY,
            deadline: &deadline,
            ..RULES
        };
        let outcome = route_batch(incoming, &rules, &edges, "req-r", FailurePolicy::Ordered).await;
        assert_eq!(q.items.lock().unwrap().len(), 4, "{:?}", outcome.failed);
        assert_eq!(outcome.failed, vec!["m4"]);
        assert_eq!(outcome.counts.quarantined_total(), 40_000);
        assert!(outcome.counts.balanced());
    }

    /// How one format carries a list of readings; `true` marks a reading the router must refuse.
    #[derive(Debug, Clone, Copy)]
    enum Format {
        JsonBatch,
        JsonSeries,
        CborSequence,
        Packed,
        GzipMembers(usize),
        ZlibJson,
    }

    fn encode(format: Format, readings: &[(i64, f32, bool)]) -> (Value, usize) {
        let json_reading = |(t, v, bad): &(i64, f32, bool)| {
            if *bad {
                json!({"ts": NOW - t, "bad name": v})
            } else {
                json!({"ts": NOW - t, "temp": v})
            }
        };
        let batch = || {
            serde_json::to_vec(
                &json!({"readings": readings.iter().map(json_reading).collect::<Vec<_>>()}),
            )
            .unwrap()
        };
        let packed_bytes = || {
            readings
                .iter()
                .flat_map(|(t, v, bad)| packed(NOW - t, &[*v, if *bad { f32::NAN } else { 1.0 }]))
                .collect::<Vec<u8>>()
        };
        let topic = "dt/farm/dev-1/telemetry/th-v2";
        let event_of = |bytes: &[u8]| binary_event(topic, bytes);
        let e = match format {
            Format::JsonBatch => {
                event(json!({"readings": readings.iter().map(json_reading).collect::<Vec<_>>()}))
            }
            Format::JsonSeries => event(json!({
                "ts": NOW - 60_000,
                "interval": 1,
                "measure": "temp",
                "values": readings.iter().map(|(_, v, bad)| if *bad { Value::Null } else { json!(v) }).collect::<Vec<_>>(),
            })),
            Format::CborSequence => {
                let mut out = Vec::new();
                for (t, v, bad) in readings {
                    use ciborium::Value as C;
                    let name = if *bad { "bad name" } else { "temp" };
                    let item = C::Map(vec![
                        (C::Text("ts".into()), C::Integer((NOW - t).into())),
                        (C::Text(name.into()), C::Float(f64::from(*v))),
                    ]);
                    ciborium::into_writer(&item, &mut out).unwrap();
                }
                event_of(&out)
            }
            Format::Packed => event_of(&packed_bytes()),
            Format::GzipMembers(split) => {
                let bytes = packed_bytes();
                let at = split.min(bytes.len());
                let mut out = gzip(&bytes[..at]);
                out.extend(gzip(&bytes[at..]));
                event_of(&out)
            }
            Format::ZlibJson => event_of(&zlib(&batch())),
        };
        (e, readings.iter().filter(|r| r.2).count())
    }

    fn any_format() -> impl Strategy<Value = Format> {
        prop_oneof![
            Just(Format::JsonBatch),
            Just(Format::JsonSeries),
            Just(Format::CborSequence),
            Just(Format::Packed),
            (0usize..400).prop_map(Format::GzipMembers),
            Just(Format::ZlibJson),
        ]
    }

    proptest! {
        /// For every format: the readings a payload holds = accepted + quarantined (+ returned
        /// for retry), per message, whatever the stores do.
        #[test]
        fn every_reading_of_every_format_is_counted_once(
            format in any_format(),
            readings in prop::collection::vec((0i64..50_000, -100f32..100f32, prop::bool::weighted(0.2)), 1..25),
            fail_call in prop::option::of(0usize..2),
            quarantine_down in any::<bool>(),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let (e, bad) = encode(format, &readings);
            let sink = FakeSink { fail_call, ..FakeSink::default() };
            let q = FakeQuarantine { fail_after: quarantine_down.then_some(0), ..FakeQuarantine::default() };
            let counts = match rt.block_on(route_rules(e, &packed_rules(), &sink, &q, &FakeArchive::default())) {
                Ok(counts) => {
                    prop_assert_eq!(counts.accepted, readings.len() - bad);
                    prop_assert_eq!(counts.quarantined_total(), bad);
                    counts
                }
                Err(retry) => {
                    prop_assert_eq!(retry.counts.retried, readings.len());
                    retry.counts
                }
            };
            prop_assert_eq!(counts.received, readings.len(), "{:?}", format);
            prop_assert!(counts.balanced());
        }
    }

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (-1e6..1e6f64).prop_map(Value::from),
            "[a-z _]{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 40, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::btree_map("[a-z_ ]{1,6}|ts|readings", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arbitrary_event() -> impl Strategy<Value = Value> {
        (arbitrary_json(), any::<bool>(), any::<bool>()).prop_map(|(payload, topic, batch)| {
            let mut payload = if batch {
                json!({"readings": [payload.clone(), payload, {"temp": 1.0}]})
            } else if payload.is_object() {
                payload
            } else {
                json!({"value": payload})
            };
            if topic {
                payload["_topic"] = json!("dt/farm/dev-9/telemetry");
                payload["_received_at"] = json!(NOW);
            }
            payload
        })
    }

    proptest! {
        #[test]
        fn nothing_is_ever_lost(
            e in arbitrary_event(),
            fail_call in prop::option::of(0usize..2),
            fail_after in prop::option::of(0usize..3),
            archive_down in any::<bool>(),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let sink = FakeSink { fail_call, ..FakeSink::default() };
            let q = FakeQuarantine { fail_after, ..FakeQuarantine::default() };
            let archive = FakeArchive { fail: archive_down, ..FakeArchive::default() };
            let counts = match rt.block_on(route_with(e, &sink, &q, &archive)) {
                Ok(counts) => {
                    prop_assert_eq!(counts.retried, 0);
                    // Accepted readings are archived, in exactly one object.
                    prop_assert_eq!(archive.objects.lock().unwrap().len(), usize::from(counts.accepted > 0));
                    counts
                }
                Err(retry) => {
                    prop_assert_eq!(retry.counts.accepted, 0);
                    retry.counts
                }
            };
            prop_assert!(counts.received >= 1);
            prop_assert!(counts.balanced(), "{:?}", counts);
            // Quarantined means stored; accepted means written and not refused.
            let stored: usize = q.items.lock().unwrap().iter().map(QuarantineItem::refused_readings).sum();
            prop_assert!(stored >= counts.quarantined_total());
            let written: usize = sink.calls.lock().unwrap().iter().map(Vec::len).sum();
            let refused = counts.quarantined.get("timestream_rejected").copied().unwrap_or(0);
            prop_assert!(counts.accepted <= written);
            prop_assert!(counts.accepted + refused <= written);
        }
    }
}
