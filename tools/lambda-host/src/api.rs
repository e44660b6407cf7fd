//! Lambda's Invoke API over HTTP, as the AWS SDKs call it:
//! `POST /2015-03-31/functions/<FunctionName>/invocations`, `X-Amz-Invocation-Type`
//! `RequestResponse` (default: 200 with the response, `X-Amz-Function-Error: Unhandled` when the
//! function failed), `Event` (202, queued) or `DryRun` (204). Refusals carry
//! `x-amzn-ErrorType` and a JSON body as Lambda's do. No signature is checked (loopback only).
//!
//! <https://docs.aws.amazon.com/lambda/latest/api/API_Invoke.html>

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::host::{Destinations, Host, MAX_SYNC_PAYLOAD, Refusal};

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

fn refuse(status: StatusCode, kind: &str, message: &str) -> Response<Full<Bytes>> {
    let mut body = serde_json::json!({"Type": "User", "message": message});
    if status == StatusCode::TOO_MANY_REQUESTS {
        body["Reason"] = message.into();
    }
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(kind) {
        response.headers_mut().insert("x-amzn-errortype", value);
    }
    response
}

fn refusal(refusal: &Refusal, arn_of: &str) -> Response<Full<Bytes>> {
    match refusal {
        Refusal::NotFound(_) => refuse(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &format!("Function not found: {arn_of}"),
        ),
        Refusal::Throttled { reason } => refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequestsException",
            reason,
        ),
        Refusal::TooLarge { .. } => refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLargeException",
            &refusal.to_string(),
        ),
    }
}

async fn route<D: Destinations>(
    host: &Host<D>,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let Some(reference) = path
        .strip_prefix("/2015-03-31/functions/")
        .and_then(|r| r.strip_suffix("/invocations"))
    else {
        return refuse(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            "Unknown operation",
        );
    };
    if request.method() != Method::POST {
        return refuse(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            "Unknown operation",
        );
    }
    let reference = percent_encoding::percent_decode_str(reference)
        .decode_utf8_lossy()
        .into_owned();
    let qualifier = request.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|pair| pair.strip_prefix("Qualifier="))
            .map(|q| {
                percent_encoding::percent_decode_str(q)
                    .decode_utf8_lossy()
                    .into_owned()
            })
    });
    let arn_of = if reference.starts_with("arn:") {
        reference.clone()
    } else {
        shoal_template::arn(
            "AWS::Lambda::Function",
            reference.rsplit(':').next().unwrap_or(&reference),
        )
    };
    let function = match (host.function(&reference), qualifier.as_deref()) {
        (Some(function), None | Some("$LATEST")) => function.clone(),
        _ => return refusal(&Refusal::NotFound(reference), &arn_of),
    };
    let kind = request
        .headers()
        .get("x-amz-invocation-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("RequestResponse")
        .to_owned();
    let payload = match Limited::new(request.into_body(), MAX_SYNC_PAYLOAD)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return refusal(
                &Refusal::TooLarge {
                    size: MAX_SYNC_PAYLOAD + 1,
                    limit: MAX_SYNC_PAYLOAD,
                    kind: "RequestResponse",
                },
                &arn_of,
            );
        }
    };
    if !payload.is_empty()
        && serde_json::from_slice::<&serde_json::value::RawValue>(&payload).is_err()
    {
        return refuse(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContentException",
            "Could not parse request body into json",
        );
    }
    match kind.as_str() {
        "DryRun" => {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::NO_CONTENT;
            response
        }
        "Event" => match host.invoke_async(&function, payload) {
            Ok(request_id) => {
                let mut response = Response::new(Full::new(Bytes::new()));
                *response.status_mut() = StatusCode::ACCEPTED;
                if let Ok(value) = hyper::header::HeaderValue::from_str(&request_id) {
                    response.headers_mut().insert("x-amzn-requestid", value);
                }
                response
            }
            Err(r) => refusal(&r, &arn_of),
        },
        "RequestResponse" => {
            let request_id = uuid::Uuid::new_v4().to_string();
            match function.invoke(&request_id, payload, false).await {
                Ok(outcome) => {
                    let failed = outcome.is_error();
                    let mut response = Response::new(Full::new(outcome.payload().clone()));
                    let headers = response.headers_mut();
                    headers.insert(
                        "x-amz-executed-version",
                        hyper::header::HeaderValue::from_static("$LATEST"),
                    );
                    if let Ok(value) = hyper::header::HeaderValue::from_str(&request_id) {
                        headers.insert("x-amzn-requestid", value);
                    }
                    if failed {
                        headers.insert(
                            "x-amz-function-error",
                            hyper::header::HeaderValue::from_static("Unhandled"),
                        );
                    }
                    response
                }
                Err(r) => refusal(&r, &arn_of),
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
