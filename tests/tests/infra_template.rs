//! infra/template.yaml against the workspace: every function resource builds a crate that exists.

use shoal_integration_tests::{repo_root, template};

#[test]
fn every_function_in_the_template_is_a_workspace_crate() {
    let root = repo_root();
    let path = root.join("infra/template.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let parsed: serde_norway::Value = serde_norway::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
    assert_eq!(
        parsed["Transform"].as_str(),
        Some("AWS::Serverless-2016-10-31"),
        "the template is a SAM template"
    );
    let packages = template::workspace_packages(&root).unwrap();
    assert!(
        packages.iter().any(|p| p.name == "shoal-shared"),
        "cargo metadata lists the workspace: {packages:?}"
    );
    if let Err(problems) = template::check(&parsed, &root.join("infra"), &packages) {
        panic!("infra/template.yaml:\n  {}", problems.join("\n  "));
    }
}

#[test]
fn functions_default_to_arm64_and_the_custom_runtime() {
    let text = std::fs::read_to_string(repo_root().join("infra/template.yaml")).unwrap();
    let parsed: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    assert_eq!(parsed["Parameters"]["Architecture"]["Default"], "arm64");
    let globals = &parsed["Globals"]["Function"];
    assert_eq!(globals["Runtime"], "provided.al2023");
    assert_eq!(globals["Handler"], "bootstrap");
}
