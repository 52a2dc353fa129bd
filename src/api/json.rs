//! The JSON body extractor: requires `Content-Type: application/json` (so a
//! cross-origin browser form cannot post without a CORS preflight), reads
//! the body under the size limit and reports parse errors with the path of
//! the offending field as `param`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, Request};
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::AppState;

pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    Arc<AppState>: FromRef<S>,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let limit = Arc::<AppState>::from_ref(state).config.max_body_bytes;
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit }
            } else {
                ApiError::Invalid { message: "could not read the request body".into(), param: None, code: None }
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

fn is_json(ct: Option<&axum::http::HeaderValue>) -> bool {
    let Some(ct) = ct.and_then(|v| v.to_str().ok()) else { return false };
    let mime = ct.split(';').next().unwrap_or("").trim();
    mime.eq_ignore_ascii_case("application/json")
}

/// Deserializes `bytes`, mapping serde's error to a 400 naming the field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let param = field_param(&path, &inner.to_string());
                let text = inner.to_string();
                let what = untagged_expectation(&text).map_or_else(|| strip_position(&text).to_string(), str::to_string);
                let message = match &param {
                    Some(p) => format!("Invalid value for '{p}': {what}"),
                    None => format!("Invalid request body: {what}"),
                };
                ApiError::Invalid { message, param, code: None }
            }
            _ => ApiError::Invalid {
                message: format!("We could not parse the JSON body of your request: {inner}"),
                param: None,
                code: None,
            },
        }
    })
}

/// The field a data error is about: the path, or for "missing field `x`"
/// the path joined with `x`.
fn field_param(path: &str, msg: &str) -> Option<String> {
    let missing = msg
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
        .map(str::to_string);
    let base = if path == "." { None } else { Some(path.to_string()) };
    match (base, missing) {
        (Some(b), Some(m)) => Some(format!("{b}.{m}")),
        (None, Some(m)) => Some(m),
        (b, None) => b,
    }
}

/// What a field of one of the wire's untagged enums accepts, in place of
/// serde's "data did not match any variant of untagged enum X".
fn untagged_expectation(msg: &str) -> Option<&'static str> {
    let name = msg.strip_prefix("data did not match any variant of untagged enum ")?;
    let name = name.split_whitespace().next().unwrap_or("");
    Some(match name {
        "StopSpec" => "expected a string or an array of strings",
        "MessageContent" => {
            "expected a string or an array of content parts ({\"type\": \"text\", \"text\": \"...\"})"
        }
        "PromptSpec" => "expected a string, an array of strings, an array of token ids or an array of token-id arrays",
        _ => "expected a different type",
    })
}

fn strip_position(msg: &str) -> &str {
    msg.split(" at line ").next().unwrap_or(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::wire_in::{ChatCompletionRequest, CompletionRequest, PromptSpec};

    fn err_of<T: DeserializeOwned + std::fmt::Debug>(body: &str) -> ApiError {
        parse_json::<T>(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn malformed_json_has_no_param() {
        let e = err_of::<ChatCompletionRequest>("{\"model\": ");
        assert_eq!(e.param(), None);
        assert!(e.to_string().contains("parse"), "{e}");
    }

    #[test]
    fn wrong_types_and_missing_fields_name_the_field() {
        let e = err_of::<ChatCompletionRequest>(r#"{"model": "m", "messages": [], "temperature": "hot"}"#);
        assert_eq!(e.param().as_deref(), Some("temperature"));
        let e = err_of::<ChatCompletionRequest>(r#"{"model": "m", "messages": [{"content": "hi"}]}"#);
        assert_eq!(e.param().as_deref(), Some("messages[0].role"));
        let e = err_of::<ChatCompletionRequest>(r#"{"messages": []}"#);
        assert_eq!(e.param().as_deref(), Some("model"));
        let e = err_of::<CompletionRequest>(r#"{"model": "m", "prompt": {"a": 1}}"#);
        assert_eq!(e.param().as_deref(), Some("prompt"));
    }

    /// serde's "did not match any variant of untagged enum" named a Rust
    /// type; the message now says what the field accepts.
    #[test]
    fn untagged_fields_say_what_they_accept() {
        let cases = [
            (r#"{"model": "m", "messages": [], "stop": 3}"#, "stop", "a string or an array of strings"),
            (r#"{"model": "m", "messages": [{"role": "user", "content": 5}]}"#, "messages[0].content", "array of content parts"),
        ];
        for (body, param, want) in cases {
            let e = err_of::<ChatCompletionRequest>(body);
            assert_eq!(e.param().as_deref(), Some(param), "{body}");
            let m = e.to_string();
            assert!(m.contains(want) && !m.contains("untagged") && !m.contains("Spec"), "{m}");
        }
        let e = err_of::<CompletionRequest>(r#"{"model": "m", "prompt": {"a": 1}}"#).to_string();
        assert!(e.contains("an array of token ids") && !e.contains("untagged"), "{e}");
    }

    #[test]
    fn prompt_forms() {
        let p = |s: &str| parse_json::<CompletionRequest>(format!(r#"{{"model":"m","prompt":{s}}}"#).as_bytes()).unwrap().prompt;
        assert!(matches!(p("\"hi\""), PromptSpec::Text(_)));
        assert!(matches!(p("[\"a\", \"b\"]"), PromptSpec::Texts(v) if v.len() == 2));
        assert!(matches!(p("[1, 2]"), PromptSpec::Ids(v) if v == [1, 2]));
        assert!(matches!(p("[[1], [2, 3]]"), PromptSpec::IdLists(v) if v.len() == 2));
    }

    #[test]
    fn unknown_fields_are_kept_for_refusal() {
        let r: ChatCompletionRequest = parse_json(br#"{"model":"m","messages":[],"functions":[],"foo":1}"#).unwrap();
        assert!(r.extra.contains_key("functions") && r.extra.contains_key("foo"));
        assert!(!r.extra.contains_key("model"));
    }
}
