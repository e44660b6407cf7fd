//! RegisterThing's side of fleet provisioning: the template's `AWS::IoT::ProvisioningTemplate`s
//! as deployed, and what a provisioning template's body makes of one request's parameters — the
//! thing (attributes, groups, type, override settings), the certificate's status and the
//! policies to attach — evaluated with the same intrinsic functions CloudFormation-style
//! provisioning templates use (`Ref`, `Fn::If`, `Fn::Join`, `Fn::Sub`, conditions). Pure.
//!
//! <https://docs.aws.amazon.com/iot/latest/developerguide/provision-template.html>,
//! <https://docs.aws.amazon.com/iot/latest/developerguide/fleet-provision-api.html#register-thing>

use std::collections::BTreeMap;

use serde_json::Value as Json;
use serde_norway::Value;
use shoal_template::{Resolved, Template};

/// The parameter RegisterThing sets to the certificate being provisioned.
pub const CERTIFICATE_ID_PARAMETER: &str = "AWS::IoT::Certificate::Id";

/// What was left out of the template: `(logical id, why)`.
pub type Skipped = Vec<(String, String)>;

/// A provisioning template as deployed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetTemplate {
    /// `TemplateName`.
    pub name: String,
    /// `Enabled`.
    pub enabled: bool,
    /// `PreProvisioningHook.TargetArn`: the hook function's ARN.
    pub hook: Option<String>,
    /// `TemplateBody` (JSON text).
    pub body: String,
}

/// Reads every deployed provisioning template of `template`; what cannot be read is skipped
/// with the reason: `(templates, skipped as (logical id, why))`.
pub fn load(template: &Template) -> (Vec<FleetTemplate>, Skipped) {
    let mut loaded = Vec::new();
    let mut skipped = Vec::new();
    for (id, resource) in template.resources_of("AWS::IoT::ProvisioningTemplate") {
        let read = || -> Result<Option<FleetTemplate>, String> {
            if !template.deployed(resource)? {
                return Ok(None);
            }
            let properties = resource.get("Properties").ok_or("no Properties")?;
            let name = match properties.get("TemplateName") {
                Some(name) => template.text(name)?,
                None => id.to_owned(),
            };
            let body = template.text(properties.get("TemplateBody").ok_or("no TemplateBody")?)?;
            serde_json::from_str::<Json>(&body).map_err(|e| format!("TemplateBody: {e}"))?;
            let hook = properties
                .get("PreProvisioningHook")
                .and_then(|h| h.get("TargetArn"))
                .map(|arn| template.text(arn))
                .transpose()?;
            let enabled = properties
                .get("Enabled")
                .map(|e| template.text(e))
                .transpose()?
                .is_some_and(|e| e == "true");
            Ok(Some(FleetTemplate {
                name,
                enabled,
                hook,
                body,
            }))
        };
        match read() {
            Ok(Some(t)) => loaded.push(t),
            Ok(None) => {}
            Err(why) => skipped.push((id.to_owned(), why)),
        }
    }
    (loaded, skipped)
}

/// The template's deployed `AWS::IoT::Policy`s as the registry should hold them: `(name,
/// document JSON)`. A policy is named by its `PolicyName`, else by the stack's local name for its
/// logical id (CloudFormation would generate one); one with neither is skipped with the reason.
pub fn policies(template: &Template) -> (Vec<(String, String)>, Skipped) {
    let mut loaded = Vec::new();
    let mut skipped = Vec::new();
    for (id, resource) in template.resources_of("AWS::IoT::Policy") {
        let read = || -> Result<Option<(String, String)>, String> {
            if !template.deployed(resource)? {
                return Ok(None);
            }
            let properties = resource.get("Properties").ok_or("no Properties")?;
            let name = match properties.get("PolicyName") {
                Some(name) => template.text(name)?,
                None => template.local_name(id)?,
            };
            let document = template.resolve_json(
                properties
                    .get("PolicyDocument")
                    .ok_or("no PolicyDocument")?,
            )?;
            Ok(Some((name, document.to_string())))
        };
        match read() {
            Ok(Some(policy)) => loaded.push(policy),
            Ok(None) => {}
            Err(why) => skipped.push((id.to_owned(), why)),
        }
    }
    (loaded, skipped)
}

