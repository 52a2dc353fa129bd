//! Issue 15 part 5: deploy/k8s/ validated against the Kubernetes OpenAPI
//! schemas (the `kubernetes-validate` package's bundled schemas, strict,
//! offline) and checked for what schemas cannot see (probe paths, grace
//! period vs --shutdown-timeout, selectors, real `kiln serve` flags, the KEDA
//! trigger): deploy/check_manifests.py, in the venv that
//! scripts/setup-fleet-tools.sh makes.

use std::path::Path;
use std::process::Command;

#[test]
fn kubernetes_manifests_validate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = std::env::var_os("KILN_K8S_VENV").map(std::path::PathBuf::from).unwrap_or_else(|| root.join(".venv-k8s"));
    let python = venv.join("bin/python");
    if !python.exists() {
        eprintln!("SKIP: {} is missing (scripts/setup-fleet-tools.sh installs kubernetes-validate there)", python.display());
        return;
    }
    let out = Command::new(&python)
        .arg(root.join("deploy/check_manifests.py"))
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .output()
        .expect("run deploy/check_manifests.py");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "deploy/k8s does not check:\n{text}");
    assert!(text.contains("0 failures") && text.contains("Deployment/kiln-gpu against Kubernetes"), "{text}");
}
