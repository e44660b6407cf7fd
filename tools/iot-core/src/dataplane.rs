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

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use percent_encoding::percent_decode_str;
use rumqttc::QoS;
use serde_json::{Value, json};
use shoal_wire::topics::{ShadowOperation, ShadowTopic};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::broker::{Broker, Message};
use crate::reserved::{answer_topic, serve_shadow};
use crate::shadow::{Rejected, Shadows, now_s};
use crate::topic;
use crate::wire::MAX_PAYLOAD;

/// Open HTTP connections at most; more wait to be accepted.
pub const MAX_HTTP_CONNECTIONS: usize = 256;
/// The largest request body read (AWS IoT's payload limit); larger ones get 413.
const MAX_BODY: usize = MAX_PAYLOAD;
/// A client that sends no complete request head within this time is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the data plane on `listener` until the process ends: one task per connection, at
/// most [`MAX_HTTP_CONNECTIONS`] at once.
pub async fn serve_http(listener: TcpListener, shadows: Arc<Shadows>, broker: Arc<Broker>) {
    let slots = Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "data plane accept failed");
                continue;
            }
        };
        let (shadows, broker) = (shadows.clone(), broker.clone());
        tokio::spawn(async move {
            let _slot = slot;
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
        });
    }
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
    request: Request<Incoming>,
    shadows: &Shadows,
    broker: &Broker,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let answer = match Limited::new(body, MAX_BODY).collect().await {
        Ok(body) => handle(
            &parts.method,
            parts.uri.path(),
            parts.uri.query().unwrap_or_default(),
            &body.to_bytes(),
            shadows,
            broker,
        ),
        Err(_) => Answer::error(
            413,
            "RequestEntityTooLargeException",
            &format!("The request body exceeds {MAX_BODY} bytes"),
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

/// Serves one request: `method` on `path` (as sent, percent-encoded) with `query` and `body`.
pub fn handle(
    method: &Method,
    path: &str,
    query: &str,
    body: &[u8],
    shadows: &Shadows,
    broker: &Broker,
) -> Answer {
    let params: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let now_s = now_s();
    // Publish's topic is one label: the SDKs encode its slashes, other clients may not.
    if let Some(topic) = path.strip_prefix("/topics/") {
        return if method == Method::POST {
            publish(&decode(topic), &params, body, broker)
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

/// Publish: `qos` 0 or 1 (default 0), `retain`; the topic and payload checked as MQTT's are.
fn publish(topic: &str, params: &HashMap<String, String>, body: &[u8], broker: &Broker) -> Answer {
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
    broker.publish(Message {
        topic: topic.to_owned(),
        payload: Bytes::copy_from_slice(body),
        qos,
        retain,
        properties: None,
        dup: false,
        expires: None,
    });
    Answer {
        status: 200,
        error_type: None,
        body: Vec::new(),
    }
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

    fn json(answer: &Answer) -> Value {
        serde_json::from_slice(&answer.body).unwrap()
    }

    #[test]
    fn the_shadow_rest_api_updates_gets_lists_and_deletes() {
        let (shadows, broker) = setup();
        let body = br#"{"state":{"desired":{"rate":5}}}"#;
        let updated = handle(
            &Method::POST,
            "/things/dev%3A1/shadow",
            "name=cfg",
            body,
            &shadows,
            &broker,
        );
        assert_eq!(updated.status, 200);
        assert_eq!(json(&updated)["version"], 1);
        let got = handle(
            &Method::GET,
            "/things/dev:1/shadow",
            "name=cfg",
            b"",
            &shadows,
            &broker,
        );
        assert_eq!(json(&got)["state"]["delta"]["rate"], 5);
        let listed = handle(
            &Method::GET,
            "/api/things/shadow/ListNamedShadowsForThing/dev:1",
            "pageSize=10",
            b"",
            &shadows,
            &broker,
        );
        assert_eq!(json(&listed)["results"], serde_json::json!(["cfg"]));
        let classic = handle(
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
        let deleted = handle(
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
        let conflict = handle(
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
        let bad = handle(
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
        let unknown = handle(&Method::GET, "/nothing", "", b"", &shadows, &broker);
        assert_eq!(unknown.status, 404);
        let qos2 = handle(
            &Method::POST,
            "/topics/a%2Fb",
            "qos=2",
            b"x",
            &shadows,
            &broker,
        );
        assert_eq!(qos2.status, 400);
        let wildcard = handle(
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
        let published = handle(
            &Method::POST,
            "/topics/%24aws%2Fthings%2Fdev-2%2Fshadow%2Fupdate",
            "qos=1",
            br#"{"state":{"reported":{"on":true}}}"#,
            &shadows,
            &broker,
        );
        assert_eq!((published.status, published.body.len()), (200, 0));
        let got = handle(
            &Method::GET,
            "/things/dev-2/shadow",
            "",
            b"",
            &shadows,
            &broker,
        );
        assert_eq!(json(&got)["state"]["reported"]["on"], true);
    }
}
