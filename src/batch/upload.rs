//! POST /v1/files: a multipart upload streamed to a temporary file under
//! the size limit, checked line by line (`input::scan`), then moved into
//! place (fsync, rename, fsync of the folder) and recorded. A file that
//! fails is removed; nothing half-received is ever recorded. With the
//! shared store (`--store`) the checked bytes go into the database instead.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::multipart::{Field, MultipartError};
use axum::extract::Multipart;
use axum::http::StatusCode;
use tokio::io::AsyncWriteExt;

use super::error::BatchApiError;
use super::input::{scan, InputError};
use super::service::BatchService;
use super::sink::sync_dir;
use super::store::FileRow;
use super::wire::new_id;
use crate::api::unix_now;

/// Removes the temporary upload unless it was moved into place.
struct TempUpload(Option<PathBuf>);

impl Drop for TempUpload {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn multipart_error(limit: u64) -> impl Fn(MultipartError) -> BatchApiError {
    move |e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            BatchApiError::FileTooLarge { limit }
        } else {
            BatchApiError::invalid(format!("Could not read the multipart body: {}", e.body_text()), "file")
        }
    }
}

/// Streams the `file` field to `path`; returns its size.
async fn save(mut field: Field<'_>, path: &PathBuf, limit: u64) -> Result<u64, BatchApiError> {
    let mut out = tokio::fs::File::create(path).await?;
    let mut size = 0u64;
    while let Some(chunk) = field.chunk().await.map_err(multipart_error(limit))? {
        size += chunk.len() as u64;
        if size > limit {
            return Err(BatchApiError::FileTooLarge { limit });
        }
        out.write_all(&chunk).await?;
    }
    out.sync_all().await?;
    Ok(size)
}

fn file_error(e: InputError) -> BatchApiError {
    match e {
        InputError::Line { line, reason } => BatchApiError::InvalidFile(format!("Invalid batch input file: line {line}: {reason}")),
        InputError::Empty => BatchApiError::InvalidFile("Invalid batch input file: it contains no requests".into()),
        InputError::Io(e) => BatchApiError::Internal(format!("reading an upload: {e}")),
    }
}

/// Receives, checks and stores one upload owned by `owner`.
pub async fn receive_upload(svc: &Arc<BatchService>, owner: String, mut multipart: Multipart) -> Result<FileRow, BatchApiError> {
    let limit = svc.max_file_bytes;
    let tmp = svc.dir.tmp().join(new_id("upload-"));
    let mut guard = TempUpload(Some(tmp.clone()));
    let (mut purpose, mut file) = (None, None);
    while let Some(field) = multipart.next_field().await.map_err(multipart_error(limit))? {
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "purpose" => purpose = Some(field.text().await.map_err(multipart_error(limit))?),
            "file" if file.is_some() => return Err(BatchApiError::invalid("Only one file may be uploaded per request", "file")),
            "file" => {
                let filename: String = field.file_name().filter(|n| !n.is_empty()).unwrap_or("upload.jsonl").chars().take(255).collect();
                file = Some((filename, save(field, &tmp, limit).await?));
            }
            other => {
                let msg = format!("Unknown form field '{other}': expected 'file' and 'purpose'");
                return Err(BatchApiError::invalid(msg, other));
            }
        }
    }
    let purpose = purpose.ok_or_else(|| BatchApiError::invalid("Missing required form field 'purpose'", "purpose"))?;
    if purpose != "batch" {
        let msg = format!("Invalid purpose '{purpose}': kiln stores batch input files only (purpose 'batch')");
        return Err(BatchApiError::invalid(msg, "purpose"));
    }
    let (filename, bytes) = file.ok_or_else(|| BatchApiError::invalid("Missing required form field 'file'", "file"))?;
    let path = tmp.clone();
    let checked = tokio::task::spawn_blocking(move || scan(std::io::BufReader::new(std::fs::File::open(&path)?)))
        .await
        .map_err(|e| BatchApiError::Internal(format!("checking an upload: {e}")))?;
    checked.map_err(file_error)?;

    let row = FileRow { id: new_id("file-"), owner, filename, purpose, bytes, created_at: unix_now() };
    if let Some(pg) = svc.store.shared() {
        // The shared store keeps the bytes: every replica can read them.
        let content = tokio::fs::read(&tmp).await?;
        pg.insert_file(&row, &content).await.map_err(super::store::StoreError::from)?;
        return Ok(row);
    }
    let dest = svc.dir.file(&row.id);
    std::fs::rename(&tmp, &dest)?;
    guard.0 = Some(dest);
    sync_dir(&svc.dir.files())?;
    svc.store.local().ok_or_else(|| BatchApiError::Internal("no local store".into()))?.insert_file(&row)?;
    guard.0 = None;
    Ok(row)
}
