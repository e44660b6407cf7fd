//! Where the local stack is: the AWS APIs (moto), the local IoT Core (MQTT and its HTTP data
//! plane) and the local Lambda host, from the variables `tools/localstack/stack env` prints.
//!
//! The demo runs against the local stack only: it reads moto's state back (Timestream has no read
//! API there) and drives the advancer through the local Lambda host, so every endpoint must be on
//! the loopback interface.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use shoal_agent::link::{Endpoint, MqttVersion};
use shoal_aws::client::ClientFactory;
use shoal_firmware::sampling::Backoff;

/// How long one read of moto's state may take, answer included (a few MB at 1,000 devices).
pub const STATE_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The local stack's endpoints and clients.
pub struct Stack {
    /// Clients of the AWS APIs (`AWS_ENDPOINT_URL`).
    pub factory: ClientFactory,
    /// `AWS_ENDPOINT_URL`: moto.
    pub aws_endpoint: String,
    /// The local IoT Core's MQTT endpoint, as devices connect to it.
    pub mqtt: Endpoint,
    /// The local IoT Core's HTTP data plane (shadows, Publish).
    pub data_plane: aws_sdk_iotdataplane::Client,
    /// The local Lambda host's Invoke API.
    pub lambda_endpoint: String,
}

fn var(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// `host` of `http://host:port/…` or `host:port`.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    match authority.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => authority,
    }
}

