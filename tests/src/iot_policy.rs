//! Evaluates the IoT policy documents of infra/template.yaml for (action, resource) cases with
//! the local IoT Core's evaluator (`shoal_iot_core::policy`, the one that decides what devices
//! connected to it may do): the template's YAML document becomes the JSON CloudFormation would
//! create, its `!Sub` strings resolved for a fixed partition, region, account and template.

use serde_norway::Value;
use shoal_iot_core::policy::{Action, Grants, Principal, Thing};
use shoal_iot_core::rules::template::substitute;

pub const PARTITION: &str = "aws";
pub const REGION: &str = "us-east-1";
pub const ACCOUNT: &str = "123456789012";

/// The connection a policy is evaluated for.
pub struct Connection<'a> {
    pub thing: &'a str,
    pub attached: bool,
}

/// `!Sub "…"` (or a plain string) with the pseudo parameters and `parameters` substituted and
/// `${!x}` unescaped to `${x}`.
pub fn resolve(value: &Value, parameters: &[(&str, &str)]) -> Result<String, String> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Tagged(tagged) if tagged.tag == "Sub" => tagged
            .value
            .as_str()
            .ok_or("!Sub with variables map is not supported here")?
            .to_owned(),
        other => return Err(format!("cannot resolve {other:?}")),
    };
    substitute(&text, |name| {
        Ok(match name {
            "AWS::Partition" => PARTITION,
            "AWS::Region" => REGION,
            "AWS::AccountId" => ACCOUNT,
            other => parameters
                .iter()
                .find(|(k, _)| *k == other)
                .map(|(_, v)| *v)
                .ok_or_else(|| format!("no value for ${{{other}}}"))?,
        }
        .to_owned())
    })
}

/// IAM's wildcard match (`*` any characters, `/` included; `?` exactly one), as policies use it.
pub fn matches(pattern: &str, resource: &str) -> bool {
    shoal_iot_core::policy::glob(pattern, resource)
}

/// The policy document as the JSON CloudFormation hands to CreatePolicy: every string resolved
/// (`!Sub`, plain), maps and lists kept.
///
/// # Errors
/// What [`resolve`] cannot resolve, or a YAML value JSON has no form for.
pub fn to_json(document: &Value, parameters: &[(&str, &str)]) -> Result<serde_json::Value, String> {
    Ok(match document {
        Value::Mapping(map) => {
            let mut out = serde_json::Map::new();
            for (key, value) in map {
                let key = key.as_str().ok_or_else(|| format!("key {key:?}"))?;
                out.insert(key.to_owned(), to_json(value, parameters)?);
            }
            serde_json::Value::Object(out)
        }
        Value::Sequence(items) => serde_json::Value::Array(
            items
                .iter()
                .map(|i| to_json(i, parameters))
                .collect::<Result<_, _>>()?,
        ),
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::String(_) | Value::Tagged(_) => {
            serde_json::Value::String(resolve(document, parameters)?)
        }
        other => return Err(format!("cannot convert {other:?}")),
    })
}

/// Whether `document` allows `action` (e.g. `iot:Publish`) on `resource` (a full ARN in
/// [`ACCOUNT`] and [`REGION`]), for `connection`: the thing named in it, attached or not (when
/// attached, the client id is the thing name, as AWS IoT requires for the thing variables).
///
/// # Errors
/// A document that does not resolve or is not a policy; an action the evaluator does not serve;
/// a resource that is not that action's ARN type.
pub fn allows(
    document: &Value,
    parameters: &[(&str, &str)],
    connection: &Connection<'_>,
    action: &str,
    resource: &str,
) -> Result<bool, String> {
    let json = to_json(document, parameters)?.to_string();
    let principal = Principal {
        client_id: connection.thing.to_owned(),
        thing: connection.attached.then(|| Thing {
            name: connection.thing.to_owned(),
            ..Thing::default()
        }),
    };
    let certificate = arn("cert", "0000");
    let grants = Grants::compile(&certificate, [("template", json.as_str())], &principal)
        .map_err(|e| e.to_string())?;
    let (action, kind) = match action {
        "iot:Connect" => (Action::Connect, "client"),
        "iot:Publish" => (Action::Publish, "topic"),
        "iot:RetainPublish" => (Action::RetainPublish, "topic"),
        "iot:Subscribe" => (Action::Subscribe, "topicfilter"),
        "iot:Receive" => (Action::Receive, "topic"),
        other => return Err(format!("action {other} is not an MQTT action")),
    };
    let name = resource
        .strip_prefix(&arn(kind, ""))
        .ok_or_else(|| format!("{resource} is not a {kind} ARN in the test account"))?;
    Ok(grants.allows(action, name))
}

/// `arn:aws:iot:us-east-1:123456789012:<kind>/<name>`.
pub fn arn(kind: &str, name: &str) -> String {
    format!("arn:{PARTITION}:iot:{REGION}:{ACCOUNT}:{kind}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(matches("dt/*/dev-1/telemetry", "dt/farm/dev-1/telemetry"));
        assert!(!matches("dt/*/dev-1/telemetry", "dt/farm/dev-10/telemetry"));
        assert!(matches("a?c", "abc"));
        assert!(!matches("a?c", "ac"));
        assert!(matches("*", ""));
        assert!(matches("iot:*", "iot:Publish"));
        assert!(!matches("iot:Publish", "iot:Subscribe"));
    }

    #[test]
    fn subs_resolve_pseudo_parameters_and_escapes() {
        let v: Value =
            serde_norway::from_str("!Sub 'arn:${AWS::Partition}:iot:${AWS::Region}:${AWS::AccountId}:topic/${!iot:x}/${T}'")
                .unwrap();
        assert_eq!(
            resolve(&v, &[("T", "t1")]).unwrap(),
            "arn:aws:iot:us-east-1:123456789012:topic/${iot:x}/t1"
        );
        assert!(resolve(&v, &[]).is_err());
    }
}
