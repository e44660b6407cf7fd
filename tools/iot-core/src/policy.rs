//! AWS IoT Core policies: which MQTT actions a connection may take, decided as AWS IoT Core
//! decides them.
//!
//! A policy document is IAM's JSON grammar restricted as AWS IoT restricts it
//! (<https://docs.aws.amazon.com/iot/latest/developerguide/iot-policies.html>): `Statement` (one
//! or a list) of `Effect` `Allow`/`Deny`, `Action` and `Resource` (a string or a list). An
//! explicit `Deny` wins; without a matching `Allow` the action is denied.
//!
//! - Actions are matched case-insensitively, `*` standing for any run of characters (`iot:*`).
//! - Resources are ARNs: `client/<clientId>` for `iot:Connect`, `topic/<topic>` for
//!   `iot:Publish`, `iot:Receive` and `iot:RetainPublish`, `topicfilter/<filter>` for
//!   `iot:Subscribe`
//!   (<https://docs.aws.amazon.com/iot/latest/developerguide/iot-action-resources.html>). In a
//!   resource `*` matches any run of characters, `/` included, and `?` exactly one; the MQTT
//!   wildcards `+` and `#` are plain characters there.
//! - Policy variables (<https://docs.aws.amazon.com/iot/latest/developerguide/iot-policy-variables.html>):
//!   `${iot:ClientId}`, and, when a thing whose name is the client id is attached to the
//!   connection's certificate, `${iot:Connection.Thing.ThingName}`,
//!   `${iot:Connection.Thing.ThingTypeName}`, `${iot:Connection.Thing.Attributes[<name>]}`;
//!   `${iot:Connection.Thing.IsAttached}` is `true` or `false`; `${*}`, `${?}` and `${$}` are the
//!   literal characters. A resource whose variable does not resolve matches nothing.
//! - Conditions: `StringEquals`, `StringNotEquals`, `StringEqualsIgnoreCase`,
//!   `StringNotEqualsIgnoreCase`, `StringLike`, `StringNotLike`, `Bool`, each optionally
//!   `…IfExists`, on the keys above (`iot:ClientId`, `iot:Connection.Thing.*`). A key the
//!   connection does not have fails a positive operator and passes a negated one, as in IAM; an
//!   operator or key this evaluator does not know fails closed: its `Allow` statement never
//!   applies, its `Deny` statement always does.
//!
//! Everything a connection's policies can depend on is known when it connects, so a connection's
//! policies are compiled once ([`Grants::compile`]) and each packet is then a match of its ARN.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

/// The MQTT actions an IoT policy governs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `iot:Connect` on `client/<clientId>`.
    Connect,
    /// `iot:Publish` on `topic/<topic>`.
    Publish,
    /// `iot:RetainPublish` on `topic/<topic>`: needed besides `iot:Publish` for a retained message.
    RetainPublish,
    /// `iot:Subscribe` on `topicfilter/<filter>`.
    Subscribe,
    /// `iot:Receive` on `topic/<topic>`: checked for every message delivered.
    Receive,
}

impl Action {
    /// The action's name in a policy (`iot:Publish`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Connect => "iot:Connect",
            Self::Publish => "iot:Publish",
            Self::RetainPublish => "iot:RetainPublish",
            Self::Subscribe => "iot:Subscribe",
            Self::Receive => "iot:Receive",
        }
    }

    /// The resource type its ARN names (`arn:…:<type>/<name>`).
    fn resource_type(self) -> &'static str {
        match self {
            Self::Connect => "client",
            Self::Publish | Self::RetainPublish | Self::Receive => "topic",
            Self::Subscribe => "topicfilter",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A policy document that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy {policy}: {reason}")]
pub struct PolicyError {
    /// The policy's name.
    pub policy: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The thing a connection is, for the policy variables: the thing named as the client id, when
/// it is attached to the connection's certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Thing {
    /// Its name (= the client id).
    pub name: String,
    /// Its thing type, if it has one.
    pub type_name: Option<String>,
    /// Its registry attributes.
    pub attributes: BTreeMap<String, String>,
}

/// What policies are evaluated for: one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The MQTT client id.
    pub client_id: String,
    /// The attached thing named `client_id`, if there is one.
    pub thing: Option<Thing>,
}

