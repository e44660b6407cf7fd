//! Reaching the local AWS endpoint from tests.
//!
//! Tests call real AWS APIs at `AWS_ENDPOINT_URL` (default: moto on 127.0.0.1:4566, started by
//! `make stack-up`). When nothing answers there, tests fail with a message saying how to start it;
//! they never skip.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use aws_credential_types::Credentials;
use shoal_aws::client::ClientFactory;

/// The endpoint `make stack-up` starts when the user has not chosen one.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:4566";

/// The endpoint under test: `AWS_ENDPOINT_URL`, else the default.
pub fn endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned())
}

/// `host:port` of an `http://host:port[/...]` URL.
fn authority(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url} is not an http:// URL"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains(':') {
        Ok(authority.to_owned())
    } else {
        Ok(format!("{authority}:80"))
    }
}

/// Checks that something accepts connections at `url`; the error says how to fix it.
pub fn check_reachable(url: &str) -> Result<(), String> {
    let how = "start the local stack with `make stack-up` (moto on 127.0.0.1:4566), or point \
               AWS_ENDPOINT_URL at a running AWS emulator such as LocalStack";
    let authority = authority(url).map_err(|e| format!("{e}: {how}"))?;
    let addrs: Vec<_> = authority
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {authority}: {e}; {how}"))?
        .collect();
    for addr in &addrs {
        if TcpStream::connect_timeout(addr, Duration::from_secs(2)).is_ok() {
            return Ok(());
        }
    }
    Err(format!(
        "the local AWS endpoint {url} is not reachable: {how}"
    ))
}

/// A client factory for the endpoint under test. Panics, with the fix in the message, when the
/// endpoint is down. Region and credentials default to the dummies the local stack expects.
pub async fn factory() -> ClientFactory {
    let url = endpoint();
    // The stack serves DynamoDB from a moto process of its own (`AWS_ENDPOINT_URL_DYNAMODB`).
    let dynamodb = std::env::var("AWS_ENDPOINT_URL_DYNAMODB").ok();
    for url in std::iter::once(&url).chain(dynamodb.as_ref()) {
        if let Err(message) = check_reachable(url) {
            panic!("{message}");
        }
    }
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    // Set in the environment, the SDK reads `AWS_ENDPOINT_URL` and the service-specific variables
    // itself (an endpoint set here would override the latter).
    if std::env::var("AWS_ENDPOINT_URL").is_err() {
        loader = loader.endpoint_url(&url);
    }
    if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
        loader = loader.region(Region::new("us-east-1"));
    }
    if std::env::var("AWS_ACCESS_KEY_ID").is_err() {
        loader = loader.credentials_provider(Credentials::new(
            "test",
            "test",
            None,
            None,
            "shoal-tests",
        ));
    }
    ClientFactory::new(loader.load().await)
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// A client factory for an endpoint that is down: a closed port on this machine. Needs no stack.
pub fn unreachable_factory() -> ClientFactory {
    let config = aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(format!("http://127.0.0.1:{}", closed_port()))
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(Credentials::new(
                "test",
                "test",
                None,
                None,
                "shoal-tests",
            )),
        )
        .build();
    ClientFactory::new(config)
}

/// A name no other test (or earlier run) uses, within AWS naming rules for every service here:
/// lowercase letters, digits and '-'.
pub fn unique_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..12])
}

