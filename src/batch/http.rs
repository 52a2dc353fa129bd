//! The `/v1/files` and `/v1/batches` routes. They sit inside the server's
//! auth and request-log layers but outside its JSON body limit: uploads
//! have their own (`--max-file-bytes`).
//!
//! Ownership: with API keys configured, every file and batch belongs to
//! the key that created it (a digest of the key, so it survives restarts
//! and renamed keys) and another key gets 404 for it, as if it did not
//! exist. Without keys everything belongs to "anonymous".

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRef, Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::error::BatchApiError;
use super::service::BatchService;
use super::store::{new_batch, BatchRow, FileRow};
use super::upload::receive_upload;
use super::wire::{new_id, BatchObject, BatchStatus, CreateBatch, DeletedFile, Endpoint, FileObject, ListPage};
use crate::api::json::ApiJson;
use crate::api::{unix_now, AppState};

/// State of the batch routes: the server's, and the service (or why it is off).
#[derive(Clone)]
pub struct BatchHttp {
    pub app: Arc<AppState>,
    pub svc: Result<Arc<BatchService>, Arc<str>>,
}

impl FromRef<BatchHttp> for Arc<AppState> {
    fn from_ref(h: &BatchHttp) -> Self {
        h.app.clone()
    }
}

impl BatchHttp {
    fn svc(&self) -> Result<&Arc<BatchService>, BatchApiError> {
        self.svc.as_ref().map_err(|why| BatchApiError::Unavailable(why.to_string()))
    }
}

/// Multipart framing allowed on top of the file itself.
const MULTIPART_SLACK: u64 = 1 << 20;

/// The routes, over `state` (any outer router state).
pub fn routes<S: Clone + Send + Sync + 'static>(http: BatchHttp) -> Router<S> {
    let upload_limit = http.svc.as_ref().map_or(0, |s| s.max_file_bytes).saturating_add(MULTIPART_SLACK);
    let json_limit = http.app.config.max_body_bytes;
    Router::new()
        .route("/v1/files", post(upload_file).layer(DefaultBodyLimit::max(upload_limit.min(usize::MAX as u64) as usize)).get(list_files))
        .route("/v1/files/{file_id}", get(retrieve_file).delete(delete_file))
        .route("/v1/files/{file_id}/content", get(file_content))
        .route("/v1/batches", post(create_batch).layer(DefaultBodyLimit::max(json_limit)).get(list_batches))
        .route("/v1/batches/{batch_id}", get(retrieve_batch))
        .route("/v1/batches/{batch_id}/cancel", post(cancel_batch))
        .method_not_allowed_fallback(crate::api::misc::method_not_allowed)
        .with_state(http)
}

pub use crate::api::auth::owner_of;

fn bad_query(e: impl std::fmt::Display) -> BatchApiError {
    BatchApiError::invalid(format!("Invalid query parameters: {e}"), "query")
}

fn check_limit(limit: Option<i64>, max: i64, default: i64) -> Result<usize, BatchApiError> {
    match limit.unwrap_or(default) {
        l if (1..=max).contains(&l) => Ok(l as usize),
        l => Err(BatchApiError::invalid(format!("limit must be between 1 and {max}, got {l}"), "limit")),
    }
}

/// A file the caller owns, or 404.
async fn owned_file(svc: &BatchService, owner: &str, id: &str, param: &'static str) -> Result<FileRow, BatchApiError> {
    match svc.store.file(id).await? {
        Some(f) if f.owner == owner => Ok(f),
        _ => Err(BatchApiError::NotFound { kind: "File", id: id.into(), param: Some(param) }),
    }
}

async fn upload_file(
    State(h): State<BatchHttp>,
    headers: HeaderMap,
    multipart: Result<axum::extract::Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Json<FileObject>, BatchApiError> {
    let svc = h.svc()?;
    let owner = owner_of(&h.app, &headers);
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > svc.max_file_bytes.saturating_add(MULTIPART_SLACK)) {
        return Err(BatchApiError::FileTooLarge { limit: svc.max_file_bytes });
    }
    let multipart = multipart.map_err(|e| {
        BatchApiError::invalid(format!("Expected a multipart/form-data body with the fields 'file' and 'purpose': {e}"), "file")
    })?;
    let row = receive_upload(svc, owner, multipart).await?;
    Ok(Json(row.to_object()))
}

