//! Durable results of one running batch: `output.jsonl` (2xx answers) and
//! `errors.jsonl` (every other answer, and requests that never ran), both
//! appended in completion order and fsynced as results arrive.
//!
//! Invariants: every complete line (ending in '\n') of the two files is one
//! `ResultLine`; a custom_id appears in at most one line of the two. After
//! a crash, `open` cuts a half-written last line off, and the custom_ids
//! it finds are exactly the requests already answered: the runner sends
//! each of the others once, so every request is answered exactly once.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::input::LineRef;
use super::wire::ResultLine;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkCounts {
    /// Answered with a 2xx.
    pub completed: u64,
    /// Answered with an error status.
    pub failed: u64,
    /// Never ran (cancelled or expired first).
    pub not_run: u64,
}

pub struct ResultSink {
    dir: PathBuf,
    out: File,
    err: File,
    done: HashSet<String>,
    counts: SinkCounts,
    /// Appended since the last sync.
    dirty: bool,
}

pub const OUTPUT_FILE: &str = "output.jsonl";
pub const ERRORS_FILE: &str = "errors.jsonl";

/// The fields recovery needs from a result line.
#[derive(Deserialize)]
struct Peek {
    custom_id: String,
    response: Option<serde::de::IgnoredAny>,
}

/// Reads the complete, well-formed lines of `path`, cuts anything after
/// them, and returns the file opened for appending with what it holds.
fn recover(path: &Path) -> std::io::Result<(File, Vec<Peek>)> {
    let mut file = OpenOptions::new().create(true).read(true).append(true).open(path)?;
    let mut reader = BufReader::new(&file);
    let (mut good_end, mut buf, mut seen) = (0u64, Vec::new(), Vec::new());
    loop {
        buf.clear();
        let read = reader.read_until(b'\n', &mut buf)?;
        if read == 0 || buf.last() != Some(&b'\n') {
            break;
        }
        match serde_json::from_slice::<Peek>(&buf) {
            Ok(p) => seen.push(p),
            Err(_) => break,
        }
        good_end += read as u64;
    }
    drop(reader);
    if file.metadata()?.len() != good_end {
        tracing::warn!(file = %path.display(), keep = good_end, "cutting a partly written result line");
        file.set_len(good_end)?;
        file.sync_all()?;
    }
    file.seek(SeekFrom::End(0))?;
    Ok((file, seen))
}

impl ResultSink {
    /// Opens (creating or recovering) the sink under `dir`.
    pub fn open(dir: &Path) -> std::io::Result<ResultSink> {
        std::fs::create_dir_all(dir)?;
        let (out, outputs) = recover(&dir.join(OUTPUT_FILE))?;
        let (err, errors) = recover(&dir.join(ERRORS_FILE))?;
        let mut sink = ResultSink { dir: dir.to_path_buf(), out, err, done: HashSet::new(), counts: SinkCounts::default(), dirty: false };
        for p in outputs {
            if sink.done.insert(p.custom_id) {
                sink.counts.completed += 1;
            }
        }
        for p in errors {
            if sink.done.insert(p.custom_id) {
                if p.response.is_some() {
                    sink.counts.failed += 1;
                } else {
                    sink.counts.not_run += 1;
                }
            }
        }
        Ok(sink)
    }

    pub fn is_done(&self, custom_id: &str) -> bool {
        self.done.contains(custom_id)
    }