/// GET `path` from the endpoint and return the body (moto's `/moto-api/...` state endpoints).
/// A plain HTTP/1.0 GET: the body is small JSON, and no HTTP client crate is worth its build time
/// for this one test-only call.
pub fn get(path: &str) -> Result<String, String> {
    let url = endpoint();
    let authority = authority(&url)?;
    let mut stream = TcpStream::connect(&authority).map_err(|e| format!("{url}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\nAccept: application/json\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| e.to_string())?;
    let response = String::from_utf8(response).map_err(|e| e.to_string())?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or("response has no header/body separator")?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200") {
        return Err(format!("GET {path}: {status}"));
    }
    Ok(body.to_owned())
}

/// moto's state of one service (`timestreamwrite`, as moto names its modules), from its
/// `/moto-api/data.json` endpoint (`tools/localstack/moto_server.py` narrows it to `?service=`:
/// the whole state takes moto about a second of its one interpreter per thousand readings).
///
/// moto serialises its state while other requests change it (tests in one binary run in
/// parallel): it checks each attribute serialises, then serialises them again, so a DynamoDB
/// table that gains its first item in between answers HTTP 500 (`keys must be str ... not
/// DynamoType`; seen in CI). A 5xx is therefore retried, a few times with a growing pause; any
/// other failure, or a 5xx that persists, panics with what moto said.
pub fn moto_state(service: &str) -> serde_json::Value {
    const ATTEMPTS: u64 = 6;
    let mut attempt = 1;
    loop {
        match get(&format!("/moto-api/data.json?service={service}")) {
            Ok(body) => return serde_json::from_str(&body).expect("moto's state is JSON"),
            Err(e) if attempt < ATTEMPTS && is_server_error(&e) => {
                std::thread::sleep(Duration::from_millis(100 * attempt));
                attempt += 1;
            }
            Err(e) => {
                panic!("reading state back needs moto's state endpoint (attempt {attempt}): {e}")
            }
        }
    }
}

/// Whether `get`'s error is an HTTP 5xx answer (its text ends with the status line).
fn is_server_error(error: &str) -> bool {
    let status = error.rsplit(": ").next().unwrap_or_default();
    status.starts_with("HTTP/")
        && status
            .split(' ')
            .nth(1)
            .is_some_and(|code| code.starts_with('5'))
}

/// The records moto holds for a Timestream table, via its `/moto-api/data.json` state endpoint:
/// Timestream's write API has no read, and moto's query API answers canned results. Works only
/// against moto (README: emulator differences).
pub fn moto_timestream_records(database: &str, table: &str) -> Vec<serde_json::Value> {
    moto_state("timestreamwrite")["timestreamwrite"]["TimestreamTable"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["db_name"] == database && t["name"] == table)
        .flat_map(|t| t["records"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// The policy [`device_certificate`] attaches: every IoT action on every resource. For tests of
/// MQTT behaviour; policy tests attach the template's policies instead ([`attach_policy`]).
pub const ALLOW_ALL_POLICY: &str = "shoal-test-allow-all";

/// A device certificate registered in the local IoT registry (CreateKeysAndCertificate,
/// `setAsActive` as asked) with [`ALLOW_ALL_POLICY`] attached: its certificate id, PEM and
/// private key PEM.
pub async fn device_certificate(active: bool) -> (String, Vec<u8>, Vec<u8>) {
    let certificate = bare_certificate(active).await;
    let allow_all = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}],
    });
    attach_policy(ALLOW_ALL_POLICY, &allow_all.to_string(), &certificate.arn).await;
    (certificate.id, certificate.pem, certificate.key)
}

/// A certificate registered in the local IoT registry, nothing attached to it.
pub struct Certificate {
    pub id: String,
    pub arn: String,
    pub pem: Vec<u8>,
    pub key: Vec<u8>,
}

/// A certificate registered in the local IoT registry (CreateKeysAndCertificate, `setAsActive`
/// as asked) with no policy and no thing attached: AWS IoT Core lets it connect nowhere.
pub async fn bare_certificate(active: bool) -> Certificate {
    let iot = factory().await.iot();
    let created = iot
        .create_keys_and_certificate()
        .set_as_active(active)
        .send()
        .await
        .expect("CreateKeysAndCertificate");
    let key = created
        .key_pair()
        .and_then(|k| k.private_key())
        .expect("a private key")
        .to_owned();
    Certificate {
        id: created.certificate_id().expect("an id").to_owned(),
        arn: created.certificate_arn().expect("an ARN").to_owned(),
        pem: created
            .certificate_pem()
            .expect("a PEM")
            .as_bytes()
            .to_vec(),
        key: key.into_bytes(),
    }
}

/// Creates IoT policy `name` with `document` unless it exists (the same name always gets the
/// same document here), and attaches it to `certificate_arn`.
pub async fn attach_policy(name: &str, document: &str, certificate_arn: &str) {
    let iot = factory().await.iot();
    match iot
        .create_policy()
        .policy_name(name)
        .policy_document(document)
        .send()
        .await
    {
        Ok(_) => {}
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_resource_already_exists_exception()) => {}
        Err(e) => panic!("CreatePolicy {name}: {e:?}"),
    }
    iot.attach_policy()
        .policy_name(name)
        .target(certificate_arn)
        .send()
        .await
        .expect("AttachPolicy");
}

/// Creates thing `thing` with `attributes` and attaches it to `certificate_arn`.
pub async fn attach_thing(thing: &str, attributes: &[(&str, &str)], certificate_arn: &str) {
    let iot = factory().await.iot();
    let mut payload = aws_sdk_iot::types::AttributePayload::builder();
    for (k, v) in attributes {
        payload = payload.attributes(*k, *v);
    }
    iot.create_thing()
        .thing_name(thing)
        .attribute_payload(payload.build())
        .send()
        .await
        .expect("CreateThing");
    iot.attach_thing_principal()
        .thing_name(thing)
        .principal(certificate_arn)
        .send()
        .await
        .expect("AttachThingPrincipal");
}

