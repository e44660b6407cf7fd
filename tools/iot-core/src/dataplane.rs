//! AWS IoT's data plane over HTTP, on the local core: the Device Shadow REST API
//! (GetThingShadow, UpdateThingShadow, DeleteThingShadow, ListNamedShadowsForThing) and Publish,
//! for AWS SDKs pointed at it with `AWS_ENDPOINT_URL_IOT_DATA_PLANE=http://127.0.0.1:<port>`
//! (the `iot-data` API's REST-JSON shapes: <https://docs.aws.amazon.com/iot/latest/apireference/API_Operations_AWS_IoT_Data_Plane.html>).
//!
//! The data plane and MQTT are one service, as on AWS: a shadow changed here is published on
//! `.../update/accepted`, `.../update/delta` and `.../update/documents` (`.../delete/accepted`)
//! to MQTT subscribers, and a Publish reaches them (a Publish on a shadow request topic is a
//! shadow request). Requests are not checked for a SigV4 signature (as moto does not).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Method, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use percent_encoding::percent_decode_str;
use rumqttc::QoS;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use serde_json::{Value, json};
use shoal_wire::topics::{ShadowOperation, ShadowTopic};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::broker::{Broker, Message};
use crate::reserved::{answer_topic, serve_shadow};
use crate::server::accept_each;
use crate::shadow::{Rejected, Shadows, now_s};
use crate::topic;
use crate::wire::MAX_PAYLOAD;

/// Open HTTP connections at most; more wait to be accepted.
pub const MAX_HTTP_CONNECTIONS: usize = 256;
/// The largest request body read (AWS IoT's payload limit); larger ones get 413.
const MAX_BODY: usize = MAX_PAYLOAD;
/// A client that sends no complete request head within this time is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A request whose body has not all come within this time is answered 408.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the data plane on `listener` until the process ends: one task per connection, at
/// most [`MAX_HTTP_CONNECTIONS`] at once.
pub async fn serve_http(listener: TcpListener, shadows: Arc<Shadows>, broker: Arc<Broker>) {
    let slots = Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS));
    accept_each(listener, slots, move |tcp, addr| {
        let (shadows, broker) = (shadows.clone(), broker.clone());
        async move {
            let service = service_fn(move |request| {
                let (shadows, broker) = (shadows.clone(), broker.clone());
                async move { Ok::<_, Infallible>(respond(request, &shadows, &broker).await) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(%addr, error = %e, "data plane connection ended");
            }
        }
    })
    .await;
}

/// An answer: JSON with its status; errors carry AWS's `x-amzn-ErrorType` and `{"message"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// `x-amzn-ErrorType` for an error.
    pub error_type: Option<&'static str>,
    /// The body (empty for Publish).
    pub body: Vec<u8>,
}

impl Answer {
    fn ok(body: &Value) -> Self {
        Self {
            status: 200,
            error_type: None,
            body: body.to_string().into_bytes(),
        }
    }

    fn error(status: u16, error_type: &'static str, message: &str) -> Self {
        Self {
            status,
            error_type: Some(error_type),
            body: json!({ "message": message }).to_string().into_bytes(),
        }
    }

    fn rejected(rejected: &Rejected) -> Self {
        Self::error(rejected.code, rejected.error_type(), &rejected.message)
    }
}