    pub fn counts(&self) -> SinkCounts {
        self.counts
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one result (not yet synced). A custom_id already answered is
    /// refused: that would break exactly-once.
    pub fn append(&mut self, line: &ResultLine) -> std::io::Result<()> {
        if self.done.contains(&line.custom_id) {
            return Err(std::io::Error::other(format!("custom_id '{}' was already answered", line.custom_id)));
        }
        let mut bytes = serde_json::to_vec(line).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        let success = line.is_success();
        let file = if success { &mut self.out } else { &mut self.err };
        file.write_all(&bytes)?;
        self.dirty = true;
        self.done.insert(line.custom_id.clone());
        match (success, line.response.is_some()) {
            (true, _) => self.counts.completed += 1,
            (false, true) => self.counts.failed += 1,
            (false, false) => self.counts.not_run += 1,
        }
        Ok(())
    }

    /// Makes every appended line durable.
    pub fn sync(&mut self) -> std::io::Result<()> {
        if std::mem::take(&mut self.dirty) {
            self.out.sync_data()?;
            self.err.sync_data()?;
        }
        Ok(())
    }

    pub fn output_path(&self) -> PathBuf {
        self.dir.join(OUTPUT_FILE)
    }

    pub fn errors_path(&self) -> PathBuf {
        self.dir.join(ERRORS_FILE)
    }
}

/// custom_id -> (offset, length without the newline) of a file's lines.
type LineIndex = HashMap<String, (u64, usize)>;

fn index(path: &Path) -> std::io::Result<LineIndex> {
    let mut reader = BufReader::new(File::open(path)?);
    let (mut map, mut buf, mut offset) = (HashMap::new(), Vec::new(), 0u64);
    loop {
        buf.clear();
        let read = reader.read_until(b'\n', &mut buf)?;
        if read == 0 {
            break;
        }
        let text = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let peek: Peek = serde_json::from_slice(text).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        map.entry(peek.custom_id).or_insert((offset, text.len()));
        offset += read as u64;
    }
    Ok(map)
}

/// Writes the lines of `sources` that answer `order`'s requests to `dest`,
/// in input order, atomically (temporary file, fsync, rename, fsync of the
/// directory). Returns (lines, bytes) written.
pub fn write_in_order(order: &[LineRef], sources: &[PathBuf], dest: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::FileExt;
    let opened: Vec<(File, LineIndex)> =
        sources.iter().map(|p| Ok((File::open(p)?, index(p)?))).collect::<std::io::Result<_>>()?;
    let tmp = dest.with_extension("tmp");
    let mut out = std::io::BufWriter::new(File::create(&tmp)?);
    let (mut lines, mut bytes, mut buf) = (0u64, 0u64, Vec::new());
    for l in order {
        let Some((file, &(offset, len))) = opened.iter().find_map(|(f, ix)| ix.get(&l.custom_id).map(|at| (f, at))) else {
            continue;
        };
        buf.resize(len, 0);
        file.read_exact_at(&mut buf, offset)?;
        buf.push(b'\n');
        out.write_all(&buf)?;
        lines += 1;
        bytes += buf.len() as u64;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(&tmp, dest)?;
    let dir = dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    sync_dir(dir)?;
    Ok((lines, bytes))
}

/// Makes a rename or a new file in `dir` durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::wire::Endpoint;

    fn ok(id: &str) -> ResultLine {
        ResultLine::answered(id, 200, "req".into(), serde_json::json!({"text": id}))
    }

    #[test]
    fn recovers_after_a_torn_write() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = ResultSink::open(dir.path()).unwrap();
        sink.append(&ok("a")).unwrap();
        sink.append(&ResultLine::answered("b", 400, "req".into(), serde_json::json!({}))).unwrap();
        sink.append(&ResultLine::not_run("c", "batch_cancelled", "cancelled")).unwrap();
        sink.sync().unwrap();
        assert!(sink.append(&ok("a")).is_err(), "a custom_id is answered once");
        drop(sink);
        // A write torn by kill -9: half a line at the end of output.jsonl.
        let mut f = OpenOptions::new().append(true).open(dir.path().join(OUTPUT_FILE)).unwrap();
        f.write_all(br#"{"id": "batch_req_x", "custom_id": "d", "resp"#).unwrap();
        drop(f);

        let mut sink = ResultSink::open(dir.path()).unwrap();
        assert_eq!(sink.counts(), SinkCounts { completed: 1, failed: 1, not_run: 1 });
        assert!(sink.is_done("a") && sink.is_done("b") && sink.is_done("c") && !sink.is_done("d"));
        sink.append(&ok("d")).unwrap();
        sink.sync().unwrap();
        let text = std::fs::read_to_string(dir.path().join(OUTPUT_FILE)).unwrap();
        let ids: Vec<String> = text.lines().map(|l| serde_json::from_str::<ResultLine>(l).unwrap().custom_id).collect();
        assert_eq!(ids, ["a", "d"]);
    }

    #[test]
    fn ordered_output_follows_the_input() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = ResultSink::open(dir.path()).unwrap();
        for id in ["c", "a", "b"] {
            sink.append(&ok(id)).unwrap();
        }
        sink.append(&ResultLine::not_run("z", "batch_expired", "late")).unwrap();
        sink.sync().unwrap();
        let order: Vec<LineRef> = ["a", "z", "b", "c", "missing"]
            .iter()
            .map(|id| LineRef { line: 0, offset: 0, len: 0, custom_id: id.to_string(), endpoint: Endpoint::Completions, weight: 1 })
            .collect();
        let dest = dir.path().join("ordered.jsonl");
        let (lines, bytes) = write_in_order(&order, &[sink.output_path()], &dest).unwrap();
        let text = std::fs::read_to_string(&dest).unwrap();
        assert_eq!((lines, bytes), (3, text.len() as u64));
        let ids: Vec<String> = text.lines().map(|l| serde_json::from_str::<ResultLine>(l).unwrap().custom_id).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        let (lines, _) = write_in_order(&order, &[sink.output_path(), sink.errors_path()], &dest).unwrap();
        assert_eq!(lines, 4);
    }
}
