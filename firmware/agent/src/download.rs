//! Firmware downloads: an HTTP(S) GET of the rollout's presigned URL from a byte offset
//! (`Range: bytes=<offset>-`, RFC 9110 §14), handed over in chunks as they arrive so the slot is
//! written as the image comes and a cut download resumes where the slot stopped.
//!
//! HTTPS checks the server against the system's roots (S3's presigned URLs on AWS) and any extra
//! CA given; plain HTTP is accepted for the local stack's S3 (moto on loopback).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::StatusCode;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

/// The largest chunk handed over at once, bytes.
pub const CHUNK: usize = 64 * 1024;

/// How long the server may stay silent before the download counts as cut.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A piece of the image: where it starts and its bytes.
pub type Chunk = (u64, Bytes);

/// An HTTP(S) client for downloads (cheap to clone; one per process).
#[derive(Clone)]
pub struct Downloader {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl Downloader {
    /// A client trusting the system's roots.
    ///
    /// # Errors
    /// The system's root certificates cannot be read.
    pub fn new() -> Result<Self, String> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| format!("the system's root certificates: {e}"))?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// Fetches `url` from byte `offset` and sends the bytes to `chunks` in pieces of at most
    /// [`CHUNK`], each with its offset in the image. A server that ignores the range (200) is
    /// read from the start with the first `offset` bytes skipped.
    ///
    /// # Errors
    /// The request failed, the server answered neither 200 nor 206 (an expired URL answers 403),
    /// a 206 does not start at `offset`, the body stopped for [`IDLE_TIMEOUT`], or the receiver
    /// is gone.
    pub async fn fetch(
        &self,
        url: &str,
        offset: u64,
        chunks: &mpsc::Sender<Chunk>,
    ) -> Result<u64, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("the URL: {e}"))?;
        let request = hyper::Request::get(uri)
            .header(hyper::header::RANGE, format!("bytes={offset}-"))
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(IDLE_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| "no answer from the download server".to_owned())?
            .map_err(|e| format!("the download: {e}"))?;
        let status = response.status();
        let mut skip = match status {
            StatusCode::PARTIAL_CONTENT => {
                let range = response
                    .headers()
                    .get(hyper::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                let start = range
                    .strip_prefix("bytes ")
                    .and_then(|r| r.split('-').next())
                    .and_then(|s| s.parse::<u64>().ok());
                if start != Some(offset) {
                    return Err(format!(
                        "asked from byte {offset}, the server sent {range:?}"
                    ));
                }
                0
            }
            StatusCode::OK => offset,
            StatusCode::RANGE_NOT_SATISFIABLE => return Ok(0),
            other => return Err(format!("the download server answered {other}")),
        };
        let mut body = response.into_body();
        let mut at = offset;
        let mut received = 0;
        while let Some(frame) = tokio::time::timeout(IDLE_TIMEOUT, body.frame())
            .await
            .map_err(|_| format!("the download stalled at byte {at}"))?
        {
            let frame = frame.map_err(|e| format!("the download was cut at byte {at}: {e}"))?;
            let Ok(mut data) = frame.into_data() else {
                continue;
            };
            if skip > 0 {
                let drop = usize::try_from(skip).unwrap_or(usize::MAX).min(data.len());
                data = data.slice(drop..);
                skip -= drop as u64;
            }
            while !data.is_empty() {
                let piece = data.split_to(data.len().min(CHUNK));
                let len = piece.len() as u64;
                chunks
                    .send((at, piece))
                    .await
                    .map_err(|_| "the device stopped the download".to_owned())?;
                at += len;
                received += len;
            }
        }
        Ok(received)
    }
}
