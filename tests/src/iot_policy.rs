//! Evaluates AWS IoT policy documents from infra/template.yaml for (action, resource) cases.
//!
//! No crate evaluates IoT policies, so this covers exactly what Shoal's policies use: Allow/Deny
//! statements, action lists, resource ARNs with `*` (any run of characters, `/` included) and `?`
//! (one character), the `${iot:Connection.Thing.ThingName}` policy variable and `Bool` conditions
//! on `iot:Connection.Thing.IsAttached`. An explicit Deny wins; no matching Allow denies. The
//! template's `!Sub` strings are resolved for a fixed partition, region, account and template.

use serde_norway::Value;

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
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .ok_or_else(|| format!("unclosed ${{ in {text}"))?
            + start;
        let name = &rest[start + 2..end];
        if let Some(literal) = name.strip_prefix('!') {
            out.push_str("${");
            out.push_str(literal);
            out.push('}');
        } else {
            let value = match name {
                "AWS::Partition" => PARTITION,
                "AWS::Region" => REGION,
                "AWS::AccountId" => ACCOUNT,
                other => parameters
                    .iter()
                    .find(|(k, _)| *k == other)
                    .map(|(_, v)| *v)
                    .ok_or_else(|| format!("no value for ${{{other}}}"))?,
            };
            out.push_str(value);
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// IoT policy resource matching: `*` any characters, `?` exactly one.
pub fn matches(pattern: &str, resource: &str) -> bool {
    let (p, r): (Vec<char>, Vec<char>) = (pattern.chars().collect(), resource.chars().collect());
    // dp[j]: pattern[..i] matches resource[..j]
    let mut dp = vec![false; r.len() + 1];
    dp[0] = true;
    for &pc in &p {
        let mut next = vec![false; r.len() + 1];
        if pc == '*' {
            let mut any = false;
            for j in 0..=r.len() {
                any |= dp[j];
                next[j] = any;
            }
        } else {
            for j in 1..=r.len() {
                next[j] = dp[j - 1] && (pc == '?' || pc == r[j - 1]);
            }
        }
        dp = next;
    }
    dp[r.len()]
}

fn list(value: &Value) -> Vec<&Value> {
    match value {
        Value::Sequence(items) => items.iter().collect(),
        single => vec![single],
    }
}

fn conditions_hold(statement: &Value, connection: &Connection<'_>) -> Result<bool, String> {
    let Some(condition) = statement.get("Condition") else {
        return Ok(true);
    };
    let Value::Mapping(operators) = condition else {
        return Err("Condition is not a map".into());
    };
    for (operator, keys) in operators {
        match operator.as_str() {
            Some("Bool") => {
                let Value::Mapping(keys) = keys else {
                    return Err("Bool condition is not a map".into());
                };
                for (key, expected) in keys {
                    let actual = match key.as_str() {
                        Some("iot:Connection.Thing.IsAttached") => connection.attached,
                        other => return Err(format!("unsupported condition key {other:?}")),
                    };
                    if expected.as_str() != Some(if actual { "true" } else { "false" }) {
                        return Ok(false);
                    }
                }
            }
            other => return Err(format!("unsupported condition operator {other:?}")),
        }
    }
    Ok(true)
}

/// Whether `document` allows `action` (e.g. `iot:Publish`) on `resource` (a full ARN).
pub fn allows(
    document: &Value,
    parameters: &[(&str, &str)],
    connection: &Connection<'_>,
    action: &str,
    resource: &str,
) -> Result<bool, String> {
    let mut allowed = false;
    for statement in list(&document["Statement"]) {
        let applies_to_action = list(&statement["Action"])
            .iter()
            .any(|a| a.as_str().is_some_and(|a| matches(a, action)));
        if !applies_to_action || !conditions_hold(statement, connection)? {
            continue;
        }
        let mut applies = false;
        for pattern in list(&statement["Resource"]) {
            let pattern = resolve(pattern, parameters)?
                .replace("${iot:Connection.Thing.ThingName}", connection.thing);
            applies |= matches(&pattern, resource);
        }
        if applies {
            match statement["Effect"].as_str() {
                Some("Deny") => return Ok(false),
                Some("Allow") => allowed = true,
                other => return Err(format!("unknown Effect {other:?}")),
            }
        }
    }
    Ok(allowed)
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
