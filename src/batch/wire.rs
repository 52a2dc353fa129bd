//! OpenAI's Files and Batch API objects exactly as they go on the wire,
//! the lines of batch input and output files, and id generation.

use rand::distributions::{Alphanumeric, DistString};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A fresh random id: `prefix` + 24 alphanumerics.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", Alphanumeric.sample_string(&mut rand::thread_rng(), 24))
}

/// The id of a batch's output or error file: derived from the batch id so
/// that finalizing again after a crash writes the same file.
pub fn result_file_id(batch_id: &str, kind: &str) -> String {
    let digest = blake3::hash(format!("{batch_id}/{kind}").as_bytes());
    format!("file-{}", &digest.to_hex()[..24])
}

/// The endpoints a batch (and each of its lines) may target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
}

impl Endpoint {
    pub const ALL: [Endpoint; 3] = [Endpoint::ChatCompletions, Endpoint::Completions, Endpoint::Embeddings];

    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
        }
    }

    pub fn parse(s: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

/// `{"object": "file"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileObject {
    pub id: String,
    pub object: String,
    pub bytes: u64,
    pub created_at: u64,
    pub expires_at: Option<u64>,
    pub filename: String,
    /// "batch" for uploads, "batch_output" for results.
    pub purpose: String,
    /// Always "processed": a file is validated before it is stored.
    pub status: String,
    pub status_details: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeletedFile {
    pub id: String,
    pub object: String,
    pub deleted: bool,
}

/// A cursor page: `{"object": "list", "data", "first_id", "last_id", "has_more"}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListPage<T> {
    pub object: String,
    pub data: Vec<T>,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    pub has_more: bool,
}

impl<T> ListPage<T> {
    pub fn new(data: Vec<T>, has_more: bool, id: impl Fn(&T) -> &str) -> Self {
        let first_id = data.first().map(|t| id(t).to_string());
        let last_id = data.last().map(|t| id(t).to_string());
        ListPage { object: "list".into(), data, first_id, last_id, has_more }
    }
}

/// Batch status lifecycle: validating -> in_progress -> finalizing ->
/// completed, or failed (validation), expired (past the window), and
/// cancelling -> cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    Validating,
    Failed,
    InProgress,
    Finalizing,
    Completed,
    Expired,
    Cancelling,
    Cancelled,
}

impl BatchStatus {
    pub const ALL: [BatchStatus; 8] = [
        BatchStatus::Validating,
        BatchStatus::Failed,
        BatchStatus::InProgress,
        BatchStatus::Finalizing,
        BatchStatus::Completed,
        BatchStatus::Expired,
        BatchStatus::Cancelling,
        BatchStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Validating => "validating",
            BatchStatus::Failed => "failed",
            BatchStatus::InProgress => "in_progress",
            BatchStatus::Finalizing => "finalizing",
            BatchStatus::Completed => "completed",
            BatchStatus::Expired => "expired",
            BatchStatus::Cancelling => "cancelling",
            BatchStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<BatchStatus> {
        BatchStatus::ALL.into_iter().find(|b| b.as_str() == s)
    }

    /// Work remains for the worker (it owns every batch in these states).
    pub fn is_active(self) -> bool {
        matches!(self, BatchStatus::Validating | BatchStatus::InProgress | BatchStatus::Finalizing | BatchStatus::Cancelling)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
}

/// One reason a batch failed validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchErrorItem {
    pub code: String,
    pub message: String,
    pub param: Option<String>,
    pub line: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchErrors {
    pub object: String,
    pub data: Vec<BatchErrorItem>,
}

/// `{"object": "batch"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchObject {
    pub id: String,
    pub object: String,
    pub endpoint: String,
    pub errors: Option<BatchErrors>,
    pub input_file_id: String,
    pub completion_window: String,
    pub status: BatchStatus,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub created_at: u64,
    pub in_progress_at: Option<u64>,
    pub expires_at: Option<u64>,
    pub finalizing_at: Option<u64>,
    pub completed_at: Option<u64>,
    pub failed_at: Option<u64>,
    pub expired_at: Option<u64>,
    pub cancelling_at: Option<u64>,
    pub cancelled_at: Option<u64>,
    pub request_counts: RequestCounts,
    pub metadata: Option<Map<String, Value>>,
}

/// POST /v1/batches. Unknown fields land in `extra` and are refused by name.
#[derive(Debug, Clone, Deserialize)]
pub struct CreateBatch {
    pub input_file_id: String,
    pub endpoint: String,
    pub completion_window: String,
    pub metadata: Option<Map<String, Value>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One line of an output or error file:
/// `{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultLine {
    pub id: String,
    pub custom_id: String,
    pub response: Option<LineResponse>,
    pub error: Option<LineError>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineResponse {
    pub status_code: u16,
    pub request_id: String,
    pub body: Value,
}

/// A request that never ran (the batch was cancelled or expired first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineError {
    pub code: String,
    pub message: String,
}

impl ResultLine {
    /// A request that ran: a 2xx goes to the output file, anything else to
    /// the error file.
    pub fn answered(custom_id: &str, status_code: u16, request_id: String, body: Value) -> Self {
        ResultLine {
            id: new_id("batch_req_"),
            custom_id: custom_id.to_string(),
            response: Some(LineResponse { status_code, request_id, body }),
            error: None,
        }
    }

    /// A request that never ran.
    pub fn not_run(custom_id: &str, code: &str, message: &str) -> Self {
        ResultLine {
            id: new_id("batch_req_"),
            custom_id: custom_id.to_string(),
            response: None,
            error: Some(LineError { code: code.into(), message: message.into() }),
        }
    }

    pub fn is_success(&self) -> bool {
        self.response.as_ref().is_some_and(|r| (200..300).contains(&r.status_code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names() {
        let id = new_id("file-");
        assert_eq!(id.len(), 5 + 24);
        assert_ne!(id, new_id("file-"));
        assert_eq!(result_file_id("batch_x", "output"), result_file_id("batch_x", "output"));
        assert_ne!(result_file_id("batch_x", "output"), result_file_id("batch_x", "errors"));
        for s in BatchStatus::ALL {
            assert_eq!(BatchStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(Endpoint::parse("/v1/completions"), Some(Endpoint::Completions));
        assert_eq!(Endpoint::parse("/v1/embeddings"), Some(Endpoint::Embeddings));
        assert_eq!(Endpoint::parse("/v1/moderations"), None);
    }

    #[test]
    fn result_line_shape() {
        let ok = ResultLine::answered("a", 200, "req_1".into(), serde_json::json!({"x": 1}));
        let v = serde_json::to_value(&ok).unwrap();
        assert_eq!(v["response"]["status_code"], 200);
        assert!(v["error"].is_null() && v["id"].as_str().unwrap().starts_with("batch_req_"));
        assert!(ok.is_success());
        let skipped = ResultLine::not_run("b", "batch_expired", "too late");
        let v = serde_json::to_value(&skipped).unwrap();
        assert!(v["response"].is_null());
        assert_eq!(v["error"]["code"], "batch_expired");
        assert!(!skipped.is_success());
    }
}
