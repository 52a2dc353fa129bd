//! The shared store (`--store postgres://…`) against a real PostgreSQL
//! server from Debian's packages, started on a free loopback port in a
//! temporary folder for this test and stopped at the end (also when the
//! test fails). Two real `kiln serve` replicas share it:
//!
//! 1. a batch uploaded and created on replica A is visible on B; both
//!    replicas answer some of its lines; every custom_id appears exactly
//!    once, with the greedy answers of a crash-free offline run;
//! 2. a stored response made on A is read on B and continued there with
//!    `previous_response_id`;
//! 3. A is killed with SIGKILL mid-batch: B takes over A's lines once their
//!    lease (2 s here) runs out; every custom_id once, answers unchanged;
//! 4. the database goes away: B answers 503 in OpenAI's error shape.
//!
//! Without PostgreSQL's binaries (or when it cannot start) the test says
//! SKIP and passes; scripts/test.sh installs them.

mod batch_support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use batch_support::*;
use serde_json::{json, Value};

const N: usize = 24;
const MAX_TOKENS: u32 = 8;
const LEASE: &str = "2";

/// A PostgreSQL server of this test; stopped on drop.
struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    /// Runs the server's programs as the `postgres` user (it refuses root).
    as_user: Vec<String>,
    _dir: tempfile::TempDir,
}

