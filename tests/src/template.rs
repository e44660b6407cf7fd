//! Checks that every Lambda function in the SAM template is built from a crate of this workspace.
//!
//! `sam build` with `BuildMethod: rust-cargolambda` runs cargo-lambda in the function's `CodeUri`;
//! a typo there, or a crate renamed without the template, only shows up at deploy time. This turns
//! it into a test failure.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde_norway::Value;

/// A workspace package as far as the template cares: where it is and which binaries it builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub dir: PathBuf,
    pub binaries: Vec<String>,
}

/// The workspace's packages, from `cargo metadata`.
pub fn workspace_packages(workspace_root: &Path) -> Result<Vec<Package>, String> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .manifest_path(workspace_root.join("Cargo.toml"))
        .no_deps()
        .exec()
        .map_err(|e| format!("cargo metadata: {e}"))?;
    Ok(metadata
        .workspace_packages()
        .into_iter()
        .map(|p| Package {
            name: p.name.to_string(),
            dir: p
                .manifest_path
                .parent()
                .map(|d| d.as_std_path().to_path_buf())
                .unwrap_or_default(),
            binaries: p
                .targets
                .iter()
                .filter(|t| t.is_bin())
                .map(|t| t.name.clone())
                .collect(),
        })
        .collect())
}

/// Where a function resource says its code is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionBuild {
    pub resource: String,
    pub package: String,
    pub binary: String,
}

/// `a/b/../c` → `a/c`, without touching the file system (the path may not exist).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(value, |v, key| v.get(*key))
        .and_then(Value::as_str)
}