/// Whether `url` points at this machine (`127.0.0.0/8`, `::1`, `localhost`).
pub fn is_loopback(url: &str) -> bool {
    let host = host_of(url);
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The stack's CA file, `.local/iot-core/ca.pem`, in this directory or the nearest parent that
/// has one (a test runs in its crate's directory, `make demo` in the repository's).
fn stack_ca_file() -> PathBuf {
    let relative = std::path::Path::new(".local/iot-core/ca.pem");
    std::env::current_dir()
        .ok()
        .and_then(|dir| {
            dir.ancestors()
                .map(|d| d.join(relative))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| relative.to_path_buf())
}

impl Stack {
    /// The stack from `AWS_ENDPOINT_URL`, `SHOAL_IOT_ENDPOINT`, `SHOAL_IOT_CA_FILE`,
    /// `AWS_ENDPOINT_URL_IOT_DATA_PLANE` and `AWS_ENDPOINT_URL_LAMBDA` (the defaults are the
    /// stack's: 127.0.0.1 ports 4566, 8883, 8880, 9001 and `.local/iot-core/ca.pem`).
    ///
    /// # Errors
    /// An endpoint that is not on loopback (the demo never runs against AWS), or a CA file that
    /// cannot be read: start the stack (`make stack-up`) first.
    pub async fn from_env() -> Result<Self> {
        // The AWS SDK reads AWS_ENDPOINT_URL itself: unset, it would call AWS.
        let aws_endpoint = std::env::var("AWS_ENDPOINT_URL")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .context(
                "AWS_ENDPOINT_URL is not set: run the demo against the local stack with `make demo` \
                 (or `tools/localstack/stack run ./target/debug/shoal-demo`)",
            )?;
        let mqtt = var("SHOAL_IOT_ENDPOINT", "127.0.0.1:8883");
        let data_plane = var("AWS_ENDPOINT_URL_IOT_DATA_PLANE", "http://127.0.0.1:8880");
        let lambda_endpoint = var("AWS_ENDPOINT_URL_LAMBDA", "http://127.0.0.1:9001");
        // Every service-specific endpoint the SDK would honour must be local too.
        let specific: Vec<(String, String)> = std::env::vars()
            .filter(|(name, _)| name.starts_with("AWS_ENDPOINT_URL_"))
            .collect();
        for (name, url) in &specific {
            if !is_loopback(url) {
                bail!(
                    "{name}={url} is not on this machine: the demo runs against the local stack only"
                );
            }
        }
        for (name, url) in [
            ("AWS_ENDPOINT_URL", &aws_endpoint),
            ("SHOAL_IOT_ENDPOINT", &mqtt),
            ("AWS_ENDPOINT_URL_IOT_DATA_PLANE", &data_plane),
            ("AWS_ENDPOINT_URL_LAMBDA", &lambda_endpoint),
        ] {
            if !is_loopback(url) {
                bail!(
                    "{name}={url} is not on this machine: the demo runs against the local stack \
                     only (`make demo` starts it)"
                );
            }
        }
        let (host, port) = mqtt
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
            .with_context(|| format!("SHOAL_IOT_ENDPOINT={mqtt} is not host:port"))?;
        let ca_file = match std::env::var_os("SHOAL_IOT_CA_FILE") {
            Some(file) if !file.is_empty() => PathBuf::from(file),
            _ => stack_ca_file(),
        };
        let ca_pem = std::fs::read(&ca_file).with_context(|| {
            format!(
                "the local IoT Core's CA {}: is the local stack running? (`make stack-up`)",
                ca_file.display()
            )
        })?;
        let factory = ClientFactory::from_env().await;
        let data_plane = aws_sdk_iotdataplane::Client::from_conf(
            aws_sdk_iotdataplane::config::Builder::from(factory.sdk_config())
                .endpoint_url(data_plane)
                .build(),
        );
        Ok(Self {
            factory,
            aws_endpoint,
            mqtt: Endpoint {
                host,
                port,
                alpn: false,
                ca_pem,
                version: MqttVersion::V5,
                keep_alive: Duration::from_secs(30),
                backoff: Backoff {
                    base_ms: 500,
                    cap_ms: 5_000,
                },
            },
            data_plane,
            lambda_endpoint,
        })
    }

    /// moto's Timestream state (`/moto-api/data.json?service=timestreamwrite`, narrowed by
    /// `tools/localstack/moto_server.py`): how the demo reads Timestream back, which has no read
    /// API in moto. A 5xx (moto serialising while another request changes its
    /// state), or no whole answer within [`STATE_READ_TIMEOUT`], is retried a few times.
    ///
    /// # Errors
    /// moto does not answer, or answers something that is not JSON.
    pub async fn timestream_state(&self) -> Result<serde_json::Value> {
        let url: hyper::Uri = format!(
            "{}/moto-api/data.json?service=timestreamwrite",
            self.aws_endpoint.trim_end_matches('/')
        )
        .parse()
        .context("AWS_ENDPOINT_URL is not a URL")?;
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Empty<Bytes>>();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let read = async {
                let answer = client.get(url.clone()).await?;
                let status = answer.status();
                let body = answer.into_body().collect().await?.to_bytes();
                Ok::<_, anyhow::Error>((status, body))
            };
            // A read that never ends (seen: the demo's count of stored readings froze for
            // minutes) is given up and tried again.
            let (status, body) = match tokio::time::timeout(STATE_READ_TIMEOUT, read).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(e)) if attempt >= 6 => return Err(e).with_context(|| format!("GET {url}")),
                Err(_) if attempt >= 6 => {
                    bail!("GET {url}: no whole answer within {STATE_READ_TIMEOUT:?}")
                }
                Ok(Err(_)) | Err(_) => continue,
            };
            if status.is_success() {
                return serde_json::from_slice(&body).context("moto's state is not JSON");
            }
            if !status.is_server_error() || attempt >= 6 {
                bail!("GET {url}: {status}");
            }
            tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_endpoints_are_the_local_stack() {
        for local in [
            "http://127.0.0.1:4566",
            "http://localhost:9001/",
            "127.0.0.1:8883",
            "http://[::1]:8880",
            "http://127.1.2.3:1",
        ] {
            assert!(is_loopback(local), "{local}");
        }
        for remote in [
            "https://iot.eu-west-1.amazonaws.com",
            "a1b2c3-ats.iot.us-east-1.amazonaws.com:8883",
            "http://10.0.0.5:4566",
        ] {
            assert!(!is_loopback(remote), "{remote}");
        }
    }
}
