//! Batch-API state in the shared store (`--store postgres://…`): files with
//! their bytes, batches, and a batch's lines as rows that replicas claim.
//!
//! A line's life: `state` 0 (to do) with no claim -> claimed by one replica
//! (`claimed_by`, `lease_expires_at`, renewed while it works) -> done, its
//! result JSON written in the same statement that marks it done, and only
//! if that replica still holds the claim: a custom_id is answered exactly
//! once. A claim whose lease ran out (its replica died) is taken again by
//! whoever asks next. The line states:
//!
//! ```text
//! 0 to do   1 answered 2xx (output file)   2 answered with an error   3 never ran
//! ```
//!
//! Times of leases are the database's (`now()`), so replicas' clocks do not
//! matter.

use tokio_postgres::Row;

use super::input::LineRef;
use super::store::{BatchRow, FileRow};
use super::wire::{BatchObject, BatchStatus, ResultLine};
use crate::pgstore::{PgError, SharedStore};

/// Line state (`kiln_batch_lines.state`): not answered yet.
pub const TODO: i16 = 0;
/// Line state: answered with a 2xx (goes to the output file).
pub const ANSWERED_OK: i16 = 1;
/// Line state: answered with an error status (goes to the error file).
pub const ANSWERED_ERROR: i16 = 2;
/// Line state: never ran (the batch was cancelled or expired first).
pub const NOT_RUN: i16 = 3;

/// A line this replica claimed: where it lives in the input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedLine {
    /// 0-based position in the input file.
    pub idx: i32,
    pub custom_id: String,
    /// Byte offset and length of the line in the input file.
    pub offset: u64,
    pub len: usize,
    /// Sequences it asks for (`n`).
    pub weight: usize,
}

/// The batch tables of the shared store. Every method takes a pooled
/// connection; errors are `PgError` (`Unreachable` when the database is
/// away, which the routes answer with 503).
#[derive(Clone, Debug)]
pub struct PgBatchStore {
    /// The connection pool (and the lease length).
    pub shared: SharedStore,
}

fn file_row(r: &Row) -> FileRow {
    FileRow {
        id: r.get("id"),
        owner: r.get("owner"),
        filename: r.get("filename"),
        purpose: r.get("purpose"),
        bytes: r.get::<_, i64>("bytes") as u64,
        created_at: r.get::<_, i64>("created_at") as u64,
    }
}

fn decode(owner: String, object: &str) -> Result<BatchRow, PgError> {
    let object = serde_json::from_str(object).map_err(|e| PgError::Corrupt(e.to_string()))?;
    Ok(BatchRow { owner, object })
}

fn encode(o: &BatchObject) -> Result<String, PgError> {
    serde_json::to_string(o).map_err(|e| PgError::Corrupt(e.to_string()))
}

fn active_statuses() -> Vec<String> {
    BatchStatus::ALL.iter().filter(|s| s.is_active()).map(|s| s.as_str().to_string()).collect()
}

/// What finishing a batch wrote.
pub struct Finished {
    /// The batch's final object as stored (status, counts, result file ids).
    pub object: BatchObject,
}

impl PgBatchStore {
    /// Records a file with its bytes.
    pub async fn insert_file(&self, f: &FileRow, content: &[u8]) -> Result<(), PgError> {
        let c = self.shared.client().await?;
        c.execute(
            "INSERT INTO kiln_files (id, owner, filename, purpose, bytes, created_at, content) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[&f.id, &f.owner, &f.filename, &f.purpose, &(f.bytes as i64), &(f.created_at as i64), &content],
        )
        .await?;
        Ok(())
    }

    /// A file's metadata.
    pub async fn file(&self, id: &str) -> Result<Option<FileRow>, PgError> {
        let c = self.shared.client().await?;
        let row = c.query_opt("SELECT id, owner, filename, purpose, bytes, created_at FROM kiln_files WHERE id = $1", &[&id]).await?;
        Ok(row.as_ref().map(file_row))
    }

