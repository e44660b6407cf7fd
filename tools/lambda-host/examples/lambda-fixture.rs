//! A function for the host's own tests, run under Lambda's Runtime API like the real ones. Its
//! event says what to do: `{"fail": "why"}` returns an error, `{"sleep_ms": n}` sleeps first,
//! `{"exit": code}` ends the process, `{"env": "NAME"}` answers that variable's value,
//! `{"respond": value}` answers `value`; every answer carries the process id and how many
//! invocations this process has served, so tests can tell environments apart.

use std::sync::atomic::{AtomicU64, Ordering};

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};

static SERVED: AtomicU64 = AtomicU64::new(0);

async fn handle(event: LambdaEvent<Value>) -> Result<Value, Error> {
    let served = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
    let input = event.payload;
    if let Some(ms) = input.get("sleep_ms").and_then(Value::as_u64) {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    if let Some(code) = input.get("exit").and_then(Value::as_i64) {
        std::process::exit(i32::try_from(code).unwrap_or(1));
    }
    if let Some(why) = input.get("fail").and_then(Value::as_str) {
        return Err(why.into());
    }
    if let Some(value) = input.get("respond") {
        return Ok(value.clone());
    }
    let env = input
        .get("env")
        .and_then(Value::as_str)
        .map(|name| std::env::var(name).ok());
    Ok(json!({
        "pid": std::process::id(),
        "served": served,
        "request_id": event.context.request_id,
        "function_arn": event.context.invoked_function_arn,
        "env": env,
        "input": input,
    }))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(handle)).await
}