fn find_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten().map(|e| e.path().join("bin")).collect();
    versions.sort();
    versions.into_iter().rev().find(|b| b.join("pg_ctl").exists() && b.join("initdb").exists())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Postgres {
    fn command(&self, program: &str) -> Command {
        let mut c = match self.as_user.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(self.bin.join(program));
                c
            }
            None => Command::new(self.bin.join(program)),
        };
        c.stdin(Stdio::null());
        c
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let out = self.command(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
        if !out.status.success() {
            return Err(format!("{program} {args:?}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// initdb + pg_ctl start, or why not.
    fn start() -> Result<Postgres, String> {
        let bin = find_bin().ok_or("no PostgreSQL binaries under /usr/lib/postgresql/*/bin")?;
        let root = Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false);
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let data = dir.path().join("pgdata");
        std::fs::create_dir(&data).map_err(|e| e.to_string())?;
        let as_user = if root {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
            let chown = Command::new("chown").args(["postgres:postgres"]).arg(&data).status().map_err(|e| format!("chown: {e}"))?;
            if !chown.success() {
                return Err("cannot give the data folder to the postgres user (no such user?)".into());
            }
            vec!["runuser".to_string(), "-u".into(), "postgres".into(), "--".into()]
        } else {
            Vec::new()
        };
        let pg = Postgres { bin, data: data.clone(), port: free_port(), as_user, _dir: dir };
        let d = data.to_string_lossy().into_owned();
        pg.run("initdb", &["-D", &d, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])?;
        let opts = format!("-p {} -c listen_addresses=127.0.0.1 -k {d} -c fsync=off -c max_connections=100", pg.port);
        let log = data.join("server.log").to_string_lossy().into_owned();
        pg.run("pg_ctl", &["-D", &d, "-o", &opts, "-l", &log, "-w", "-t", "60", "start"])
            .map_err(|e| format!("{e}\n{}", std::fs::read_to_string(&log).unwrap_or_default()))?;
        pg.run("createdb", &["-h", "127.0.0.1", "-p", &pg.port.to_string(), "-U", "postgres", "kiln"])?;
        Ok(pg)
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/kiln", self.port)
    }

    fn stop(&self) {
        let d = self.data.to_string_lossy().into_owned();
        let _ = self.run("pg_ctl", &["-D", &d, "-m", "immediate", "-w", "stop"]);
    }

    /// One query's rows through psql, fields split on '|'.
    fn query(&self, sql: &str) -> Vec<Vec<String>> {
        let port = self.port.to_string();
        let out = self.run("psql", &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-d", "kiln", "-tA", "-c", sql]).expect("psql");
        out.lines().filter(|l| !l.is_empty()).map(|l| l.split('|').map(String::from).collect()).collect()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Replicas answering each line of `batch`: (replica name, lines).
fn done_by(pg: &Postgres, batch: &str) -> Vec<(String, u64)> {
    let sql = format!("SELECT done_by, count(*) FROM kiln_batch_lines WHERE batch_id = '{batch}' AND done_by IS NOT NULL GROUP BY done_by ORDER BY done_by");
    pg.query(&sql).into_iter().map(|r| (r[0].clone(), r[1].parse().unwrap())).collect()
}

async fn status_and_done(api: &Api, id: &str) -> (String, u64) {
    let (code, b) = api.get(&format!("/v1/batches/{id}")).await;
    assert_eq!(code, 200, "{b}");
    (b["status"].as_str().unwrap().to_string(), b["request_counts"]["completed"].as_u64().unwrap())
}

/// Every custom_id exactly once, in input order, with the reference answers.
async fn check_outputs(api: &Api, done: &Value, reference: &[Value], what: &str) {
    assert_eq!(done["status"], "completed", "{what}: {done}");
    assert_eq!(done["request_counts"], json!({"total": N, "completed": N, "failed": 0}), "{what}");
    assert!(done["error_file_id"].is_null(), "{what}: no error file: {done}");
    let outputs = api.result_lines(&done["output_file_id"]).await;
    let got: Vec<&str> = outputs.iter().map(|l| l["custom_id"].as_str().unwrap()).collect();
    let want: Vec<String> = (0..N).map(|i| format!("req-{i}")).collect();
    assert_eq!(got, want.iter().map(String::as_str).collect::<Vec<_>>(), "{what}: each custom_id exactly once, in input order");
    let (got, want) = (answers(&outputs), answers(reference));
    for id in want.keys() {
        assert_eq!(got[id], want[id], "{what}: {id} equals the greedy offline answer");
    }
}

#[tokio::test]
async fn replicas_share_batches_and_responses() {
    let pg = match Postgres::start() {
        Ok(pg) => pg,
        Err(why) => {
            eprintln!("SKIP: PostgreSQL cannot start here: {why}");
            return;
        }
    };
    let url = pg.url();
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("input.jsonl");
    std::fs::write(&input, chat_file(N, MAX_TOKENS)).unwrap();
    let Some(reference) = offline_reference(work.path(), &input) else { return };
    assert!(reference.iter().all(|l| l["response"]["status_code"] == 200), "every reference request succeeds");
    let content = std::fs::read_to_string(&input).unwrap();

    // A malformed or unreachable store is refused at start, clearly.
    let model = default_model().unwrap();
    for (bad, says) in [("mysql://root@db/x", "expected a PostgreSQL URL"), ("postgres://kiln@127.0.0.1:1/kiln", "cannot use the shared store")] {
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["serve", "--port", "0", "--store", bad, "--model"])
            .arg(&model)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "--store {bad}: {err}");
    }
    // Passwords stay out of messages and --help, in every form.
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--port", "0", "--store", "postgres://kiln@127.0.0.1:1/kiln?password=s3cret-q", "--model"])
        .arg(&model)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !err.contains("s3cret-q") && err.contains("password=***"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--help"])
        .env("KILN_STORE", "postgres://kiln:s3cret-env@db/kiln")
        .env("KILN_API_KEY", "sk-s3cret-key")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("KILN_STORE") && !help.contains("s3cret"), "{help}");

    let flags = ["--store", url.as_str(), "--store-lease", LEASE, "--max-batch-inflight", "3"];
    let mut a = Kiln::start(&work.path().join("a"), &flags).await.expect("replica A");
    let b = Kiln::start(&work.path().join("b"), &flags).await.expect("replica B");
    let (api_a, api_b) = (a.api(None), b.api(None));

    // 1. One batch, two replicas.
    let (code, file) = api_a.upload(content.as_bytes(), "batch").await;
    assert_eq!(code, 200, "{file}");
    let file_id = file["id"].as_str().unwrap();
    let (code, seen) = api_b.get(&format!("/v1/files/{file_id}")).await;
    assert_eq!((code, &seen["bytes"]), (200, &file["bytes"]), "B sees A's upload: {seen}");
    let (code, text) = api_b.get_text(&format!("/v1/files/{file_id}/content")).await;
    assert_eq!((code, text.as_str()), (200, content.as_str()), "B serves A's bytes");
    let create = json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"});
    let (code, batch) = api_a.post("/v1/batches", &create).await;
    assert_eq!(code, 200, "{batch}");
    let id = batch["id"].as_str().unwrap().to_string();
    let (code, seen) = api_b.get(&format!("/v1/batches/{id}")).await;
    assert_eq!(code, 200, "B sees A's batch: {seen}");
    let done = api_b.wait_final(&id, 300).await;
    check_outputs(&api_a, &done, &reference, "two replicas").await;
    let (code, via_a) = api_a.get(&format!("/v1/batches/{id}")).await;
    assert_eq!((code, &via_a["output_file_id"]), (200, &done["output_file_id"]));
    let shares = done_by(&pg, &id);
    assert_eq!(shares.len(), 2, "both replicas answered lines: {shares:?}");
    assert!(shares.iter().all(|(_, n)| *n > 0) && shares.iter().map(|s| s.1).sum::<u64>() == N as u64, "{shares:?}");

    // 2. A stored response made on A, read and continued on B.
    let ask = json!({"model": MODEL, "input": "Name a colour.", "max_output_tokens": 8, "temperature": 0});
    let (code, first) = api_a.post("/v1/responses", &ask).await;
    assert_eq!(code, 200, "{first}");
    let rid = first["id"].as_str().unwrap();
    let (code, got) = api_b.get(&format!("/v1/responses/{rid}")).await;
    assert_eq!((code, &got["output"]), (200, &first["output"]), "B reads A's response: {got}");
    let next = json!({"model": MODEL, "input": "And another one?", "previous_response_id": rid, "max_output_tokens": 8, "temperature": 0});
    let (code, second) = api_b.post("/v1/responses", &next).await;
    assert_eq!((code, &second["previous_response_id"]), (200, &json!(rid)), "{second}");
    let fresh = json!({"model": MODEL, "input": "And another one?", "max_output_tokens": 8, "temperature": 0});
    let (_, alone) = api_b.post("/v1/responses", &fresh).await;
    assert!(second["usage"]["input_tokens"].as_u64() > alone["usage"]["input_tokens"].as_u64(), "B continued A's conversation: {second} vs {alone}");
    let (code, _) = api_a.get(&format!("/v1/responses/{}", second["id"].as_str().unwrap())).await;
    assert_eq!(code, 200, "A reads B's response");

    // Cancel on B while both replicas run the batch: both stop; every
    // custom_id once, across the output and the error file.
    let (code, batch) = api_a.post("/v1/batches", &json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"})).await;
    assert_eq!(code, 200, "{batch}");
    let cid = batch["id"].as_str().unwrap().to_string();
    let end = Instant::now() + Duration::from_secs(120);
    while status_and_done(&api_a, &cid).await.1 < 2 {
        assert!(Instant::now() < end, "no progress before the cancel");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, cancelling) = api_b.post(&format!("/v1/batches/{cid}/cancel"), &json!({})).await;
    assert_eq!(code, 200, "{cancelling}");
    let cancelled = api_a.wait_final(&cid, 120).await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    let outputs = api_a.result_lines(&cancelled["output_file_id"]).await;
    let errors = api_b.result_lines(&cancelled["error_file_id"]).await;
    assert!(!outputs.is_empty() && !errors.is_empty() && outputs.len() < N, "{} answered, {} not", outputs.len(), errors.len());
    let mut ids: Vec<String> = outputs.iter().chain(&errors).map(|l| l["custom_id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    let mut want: Vec<String> = (0..N).map(|i| format!("req-{i}")).collect();
    want.sort();
    assert_eq!(ids, want, "each custom_id exactly once after a cancel");
    assert!(errors.iter().all(|e| e["response"].is_null() && e["error"]["code"] == "batch_cancelled"), "{errors:?}");
    assert_eq!(cancelled["request_counts"]["completed"], outputs.len());
    let answers_kept = answers(&outputs);
    let want_answers = answers(&reference);
    for (id, got) in &answers_kept {
        assert_eq!(got, &want_answers[id], "{id} before the cancel equals the offline answer");
    }

    // 3. kill -9 of A mid-batch: B finishes, nothing lost, nothing twice.
    let (code, file) = api_b.upload(content.as_bytes(), "batch").await;
    assert_eq!(code, 200, "{file}");
    let create = json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"});
    let (code, batch) = api_a.post("/v1/batches", &create).await;
    assert_eq!(code, 200, "{batch}");
    let id = batch["id"].as_str().unwrap().to_string();
    let a_pid = a.pid();
    let a_holds = format!("SELECT count(*) FROM kiln_batch_lines WHERE batch_id = '{id}' AND claimed_by LIKE '%-{a_pid}-%' AND state = 0");
    let end = Instant::now() + Duration::from_secs(300);
    loop {
        let (status, done) = status_and_done(&api_b, &id).await;
        assert!(status != "completed", "the batch must still run when A is killed");
        let held: u64 = pg.query(&a_holds)[0][0].parse().unwrap();
        if done >= 3 && held > 0 {
            break;
        }
        assert!(Instant::now() < end, "no progress before the kill");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.kill9();
    let done = api_b.wait_final(&id, 300).await;
    check_outputs(&api_b, &done, &reference, "after kill -9 of A").await;
    let shares = done_by(&pg, &id);
    assert!(shares.iter().any(|(r, n)| r.contains(&format!("-{a_pid}-")) && *n > 0), "A answered lines before it died: {shares:?}");
    assert!(shares.iter().any(|(r, n)| !r.contains(&format!("-{a_pid}-")) && *n > 0), "B answered the rest: {shares:?}");
    let taken = b.log_text().lines().any(|l| l.contains("batch finished") && l.contains(&id));
    assert!(taken, "B finished the batch:\n{}", b.log_text());

    // 4. The database goes away: 503 in OpenAI's shape, no panic.
    pg.stop();
    let (code, body) = api_b.get(&format!("/v1/batches/{id}")).await;
    assert_error(code, &body, 503, "server_error", None);
    let (code, body) = api_b.get(&format!("/v1/responses/{rid}")).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    // A response that cannot be stored is not answered with an id nobody
    // can retrieve.
    let (code, body) = api_b.post("/v1/responses", &json!({"model": MODEL, "input": "hi", "max_output_tokens": 4})).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    let (code, health) = api_b.get("/v1/models").await;
    assert_eq!(code, 200, "the rest still works: {health}");
}

/// The claim protocol itself, on the library's store with two "replicas"
/// and a 1 s lease: claims never overlap, an answer counts only from the
/// claim holder, a lapsed lease hands lines over, and a batch ends once.
#[tokio::test]
async fn claims_are_exclusive_and_leases_lapse() {
    use kiln::batch::pg::PgBatchStore;
    use kiln::batch::store::{new_batch, BatchRow, FileRow};
    use kiln::batch::wire::{BatchStatus, ResultLine};
    let pg = match Postgres::start() {
        Ok(pg) => pg,
        Err(why) => {
            eprintln!("SKIP: PostgreSQL cannot start here: {why}");
            return;
        }
    };
    let shared = kiln::pgstore::SharedStore::new(&pg.url(), 1).unwrap();
    shared.init().await.unwrap();
    shared.init().await.expect("creating the schema twice is fine");
    let store = PgBatchStore { shared };
    let n = 40;
    let content = chat_file(n, 4);
    let file = FileRow { id: "file-1".into(), owner: "o".into(), filename: "in.jsonl".into(), purpose: "batch".into(), bytes: content.len() as u64, created_at: 1 };
    store.insert_file(&file, content.as_bytes()).await.unwrap();
    assert_eq!(store.file_content("file-1").await.unwrap().unwrap(), content.as_bytes());
    let lines = kiln::batch::input::scan(content.as_bytes()).unwrap();
    let mut b = new_batch("batch_1".into(), "/v1/chat/completions", "file-1", None, 1);
    store.insert_batch(&BatchRow { owner: "o".into(), object: b.clone() }).await.unwrap();
    b.status = BatchStatus::InProgress;
    assert!(store.start_batch(&b, &lines).await.unwrap());
    assert!(!store.start_batch(&b, &lines).await.unwrap(), "lines are recorded once");
    assert_eq!(store.todo("batch_1").await.unwrap(), n as u64);

    // Eight claimers racing, one line at a time: each line goes to one.
    let mut racers = tokio::task::JoinSet::new();
    for r in 0..8 {
        let store = store.clone();
        racers.spawn(async move {
            let mut got = Vec::new();
            while let Some(line) = store.claim("batch_1", &format!("r{r}"), 1).await.unwrap().pop() {
                got.push(line.idx);
            }
            got
        });
    }
    let mut all: Vec<i32> = racers.join_all().await.into_iter().flatten().collect();
    all.sort();
    assert_eq!(all, (0..n as i32).collect::<Vec<_>>(), "every line claimed exactly once");

    // Only the holder's answer counts.
    let ok = |id: &str| ResultLine::answered(id, 200, "req".into(), json!({"x": 1}));
    let holder = pg.query("SELECT claimed_by FROM kiln_batch_lines WHERE batch_id = 'batch_1' AND idx = 0")[0][0].clone();
    let other = if holder == "r0" { "r1" } else { "r0" };
    assert!(!store.complete("batch_1", 0, other, &ok("req-0")).await.unwrap(), "not the holder");
    assert!(store.complete("batch_1", 0, &holder, &ok("req-0")).await.unwrap());
    assert!(!store.complete("batch_1", 0, &holder, &ok("req-0")).await.unwrap(), "answered once");

    // Leases lapse after 1 s without renewal: a new replica takes the lines,
    // and the old holder's late answers are dropped.
    assert!(store.claim("batch_1", "late", 100).await.unwrap().is_empty(), "all lines are held");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let taken = store.claim("batch_1", "late", 100).await.unwrap();
    assert_eq!(taken.len(), n - 1, "every unanswered line came back");
    let first = &taken[0];
    let old = pg.query("SELECT count(*) FROM kiln_batch_lines WHERE claimed_by <> 'late' AND state = 0")[0][0].clone();
    assert_eq!(old, "0");
    for r in 0..8 {
        assert!(!store.complete("batch_1", first.idx, &format!("r{r}"), &ok(&first.custom_id)).await.unwrap());
    }
    // A renewing holder keeps its lines.
    assert_eq!(store.renew("late").await.unwrap(), (n - 1) as u64);
    let half: Vec<_> = taken.iter().take(n / 2).collect();
    for l in &half {
        assert!(store.complete("batch_1", l.idx, "late", &ok(&l.custom_id)).await.unwrap());
    }
    assert_eq!(store.release("batch_1", "late").await.unwrap(), (n - 1 - half.len()) as u64);

    // Completing waits for every line; then it happens once.
    let why = ("batch_cancelled", "cancelled");
    assert!(store.finish("o", b.clone(), BatchStatus::InProgress, BatchStatus::Completed, why, 2).await.unwrap().is_none(), "lines remain");
    let rest = store.claim("batch_1", "r9", 100).await.unwrap();
    for l in &rest {
        assert!(store.complete("batch_1", l.idx, "r9", &ok(&l.custom_id)).await.unwrap());
    }
    let fin = store.finish("o", b.clone(), BatchStatus::InProgress, BatchStatus::Completed, why, 2).await.unwrap().expect("finishes");
    assert_eq!((fin.object.status, fin.object.request_counts.completed), (BatchStatus::Completed, n as u64));
    assert!(store.finish("o", b.clone(), BatchStatus::InProgress, BatchStatus::Completed, why, 2).await.unwrap().is_none(), "once");
    let out = store.file_content(fin.object.output_file_id.as_deref().unwrap()).await.unwrap().unwrap();
    let ids: Vec<String> = String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["custom_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, (0..n).map(|i| format!("req-{i}")).collect::<Vec<_>>(), "in input order, once each");
    let by: u64 = store.done_by("batch_1").await.unwrap().iter().map(|(_, c)| c).sum();
    assert_eq!(by, n as u64);

    // Expiry (or cancel) ends a batch with lines still held by a replica:
    // the answered keep their answers, the rest are listed as never run, and
    // a late answer from the holder is dropped.
    let mut e = new_batch("batch_2".into(), "/v1/chat/completions", "file-1", None, 1);
    store.insert_batch(&BatchRow { owner: "o".into(), object: e.clone() }).await.unwrap();
    e.status = BatchStatus::InProgress;
    assert!(store.start_batch(&e, &lines).await.unwrap());
    let some = store.claim("batch_2", "r1", 5).await.unwrap();
    // A claim takes at most what was asked, whatever plan the database
    // picks for it (the locked subquery runs once).
    assert_eq!(some.len(), 5);
    let held = pg.query("SELECT count(*) FROM kiln_batch_lines WHERE batch_id = 'batch_2' AND claimed_by = 'r1' AND state = 0");
    assert_eq!(held[0][0], "5", "claimed rows in the table");
    for l in &some[..3] {
        assert!(store.complete("batch_2", l.idx, "r1", &ok(&l.custom_id)).await.unwrap());
    }
    let why = ("batch_expired", "too late");
    let fin = store.finish("o", e.clone(), BatchStatus::InProgress, BatchStatus::Expired, why, 3).await.unwrap().expect("expires");
    assert_eq!((fin.object.status, fin.object.request_counts.completed, fin.object.expired_at), (BatchStatus::Expired, 3, Some(3)));
    assert!(!store.complete("batch_2", some[4].idx, "r1", &ok(&some[4].custom_id)).await.unwrap(), "too late");
    let errors = store.file_content(fin.object.error_file_id.as_deref().unwrap()).await.unwrap().unwrap();
    let errors: Vec<Value> = String::from_utf8(errors).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(errors.len(), n - 3);
    assert!(errors.iter().all(|e| e["error"]["code"] == "batch_expired" && e["response"].is_null()));
    assert_eq!(store.todo("batch_2").await.unwrap(), 0);
    assert!(store.active_batches().await.unwrap().is_empty());
}
