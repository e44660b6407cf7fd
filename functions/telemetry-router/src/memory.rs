//! In-memory stand-ins for the router's edges: recording fakes for unit tests, and lean ones that
//! do the real edges' CPU work (the SDK request, the quarantine body) and keep nothing, for the
//! `router_path` bench.

use std::hint::black_box;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// Builds the SDK request of every batch (what the real sink sends), then drops it.
#[derive(Default)]
pub struct SdkSink {
    /// Records built so far.
    pub records: AtomicUsize,
}

impl TelemetrySink for SdkSink {
    async fn write(&self, batch: &[TimestreamRecord]) -> Result<Vec<RejectedRecord>, EdgeError> {
        let (common, records) = crate::edges::to_sdk(batch)?;
        self.records.fetch_add(records.len(), Ordering::Relaxed);
        black_box((common, records));
        Ok(Vec::new())
    }
}

/// Builds each object's body (what the real quarantine uploads), then drops it.
#[derive(Default)]
pub struct BodyQuarantine {
    /// Body bytes built so far.
    pub bytes: AtomicUsize,
}

impl QuarantineStore for BodyQuarantine {
    async fn put(&self, item: &QuarantineItem) -> Result<(), EdgeError> {
        self.bytes.fetch_add(item.body().len(), Ordering::Relaxed);
        Ok(())
    }
}

/// Takes each Parquet object (what the real archive uploads), counts its bytes, then drops it.
#[derive(Default)]
pub struct SizeArchive {
    /// Parquet bytes received so far.
    pub bytes: AtomicUsize,
}

impl ArchiveStore for SizeArchive {
    async fn put(&self, _key: &str, parquet: Vec<u8>) -> Result<(), EdgeError> {
        self.bytes.fetch_add(parquet.len(), Ordering::Relaxed);
        Ok(())
    }
}