    /// A file's bytes.
    pub async fn file_content(&self, id: &str) -> Result<Option<Vec<u8>>, PgError> {
        let c = self.shared.client().await?;
        let row = c.query_opt("SELECT content FROM kiln_files WHERE id = $1", &[&id]).await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// See `Store::list_files`.
    pub async fn list_files(
        &self,
        owner: &str,
        purpose: Option<&str>,
        after: Option<&str>,
        limit: usize,
        ascending: bool,
    ) -> Result<(Vec<FileRow>, bool), PgError> {
        let (cmp, dir) = if ascending { (">", "ASC") } else { ("<", "DESC") };
        let sql = format!(
            "SELECT id, owner, filename, purpose, bytes, created_at FROM kiln_files WHERE owner = $1 AND ($2::TEXT IS NULL OR purpose = $2)
             AND ($3::TEXT IS NULL OR seq {cmp} (SELECT seq FROM kiln_files WHERE id = $3)) ORDER BY seq {dir} LIMIT $4"
        );
        let c = self.shared.client().await?;
        let rows = c.query(&sql, &[&owner, &purpose, &after, &(limit as i64 + 1)]).await?;
        let mut rows: Vec<FileRow> = rows.iter().map(file_row).collect();
        let more = rows.len() > limit;
        rows.truncate(limit);
        Ok((rows, more))
    }

    /// Deletes a file unless an active batch reads it: Err(batch id) then.
    pub async fn delete_file(&self, id: &str) -> Result<Result<bool, String>, PgError> {
        let mut c = self.shared.client().await?;
        let tx = c.transaction().await?;
        let active = active_statuses();
        let using = tx
            .query_opt("SELECT id FROM kiln_batches WHERE input_file_id = $1 AND status = ANY($2) LIMIT 1", &[&id, &active])
            .await?;
        if let Some(row) = using {
            return Ok(Err(row.get(0)));
        }
        let n = tx.execute("DELETE FROM kiln_files WHERE id = $1", &[&id]).await?;
        tx.commit().await?;
        Ok(Ok(n > 0))
    }

    /// Records a new batch.
    pub async fn insert_batch(&self, b: &BatchRow) -> Result<(), PgError> {
        let o = &b.object;
        let c = self.shared.client().await?;
        c.execute(
            "INSERT INTO kiln_batches (id, owner, object, status, input_file_id) VALUES ($1, $2, $3, $4, $5)",
            &[&o.id, &b.owner, &encode(o)?, &o.status.as_str(), &o.input_file_id],
        )
        .await?;
        Ok(())
    }

    /// A batch; while it runs, its counts are those of its lines so far
    /// (every replica's).
    pub async fn batch(&self, id: &str) -> Result<Option<BatchRow>, PgError> {
        let c = self.shared.client().await?;
        let Some(row) = c.query_opt("SELECT owner, object FROM kiln_batches WHERE id = $1", &[&id]).await? else { return Ok(None) };
        let mut b = decode(row.get(0), row.get(1))?;
        if b.object.status.is_active() && b.object.status != BatchStatus::Validating {
            let counts = c
                .query_one(
                    "SELECT count(*) FILTER (WHERE state = $2), count(*) FILTER (WHERE state = $3) FROM kiln_batch_lines WHERE batch_id = $1",
                    &[&id, &ANSWERED_OK, &ANSWERED_ERROR],
                )
                .await?;
            b.object.request_counts.completed = counts.get::<_, i64>(0) as u64;
            b.object.request_counts.failed = counts.get::<_, i64>(1) as u64;
        }
        Ok(Some(b))
    }

    /// See `Store::list_batches`.
    pub async fn list_batches(&self, owner: &str, after: Option<&str>, limit: usize) -> Result<(Vec<BatchRow>, bool), PgError> {
        let c = self.shared.client().await?;
        let rows = c
            .query(
                "SELECT owner, object FROM kiln_batches WHERE owner = $1
                 AND ($2::TEXT IS NULL OR seq < (SELECT seq FROM kiln_batches WHERE id = $2)) ORDER BY seq DESC LIMIT $3",
                &[&owner, &after, &(limit as i64 + 1)],
            )
            .await?;
        let mut out = rows.iter().map(|r| decode(r.get(0), r.get(1))).collect::<Result<Vec<_>, _>>()?;
        let more = out.len() > limit;
        out.truncate(limit);
        Ok((out, more))
    }

    /// Every active batch, oldest first.
    pub async fn active_batches(&self) -> Result<Vec<BatchRow>, PgError> {
        let c = self.shared.client().await?;
        let rows = c.query("SELECT owner, object FROM kiln_batches WHERE status = ANY($1) ORDER BY seq ASC", &[&active_statuses()]).await?;
        rows.iter().map(|r| decode(r.get(0), r.get(1))).collect()
    }

    /// Rewrites a batch if its stored status is still `from`; whether it did.
    pub async fn update_batch(&self, o: &BatchObject, from: BatchStatus) -> Result<bool, PgError> {
        let c = self.shared.client().await?;
        let n = c
            .execute(
                "UPDATE kiln_batches SET object = $2, status = $3 WHERE id = $1 AND status = $4",
                &[&o.id, &encode(o)?, &o.status.as_str(), &from.as_str()],
            )
            .await?;
        Ok(n > 0)
    }

    /// Moves a validated batch to `in_progress` and records its lines, in
    /// one transaction, if it is still `validating` (the first replica to
    /// get there does it; the others see false).
    pub async fn start_batch(&self, o: &BatchObject, lines: &[LineRef]) -> Result<bool, PgError> {
        let mut c = self.shared.client().await?;
        let tx = c.transaction().await?;
        let n = tx
            .execute(
                "UPDATE kiln_batches SET object = $2, status = $3 WHERE id = $1 AND status = $4",
                &[&o.id, &encode(o)?, &o.status.as_str(), &BatchStatus::Validating.as_str()],
            )
            .await?;
        if n == 0 {
            return Ok(false);
        }
        let insert = tx
            .prepare(
                "INSERT INTO kiln_batch_lines (batch_id, idx, custom_id, line, byte_offset, byte_len, weight)
                 SELECT $1, * FROM UNNEST($2::INT[], $3::TEXT[], $4::BIGINT[], $5::BIGINT[], $6::BIGINT[], $7::INT[])
                 ON CONFLICT DO NOTHING",
            )
            .await?;
        const CHUNK: usize = 5000;
        for (n, chunk) in lines.chunks(CHUNK).enumerate() {
            let base = n * CHUNK;
            let idx: Vec<i32> = (0..chunk.len()).map(|i| (base + i) as i32).collect();
            let ids: Vec<&str> = chunk.iter().map(|l| l.custom_id.as_str()).collect();
            let line: Vec<i64> = chunk.iter().map(|l| l.line as i64).collect();
            let off: Vec<i64> = chunk.iter().map(|l| l.offset as i64).collect();
            let len: Vec<i64> = chunk.iter().map(|l| l.len as i64).collect();
            let weight: Vec<i32> = chunk.iter().map(|l| l.weight as i32).collect();
            tx.execute(&insert, &[&o.id, &idx, &ids, &line, &off, &len, &weight]).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Claims up to `n` lines of `batch` that nobody holds (or whose lease
    /// ran out) for `me`, for `lease_secs`, in input order.
    pub async fn claim(&self, batch: &str, me: &str, n: usize) -> Result<Vec<ClaimedLine>, PgError> {
        let c = self.shared.client().await?;
        let lease = self.shared.lease_secs as f64;
        let rows = c
            .query(
                "WITH free AS MATERIALIZED (
                     SELECT idx FROM kiln_batch_lines
                     WHERE batch_id = $1 AND state = 0 AND (claimed_by IS NULL OR lease_expires_at < now())
                     ORDER BY idx LIMIT $4 FOR UPDATE SKIP LOCKED)
                 UPDATE kiln_batch_lines l SET claimed_by = $2, lease_expires_at = now() + make_interval(secs => $3)
                 FROM free
                 WHERE l.batch_id = $1 AND l.idx = free.idx
                 RETURNING l.idx, l.custom_id, l.byte_offset, l.byte_len, l.weight",
                &[&batch, &me, &lease, &(n as i64)],
            )
            .await?;
        let mut lines: Vec<ClaimedLine> = rows
            .iter()
            .map(|r| ClaimedLine {
                idx: r.get(0),
                custom_id: r.get(1),
                offset: r.get::<_, i64>(2) as u64,
                len: r.get::<_, i64>(3) as usize,
                weight: r.get::<_, i32>(4).max(1) as usize,
            })
            .collect();
        lines.sort_by_key(|l| l.idx);
        Ok(lines)
    }

    /// Records `me`'s answer to a line it claimed: done, with its result,
    /// in one statement. False when the claim was lost (its lease ran out
    /// and another replica took the line, or the batch ended): the answer
    /// is dropped and the line keeps its one result.
    pub async fn complete(&self, batch: &str, idx: i32, me: &str, line: &ResultLine) -> Result<bool, PgError> {
        let state = if line.is_success() {
            ANSWERED_OK
        } else if line.response.is_some() {
            ANSWERED_ERROR
        } else {
            NOT_RUN
        };
        let json = serde_json::to_string(line).map_err(|e| PgError::Corrupt(e.to_string()))?;
        let c = self.shared.client().await?;
        let n = c
            .execute(
                "UPDATE kiln_batch_lines SET state = $4, result = $5, done_by = $3, claimed_by = NULL, lease_expires_at = NULL
                 WHERE batch_id = $1 AND idx = $2 AND state = 0 AND claimed_by = $3",
                &[&batch, &idx, &me, &state, &json],
            )
            .await?;
        Ok(n > 0)
    }

    /// Gives `me`'s unanswered claims on `batch` back at once.
    pub async fn release(&self, batch: &str, me: &str) -> Result<u64, PgError> {
        let c = self.shared.client().await?;
        Ok(c.execute(
            "UPDATE kiln_batch_lines SET claimed_by = NULL, lease_expires_at = NULL WHERE batch_id = $1 AND claimed_by = $2 AND state = 0",
            &[&batch, &me],
        )
        .await?)
    }

    /// Extends every claim `me` holds by a lease from now.
    pub async fn renew(&self, me: &str) -> Result<u64, PgError> {
        let c = self.shared.client().await?;
        let lease = self.shared.lease_secs as f64;
        Ok(c.execute(
            "UPDATE kiln_batch_lines SET lease_expires_at = now() + make_interval(secs => $2) WHERE claimed_by = $1 AND state = 0",
            &[&me, &lease],
        )
        .await?)
    }

    /// Lines of `batch` still to do (claimed or not).
    pub async fn todo(&self, batch: &str) -> Result<u64, PgError> {
        let c = self.shared.client().await?;
        let row = c.query_one("SELECT count(*) FROM kiln_batch_lines WHERE batch_id = $1 AND state = 0", &[&batch]).await?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// Lines each replica answered: (replica, count), for operators and tests.
    pub async fn done_by(&self, batch: &str) -> Result<Vec<(String, u64)>, PgError> {
        let c = self.shared.client().await?;
        let rows = c
            .query(
                "SELECT done_by, count(*) FROM kiln_batch_lines WHERE batch_id = $1 AND done_by IS NOT NULL GROUP BY done_by ORDER BY done_by",
                &[&batch],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get::<_, i64>(1) as u64)).collect())
    }

    /// Ends batch `o` (stored status `from`) as `outcome`, exactly once
    /// across replicas: under the batch row's lock, if its status is still
    /// `from`, every line still to do gets the `not_run` result, the output
    /// and error files are assembled in input order and stored, and the
    /// batch gets its final object. Completing a batch with lines still to
    /// do does nothing. None when there was nothing to do.
    pub async fn finish(
        &self,
        owner: &str,
        mut o: BatchObject,
        from: BatchStatus,
        outcome: BatchStatus,
        not_run: (&str, &str),
        now: u64,
    ) -> Result<Option<Finished>, PgError> {
        let mut c = self.shared.client().await?;
        let tx = c.transaction().await?;
        let status: Option<String> =
            tx.query_opt("SELECT status FROM kiln_batches WHERE id = $1 FOR UPDATE", &[&o.id]).await?.map(|r| r.get(0));
        if status.as_deref() != Some(from.as_str()) {
            return Ok(None);
        }
        let rows = tx
            .query("SELECT custom_id, state, result FROM kiln_batch_lines WHERE batch_id = $1 ORDER BY idx FOR UPDATE", &[&o.id])
            .await?;
        let (mut output, mut errors, mut completed, mut failed) = (Vec::new(), Vec::new(), 0u64, 0u64);
        for r in &rows {
            let (custom_id, state, result): (String, i16, Option<String>) = (r.get(0), r.get(1), r.get(2));
            let text = match (state, result) {
                (TODO, _) if outcome == BatchStatus::Completed => return Ok(None),
                (TODO, _) | (_, None) => {
                    let line = ResultLine::not_run(&custom_id, not_run.0, not_run.1);
                    serde_json::to_string(&line).map_err(|e| PgError::Corrupt(e.to_string()))?
                }
                (_, Some(text)) => text,
            };
            match state {
                ANSWERED_OK => {
                    completed += 1;
                    output.push(text);
                }
                ANSWERED_ERROR => {
                    failed += 1;
                    errors.push(text);
                }
                _ => errors.push(text),
            }
        }
        tx.execute(
            "UPDATE kiln_batch_lines SET state = $2, claimed_by = NULL, lease_expires_at = NULL WHERE batch_id = $1 AND state = 0",
            &[&o.id, &NOT_RUN],
        )
        .await?;
        let register = |kind: &str, lines: &[String]| -> Option<(FileRow, Vec<u8>)> {
            if lines.is_empty() {
                return None;
            }
            let mut content = lines.join("\n").into_bytes();
            content.push(b'\n');
            let id = super::wire::result_file_id(&o.id, kind);
            let filename = format!("{}_{kind}.jsonl", o.id);
            let row = FileRow { id, owner: owner.to_string(), filename, purpose: "batch_output".into(), bytes: content.len() as u64, created_at: now };
            Some((row, content))
        };
        let files: Vec<(FileRow, Vec<u8>)> = [register("output", &output), register("error", &errors)].into_iter().flatten().collect();
        o.output_file_id = (!output.is_empty()).then(|| super::wire::result_file_id(&o.id, "output"));
        o.error_file_id = (!errors.is_empty()).then(|| super::wire::result_file_id(&o.id, "error"));
        for (f, content) in &files {
            tx.execute(
                "INSERT INTO kiln_files (id, owner, filename, purpose, bytes, created_at, content) VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (id) DO UPDATE SET bytes = EXCLUDED.bytes, content = EXCLUDED.content",
                &[&f.id, &f.owner, &f.filename, &f.purpose, &(f.bytes as i64), &(f.created_at as i64), content],
            )
            .await?;
        }
        o.request_counts.completed = completed;
        o.request_counts.failed = failed;
        o.status = outcome;
        match outcome {
            BatchStatus::Completed => {
                o.finalizing_at.get_or_insert(now);
                o.completed_at = Some(now);
            }
            BatchStatus::Expired => o.expired_at = Some(now),
            _ => o.cancelled_at = Some(now),
        }
        tx.execute("UPDATE kiln_batches SET object = $2, status = $3 WHERE id = $1", &[&o.id, &encode(&o)?, &o.status.as_str()]).await?;
        tx.commit().await?;
        Ok(Some(Finished { object: o }))
    }
}

/// A line's request parsed from the input file's bytes.
pub fn request_of(content: &[u8], line: &ClaimedLine) -> Result<super::input::InputLine, String> {
    let end = line.offset as usize + line.len;
    let bytes = content.get(line.offset as usize..end).ok_or_else(|| format!("line of '{}' is outside the input file", line.custom_id))?;
    super::input::parse_line(bytes)
}
