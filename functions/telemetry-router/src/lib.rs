//! The telemetry router: AWS IoT rule (directly, or batched through SQS or Kinesis) → Timestream, with a quarantine in S3 for everything that
//! cannot be stored. `router` is the logic over two small traits, `edges` implements them with the
//! AWS SDK, `handler` is the Lambda entry point and `main.rs` wires them.

pub mod batch;
pub mod edges;
pub mod handler;
/// In-memory edges for unit tests and the `router_path` bench (feature `test-util`); never in
/// the Lambda.
#[cfg(any(test, feature = "test-util"))]
pub mod memory;
pub mod router;

/// The allocator of every binary built on this crate (the Lambda function, its benchmarks and
/// tests): mimalloc 2. The router allocates for every reading (names, values, the SDK's records),
/// and glibc's malloc and free were a quarter of its instructions; with mimalloc the router path
/// runs about 1.5× faster (BENCHMARKS.md). mimalloc 3 measured slower than glibc here (session 5),
/// hence the `v2` feature.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