/// The template's deployed `AWS::IoT::ThingType`s: `(name, searchable attributes)`, named by
/// `ThingTypeName`, else by the stack's local name for the logical id; one with neither is
/// skipped with the reason.
pub fn thing_types(template: &Template) -> (Vec<(String, Vec<String>)>, Skipped) {
    let mut loaded = Vec::new();
    let mut skipped = Vec::new();
    for (id, resource) in template.resources_of("AWS::IoT::ThingType") {
        let read = || -> Result<Option<(String, Vec<String>)>, String> {
            if !template.deployed(resource)? {
                return Ok(None);
            }
            let properties = resource.get("Properties");
            let name = match properties.and_then(|p| p.get("ThingTypeName")) {
                Some(name) => template.text(name)?,
                None => template.local_name(id)?,
            };
            let searchable = match properties
                .and_then(|p| p.get("ThingTypeProperties"))
                .and_then(|p| p.get("SearchableAttributes"))
                .map(|a| template.resolve(a))
                .transpose()?
            {
                Some(Resolved::List(list)) => list,
                Some(Resolved::Text(one)) => vec![one],
                None | Some(Resolved::NoValue) => Vec::new(),
            };
            Ok(Some((name, searchable)))
        };
        match read() {
            Ok(Some(thing_type)) => loaded.push(thing_type),
            Ok(None) => {}
            Err(why) => skipped.push((id.to_owned(), why)),
        }
    }
    (loaded, skipped)
}

/// What to do when the thing exists already (`OverrideSettings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Override {
    /// Keep what it has.
    DoNothing,
    /// Add the template's values to what it has (attributes only).
    Merge,
    /// Put the template's values in place of what it has.
    Replace,
    /// Refuse the request.
    Fail,
}

impl Override {
    fn parse(text: Option<&str>) -> Result<Self, String> {
        match text {
            None | Some("DO_NOTHING") => Ok(Self::DoNothing),
            Some("MERGE") => Ok(Self::Merge),
            Some("REPLACE") => Ok(Self::Replace),
            Some("FAIL") => Ok(Self::Fail),
            Some(other) => Err(format!("override setting {other}")),
        }
    }
}

/// The thing a request provisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThingPlan {
    /// `ThingName`.
    pub name: String,
    /// `AttributePayload`.
    pub attributes: BTreeMap<String, String>,
    /// `ThingGroups`.
    pub groups: Vec<String>,
    /// `ThingTypeName`.
    pub thing_type: Option<String>,
    /// `OverrideSettings.AttributePayload`.
    pub on_attributes: Override,
    /// `OverrideSettings.ThingGroups`.
    pub on_groups: Override,
    /// `OverrideSettings.ThingTypeName`.
    pub on_type: Override,
}

/// What one RegisterThing request does.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The thing, if the template has one.
    pub thing: Option<ThingPlan>,
    /// The certificate's new status (`ACTIVE`…), if the template has the certificate.
    pub certificate_status: Option<String>,
    /// Policies attached to the certificate, by name.
    pub policies: Vec<String>,
    /// `DeviceConfiguration`, answered to the device.
    pub device_configuration: Json,
}