async fn respond(
    request: hyper::Request<Incoming>,
    shadows: &Shadows,
    broker: &Broker,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let read = tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await;
    let answer = match read {
        Ok(Ok(body)) => handle(
            &Request {
                method: &parts.method,
                path: parts.uri.path(),
                query: parts.uri.query().unwrap_or_default(),
                headers: &parts.headers,
                body: &body.to_bytes(),
            },
            shadows,
            broker,
        ),
        Ok(Err(_)) => Answer::error(
            413,
            "RequestEntityTooLargeException",
            &format!("The request body exceeds {MAX_BODY} bytes"),
        ),
        Err(_) => Answer::error(
            408,
            "RequestTimeoutException",
            &format!(
                "the request body did not come within {} s",
                BODY_TIMEOUT.as_secs()
            ),
        ),
    };
    let mut response = Response::builder()
        .status(StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json");
    if let Some(error_type) = answer.error_type {
        response = response.header("x-amzn-ErrorType", error_type);
    }
    response
        .body(Full::new(Bytes::from(answer.body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// One HTTP request, read whole.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The method.
    pub method: &'a Method,
    /// The path, as sent (percent-encoded).
    pub path: &'a str,
    /// The query string, without `?`.
    pub query: &'a str,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The body.
    pub body: &'a [u8],
}

/// Serves one request.
pub fn handle(request: &Request<'_>, shadows: &Shadows, broker: &Broker) -> Answer {
    let Request {
        method,
        path,
        query,
        headers,
        body,
    } = *request;
    let params: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let now_s = now_s();
    // Publish's topic is one label: the SDKs encode its slashes, other clients may not.
    if let Some(topic) = path.strip_prefix("/topics/") {
        return if method == Method::POST {
            publish(&decode(topic), &params, headers, body, broker)
        } else {
            Answer::error(405, "MethodNotAllowedException", "Publish is POST")
        };
    }
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(decode)
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match segments.as_slice() {
        ["things", thing, "shadow"] => {
            let operation = match *method {
                Method::GET => ShadowOperation::Get,
                Method::POST => ShadowOperation::Update,
                Method::DELETE => ShadowOperation::Delete,
                _ => return Answer::error(405, "MethodNotAllowedException", "GET, POST or DELETE"),
            };
            let request = ShadowTopic {
                thing,
                name: params.get("name").map(String::as_str),
                operation,
                response: None,
            };
            // GET and DELETE carry no body over HTTP; the token only travels on MQTT.
            let payload = if operation == ShadowOperation::Update {
                body
            } else {
                b""
            };
            match serve_shadow(shadows, &request, payload, now_s) {
                Ok(answers) => {
                    let first = answers.first().map(|(_, document)| Answer::ok(document));
                    // A change is published to MQTT as on AWS; a read is the caller's alone.
                    let answers = answers
                        .into_iter()
                        .filter(|_| operation != ShadowOperation::Get);
                    for (response, document) in answers {
                        let topic = answer_topic(&request, response);
                        broker.publish(Message::from_service(
                            topic,
                            document.to_string().into_bytes(),
                        ));
                    }
                    first.unwrap_or_else(|| Answer::ok(&json!({})))
                }
                Err(rejected) => Answer::rejected(&rejected),
            }
        }
        ["api", "things", "shadow", "ListNamedShadowsForThing", thing] if method == Method::GET => {
            let page_size = match params.get("pageSize").map(|s| s.parse::<usize>()) {
                None => None,
                Some(Ok(n)) => Some(n),
                Some(Err(_)) => {
                    return Answer::error(
                        400,
                        "InvalidRequestException",
                        "pageSize is not a number",
                    );
                }
            };
            match shadows.list_named(
                thing,
                page_size,
                params.get("nextToken").map(String::as_str),
                now_s,
            ) {
                Ok(page) => Answer::ok(&page),
                Err(rejected) => Answer::rejected(&rejected),
            }
        }
        _ => Answer::error(
            404,
            "UnknownOperationException",
            &format!("no data-plane operation for {method} {path}"),
        ),
    }
}

fn decode(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

/// Publish: `qos` 0 or 1 (default 0), `retain`, and MQTT 5's properties (`contentType`,
/// `responseTopic`, `messageExpiry` in the query; user properties, payload format and
/// correlation data in `x-amz-mqtt5-*` headers); the topic checked as MQTT's are, reserved
/// topics as a client's publish (API_iotdata_Publish.html).
fn publish(
    topic: &str,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
    broker: &Broker,
) -> Answer {
    let invalid = |message: String| Answer::error(400, "InvalidRequestException", &message);
    if let Err(e) = topic::check_name(topic) {
        return invalid(format!("topic {topic:?}: {e}"));
    }
    let qos = match params.get("qos").map(String::as_str) {
        None | Some("0") => QoS::AtMostOnce,
        Some("1") => QoS::AtLeastOnce,
        Some(other) => return invalid(format!("qos {other:?}: 0 or 1")),
    };
    let retain = match params.get("retain").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return invalid(format!("retain {other:?}: true or false")),
    };
    if let Some(why) = topic::reserved_publish_refusal(topic, retain) {
        return Answer::error(403, "ForbiddenException", &why);
    }
    let properties = match publish_properties(params, headers) {
        Ok(properties) => properties,
        Err(why) => return invalid(why),
    };
    let expires = properties
        .message_expiry_interval
        .map(|s| std::time::Instant::now() + Duration::from_secs(u64::from(s)));
    broker.publish(Message {
        topic: topic.to_owned(),
        payload: Bytes::copy_from_slice(body),
        qos,
        retain,
        properties: (properties != PublishProperties::default()).then(|| Box::new(properties)),
        dup: false,
        expires,
    });
    Answer {
        status: 200,
        error_type: None,
        body: Vec::new(),
    }
}

/// MQTT 5 publish properties from Publish's query and headers.
fn publish_properties(
    params: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<PublishProperties, String> {
    let b64 = |name: &str, text: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| format!("{name}: not base64 ({e})"))
    };
    let header = |name: &str| -> Result<Option<String>, String> {
        headers
            .get(name)
            .map(|v| {
                v.to_str()
                    .map(str::to_owned)
                    .map_err(|_| format!("{name}: not text"))
            })
            .transpose()
    };
    let mut properties = PublishProperties {
        content_type: params.get("contentType").cloned(),
        response_topic: params.get("responseTopic").cloned(),
        ..PublishProperties::default()
    };
    if let Some(topic) = &properties.response_topic {
        topic::check_name(topic).map_err(|e| format!("responseTopic {topic:?}: {e}"))?;
    }
    if let Some(seconds) = params.get("messageExpiry") {
        let seconds: u32 = seconds
            .parse()
            .map_err(|_| format!("messageExpiry {seconds:?}: seconds"))?;
        properties.message_expiry_interval = Some(seconds);
    }
    if let Some(format) = header("x-amz-mqtt5-payload-format-indicator")? {
        properties.payload_format_indicator = match format.as_str() {
            "UNSPECIFIED_BYTES" => Some(0),
            "UTF8_DATA" => Some(1),
            other => {
                return Err(format!(
                    "payload format {other:?}: UNSPECIFIED_BYTES or UTF8_DATA"
                ));
            }
        };
    }
    if let Some(data) = header("x-amz-mqtt5-correlation-data")? {
        properties.correlation_data = Some(b64("correlation data", &data)?.into());
    }
    if let Some(encoded) = header("x-amz-mqtt5-user-properties")? {
        let json = b64("user properties", &encoded)?;
        let pairs: Vec<HashMap<String, String>> = serde_json::from_slice(&json).map_err(|e| {
            format!("user properties: a JSON list of {{\"name\": \"value\"}} objects ({e})")
        })?;
        properties.user_properties = pairs.into_iter().flatten().collect();
    }
    Ok(properties)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reserved::ShadowService;

    fn setup() -> (Arc<Shadows>, Broker) {
        let shadows = Arc::new(Shadows::default());
        let broker = Broker::new(Duration::from_secs(60))
            .with_service(Arc::new(ShadowService(shadows.clone())));
        (shadows, broker)
    }

    fn call(
        method: &Method,
        path: &str,
        query: &str,
        body: &[u8],
        shadows: &Shadows,
        broker: &Broker,
    ) -> Answer {
        let headers = HeaderMap::new();
        let request = Request {
            method,
            path,
            query,
            headers: &headers,
            body,
        };
        handle(&request, shadows, broker)
    }

    fn json(answer: &Answer) -> Value {
        serde_json::from_slice(&answer.body).unwrap()
    }

    #[test]
    fn the_shadow_rest_api_updates_gets_lists_and_deletes() {
        let (shadows, broker) = setup();
        let body = br#"{"state":{"desired":{"rate":5}}}"#;
        let updated = call(
            &Method::POST,
            "/things/dev%3A1/shadow",
            "name=cfg",
            body,
            &shadows,
            &broker,
        );
        assert_eq!(updated.status, 200);
        assert_eq!(json(&updated)["version"], 1);
        let got = call(
            &Method::GET,
            "/things/dev:1/shadow",
            "name=cfg",
            b"",
            &shadows,
            &broker,
        );
        assert_eq!(json(&got)["state"]["delta"]["rate"], 5);
        let listed = call(
            &Method::GET,
            "/api/things/shadow/ListNamedShadowsForThing/dev:1",
            "pageSize=10",
            b"",
            &shadows,
            &broker,
        );
        assert_eq!(json(&listed)["results"], serde_json::json!(["cfg"]));
        let classic = call(
            &Method::GET,
            "/things/dev:1/shadow",
            "",
            b"",
            &shadows,
            &broker,
        );
        assert_eq!(
            (classic.status, classic.error_type),
            (404, Some("ResourceNotFoundException"))
        );
        let deleted = call(
            &Method::DELETE,
            "/things/dev:1/shadow",
            "name=cfg",
            b"",
            &shadows,
            &broker,
        );
        assert_eq!(json(&deleted)["version"], 1);
    }

    #[test]
    fn errors_carry_aws_s_error_types() {
        let (shadows, broker) = setup();
        let conflict = call(
            &Method::POST,
            "/things/t/shadow",
            "",
            br#"{"state":{},"version":3}"#,
            &shadows,
            &broker,
        );
        assert_eq!(
            (conflict.status, conflict.error_type),
            (409, Some("ConflictException"))
        );
        let bad = call(
            &Method::POST,
            "/things/t/shadow",
            "",
            b"{",
            &shadows,
            &broker,
        );
        assert_eq!(
            (bad.status, bad.error_type),
            (400, Some("InvalidRequestException"))
        );
        assert_eq!(json(&bad)["message"], "Invalid JSON");
        let unknown = call(&Method::GET, "/nothing", "", b"", &shadows, &broker);
        assert_eq!(unknown.status, 404);
        let qos2 = call(
            &Method::POST,
            "/topics/a%2Fb",
            "qos=2",
            b"x",
            &shadows,
            &broker,
        );
        assert_eq!(qos2.status, 400);
        let wildcard = call(
            &Method::POST,
            "/topics/a%2F%23",
            "",
            b"x",
            &shadows,
            &broker,
        );
        assert_eq!(wildcard.status, 400);
    }

    #[test]
    fn a_publish_on_a_shadow_request_topic_is_a_shadow_request() {
        let (shadows, broker) = setup();
        let published = call(
            &Method::POST,
            "/topics/%24aws%2Fthings%2Fdev-2%2Fshadow%2Fupdate",
            "qos=1",
            br#"{"state":{"reported":{"on":true}}}"#,
            &shadows,
            &broker,
        );
        assert_eq!((published.status, published.body.len()), (200, 0));
        let got = call(
            &Method::GET,
            "/things/dev-2/shadow",
            "",
            b"",
            &shadows,
            &broker,
        );
        assert_eq!(json(&got)["state"]["reported"]["on"], true);
    }

    #[test]
    fn publish_carries_mqtt5_properties_from_the_query_and_headers() {
        let mut params = HashMap::new();
        params.insert("contentType".to_owned(), "text/plain".to_owned());
        params.insert("responseTopic".to_owned(), "reply/here".to_owned());
        params.insert("messageExpiry".to_owned(), "60".to_owned());
        let mut headers = HeaderMap::new();
        let encode = |t: &str| base64::engine::general_purpose::STANDARD.encode(t);
        headers.insert(
            "x-amz-mqtt5-user-properties",
            encode(r#"[{"site":"lyon"},{"n":"2"}]"#).parse().unwrap(),
        );
        headers.insert(
            "x-amz-mqtt5-correlation-data",
            encode("req-1").parse().unwrap(),
        );
        headers.insert(
            "x-amz-mqtt5-payload-format-indicator",
            "UTF8_DATA".parse().unwrap(),
        );
        let p = publish_properties(&params, &headers).unwrap();
        assert_eq!(p.content_type.as_deref(), Some("text/plain"));
        assert_eq!(p.response_topic.as_deref(), Some("reply/here"));
        assert_eq!(p.message_expiry_interval, Some(60));
        assert_eq!(p.payload_format_indicator, Some(1));
        assert_eq!(p.correlation_data.as_deref(), Some(&b"req-1"[..]));
        assert_eq!(
            p.user_properties,
            [
                ("site".to_owned(), "lyon".to_owned()),
                ("n".to_owned(), "2".to_owned())
            ]
        );
        params.insert("responseTopic".to_owned(), "bad/#".to_owned());
        assert!(publish_properties(&params, &headers).is_err());
    }
}
