//! Structured JSON logs for Lambda functions and tools.
//!
//! lambda_runtime wraps every invocation in a span carrying `requestId` (and `xrayTraceId` when
//! tracing is on). Logging the current span with each event puts the request id on every line, so
//! CloudWatch Logs Insights can filter one invocation: `filter span.requestId = "…"`.

use std::io;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Lambda's advanced logging controls set this (TRACE, DEBUG, INFO, WARN, ERROR, FATAL).
const LAMBDA_LOG_LEVEL: &str = "AWS_LAMBDA_LOG_LEVEL";

/// The filter from `RUST_LOG` when set, else from `AWS_LAMBDA_LOG_LEVEL`, else `info`.
fn filter_from(rust_log: Option<&str>, lambda_level: Option<&str>) -> EnvFilter {
    let directive = match (rust_log, lambda_level) {
        (Some(directives), _) if !directives.trim().is_empty() => directives.to_owned(),
        (_, Some(level)) if !level.trim().is_empty() => match level.trim().to_ascii_lowercase() {
            // tracing has no FATAL; ERROR is the closest that still logs fatal conditions.
            l if l == "fatal" => "error".to_owned(),
            l => l,
        },
        _ => "info".to_owned(),
    };
    EnvFilter::try_new(&directive).unwrap_or_else(|_| EnvFilter::new("info"))
}

fn json_subscriber<W>(writer: W, filter: EnvFilter) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(true)
        .with_writer(writer)
        .finish()
}

/// Installs the JSON subscriber on stdout for the whole process. Safe to call twice: the second
/// call keeps the first subscriber.
pub fn init() {
    let filter = filter_from(
        std::env::var("RUST_LOG").ok().as_deref(),
        std::env::var(LAMBDA_LOG_LEVEL).ok().as_deref(),
    );
    let _ = tracing::subscriber::set_global_default(json_subscriber(io::stdout, filter));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Captured {
        type Writer = Captured;
        fn make_writer(&'w self) -> Self::Writer {
            self.clone()
        }
    }

    fn lines(captured: &Captured) -> Vec<serde_json::Value> {
        String::from_utf8(captured.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).expect("every log line is JSON"))
            .collect()
    }

    #[test]
    fn every_line_is_json_and_carries_the_lambda_request_id() {
        let captured = Captured::default();
        let subscriber = json_subscriber(captured.clone(), EnvFilter::new("info"));
        tracing::subscriber::with_default(subscriber, || {
            // The same span lambda_runtime opens around each invocation.
            let span = tracing::info_span!("Lambda runtime invoke", requestId = "req-42");
            let _entered = span.enter();
            tracing::info!(thing = "dev-1", "shadow updated");
            tracing::debug!("filtered out at info");
        });
        let lines = lines(&captured);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["span"]["requestId"], "req-42");
        assert_eq!(lines[0]["fields"]["message"], "shadow updated");
        assert_eq!(lines[0]["fields"]["thing"], "dev-1");
        assert_eq!(lines[0]["level"], "INFO");
    }

    #[test]
    fn level_comes_from_rust_log_then_lambda_then_info() {
        let enabled = |filter: EnvFilter, level| {
            let captured = Captured::default();
            tracing::subscriber::with_default(json_subscriber(captured.clone(), filter), || {
                match level {
                    tracing::Level::DEBUG => tracing::debug!("x"),
                    tracing::Level::WARN => tracing::warn!("x"),
                    _ => tracing::info!("x"),
                }
            });
            !lines(&captured).is_empty()
        };
        assert!(enabled(
            filter_from(Some("debug"), Some("ERROR")),
            tracing::Level::DEBUG
        ));
        assert!(!enabled(
            filter_from(None, Some("WARN")),
            tracing::Level::INFO
        ));
        assert!(enabled(
            filter_from(None, Some("WARN")),
            tracing::Level::WARN
        ));
        assert!(!enabled(
            filter_from(None, Some("FATAL")),
            tracing::Level::WARN
        ));
        assert!(enabled(filter_from(None, None), tracing::Level::INFO));
        assert!(!enabled(filter_from(None, None), tracing::Level::DEBUG));
        assert!(enabled(filter_from(Some(" "), None), tracing::Level::INFO));
    }
}