#[derive(Deserialize)]
struct FileQuery {
    purpose: Option<String>,
    limit: Option<i64>,
    order: Option<String>,
    after: Option<String>,
}

async fn list_files(
    State(h): State<BatchHttp>,
    headers: HeaderMap,
    query: Result<Query<FileQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ListPage<FileObject>>, BatchApiError> {
    let svc = h.svc()?;
    let Query(q) = query.map_err(bad_query)?;
    let limit = check_limit(q.limit, 10_000, 10_000)?;
    let ascending = match q.order.as_deref() {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(o) => return Err(BatchApiError::invalid(format!("order must be 'asc' or 'desc', got '{o}'"), "order")),
    };
    let owner = owner_of(&h.app, &headers);
    let (rows, more) = svc.store.list_files(&owner, q.purpose.as_deref(), q.after.as_deref(), limit, ascending).await?;
    let data = rows.iter().map(FileRow::to_object).collect();
    Ok(Json(ListPage::new(data, more, |f: &FileObject| &f.id)))
}

async fn retrieve_file(State(h): State<BatchHttp>, headers: HeaderMap, Path(id): Path<String>) -> Result<Json<FileObject>, BatchApiError> {
    let svc = h.svc()?;
    Ok(Json(owned_file(svc, &owner_of(&h.app, &headers), &id, "file_id").await?.to_object()))
}

async fn file_content(State(h): State<BatchHttp>, headers: HeaderMap, Path(id): Path<String>) -> Result<Response, BatchApiError> {
    let svc = h.svc()?;
    let row = owned_file(svc, &owner_of(&h.app, &headers), &id, "file_id").await?;
    let disposition = format!("attachment; filename=\"{}\"", row.filename.replace(['"', '\\', '\r', '\n'], "_"));
    if let Some(pg) = svc.store.shared() {
        let bytes = pg.file_content(&row.id).await.map_err(super::store::StoreError::from)?;
        let bytes = bytes.ok_or_else(|| BatchApiError::NotFound { kind: "File", id: id.clone(), param: Some("file_id") })?;
        let headers = [(header::CONTENT_TYPE, "application/octet-stream".to_string()), (header::CONTENT_DISPOSITION, disposition)];
        return Ok((headers, bytes).into_response());
    }
    let file = tokio::fs::File::open(svc.dir.file(&row.id)).await?;
    let stream = futures::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(axum::body::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream".to_string()),
        (header::CONTENT_LENGTH, row.bytes.to_string()),
        (header::CONTENT_DISPOSITION, disposition),
    ];
    Ok((headers, axum::body::Body::from_stream(stream)).into_response())
}

async fn delete_file(State(h): State<BatchHttp>, headers: HeaderMap, Path(id): Path<String>) -> Result<Json<DeletedFile>, BatchApiError> {
    let svc = h.svc()?;
    let row = owned_file(svc, &owner_of(&h.app, &headers), &id, "file_id").await?;
    if let Err(batch) = svc.store.delete_file(&row.id).await? {
        let msg = format!("File {} is the input of batch {batch}, which is still running; cancel it or wait for it to end first.", row.id);
        return Err(BatchApiError::Conflict(msg));
    }
    if svc.store.shared().is_some() {
        // The bytes went with the row.
    } else if let Err(e) = std::fs::remove_file(svc.dir.file(&row.id)) {
        tracing::warn!(file = %row.id, error = %e, "removing a deleted file's bytes");
    }
    Ok(Json(DeletedFile { id: row.id, object: "file".into(), deleted: true }))
}

fn check_metadata(m: &Option<serde_json::Map<String, serde_json::Value>>) -> Result<(), BatchApiError> {
    let Some(m) = m else { return Ok(()) };
    let bad = |msg: String| Err(BatchApiError::invalid(msg, "metadata"));
    if m.len() > 16 {
        return bad(format!("metadata may hold at most 16 keys, got {}", m.len()));
    }
    for (k, v) in m {
        if k.chars().count() > 64 {
            return bad(format!("metadata key '{k}' is longer than 64 characters"));
        }
        match v.as_str() {
            Some(s) if s.chars().count() <= 512 => {}
            Some(_) => return bad(format!("metadata value of '{k}' is longer than 512 characters")),
            None => return bad(format!("metadata value of '{k}' must be a string")),
        }
    }
    Ok(())
}

async fn create_batch(State(h): State<BatchHttp>, headers: HeaderMap, ApiJson(req): ApiJson<CreateBatch>) -> Result<Json<BatchObject>, BatchApiError> {
    let svc = h.svc()?;
    crate::api::validate::refuse_extra(&req.extra, "")?;
    let Some(endpoint) = Endpoint::parse(&req.endpoint) else {
        let msg = format!("Invalid endpoint '{}': kiln runs batches for /v1/chat/completions, /v1/completions and /v1/embeddings", req.endpoint);
        return Err(BatchApiError::invalid(msg, "endpoint"));
    };
    if req.completion_window != "24h" {
        return Err(BatchApiError::invalid(format!("completion_window must be '24h', got '{}'", req.completion_window), "completion_window"));
    }
    check_metadata(&req.metadata)?;
    let owner = owner_of(&h.app, &headers);
    let file = owned_file(svc, &owner, &req.input_file_id, "input_file_id").await?;
    if file.purpose != "batch" {
        let msg = format!("File {} has purpose '{}': a batch's input file must have purpose 'batch'", file.id, file.purpose);
        return Err(BatchApiError::invalid(msg, "input_file_id"));
    }
    let object = new_batch(new_id("batch_"), endpoint.as_str(), &file.id, req.metadata, unix_now());
    svc.store.insert_batch(&BatchRow { owner, object: object.clone() }).await?;
    svc.wake();
    Ok(Json(object))
}

/// The stored object with the counts of a running batch brought up to
/// date (the shared store counts every replica's lines itself; the live
/// counts there would be this replica's only, so none are kept).
fn present(svc: &BatchService, mut b: BatchObject) -> BatchObject {
    if let Some(live) = svc.live(&b.id) {
        if let Some(c) = *live.counts.lock().unwrap_or_else(|p| p.into_inner()) {
            b.request_counts.completed = c.completed;
            b.request_counts.failed = c.failed;
        }
    }
    b
}

async fn owned_batch(svc: &BatchService, owner: &str, id: &str) -> Result<BatchObject, BatchApiError> {
    match svc.store.batch(id).await? {
        Some(b) if b.owner == owner => Ok(b.object),
        _ => Err(BatchApiError::NotFound { kind: "Batch", id: id.into(), param: Some("batch_id") }),
    }
}

async fn retrieve_batch(State(h): State<BatchHttp>, headers: HeaderMap, Path(id): Path<String>) -> Result<Json<BatchObject>, BatchApiError> {
    let svc = h.svc()?;
    let b = owned_batch(svc, &owner_of(&h.app, &headers), &id).await?;
    Ok(Json(present(svc, b)))
}

#[derive(Deserialize)]
struct BatchQuery {
    after: Option<String>,
    limit: Option<i64>,
}

async fn list_batches(
    State(h): State<BatchHttp>,
    headers: HeaderMap,
    query: Result<Query<BatchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ListPage<BatchObject>>, BatchApiError> {
    let svc = h.svc()?;
    let Query(q) = query.map_err(bad_query)?;
    let limit = check_limit(q.limit, 100, 20)?;
    let owner = owner_of(&h.app, &headers);
    let (rows, more) = svc.store.list_batches(&owner, q.after.as_deref(), limit).await?;
    let data = rows.into_iter().map(|r| present(svc, r.object)).collect();
    Ok(Json(ListPage::new(data, more, |b: &BatchObject| &b.id)))
}

async fn cancel_batch(State(h): State<BatchHttp>, headers: HeaderMap, Path(id): Path<String>) -> Result<Json<BatchObject>, BatchApiError> {
    let svc = h.svc()?;
    let owner = owner_of(&h.app, &headers);
    loop {
        let mut b = owned_batch(svc, &owner, &id).await?;
        let from = b.status;
        match from {
            BatchStatus::Validating | BatchStatus::InProgress => {
                b.status = BatchStatus::Cancelling;
                b.cancelling_at = Some(unix_now());
                if !svc.store.update_batch(&b, from).await? {
                    continue; // the driver moved it on meanwhile: decide again
                }
                if let Some(live) = svc.live(&b.id) {
                    live.cancel.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                svc.wake();
                return Ok(Json(present(svc, b)));
            }
            BatchStatus::Cancelling => return Ok(Json(present(svc, b))),
            other => return Err(BatchApiError::Conflict(format!("Cannot cancel a batch with status '{}'.", other.as_str()))),
        }
    }
}
