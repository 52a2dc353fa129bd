//! Runs tests/batch_openai.py (the official `openai` Python SDK against a
//! real `kiln serve`) through scripts/test-batch-openai.sh, which makes its
//! own venv. Skips, saying why, when Python, venv or pip is unavailable.

use std::path::Path;
use std::process::Command;

#[test]
fn openai_sdk_drives_the_batch_api() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("scripts/test-batch-openai.sh"))
        .env("KILN_BIN", env!("CARGO_BIN_EXE_kiln"))
        .output()
        .expect("run scripts/test-batch-openai.sh");
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.code() == Some(77) {
        eprintln!("{}", log.trim());
        return;
    }
    assert!(out.status.success(), "tests/batch_openai.py failed:\n{log}");
    assert!(log.contains("all checks passed"), "{log}");
}
