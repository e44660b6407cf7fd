//! In-memory stand-ins for the router's edges, for unit tests.

use std::sync::Mutex;

use shoal_core::edge::EdgeError;
use shoal_core::telemetry::TimestreamRecord;

use crate::router::{
    ArchiveStore, Edges, QuarantineItem, QuarantineStore, RejectedRecord, TelemetrySink,
};

/// What a store that is down answers: no answer at all.
pub fn down(service: &'static str, operation: &'static str) -> EdgeError {
    EdgeError::unreachable(service, operation, "connection refused")
}

/// Records every successful call; refuses records whose `temp` is 666; fails the attempt
/// numbered `fail_call` (counting from 0), and only that one; answers a request holding a
/// measure equal to `invalid` with a `ValidationException` (as Timestream does for a request it
/// finds invalid as a whole); with `index_off_by` set, names refused records that many places
/// further on.
#[derive(Default)]
pub struct FakeSink {
    pub calls: Mutex<Vec<Vec<TimestreamRecord>>>,
    pub fail_call: Option<usize>,
    pub attempts: Mutex<usize>,
    pub invalid: Option<f64>,
    pub index_off_by: usize,
}

impl TelemetrySink for FakeSink {
    async fn write(&self, batch: &[TimestreamRecord]) -> Result<Vec<RejectedRecord>, EdgeError> {
        let mut calls = self.calls.lock().unwrap();
        assert!(batch.len() <= 100, "WriteRecords takes at most 100 records");
        let mut attempts = self.attempts.lock().unwrap();
        *attempts += 1;
        if self.fail_call == Some(*attempts - 1) {
            return Err(down("timestream-write", "WriteRecords"));
        }
        if let Some(bad) = self.invalid
            && batch.iter().any(|r| {
                r.measures
                    .iter()
                    .any(|(_, v)| *v == shoal_core::telemetry::MeasureValue::Double(bad))
            })
        {
            return Err(EdgeError::service(
                "timestream-write",
                "WriteRecords",
                "ValidationException",
                "1 validation error detected",
            ));
        }
        calls.push(batch.to_vec());
        Ok(batch
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                r.measures
                    .iter()
                    .any(|(_, v)| *v == shoal_core::telemetry::MeasureValue::Double(666.0))
            })
            .map(|(index, _)| RejectedRecord {
                index: index + self.index_off_by,
                reason: "Measure value out of range".into(),
            })
            .collect())
    }
}

#[derive(Default)]
pub struct FakeQuarantine {
    pub items: Mutex<Vec<QuarantineItem>>,
    pub fail_after: Option<usize>,
}

impl QuarantineStore for FakeQuarantine {
    async fn put(&self, item: &QuarantineItem) -> Result<(), EdgeError> {
        let mut items = self.items.lock().unwrap();
        if self.fail_after == Some(items.len()) {
            return Err(down("s3", "PutObject"));
        }
        items.push(item.clone());
        Ok(())
    }
}

/// Keeps every archive object; fails every put when `fail` is set.
#[derive(Default)]
pub struct FakeArchive {
    pub objects: Mutex<Vec<(String, Vec<u8>)>>,
    pub fail: bool,
}

impl ArchiveStore for FakeArchive {
    async fn put(&self, key: &str, parquet: Vec<u8>) -> Result<(), EdgeError> {
        if self.fail {
            return Err(down("s3", "PutObject"));
        }
        self.objects.lock().unwrap().push((key.to_owned(), parquet));
        Ok(())
    }
}

/// All three fakes, to hand to the router as its edges.
#[derive(Default)]
pub struct Fakes {
    pub sink: FakeSink,
    pub quarantine: FakeQuarantine,
    pub archive: FakeArchive,
}

impl Fakes {
    pub fn edges(&self) -> Edges<'_, FakeSink, FakeQuarantine, FakeArchive> {
        Edges {
            sink: &self.sink,
            quarantine: &self.quarantine,
            archive: &self.archive,
        }
    }
}