/// The local IoT Core's MQTT endpoint (`host:port`) and the CA file its server certificate chains
/// to: `SHOAL_IOT_ENDPOINT` and `SHOAL_IOT_CA_FILE` (what `stack env` prints), else the stack's
/// defaults (127.0.0.1:8883, `.local/iot-core/ca.pem`). Panics, with the fix in the message,
/// when nothing listens there.
pub fn iot_core() -> (String, u16, Vec<u8>) {
    let endpoint = std::env::var("SHOAL_IOT_ENDPOINT")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "127.0.0.1:8883".to_owned());
    let how =
        "start the local stack with `make stack-up` (it starts the local IoT Core beside moto)";
    let (host, port) = endpoint
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
        .unwrap_or_else(|| panic!("SHOAL_IOT_ENDPOINT={endpoint} is not host:port"));
    let reachable = (host.as_str(), port)
        .to_socket_addrs()
        .ok()
        .into_iter()
        .flatten()
        .any(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok());
    assert!(
        reachable,
        "the local IoT Core at {endpoint} is not reachable: {how}"
    );
    let ca_file = std::env::var("SHOAL_IOT_CA_FILE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| crate::repo_root().join(".local/iot-core/ca.pem"));
    let ca =
        std::fs::read(&ca_file).unwrap_or_else(|e| panic!("{}: {e}; {how}", ca_file.display()));
    (host, port, ca)
}

/// The local Lambda host's Invoke API: `AWS_ENDPOINT_URL_LAMBDA` (what `stack env` prints),
/// else the stack's default `http://127.0.0.1:9001`. Panics, with the fix in the message, when
/// nothing listens there.
pub fn lambda_endpoint() -> String {
    let url = std::env::var("AWS_ENDPOINT_URL_LAMBDA")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "http://127.0.0.1:9001".to_owned());
    check_reachable(&url).unwrap_or_else(|e| {
        panic!("the local Lambda host at {url} is not reachable ({e}): start the local stack with `make stack-up`")
    });
    url
}

/// The local IoT Core's HTTP data plane (shadows and Publish): `AWS_ENDPOINT_URL_IOT_DATA_PLANE`
/// (what `stack env` prints), else the stack's default `http://127.0.0.1:8880`. Panics, with the
/// fix in the message, when nothing listens there.
pub async fn iot_core_data_plane() -> aws_sdk_iotdataplane::Client {
    let url = std::env::var("AWS_ENDPOINT_URL_IOT_DATA_PLANE")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "http://127.0.0.1:8880".to_owned());
    if let Err(message) = check_reachable(&url) {
        panic!("{message}");
    }
    let config = factory().await.sdk_config().clone();
    aws_sdk_iotdataplane::Client::from_conf(
        aws_sdk_iotdataplane::config::Builder::from(&config)
            .endpoint_url(url)
            .build(),
    )
}

/// The local IoT Core's ALPN (`x-amzn-mqtt-ca`) listener, `host:port`: `SHOAL_IOT_ALPN_ENDPOINT`,
/// else whichever of the stack's defaults listens (127.0.0.1:443 as root, :8443 otherwise).
/// Panics, with the fix in the message, when none does.
pub fn iot_core_alpn() -> (String, u16) {
    let candidates: Vec<String> = match std::env::var("SHOAL_IOT_ALPN_ENDPOINT") {
        Ok(endpoint) if !endpoint.trim().is_empty() => vec![endpoint],
        _ => vec!["127.0.0.1:443".into(), "127.0.0.1:8443".into()],
    };
    for endpoint in &candidates {
        if let Some((host, port)) = endpoint
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
        {
            let up = (host.as_str(), port)
                .to_socket_addrs()
                .ok()
                .into_iter()
                .flatten()
                .any(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok());
            if up {
                return (host, port);
            }
        }
    }
    panic!(
        "the local IoT Core's ALPN listener is not reachable at {candidates:?}: start the local \
         stack with `make stack-up`"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_of_urls() {
        assert_eq!(
            authority("http://127.0.0.1:4566").unwrap(),
            "127.0.0.1:4566"
        );
        assert_eq!(
            authority("http://127.0.0.1:4566/x").unwrap(),
            "127.0.0.1:4566"
        );
        assert_eq!(authority("http://localhost").unwrap(), "localhost:80");
        assert!(authority("https://s3.amazonaws.com").is_err());
    }

    #[test]
    fn unreachable_endpoint_says_how_to_start_the_stack() {
        let err = check_reachable(&format!("http://127.0.0.1:{}", closed_port())).unwrap_err();
        assert!(err.contains("is not reachable"), "{err}");
        assert!(err.contains("make stack-up"), "{err}");
        assert!(err.contains("AWS_ENDPOINT_URL"), "{err}");
    }

    #[test]
    fn unique_names_differ_and_fit_bucket_rules() {
        let a = unique_name("shoal-test");
        let b = unique_name("shoal-test");
        assert_ne!(a, b);
        assert!(a.parse::<shoal_aws::config::BucketName>().is_ok(), "{a}");
    }

    #[test]
    fn only_a_5xx_status_line_is_a_server_error() {
        assert!(is_server_error(
            "GET /moto-api/data.json: HTTP/1.1 500 INTERNAL SERVER ERROR"
        ));
        assert!(is_server_error("GET /x: HTTP/1.0 503 Service Unavailable"));
        assert!(!is_server_error("GET /x: HTTP/1.1 404 NOT FOUND"));
        assert!(!is_server_error(
            "http://127.0.0.1:4566: Connection refused (os error 111)"
        ));
        assert!(!is_server_error("response has no header/body separator"));
    }
}
