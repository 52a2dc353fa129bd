//! External clients against a real `kiln serve`: the official openai Python
//! SDK (tests/openai_client.py, tests/structured_client.py for structured
//! outputs and tools, tests/responses_client.py for the Responses API), the
//! official anthropic SDK (tests/anthropic_client.py) and schemathesis
//! fuzzing from /openapi.json (scripts/schemathesis.sh, bounded examples). Their venvs come from
//! scripts/setup-python-clients.sh (scripts/test.sh runs it); without them
//! these tests print why they skip.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's python when `module` imports there; None with a reason printed.
fn venv_python(venv: &str, module: &str) -> Option<PathBuf> {
    let python = root().join(venv).join("bin/python");
    let ok = Command::new(&python).args(["-c", &format!("import {module}")]).status().is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIP: {venv} has no {module}; run scripts/setup-python-clients.sh");
        return None;
    }
    Some(python)
}

fn model_available() -> bool {
    kiln::launch::resolve_model(&None).map_err(|e| eprintln!("SKIP: the default model is unavailable: {e:#}")).is_ok()
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.env("KILN_BIN", env!("CARGO_BIN_EXE_kiln")).current_dir(root()).output().expect(what);
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed:\n{text}");
    println!("{text}");
}

#[test]
fn openai_python_sdk() {
    let Some(python) = venv_python(".venv-openai", "openai, pytest") else { return };
    if !model_available() {
        return;
    }
    let script = root().join("tests/openai_client.py");
    run(Command::new(python).args(["-m", "pytest", "-q", "-p", "no:cacheprovider"]).arg(&script), "pytest tests/openai_client.py");
}

/// Structured outputs and tool calls through the SDK's `parse` and
/// `stream` helpers; every constrained output is validated by `jsonschema`.
#[test]
fn structured_outputs_and_tools_with_the_openai_sdk() {
    let Some(python) = venv_python(".venv-openai", "openai, pytest, jsonschema, pydantic") else { return };
    if !model_available() {
        return;
    }
    let script = root().join("tests/structured_client.py");
    run(Command::new(python).args(["-m", "pytest", "-q", "-p", "no:cacheprovider"]).arg(&script), "pytest tests/structured_client.py");
}

/// OpenAI's Responses API through the SDK's `responses` resource: create,
/// parse, stream, function tools, previous_response_id, the store and
/// per-key ownership (tests/responses_client.py).
#[test]
fn responses_api_with_the_openai_sdk() {
    let Some(python) = venv_python(".venv-openai", "openai, pytest, jsonschema, pydantic") else { return };
    if !model_available() {
        return;
    }
    let script = root().join("tests/responses_client.py");
    run(Command::new(python).args(["-m", "pytest", "-q", "-p", "no:cacheprovider"]).arg(&script), "pytest tests/responses_client.py");
}

/// Anthropic's Messages API through the official `anthropic` SDK: create,
/// stream, tools, count_tokens and its error classes (tests/anthropic_client.py).
#[test]
fn messages_api_with_the_anthropic_sdk() {
    let Some(python) = venv_python(".venv-openai", "anthropic, pytest, jsonschema") else { return };
    if !model_available() {
        return;
    }
    let script = root().join("tests/anthropic_client.py");
    run(Command::new(python).args(["-m", "pytest", "-q", "-p", "no:cacheprovider"]).arg(&script), "pytest tests/anthropic_client.py");
}

/// `client.embeddings.create` (float, base64 and the SDK's default) against a
/// server with two models; vectors checked against sentence-transformers'.
#[test]
fn openai_python_sdk_embeddings() {
    let Some(python) = venv_python(".venv-openai", "openai, pytest") else { return };
    let Ok(chat) = kiln::launch::resolve_model(&None) else { return eprintln!("SKIP: the default model is unavailable") };
    let minilm = kiln::launch::resolve_minilm().expect("all-MiniLM-L6-v2 (models/fetch_minilm.sh)");
    let script = root().join("tests/openai_embeddings.py");
    let mut cmd = Command::new(python);
    cmd.args(["-m", "pytest", "-q", "-p", "no:cacheprovider"]).arg(&script).env("KILN_CHAT_MODEL", chat).env("KILN_MINILM", minilm);
    run(&mut cmd, "pytest tests/openai_embeddings.py");
}

#[test]
fn schemathesis_fuzz_from_openapi() {
    if venv_python(".venv-schemathesis", "schemathesis").is_none() || !model_available() {
        return;
    }
    let script: &Path = &root().join("scripts/schemathesis.sh");
    run(Command::new("bash").arg(script).arg("20"), "scripts/schemathesis.sh");
}
