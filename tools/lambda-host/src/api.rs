//! Lambda's Invoke API over HTTP, as the AWS SDKs call it:
//! `POST /2015-03-31/functions/<FunctionName>/invocations`, `X-Amz-Invocation-Type`
//! `RequestResponse` (default: 200 with the response, `X-Amz-Function-Error: Unhandled` when the
//! function failed), `Event` (202, queued) or `DryRun` (204). Refusals carry
//! `x-amzn-ErrorType` and a JSON body as Lambda's do; every answer carries `x-amzn-RequestId`.
//! No signature is checked (loopback only).
//!
//! <https://docs.aws.amazon.com/lambda/latest/api/API_Invoke.html>

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::host::{
    Destinations, Host, MAX_ASYNC_PAYLOAD, MAX_SYNC_PAYLOAD, Refusal, parse_reference,
};

/// Serves the Invoke API on `listener` until the task is dropped.
pub async fn serve<D: Destinations>(listener: TcpListener, host: Arc<Host<D>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let host = host.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let host = host.clone();
                async move { Ok::<_, Infallible>(route(&host, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn json_answer(status: StatusCode, kind: &str, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    if let Ok(value) = HeaderValue::from_str(kind) {
        response.headers_mut().insert("x-amzn-errortype", value);
    }
    response
}

fn refuse(status: StatusCode, kind: &str, message: &str) -> Response<Full<Bytes>> {
    json_answer(
        status,
        kind,
        &serde_json::json!({"Type": "User", "message": message}),
    )
}

fn refusal(refusal: &Refusal, arn_of: &str) -> Response<Full<Bytes>> {
    match refusal {
        Refusal::NotFound(_) => refuse(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &format!("Function not found: {arn_of}"),
        ),
        Refusal::Throttled { reason } => json_answer(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequestsException",
            &serde_json::json!({"Type": "User", "message": "Rate Exceeded.", "Reason": reason}),
        ),
        Refusal::TooLarge { .. } => refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLargeException",
            &refusal.to_string(),
        ),
    }
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

async fn route<D: Destinations>(
    host: &Host<D>,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut response = answer(host, request, &request_id).await;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-amzn-requestid", value);
    }
    response
}

async fn answer<D: Destinations>(
    host: &Host<D>,
    request: Request<Incoming>,
    request_id: &str,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let Some(reference) = path
        .strip_prefix("/2015-03-31/functions/")
        .and_then(|r| r.strip_suffix("/invocations"))
        .filter(|_| request.method() == Method::POST)
    else {
        return refuse(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            "Unknown operation",
        );
    };
    let reference = percent_encoding::percent_decode_str(reference)
        .decode_utf8_lossy()
        .into_owned();
    let given = request.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|pair| pair.strip_prefix("Qualifier="))
            .map(|q| {
                percent_encoding::percent_decode_str(q)
                    .decode_utf8_lossy()
                    .into_owned()
            })
    });
    let Some((name, derived)) = parse_reference(&reference) else {
        return refuse(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &format!("Function not found: {reference}"),
        );
    };
    if let (Some(derived), Some(given)) = (derived, given.as_deref())
        && derived != given
    {
        return refuse(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValueException",
            "The derived qualifier from the function name does not match the specified qualifier.",
        );
    }
    let qualifier = derived.map(str::to_owned).or(given);
    let mut arn_of = shoal_template::arn("AWS::Lambda::Function", name);
    if let Some(qualifier) = &qualifier {
        arn_of = format!("{arn_of}:{qualifier}");
    }
    let function = match (host.function(name), qualifier.as_deref()) {
        (Some(function), None | Some("$LATEST")) => function.clone(),
        _ => return refusal(&Refusal::NotFound(reference), &arn_of),
    };
    let kind = request
        .headers()
        .get("x-amz-invocation-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("RequestResponse")
        .to_owned();
    let (limit, kind_name) = if kind == "Event" {
        (MAX_ASYNC_PAYLOAD, "Event")
    } else {
        (MAX_SYNC_PAYLOAD, "RequestResponse")
    };
    let declared = request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let mut payload = match Limited::new(request.into_body(), MAX_SYNC_PAYLOAD)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            let size = declared.unwrap_or(MAX_SYNC_PAYLOAD + 1);
            let too_large = Refusal::TooLarge {
                size,
                limit,
                kind: kind_name,
            };
            return refusal(&too_large, &arn_of);
        }
    };
    // An invocation without a payload gets an empty JSON object, as Lambda passes it.
    if payload.is_empty() {
        payload = Bytes::from_static(b"{}");
    }
    if serde_json::from_slice::<&serde_json::value::RawValue>(&payload).is_err() {
        return refuse(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContentException",
            "Could not parse request body into json",
        );
    }
    match kind.as_str() {
        "DryRun" => empty(StatusCode::NO_CONTENT),
        "Event" => match host.invoke_async(&function, payload) {
            Ok(_) => empty(StatusCode::ACCEPTED),
            Err(r) => refusal(&r, &arn_of),
        },
        "RequestResponse" => {
            // Its own task: an invocation runs to its end even when the caller goes away.
            let id = request_id.to_owned();
            let running = tokio::spawn(async move { function.invoke(&id, payload, false).await });
            match running.await {
                Ok(Ok(outcome)) => {
                    let failed = outcome.is_error();
                    let mut response = Response::new(Full::new(outcome.payload().clone()));
                    let headers = response.headers_mut();
                    headers.insert(
                        "x-amz-executed-version",
                        HeaderValue::from_static("$LATEST"),
                    );
                    if failed {
                        headers.insert(
                            "x-amz-function-error",
                            HeaderValue::from_static("Unhandled"),
                        );
                    }
                    response
                }
                Ok(Err(r)) => refusal(&r, &arn_of),
                Err(_) => refuse(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "ServiceException",
                    "the invocation failed",
                ),
            }
        }
        other => refuse(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValueException",
            &format!(
                "1 validation error detected: Value '{other}' at 'invocationType' failed to satisfy constraint: Member must satisfy enum value set: [Event, RequestResponse, DryRun]"
            ),
        ),
    }
}