impl Principal {
    /// The value of a policy variable or condition key (`iot:ClientId`, ...); `None` when the
    /// connection has none (no attached thing, no such attribute, an unknown key).
    fn value(&self, key: &str) -> Option<String> {
        let lower = key.to_ascii_lowercase();
        let thing = self.thing.as_ref();
        match lower.as_str() {
            "iot:clientid" => Some(self.client_id.clone()),
            "iot:connection.thing.isattached" => Some(thing.is_some().to_string()),
            "iot:connection.thing.thingname" => thing.map(|t| t.name.clone()),
            "iot:connection.thing.thingtypename" => thing.and_then(|t| t.type_name.clone()),
            _ => {
                // Attribute names keep their case: only the prefix is case-insensitive.
                let name = lower
                    .strip_prefix("iot:connection.thing.attributes[")
                    .filter(|rest| rest.ends_with(']'))
                    .map(|_| &key["iot:Connection.Thing.Attributes[".len()..key.len() - 1])?;
                thing.and_then(|t| t.attributes.get(name).cloned())
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Allow,
    Deny,
}

/// One statement, its resources resolved for a connection.
#[derive(Debug, Clone)]
struct Grant {
    effect: Effect,
    actions: Vec<Pattern>,
    resources: Vec<Pattern>,
}

/// A connection's policies, compiled: variables substituted, conditions decided.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// `arn:<partition>:iot:<region>:<account>:`.
    arn_prefix: String,
    grants: Vec<Grant>,
}

impl Grants {
    /// No policy yet: resources will be ARNs in the account and region of `certificate_arn`
    /// (`arn:aws:iot:<region>:<account>:cert/<id>`). Denies everything until [`Grants::add`].
    ///
    /// # Errors
    /// [`PolicyError`] (with no policy name) when `certificate_arn` is not a certificate's ARN.
    pub fn new(certificate_arn: &str) -> Result<Self, PolicyError> {
        let arn_prefix = certificate_arn
            .find(":cert/")
            .map(|end| certificate_arn[..=end].to_owned())
            .ok_or_else(|| PolicyError {
                policy: String::new(),
                reason: format!("certificate ARN {certificate_arn:?} has no `:cert/`"),
            })?;
        Ok(Self {
            arn_prefix,
            grants: Vec::new(),
        })
    }

    /// [`Grants::new`], then [`Grants::add`] for each of `policies` (name, JSON document).
    ///
    /// # Errors
    /// The first [`PolicyError`].
    pub fn compile<'a>(
        certificate_arn: &str,
        policies: impl IntoIterator<Item = (&'a str, &'a str)>,
        principal: &Principal,
    ) -> Result<Self, PolicyError> {
        let mut grants = Self::new(certificate_arn)?;
        for (name, document) in policies {
            grants.add(name, document, principal)?;
        }
        Ok(grants)
    }

    /// Adds policy `name` (a JSON `document`) compiled for `principal`: its variables
    /// substituted, its conditions decided.
    ///
    /// # Errors
    /// [`PolicyError`] when `document` is not JSON or not a policy (no `Statement`, an `Effect`
    /// other than `Allow`/`Deny`, an `Action` or `Resource` that is not a string or a list of
    /// strings); nothing of it is added. AWS refuses such documents at CreatePolicy.
    pub fn add(
        &mut self,
        name: &str,
        document: &str,
        principal: &Principal,
    ) -> Result<(), PolicyError> {
        let error = |reason: String| PolicyError {
            policy: name.to_owned(),
            reason,
        };
        let document: Value =
            serde_json::from_str(document).map_err(|e| error(format!("not JSON: {e}")))?;
        let statements = match document.get("Statement") {
            Some(Value::Array(list)) => list.iter().collect(),
            Some(single @ Value::Object(_)) => vec![single],
            _ => return Err(error("no Statement".into())),
        };
        let mut added = Vec::new();
        for statement in statements {
            let effect = match statement.get("Effect").and_then(Value::as_str) {
                Some("Allow") => Effect::Allow,
                Some("Deny") => Effect::Deny,
                other => return Err(error(format!("Effect {other:?}"))),
            };
            let actions = strings(statement.get("Action"))
                .ok_or_else(|| error("Action is not a string or a list of strings".into()))?;
            let resources = strings(statement.get("Resource"))
                .ok_or_else(|| error("Resource is not a string or a list of strings".into()))?;
            match (
                conditions_hold(statement.get("Condition"), principal),
                effect,
            ) {
                (Ok(true), _) => {}
                (Ok(false), _) => continue,
                // A condition this evaluator cannot read fails closed: an Allow never applies,
                // a Deny always does.
                (Err(unknown), Effect::Allow) => {
                    tracing::warn!(policy = name, unknown, "Allow statement never applies");
                    continue;
                }
                (Err(unknown), Effect::Deny) => {
                    tracing::warn!(policy = name, unknown, "Deny statement always applies");
                }
            }
            added.push(Grant {
                effect,
                actions: actions
                    .iter()
                    .map(|a| Pattern::parse(&a.to_ascii_lowercase()))
                    .collect(),
                resources: resources
                    .iter()
                    .filter_map(|r| substitute(r, principal))
                    .collect(),
            });
        }
        self.grants.extend(added);
        Ok(())
    }

    /// Whether `action` on `name` (a client id, topic or topic filter, as `action` takes) is
    /// allowed: some `Allow` matches and no `Deny` does.
    pub fn allows(&self, action: Action, name: &str) -> bool {
        let arn = format!("{}{}/{name}", self.arn_prefix, action.resource_type());
        let action = action.name().to_ascii_lowercase();
        let mut allowed = false;
        for grant in &self.grants {
            let applies = grant.actions.iter().any(|a| a.matches(&action))
                && grant.resources.iter().any(|r| r.matches(&arn));
            if applies {
                match grant.effect {
                    Effect::Deny => return false,
                    Effect::Allow => allowed = true,
                }
            }
        }
        allowed
    }
}

/// A string or a list of strings; `None` for anything else (or nothing).
fn strings(value: Option<&Value>) -> Option<Vec<String>> {
    match value? {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned))
            .collect(),
        _ => None,
    }
}

