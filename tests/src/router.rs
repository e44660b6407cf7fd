//! The telemetry router's real edges on an endpoint (the local stack's, or one that is down):
//! Timestream, the quarantine and the archive of a [`RouterConfig`].

use shoal_aws::client::ClientFactory;
use telemetry_router::edges::{S3Archive, S3Quarantine, TimestreamSink};
use telemetry_router::handler::RouterConfig;
use telemetry_router::router::Edges;

/// The three edges the router writes to.
pub struct RealEdges {
    pub sink: TimestreamSink,
    pub quarantine: S3Quarantine,
    pub archive: S3Archive,
}

impl RealEdges {
    /// The edges of `config`'s table and bucket through `factory`'s clients.
    pub async fn new(factory: &ClientFactory, config: &RouterConfig) -> Self {
        let timestream = factory
            .timestream_write()
            .await
            .expect("a Timestream client");
        Self {
            sink: TimestreamSink::new(timestream, config.timestream.clone()),
            quarantine: S3Quarantine::new(factory.s3(), config.archive_bucket.clone()),
            archive: S3Archive::new(factory.s3(), config.archive_bucket.clone()),
        }
    }

    /// As the handler takes them.
    pub fn edges(&self) -> Edges<'_, TimestreamSink, S3Quarantine, S3Archive> {
        Edges {
            sink: &self.sink,
            quarantine: &self.quarantine,
            archive: &self.archive,
        }
    }
}
