//! Errors of the Files and Batch routes, in OpenAI's shape
//! `{"error": {"message", "type", "param", "code"}}`, with their HTTP
//! status chosen in one function (`status_type_code`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::store::StoreError;
use crate::api::error::{ErrorBody, ErrorResponse};
use crate::api::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum BatchApiError {
    /// A request error the live API already knows (bad JSON, bad field...).
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The id names no object the caller may see (another key's objects
    /// are reported missing too: their existence is not revealed).
    #[error("No such {kind} object: {id}")]
    NotFound { kind: &'static str, id: String, param: Option<&'static str> },
    /// A batch input file that fails validation: line number and reason.
    #[error("{0}")]
    InvalidFile(String),
    #[error("File is too large: the limit is {limit} bytes (--max-file-bytes)")]
    FileTooLarge { limit: u64 },
    /// The object is in a state that does not allow the operation.
    #[error("{0}")]
    Conflict(String),
    /// The batch API is off or its storage cannot be used.
    #[error("The batch API is unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for BatchApiError {
    fn from(e: StoreError) -> Self {
        if e.is_unavailable() {
            tracing::error!(error = %e, "batch API: the shared store is unreachable");
            return BatchApiError::Unavailable("the shared store cannot be reached; retry later".into());
        }
        BatchApiError::Internal(e.to_string())
    }
}

impl From<std::io::Error> for BatchApiError {
    fn from(e: std::io::Error) -> Self {
        BatchApiError::Internal(format!("storage: {e}"))
    }
}

impl BatchApiError {
    pub fn invalid(message: impl Into<String>, param: &str) -> Self {
        BatchApiError::Api(ApiError::invalid(message, param))
    }

    /// The one mapping to (status, OpenAI `type`, `code`, `param`).
    fn status_type_code(&self) -> (StatusCode, &'static str, Option<&'static str>, Option<String>) {
        const INVALID: &str = "invalid_request_error";
        match self {
            BatchApiError::Api(e) => {
                let (s, t, c) = e.status_type_code();
                (s, t, c, e.param())
            }
            BatchApiError::NotFound { param, .. } => (StatusCode::NOT_FOUND, INVALID, Some("not_found"), param.map(String::from)),
            BatchApiError::InvalidFile(_) => (StatusCode::BAD_REQUEST, INVALID, Some("invalid_file"), Some("file".into())),
            BatchApiError::FileTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, INVALID, Some("file_too_large"), Some("file".into())),
            BatchApiError::Conflict(_) => (StatusCode::CONFLICT, INVALID, Some("conflict"), None),
            BatchApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "server_error", Some("batch_unavailable"), None),
            BatchApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", Some("internal_error"), None),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status_type_code().0
    }

    pub fn body(&self) -> ErrorResponse {
        if let BatchApiError::Api(e) = self {
            return e.body();
        }
        let (_, kind, code, param) = self.status_type_code();
        let message = match self {
            BatchApiError::Internal(_) => "The server had an internal error while processing the request.".to_string(),
            other => other.to_string(),
        };
        ErrorResponse { error: ErrorBody { message, r#type: kind.into(), param, code: code.map(String::from) } }
    }
}

impl IntoResponse for BatchApiError {
    fn into_response(self) -> Response {
        match self {
            BatchApiError::Api(e) => e.into_response(),
            other => {
                if let BatchApiError::Internal(detail) = &other {
                    tracing::error!(detail = %detail, "batch API internal error");
                }
                (other.status(), axum::Json(other.body())).into_response()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let e = BatchApiError::NotFound { kind: "File", id: "file-x".into(), param: Some("file_id") };
        let v = serde_json::to_value(e.body()).unwrap();
        assert_eq!((e.status(), v["error"]["message"].as_str().unwrap()), (StatusCode::NOT_FOUND, "No such File object: file-x"));
        assert_eq!(v["error"]["param"], "file_id");
        let e = BatchApiError::Internal("/secret/path".into());
        assert!(!serde_json::to_string(&e.body()).unwrap().contains("secret"));
        let e = BatchApiError::invalid("bad", "endpoint");
        assert_eq!((e.status(), e.body().error.param.as_deref()), (StatusCode::BAD_REQUEST, Some("endpoint")));
    }
}