/// `text` as a pattern with its policy variables replaced; `None` when one does not resolve.
///
/// A variable's value, and the escapes `${*}`, `${?}` and `${$}`, are literal characters: a
/// client id or attribute holding `*` matches only itself, never widening the statement.
fn substitute(text: &str, principal: &Principal) -> Option<Pattern> {
    let mut pattern = Pattern::default();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        pattern.push_wildcards(&rest[..start]);
        let end = start + rest[start..].find('}')?;
        match &rest[start + 2..end] {
            escaped @ ("*" | "?" | "$") => pattern.push_literal(escaped),
            variable => pattern.push_literal(&principal.value(variable)?),
        }
        rest = &rest[end + 1..];
    }
    pattern.push_wildcards(rest);
    Some(pattern)
}

/// Whether a statement's `Condition` holds for `principal`; `Err` names an operator or key this
/// evaluator does not know.
fn conditions_hold(condition: Option<&Value>, principal: &Principal) -> Result<bool, String> {
    let Some(condition) = condition else {
        return Ok(true);
    };
    let Value::Object(operators) = condition else {
        return Err("Condition is not an object".into());
    };
    for (operator, keys) in operators {
        let Value::Object(keys) = keys else {
            return Err(format!("{operator} is not an object"));
        };
        let (base, if_exists) = match operator.strip_suffix("IfExists") {
            Some(base) => (base, true),
            None => (operator.as_str(), false),
        };
        for (key, expected) in keys {
            if !known_key(key) {
                return Err(format!("condition key {key}"));
            }
            let expected: Vec<String> = match expected {
                Value::Array(items) => items.iter().map(scalar_text).collect(),
                single => vec![scalar_text(single)],
            };
            let actual = principal.value(key);
            let holds = match (base, actual) {
                (_, None) if if_exists => true,
                ("StringNotEquals" | "StringNotEqualsIgnoreCase" | "StringNotLike", None) => true,
                ("StringEquals" | "StringEqualsIgnoreCase" | "StringLike" | "Bool", None) => false,
                ("StringEquals", Some(a)) => expected.contains(&a),
                ("StringNotEquals", Some(a)) => expected.iter().all(|e| *e != a),
                ("StringEqualsIgnoreCase", Some(a)) => {
                    expected.iter().any(|e| e.eq_ignore_ascii_case(&a))
                }
                ("StringNotEqualsIgnoreCase", Some(a)) => {
                    expected.iter().all(|e| !e.eq_ignore_ascii_case(&a))
                }
                ("StringLike", Some(a)) => expected.iter().any(|e| glob(e, &a)),
                ("StringNotLike", Some(a)) => expected.iter().all(|e| !glob(e, &a)),
                ("Bool", Some(a)) => expected.iter().any(|e| e.eq_ignore_ascii_case(&a)),
                _ => return Err(format!("condition operator {operator}")),
            };
            if !holds {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// The condition keys [`Principal::value`] answers.
fn known_key(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    matches!(
        lower.as_str(),
        "iot:clientid"
            | "iot:connection.thing.isattached"
            | "iot:connection.thing.thingname"
            | "iot:connection.thing.thingtypename"
    ) || (lower.starts_with("iot:connection.thing.attributes[") && lower.ends_with(']'))
}

/// A condition value as text: JSON booleans and numbers as they are written.
fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One element of a policy pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    /// `*`: any run of characters, none included.
    Any,
    /// `?`: exactly one character.
    One,
    /// A character that must be there.
    Char(char),
}

/// An action or resource pattern of a policy, its wildcards told apart from literal characters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Pattern(Vec<Piece>);

impl Pattern {
    /// `text` with `*` and `?` as wildcards.
    fn parse(text: &str) -> Self {
        let mut pattern = Self::default();
        pattern.push_wildcards(text);
        pattern
    }

    fn push_wildcards(&mut self, text: &str) {
        self.0.extend(text.chars().map(|c| match c {
            '*' => Piece::Any,
            '?' => Piece::One,
            c => Piece::Char(c),
        }));
    }

    fn push_literal(&mut self, text: &str) {
        self.0.extend(text.chars().map(Piece::Char));
    }

    /// IAM's wildcard match of the whole of `text`.
    ///
    /// Greedy with a single backtrack point (the last `*`): linear without `*`, at most
    /// `pattern × text` steps otherwise.
    fn matches(&self, text: &str) -> bool {
        let p = &self.0;
        let t: Vec<char> = text.chars().collect();
        let (mut pi, mut ti) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            match p.get(pi) {
                Some(Piece::One) => {
                    pi += 1;
                    ti += 1;
                }
                Some(Piece::Char(c)) if *c == t[ti] => {
                    pi += 1;
                    ti += 1;
                }
                Some(Piece::Any) => {
                    star = Some((pi, ti));
                    pi += 1;
                }
                _ => match star {
                    Some((star_p, star_t)) => {
                        pi = star_p + 1;
                        ti = star_t + 1;
                        star = Some((star_p, star_t + 1));
                    }
                    None => return false,
                },
            }
        }
        p[pi..].iter().all(|piece| *piece == Piece::Any)
    }
}

/// IAM's wildcard match, as policies use it: `*` any run of characters (`/` included, none
/// included), `?` exactly one; every other character stands for itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    Pattern::parse(pattern).matches(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CERT: &str = "arn:aws:iot:us-east-1:123456789012:cert/abc";

    fn principal(client_id: &str, attached: bool) -> Principal {
        Principal {
            client_id: client_id.into(),
            thing: attached.then(|| Thing {
                name: client_id.into(),
                type_name: Some("sensor".into()),
                attributes: BTreeMap::from([("building".into(), "b7".into())]),
            }),
        }
    }

    fn grants(document: &str, principal: &Principal) -> Grants {
        Grants::compile(CERT, [("p", document)], principal).unwrap()
    }

    /// The shape of Shoal's device policy (infra/template.yaml), as CloudFormation resolves it.
    const DEVICE: &str = r#"{"Version":"2012-10-17","Statement":[
        {"Effect":"Allow","Action":"iot:Connect",
         "Resource":"arn:aws:iot:us-east-1:123456789012:client/${iot:Connection.Thing.ThingName}",
         "Condition":{"Bool":{"iot:Connection.Thing.IsAttached":"true"}}},
        {"Effect":"Allow","Action":["iot:Publish","iot:Receive"],
         "Resource":["arn:aws:iot:us-east-1:123456789012:topic/dt/*/${iot:Connection.Thing.ThingName}/telemetry"]},
        {"Effect":"Allow","Action":"iot:Subscribe",
         "Resource":"arn:aws:iot:us-east-1:123456789012:topicfilter/cmd/*/${iot:Connection.Thing.ThingName}/*"},
        {"Effect":"Deny","Action":"iot:Publish",
         "Resource":"arn:aws:iot:us-east-1:123456789012:topic/dt/*/*/${iot:Connection.Thing.ThingName}/telemetry"}]}"#;

    #[test]
    fn a_thing_may_use_its_own_topics_and_no_one_else_s() {
        let g = grants(DEVICE, &principal("dev-1", true));
        assert!(g.allows(Action::Connect, "dev-1"));
        assert!(g.allows(Action::Publish, "dt/farm/dev-1/telemetry"));
        assert!(g.allows(Action::Receive, "dt/farm/dev-1/telemetry"));
        assert!(g.allows(Action::Subscribe, "cmd/farm/dev-1/#"));
        assert!(!g.allows(Action::Publish, "dt/farm/dev-2/telemetry"));
        assert!(!g.allows(Action::Publish, "dt/farm/dev-10/telemetry"));
        assert!(!g.allows(Action::Subscribe, "cmd/farm/dev-2/#"));
        // The explicit Deny wins over the Allow whose `*` spans two levels.
        assert!(!g.allows(Action::Publish, "dt/a/b/dev-1/telemetry"));
        // Nothing allows retaining.
        assert!(!g.allows(Action::RetainPublish, "dt/farm/dev-1/telemetry"));
    }

    #[test]
    fn without_an_attached_thing_the_thing_variables_match_nothing() {
        let g = grants(DEVICE, &principal("dev-1", false));
        assert!(!g.allows(Action::Connect, "dev-1"));
        assert!(!g.allows(Action::Publish, "dt/farm/dev-1/telemetry"));
        // The literal variable text is no way in either.
        assert!(!g.allows(Action::Connect, "${iot:Connection.Thing.ThingName}"));
    }

    #[test]
    fn a_variable_s_value_is_literal_even_when_it_holds_wildcards() {
        let doc = r#"{"Statement":{"Effect":"Allow","Action":"iot:*","Resource":[
            "arn:aws:iot:us-east-1:123456789012:client/${iot:ClientId}",
            "arn:aws:iot:us-east-1:123456789012:topic/t/${iot:ClientId}/x"]}}"#;
        let g = grants(doc, &principal("dev*", false));
        assert!(g.allows(Action::Connect, "dev*"));
        assert!(!g.allows(Action::Connect, "dev-2"));
        assert!(g.allows(Action::Publish, "t/dev*/x"));
        assert!(!g.allows(Action::Publish, "t/dev-2/x"));
        let g = grants(doc, &principal("d?v", false));
        assert!(!g.allows(Action::Publish, "t/dev/x"));
    }

    #[test]
    fn a_condition_this_evaluator_cannot_read_fails_closed_for_allow_and_deny() {
        let document = r#"{"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "iot:*", "Resource": "*"},
            {"Effect": "Deny", "Action": "iot:Publish", "Resource": "*",
             "Condition": {"DateGreaterThan": {"aws:CurrentTime": "2020-01-01T00:00:00Z"}}},
            {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "*",
             "Condition": {"NumericEquals": {"iot:Connection.Thing.Attributes[n]": "1"}}}
        ]}"#;
        let only_conditional_allow = r#"{"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "*",
             "Condition": {"NumericEquals": {"iot:Connection.Thing.Attributes[n]": "1"}}}
        ]}"#;
        let p = principal("dev-1", true);
        let g = grants(document, &p);
        assert!(
            !g.allows(Action::Publish, "a/b"),
            "the unreadable Deny applies"
        );
        assert!(
            g.allows(Action::Connect, "dev-1"),
            "the plain Allow still does"
        );
        let g = grants(only_conditional_allow, &p);
        assert!(
            !g.allows(Action::Subscribe, "a/b"),
            "the unreadable Allow does not"
        );
    }

    #[test]
    fn no_policy_denies_everything() {
        let g = Grants::compile(CERT, [], &principal("dev-1", true)).unwrap();
        assert!(!g.allows(Action::Connect, "dev-1"));
    }

    #[test]
    fn resources_are_arns_in_the_certificate_s_account_and_region() {
        let doc = r#"{"Statement":{"Effect":"Allow","Action":"iot:*",
            "Resource":"arn:aws:iot:eu-west-1:999999999999:client/*"}}"#;
        let g = grants(doc, &principal("dev-1", true));
        assert!(!g.allows(Action::Connect, "dev-1"));
        let g = Grants::compile(
            "arn:aws:iot:eu-west-1:999999999999:cert/x",
            [("p", doc)],
            &principal("dev-1", true),
        )
        .unwrap();
        assert!(g.allows(Action::Connect, "dev-1"));
    }

    #[test]
    fn actions_match_case_insensitively_with_wildcards() {
        let doc = r#"{"Statement":[{"Effect":"Allow","Action":["IOT:pub*","iot:Connect"],"Resource":"*"}]}"#;
        let g = grants(doc, &principal("c", false));
        assert!(g.allows(Action::Publish, "a/b"));
        assert!(g.allows(Action::Connect, "c"));
        assert!(!g.allows(Action::Subscribe, "a/b"));
        assert!(!g.allows(Action::Receive, "a/b"));
    }

    #[test]
    fn client_id_thing_type_and_attribute_variables_resolve() {
        let doc = r#"{"Statement":[
            {"Effect":"Allow","Action":"iot:Publish","Resource":[
              "arn:aws:iot:us-east-1:123456789012:topic/c/${iot:ClientId}",
              "arn:aws:iot:us-east-1:123456789012:topic/t/${iot:Connection.Thing.ThingTypeName}",
              "arn:aws:iot:us-east-1:123456789012:topic/b/${iot:Connection.Thing.Attributes[building]}/x",
              "arn:aws:iot:us-east-1:123456789012:topic/n/${iot:Connection.Thing.Attributes[none]}",
              "arn:aws:iot:us-east-1:123456789012:topic/lit/${*}"]}]}"#;
        let g = grants(doc, &principal("dev-1", true));
        assert!(g.allows(Action::Publish, "c/dev-1"));
        assert!(g.allows(Action::Publish, "t/sensor"));
        assert!(g.allows(Action::Publish, "b/b7/x"));
        assert!(!g.allows(Action::Publish, "n/"));
        assert!(g.allows(Action::Publish, "lit/*"));
        assert!(!g.allows(Action::Publish, "lit/x"));
        let g = grants(doc, &principal("dev-1", false));
        assert!(g.allows(Action::Publish, "c/dev-1"));
        assert!(!g.allows(Action::Publish, "t/sensor"));
    }

    #[test]
    fn conditions_decide_as_iam_does() {
        let doc = |condition: &str| {
            format!(
                r#"{{"Statement":{{"Effect":"Allow","Action":"iot:Connect","Resource":"*","Condition":{condition}}}}}"#
            )
        };
        let case = |condition: &str, attached: bool| {
            grants(&doc(condition), &principal("dev-1", attached)).allows(Action::Connect, "dev-1")
        };
        assert!(case(
            r#"{"StringEquals":{"iot:ClientId":["x","dev-1"]}}"#,
            false
        ));
        assert!(!case(r#"{"StringEquals":{"iot:ClientId":"DEV-1"}}"#, false));
        assert!(case(
            r#"{"StringEqualsIgnoreCase":{"iot:ClientId":"DEV-1"}}"#,
            false
        ));
        assert!(case(r#"{"StringLike":{"iot:ClientId":"dev-?"}}"#, false));
        assert!(!case(
            r#"{"StringNotLike":{"iot:ClientId":"dev-*"}}"#,
            false
        ));
        assert!(case(
            r#"{"Bool":{"iot:Connection.Thing.IsAttached":true}}"#,
            true
        ));
        assert!(!case(
            r#"{"Bool":{"iot:Connection.Thing.IsAttached":"true"}}"#,
            false
        ));
        // A key the connection lacks: positive operators fail, negated ones and IfExists pass.
        assert!(!case(
            r#"{"StringEquals":{"iot:Connection.Thing.ThingTypeName":"sensor"}}"#,
            false
        ));
        assert!(case(
            r#"{"StringNotEquals":{"iot:Connection.Thing.ThingTypeName":"x"}}"#,
            false
        ));
        assert!(case(
            r#"{"StringEqualsIfExists":{"iot:Connection.Thing.ThingTypeName":"x"}}"#,
            false
        ));
        assert!(case(
            r#"{"StringEquals":{"iot:Connection.Thing.Attributes[building]":"b7"}}"#,
            true
        ));
        // Unknown operators and keys never apply.
        assert!(!case(r#"{"NumericEquals":{"iot:ClientId":"1"}}"#, false));
        assert!(!case(
            r#"{"StringNotEquals":{"aws:SourceIp":"1.2.3.4"}}"#,
            false
        ));
    }

    #[test]
    fn documents_that_are_not_policies_are_refused_by_name() {
        let principal = principal("c", false);
        for bad in [
            "not json",
            "{}",
            r#"{"Statement":[{"Effect":"Maybe","Action":"iot:*","Resource":"*"}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Action":1,"Resource":"*"}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Action":"iot:*"}]}"#,
        ] {
            let e = Grants::compile(CERT, [("bad-one", bad)], &principal).unwrap_err();
            assert_eq!(e.policy, "bad-one", "{bad}");
        }
        assert!(Grants::compile("not-an-arn", [], &principal).is_err());
    }

    #[test]
    fn glob_cases() {
        assert!(glob("dt/*/dev-1/telemetry", "dt/farm/dev-1/telemetry"));
        assert!(glob("dt/*/dev-1/telemetry", "dt/a/b/dev-1/telemetry"));
        assert!(!glob("dt/*/dev-1/telemetry", "dt/farm/dev-10/telemetry"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "ac"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "a-b-x-c"));
        assert!(!glob("a*b*c", "a-b-x-d"));
        assert!(glob("cmd/+/#", "cmd/+/#"));
        assert!(!glob("cmd/+/#", "cmd/x/y"));
    }

    /// The reference: the definition, by recursion (exponential, fine for short inputs).
    fn glob_by_definition(p: &[char], t: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('*', rest)) => (0..=t.len()).any(|k| glob_by_definition(rest, &t[k..])),
            Some((&c, rest)) => {
                !t.is_empty() && (c == '?' || c == t[0]) && glob_by_definition(rest, &t[1..])
            }
        }
    }

    proptest! {
        #[test]
        fn glob_agrees_with_a_regular_expression(
            pattern in "[ab*?/]{0,8}",
            text in "[ab/]{0,10}",
        ) {
            let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
            prop_assert_eq!(glob(&pattern, &text), glob_by_definition(&p, &t));
        }
    }
}