/// Checks every `AWS::Serverless::Function` and `AWS::Lambda::Function` of `template` (parsed YAML,
/// located in `template_dir`) against `packages`. Returns what each function builds, or every
/// problem found.
pub fn check(
    template: &Value,
    template_dir: &Path,
    packages: &[Package],
) -> Result<Vec<FunctionBuild>, Vec<String>> {
    let globals = template.get("Globals").and_then(|g| g.get("Function"));
    let setting = |props: &Value, key: &str| {
        props
            .get(key)
            .and_then(Value::as_str)
            .or_else(|| globals.and_then(|g| g.get(key)).and_then(Value::as_str))
            .map(str::to_owned)
    };
    let resources: BTreeMap<String, Value> = template
        .get("Resources")
        .cloned()
        .and_then(|r| serde_norway::from_value(r).ok())
        .unwrap_or_default();

    let mut builds = Vec::new();
    let mut problems = Vec::new();
    for (name, resource) in &resources {
        let kind = str_at(resource, &["Type"]).unwrap_or_default();
        if kind == "AWS::Lambda::Function" {
            problems.push(format!(
                "{name}: plain AWS::Lambda::Function; use AWS::Serverless::Function so sam build compiles it"
            ));
            continue;
        }
        if kind != "AWS::Serverless::Function" {
            continue;
        }
        let props = resource.get("Properties").cloned().unwrap_or(Value::Null);
        if str_at(resource, &["Metadata", "BuildMethod"]) != Some("rust-cargolambda") {
            problems.push(format!(
                "{name}: Metadata.BuildMethod must be rust-cargolambda"
            ));
        }
        if setting(&props, "Runtime").as_deref() != Some("provided.al2023") {
            problems.push(format!("{name}: Runtime must be provided.al2023"));
        }
        if setting(&props, "Handler").as_deref() != Some("bootstrap") {
            problems.push(format!("{name}: Handler must be bootstrap"));
        }
        let Some(code_uri) = setting(&props, "CodeUri") else {
            problems.push(format!(
                "{name}: CodeUri must name the function's crate folder"
            ));
            continue;
        };
        let dir = normalize(&template_dir.join(&code_uri));
        let Some(package) = packages.iter().find(|p| normalize(&p.dir) == dir) else {
            problems.push(format!(
                "{name}: CodeUri {code_uri} ({}) is not a crate of the workspace",
                dir.display()
            ));
            continue;
        };
        let wanted = str_at(resource, &["Metadata", "BuildProperties", "Binary"]);
        let binary = match (wanted, package.binaries.as_slice()) {
            (Some(bin), bins) if bins.iter().any(|b| b == bin) => bin.to_owned(),
            (Some(bin), bins) => {
                problems.push(format!(
                    "{name}: crate {} has no binary {bin} (it has {bins:?})",
                    package.name
                ));
                continue;
            }
            (None, [only]) => only.clone(),
            (None, bins) => {
                problems.push(format!(
                    "{name}: crate {} has {} binaries {bins:?}; set Metadata.BuildProperties.Binary",
                    package.name,
                    bins.len()
                ));
                continue;
            }
        };
        builds.push(FunctionBuild {
            resource: name.clone(),
            package: package.name.clone(),
            binary,
        });
    }
    if problems.is_empty() {
        Ok(builds)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packages() -> Vec<Package> {
        vec![
            Package {
                name: "telemetry-router".into(),
                dir: "/ws/functions/telemetry-router".into(),
                binaries: vec!["telemetry-router".into()],
            },
            Package {
                name: "provisioning".into(),
                dir: "/ws/functions/provisioning".into(),
                binaries: vec!["pre-provisioning-hook".into(), "jitr".into()],
            },
        ]
    }

    fn template(functions: &str) -> Value {
        let yaml = format!(
            "Globals:\n  Function:\n    Runtime: provided.al2023\n    Handler: bootstrap\n\
             Resources:\n  Bucket:\n    Type: AWS::S3::Bucket\n{functions}"
        );
        serde_norway::from_str(&yaml).unwrap()
    }

    fn function(name: &str, code_uri: &str, binary: Option<&str>) -> String {
        let props = binary
            .map(|b| format!("      BuildProperties:\n        Binary: {b}\n"))
            .unwrap_or_default();
        format!(
            "  {name}:\n    Type: AWS::Serverless::Function\n    Metadata:\n      BuildMethod: rust-cargolambda\n\
             {props}    Properties:\n      CodeUri: {code_uri}\n      Role: !GetAtt Role.Arn\n"
        )
    }

    #[test]
    fn resolves_crates_relative_to_the_template() {
        let t = template(&format!(
            "{}{}",
            function("Router", "../functions/telemetry-router", None),
            function(
                "Hook",
                "../functions/provisioning/",
                Some("pre-provisioning-hook")
            )
        ));
        let builds = check(&t, Path::new("/ws/infra"), &packages()).unwrap();
        assert_eq!(
            builds,
            vec![
                FunctionBuild {
                    resource: "Hook".into(),
                    package: "provisioning".into(),
                    binary: "pre-provisioning-hook".into()
                },
                FunctionBuild {
                    resource: "Router".into(),
                    package: "telemetry-router".into(),
                    binary: "telemetry-router".into()
                },
            ]
        );
    }

    #[test]
    fn reports_every_broken_function() {
        let t = template(&format!(
            "{}{}{}",
            function("Typo", "../functions/telemetry-ruoter", None),
            function("NoBinary", "../functions/provisioning", None),
            function("WrongBinary", "../functions/provisioning", Some("jitr2")),
        ));
        let problems = check(&t, Path::new("/ws/infra"), &packages()).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems[0].starts_with("NoBinary: crate provisioning has 2 binaries"));
        assert!(problems[1].starts_with("Typo: CodeUri ../functions/telemetry-ruoter"));
        assert!(problems[2].starts_with("WrongBinary: crate provisioning has no binary jitr2"));
    }

    #[test]
    fn requires_cargo_lambda_build_and_the_custom_runtime() {
        let yaml = "Resources:\n  F:\n    Type: AWS::Serverless::Function\n    Properties:\n      \
                    CodeUri: ../functions/telemetry-router\n      Runtime: python3.13\n      Handler: app.handler\n";
        let t: Value = serde_norway::from_str(yaml).unwrap();
        let problems = check(&t, Path::new("/ws/infra"), &packages()).unwrap_err();
        assert_eq!(
            problems,
            vec![
                "F: Metadata.BuildMethod must be rust-cargolambda",
                "F: Runtime must be provided.al2023",
                "F: Handler must be bootstrap",
            ]
        );
    }

    #[test]
    fn plain_lambda_functions_are_refused() {
        let t: Value =
            serde_norway::from_str("Resources:\n  F:\n    Type: AWS::Lambda::Function\n").unwrap();
        assert!(check(&t, Path::new("/ws/infra"), &packages()).is_err());
    }
}
