//! AWS IoT's reserved topics that the local core serves: a message published on a shadow
//! request topic (`$aws/things/<thing>/shadow[/name/<shadow>]/get|update|delete`) goes to the
//! Device Shadow service, and its answers are published on the matching `accepted` / `rejected`
//! / `delta` / `documents` topics, as AWS IoT does (reserved-topics.html#reserved-topics-shadow).
//! The request itself is routed too: subscribers of the request topic (rules, on AWS) see it.

use std::sync::Arc;

use shoal_wire::topics::{ShadowOperation, ShadowResponse, ShadowTopic};

use crate::broker::{Message, Publisher, Service};
use serde_json::Value;

use crate::shadow::{Rejected, ShadowKey, Shadows, now_s, request_token};

/// The Device Shadow service behind its reserved topics.
#[derive(Debug, Clone, Default)]
pub struct ShadowService(pub Arc<Shadows>);

impl Service for ShadowService {
    fn answer(&self, message: &Message, _publisher: Option<&Publisher>) -> Vec<Message> {
        shadow_answers(&self.0, &message.topic, &message.payload, now_s())
            .into_iter()
            .map(|(topic, payload)| Message::from_service(topic, payload))
            .collect()
    }
}

/// The answers to a publish of `payload` on `topic` at `now_s` (epoch seconds), as (topic,
/// payload) in the order AWS IoT sends them: `accepted`, then `delta` when due, then
/// `documents`; or `rejected` alone. Empty when `topic` is not a shadow request topic.
pub fn shadow_answers(
    shadows: &Shadows,
    topic: &str,
    payload: &[u8],
    now_s: u64,
) -> Vec<(String, Vec<u8>)> {
    let Ok(request) = ShadowTopic::parse(topic) else {
        return Vec::new();
    };
    if request.response.is_some() {
        return Vec::new();
    }
    let answers = serve_shadow(shadows, &request, payload, now_s)
        .unwrap_or_else(|rejected| vec![(ShadowResponse::Rejected, rejected.document(now_s))]);
    answers
        .into_iter()
        .map(|(response, document)| {
            (
                answer_topic(&request, response),
                document.to_string().into_bytes(),
            )
        })
        .collect()
}

/// The topic of `request`'s `response`.
pub fn answer_topic(request: &ShadowTopic<'_>, response: ShadowResponse) -> String {
    ShadowTopic {
        response: Some(response),
        ..*request
    }
    .to_string()
}

/// Serves one shadow request (the operation and shadow named by `request`, a request topic)
/// with the Device Shadow service: the answers in AWS IoT's order, `accepted` first.
///
/// # Errors
/// The service's [`Rejected`] (bad names or request document, 404, 409, 413).
pub fn serve_shadow(
    shadows: &Shadows,
    request: &ShadowTopic<'_>,
    payload: &[u8],
    now_s: u64,
) -> Result<Vec<(ShadowResponse, Value)>, Rejected> {
    let key = ShadowKey::new(request.thing, request.name)?;
    match request.operation {
        ShadowOperation::Update => shadows.update(&key, payload, now_s).map(|updated| {
            let mut out = vec![(ShadowResponse::Accepted, updated.accepted)];
            out.extend(updated.delta.map(|delta| (ShadowResponse::Delta, delta)));
            out.push((ShadowResponse::Documents, updated.documents));
            out
        }),
        ShadowOperation::Get => request_token(payload)
            .and_then(|token| shadows.get(&key, token, now_s))
            .map(|document| vec![(ShadowResponse::Accepted, document)]),
        ShadowOperation::Delete => request_token(payload)
            .and_then(|token| shadows.delete(&key, token, now_s))
            .map(|answer| vec![(ShadowResponse::Accepted, answer)]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(shadows: &Shadows, topic: &str, payload: &str) -> Vec<(String, Value)> {
        shadow_answers(shadows, topic, payload.as_bytes(), 1_700_000_000)
            .into_iter()
            .map(|(t, p)| (t, serde_json::from_slice(&p).unwrap()))
            .collect()
    }

    #[test]
    fn an_update_answers_on_accepted_delta_and_documents() {
        let shadows = Shadows::default();
        let out = answers(
            &shadows,
            "$aws/things/dev-1/shadow/name/cfg/update",
            r#"{"state":{"desired":{"rate":5}},"clientToken":"k"}"#,
        );
        let topics: Vec<&str> = out.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            topics,
            [
                "$aws/things/dev-1/shadow/name/cfg/update/accepted",
                "$aws/things/dev-1/shadow/name/cfg/update/delta",
                "$aws/things/dev-1/shadow/name/cfg/update/documents",
            ]
        );
        assert_eq!(out[1].1["state"]["rate"], 5);
        assert!(out.iter().all(|(_, d)| d["clientToken"] == "k"));
    }

    #[test]
    fn get_and_delete_answer_or_reject_on_their_own_topics() {
        let shadows = Shadows::default();
        let missing = answers(
            &shadows,
            "$aws/things/dev-1/shadow/get",
            r#"{"clientToken":"g"}"#,
        );
        assert_eq!(missing[0].0, "$aws/things/dev-1/shadow/get/rejected");
        assert_eq!(missing[0].1["code"], 404);
        assert_eq!(missing[0].1["clientToken"], "g");
        answers(
            &shadows,
            "$aws/things/dev-1/shadow/update",
            r#"{"state":{"reported":{"on":true}}}"#,
        );
        let got = answers(&shadows, "$aws/things/dev-1/shadow/get", "");
        assert_eq!(got[0].0, "$aws/things/dev-1/shadow/get/accepted");
        assert_eq!(got[0].1["state"]["reported"]["on"], true);
        let deleted = answers(&shadows, "$aws/things/dev-1/shadow/delete", "");
        assert_eq!(deleted[0].0, "$aws/things/dev-1/shadow/delete/accepted");
        assert_eq!(deleted[0].1["version"], 1);
        let bad = answers(&shadows, "$aws/things/dev-1/shadow/update", "{");
        assert_eq!(bad[0].0, "$aws/things/dev-1/shadow/update/rejected");
        assert_eq!(bad[0].1["code"], 400);
    }

    #[test]
    fn other_topics_and_answers_are_not_requests() {
        let shadows = Shadows::default();
        for topic in [
            "dt/app/dev-1/telemetry",
            "$aws/things/dev-1/shadow/update/accepted",
            "$aws/things/dev-1/shadow/update/delta",
            "$aws/things/dev-1/shadow/frobnicate",
        ] {
            assert!(answers(&shadows, topic, "{}").is_empty(), "{topic}");
        }
    }
}