/// The plan of `body` for `parameters` (the request's, the hook's overrides applied, and
/// [`CERTIFICATE_ID_PARAMETER`]).
///
/// # Errors
/// A required parameter missing, a resource the body cannot have (another type, a certificate
/// other than the one being provisioned, a policy given as a document), or a function that does
/// not resolve: the message says which.
pub fn plan(body: &str, parameters: &BTreeMap<String, String>) -> Result<Plan, String> {
    let declared: Json = serde_json::from_str(body).map_err(|e| format!("template body: {e}"))?;
    for (name, spec) in declared
        .get("Parameters")
        .and_then(Json::as_object)
        .into_iter()
        .flatten()
    {
        if spec.get("Default").is_none() && !parameters.contains_key(name) {
            return Err(format!("parameter {name} is required"));
        }
    }
    let template =
        Template::parse(body, parameters, &BTreeMap::new()).map_err(|e| e.to_string())?;
    let mut plan = Plan {
        thing: None,
        certificate_status: None,
        policies: Vec::new(),
        device_configuration: template
            .section("DeviceConfiguration")
            .map(|c| template.resolve_json(c))
            .transpose()?
            .unwrap_or_else(|| Json::Object(serde_json::Map::new())),
    };
    let kinds = [
        "AWS::IoT::Thing",
        "AWS::IoT::Certificate",
        "AWS::IoT::Policy",
    ];
    for kind in kinds {
        for (id, resource) in template.resources_of(kind) {
            if !template.deployed(resource)? {
                continue;
            }
            let properties = resource
                .get("Properties")
                .ok_or_else(|| format!("{id}: no Properties"))?;
            let text = |name: &str| -> Result<Option<String>, String> {
                match properties
                    .get(name)
                    .map(|v| template.resolve(v))
                    .transpose()?
                {
                    None | Some(Resolved::NoValue) => Ok(None),
                    Some(Resolved::Text(t)) => Ok(Some(t)),
                    Some(Resolved::List(l)) => Err(format!("{id}.{name}: {l:?} is a list")),
                }
            };
            match kind {
                "AWS::IoT::Thing" => {
                    let name = text("ThingName")?.ok_or_else(|| format!("{id}: no ThingName"))?;
                    let mut attributes = BTreeMap::new();
                    if let Some(payload) = properties.get("AttributePayload") {
                        match template.resolve_json(payload)? {
                            Json::Object(map) => {
                                for (key, value) in map {
                                    let value = match value {
                                        Json::String(s) => s,
                                        other => other.to_string(),
                                    };
                                    attributes.insert(key, value);
                                }
                            }
                            other => {
                                return Err(format!("{id}.AttributePayload: {other} is no map"));
                            }
                        }
                    }
                    let groups = match properties
                        .get("ThingGroups")
                        .map(|g| template.resolve(g))
                        .transpose()?
                    {
                        None | Some(Resolved::NoValue) => Vec::new(),
                        Some(Resolved::List(list)) => list,
                        Some(Resolved::Text(t)) => vec![t],
                    };
                    let settings = resource.get("OverrideSettings");
                    let setting = |name: &str| {
                        Override::parse(settings.and_then(|s| s.get(name)).and_then(Value::as_str))
                    };
                    plan.thing = Some(ThingPlan {
                        name,
                        attributes,
                        groups: groups.into_iter().filter(|g| !g.is_empty()).collect(),
                        thing_type: text("ThingTypeName")?,
                        on_attributes: setting("AttributePayload")?,
                        on_groups: setting("ThingGroups")?,
                        on_type: setting("ThingTypeName")?,
                    });
                }
                "AWS::IoT::Certificate" => {
                    let id_given = text("CertificateId")?;
                    let provisioned = parameters.get(CERTIFICATE_ID_PARAMETER);
                    if id_given.as_ref() != provisioned {
                        return Err(format!(
                            "{id}: CertificateId must be {{\"Ref\": \"{CERTIFICATE_ID_PARAMETER}\"}} (the certificate being provisioned)"
                        ));
                    }
                    plan.certificate_status =
                        Some(text("Status")?.unwrap_or_else(|| "ACTIVE".into()));
                }
                _ => {
                    let name = text("PolicyName")?.ok_or_else(|| {
                        format!("{id}: only a PolicyName is emulated (not a PolicyDocument)")
                    })?;
                    plan.policies.push(name);
                }
            }
        }
    }
    for (id, resource) in template.all_resource_types() {
        if !kinds.contains(&resource) {
            return Err(format!(
                "{id}: resource type {resource} is not allowed in a provisioning template"
            ));
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project() -> (Vec<FleetTemplate>, Vec<(String, String)>) {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../infra/template.yaml"
        ))
        .unwrap();
        let resources = [
            ("DevicePolicy".to_owned(), "shoal-local-device".to_owned()),
            (
                "DeviceThingType".to_owned(),
                "shoal-local-device".to_owned(),
            ),
        ]
        .into();
        let parsed = Template::parse(&text, &BTreeMap::new(), &resources).unwrap();
        let (types, skipped) = thing_types(&parsed);
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(
            types,
            [(
                "shoal-local-device".to_owned(),
                vec![
                    "model".to_owned(),
                    "hardware".to_owned(),
                    "serial".to_owned()
                ]
            )]
        );
        load(&parsed)
    }

    fn parameters(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_projects_template_provisions_a_thing_its_certificate_and_the_device_policy() {
        let (templates, skipped) = project();
        assert!(skipped.is_empty(), "{skipped:?}");
        let [fleet] = templates.as_slice() else {
            panic!("{templates:?}")
        };
        assert_eq!(fleet.name, "shoal-fleet");
        assert!(fleet.enabled);
        assert_eq!(
            fleet.hook.as_deref(),
            Some("arn:aws:lambda:us-east-1:123456789012:function:PreProvisioningHookFunction")
        );
        let planned = plan(
            &fleet.body,
            &parameters(&[
                ("SerialNumber", "SN-1"),
                ("ThingName", "SN-1"),
                ("Model", "th-v2"),
                ("Batch", "2026-11"),
                ("ThingGroup", "greenhouse"),
                (CERTIFICATE_ID_PARAMETER, "abc"),
            ]),
        )
        .unwrap();
        let thing = planned.thing.unwrap();
        assert_eq!(thing.name, "SN-1");
        assert_eq!(thing.attributes["model"], "th-v2");
        assert_eq!(thing.attributes["serial"], "SN-1");
        assert_eq!(thing.groups, ["greenhouse"]);
        assert_eq!(thing.on_attributes, Override::Merge);
        assert_eq!(thing.on_groups, Override::DoNothing);
        assert_eq!(thing.thing_type.as_deref(), Some("shoal-local-device"));
        assert_eq!(thing.on_type, Override::Replace);
        assert_eq!(planned.certificate_status.as_deref(), Some("ACTIVE"));
        assert_eq!(planned.policies, ["shoal-local-device"]);

        let no_group = plan(
            &fleet.body,
            &parameters(&[
                ("SerialNumber", "SN-2"),
                ("ThingName", "SN-2"),
                ("Model", "th-v2"),
                ("Batch", "b"),
                (CERTIFICATE_ID_PARAMETER, "abc"),
            ]),
        )
        .unwrap();
        assert!(
            no_group.thing.unwrap().groups.is_empty(),
            "Fn::If on HasGroup"
        );

        let missing = plan(&fleet.body, &parameters(&[("SerialNumber", "SN-3")])).unwrap_err();
        assert!(missing.contains("is required"), "{missing}");
    }

    #[test]
    fn the_projects_policies_are_named_locally_and_resolved() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../infra/template.yaml"
        ))
        .unwrap();
        let resources = [("DevicePolicy".to_owned(), "shoal-local-device".to_owned())].into();
        let (loaded, skipped) =
            policies(&Template::parse(&text, &BTreeMap::new(), &resources).unwrap());
        let [(name, document)] = loaded.as_slice() else {
            panic!("{loaded:?}")
        };
        assert_eq!(name, "shoal-local-device");
        let document: Json = serde_json::from_str(document).unwrap();
        assert_eq!(
            document["Statement"][0]["Resource"],
            "arn:aws:iot:us-east-1:123456789012:client/${iot:Connection.Thing.ThingName}"
        );
        assert!(
            skipped
                .iter()
                .any(|(id, why)| id == "ClaimPolicy" && why.contains("--resource ClaimPolicy=")),
            "{skipped:?}"
        );
    }

    #[test]
    fn bodies_that_do_more_than_register_are_refused() {
        let body = r#"{"Parameters": {"AWS::IoT::Certificate::Id": {"Type": "String"}},
            "Resources": {"cert": {"Type": "AWS::IoT::Certificate",
              "Properties": {"CertificateId": "someone-else", "Status": "ACTIVE"}}}}"#;
        let refused = plan(body, &parameters(&[(CERTIFICATE_ID_PARAMETER, "mine")])).unwrap_err();
        assert!(refused.contains("CertificateId"), "{refused}");
        let body = r#"{"Resources": {"queue": {"Type": "AWS::SQS::Queue", "Properties": {}}}}"#;
        assert!(
            plan(body, &BTreeMap::new())
                .unwrap_err()
                .contains("not allowed")
        );
    }
}
