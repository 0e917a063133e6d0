//! The stats store: one SQLite file (WAL) shared by every worker, one row per worker id with
//! running sums, written by one thread per worker process that commits in groups.
//!
//! The request path only adds to an in-memory accumulator under a mutex the writer holds for
//! a swap, never across disk I/O; memory stays bounded (one accumulator) however long the disk
//! or a lock stalls. The same thread answers /worker/stats: it commits what is pending first,
//! so a worker's own answers are always in its stats, then reads every worker's row.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior, params};

/// Schema version this binary writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;

/// `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &["CREATE TABLE worker_stats (
        worker_id        TEXT PRIMARY KEY NOT NULL,
        successes        INTEGER NOT NULL DEFAULT 0,
        failures         INTEGER NOT NULL DEFAULT 0,
        total            INTEGER NOT NULL DEFAULT 0,
        sum_response_us  INTEGER NOT NULL DEFAULT 0,
        updated_unix_ms  INTEGER NOT NULL DEFAULT 0
    );"];

/// How long one SQLite call waits on another process's lock before returning BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// How long opening (WAL switch, migration) keeps retrying a busy database.
const OPEN_RETRY: Duration = Duration::from_secs(15);

/// Creates or migrates the database at `path` and closes it. The supervisor calls this before
/// forking, so no connection or thread crosses a fork.
pub fn prepare(path: &Path) -> Result<(), String> {
    open(path).map(drop)
}

/// Opens `path` read-write (creating it), switches to WAL, checks integrity, migrates.
/// Every error names the path.
fn open(path: &Path) -> Result<Connection, String> {
    let named = |e: String| format!("stats database {}: {e}", path.display());
    if path.is_dir() {
        return Err(named("is a directory".into()));
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| named(describe(&e)))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| named(describe(&e)))?;
    retry_busy(|| {
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        Ok(mode)
    })
    .map_err(|e| named(describe(&e)))
    .and_then(|mode| {
        if mode.eq_ignore_ascii_case("wal") {
            Ok(())
        } else {
            Err(named(format!(
                "cannot switch to WAL (journal_mode is {mode})"
            )))
        }
    })?;
    // NORMAL in WAL mode: a commit survives a process crash; only power loss can undo the
    // last few commits, which is fine for request counters.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(|e| named(describe(&e)))?;
    let check: String = retry_busy(|| conn.query_row("PRAGMA quick_check", [], |r| r.get(0)))
        .map_err(|e| named(describe(&e)))?;
    if check != "ok" {
        return Err(named(format!("integrity check failed: {check}")));
    }
    retry_busy(|| migrate(&conn)).map_err(|e| named(describe(&e)))?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| named(describe(&e)))?;
    if version != SCHEMA_VERSION {
        return Err(named(format!(
            "schema version {version} is newer than this binary's {SCHEMA_VERSION}"
        )));
    }
    Ok(conn)
}

/// Applies every missing migration in one IMMEDIATE transaction, so two processes starting
/// together migrate once, one after the other.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version >= SCHEMA_VERSION {
        return Ok(());
    }
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", from as i64 + 1)?;
    }
    tx.commit()
}

/// Runs `f` again while SQLite reports BUSY/LOCKED, up to [`OPEN_RETRY`].
fn retry_busy<T>(mut f: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let end = Instant::now() + OPEN_RETRY;
    loop {
        match f() {
            Err(e) if is_busy(&e) && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Whether `e` is a lock held by someone else (worth retrying).
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// A short human message for an SQLite error.
fn describe(e: &rusqlite::Error) -> String {
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => "not an SQLite database (corrupt or foreign file)".into(),
        Some(ErrorCode::DatabaseCorrupt) => format!("database is corrupt ({e})"),
        Some(ErrorCode::CannotOpen) => format!("cannot open ({e})"),
        Some(ErrorCode::ReadOnly) => format!("not writable ({e})"),
        _ => e.to_string(),
    }
}

/// Counters not yet committed: what one worker adds to its row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// Hello requests answered 200.
    pub successes: u64,
    /// Hello requests answered 500.
    pub failures: u64,
    /// Sum of their response times in microseconds.
    pub sum_us: u64,
}

impl Delta {
    fn is_empty(&self) -> bool {
        self.successes == 0 && self.failures == 0
    }

    fn add(&mut self, other: &Delta) {
        self.successes += other.successes;
        self.failures += other.failures;
        self.sum_us += other.sum_us;
    }
}

/// One worker's row as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerRow {
    /// The worker id.
    pub id: String,
    /// Hello requests answered 200.
    pub successes: u64,
    /// Hello requests answered 500.
    pub failures: u64,
    /// All hello requests.
    pub total: u64,
    /// Sum of response times in microseconds.
    pub sum_us: u64,
}

/// Adds `d` to `worker`'s row in one IMMEDIATE transaction.
fn commit(conn: &Connection, worker: &str, d: &Delta) -> rusqlite::Result<()> {
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.as_millis() as i64)
        .unwrap_or(0);
    tx.prepare_cached(
        "INSERT INTO worker_stats
             (worker_id, successes, failures, total, sum_response_us, updated_unix_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(worker_id) DO UPDATE SET
             successes = successes + excluded.successes,
             failures = failures + excluded.failures,
             total = total + excluded.total,
             sum_response_us = sum_response_us + excluded.sum_response_us,
             updated_unix_ms = excluded.updated_unix_ms",
    )?
    .execute(params![
        worker,
        d.successes as i64,
        d.failures as i64,
        (d.successes + d.failures) as i64,
        d.sum_us as i64,
        now_ms
    ])?;
    tx.commit()
}

/// Every worker's row, ordered by id.
pub fn read_rows(conn: &Connection) -> rusqlite::Result<Vec<WorkerRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT worker_id, successes, failures, total, sum_response_us
         FROM worker_stats ORDER BY worker_id",
    )?;
    let rows = stmt.query_map([], |r| {
        let n = |i: usize| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
        Ok(WorkerRow {
            id: r.get(0)?,
            successes: n(1)?,
            failures: n(2)?,
            total: n(3)?,
            sum_us: n(4)?,
        })
    })?;
    rows.collect()
}

/// Mean response time in ms, rounded to the microsecond; 0 without requests.
fn mean_ms(sum_us: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        (sum_us as f64 / total as f64).round() / 1000.0
    }
}

/// The /worker/stats body in the seed's shape: for each counter a list with the total first,
/// then one entry per worker id. The total's mean is over every request (sum of sums over sum
/// of counts), not a mean of means.
pub fn stats_json(rows: &[WorkerRow]) -> String {
    let sum = |f: fn(&WorkerRow) -> u64| rows.iter().map(f).fold(0u64, u64::saturating_add);
    let total_row = WorkerRow {
        id: "total".into(),
        successes: sum(|r| r.successes),
        failures: sum(|r| r.failures),
        total: sum(|r| r.total),
        sum_us: sum(|r| r.sum_us),
    };
    let all: Vec<&WorkerRow> = std::iter::once(&total_row).chain(rows.iter()).collect();
    let list = |value: &dyn Fn(&WorkerRow) -> serde_json::Value| {
        let entries: Vec<String> = all
            .iter()
            .map(|r| {
                let key = serde_json::Value::String(r.id.clone());
                format!("{{{key}:{}}}", value(r))
            })
            .collect();
        format!("[{}]", entries.join(","))
    };
    format!(
        "{{\"SuccessfulRequests\":{},\"FailedRequests\":{},\"TotalRequests\":{},\"AverageResponseTime\":{}}}",
        list(&|r| r.successes.into()),
        list(&|r| r.failures.into()),
        list(&|r| r.total.into()),
        list(&|r| mean_ms(r.sum_us, r.total).into()),
    )
}

/// Which stats a request wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// `/worker/stats`: every worker this one knows of (its file, merged with its peers').
    All,
    /// `/worker/stats/node`: this node's file only, exact rows (what peers ask each other).
    Node,
}

/// Most merged answers fanning out to peers at once; beyond it a request gets 503.
const MAX_FAN_OUTS: usize = 16;

/// What the loop hands the store thread.
#[derive(Default)]
struct Inbox {
    pending: Delta,
    stats_waiters: Vec<(u64, Scope)>,
    /// A peer fan-out left an answer: the loop must be woken.
    answers_ready: bool,
    stop: bool,
}

/// The store thread's answers to /worker/stats requests: (request key, JSON body or error).
pub type StatsAnswer = (u64, Result<Arc<str>, String>);

struct Shared {
    inbox: Mutex<Inbox>,
    wake: Condvar,
    answers: Mutex<Vec<StatsAnswer>>,
    fan_outs: std::sync::atomic::AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere never leaves these counters half-updated; keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The worker's handle on its store thread.
pub struct Store {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Store {
    /// Opens (creates, migrates) the database, registers `worker` with zero counts (which also
    /// proves the file is writable) and starts the store thread. `notify` is called from that
    /// thread when stats answers are ready. Errors name the path.
    pub fn start(
        path: &Path,
        worker: &str,
        flush_every: Duration,
        notify: Box<dyn Fn() + Send>,
    ) -> Result<Store, String> {
        Store::start_with_peers(path, worker, flush_every, notify, Vec::new())
    }

    /// [`Store::start`] for a worker whose `/worker/stats` merges `peers`' node answers.
    pub fn start_with_peers(
        path: &Path,
        worker: &str,
        flush_every: Duration,
        notify: Box<dyn Fn() + Send>,
        peers: Vec<String>,
    ) -> Result<Store, String> {
        let conn = open(path)?;
        retry_busy(|| commit(&conn, worker, &Delta::default()))
            .map_err(|e| format!("stats database {}: {}", path.display(), describe(&e)))?;
        let shared = Arc::new(Shared {
            inbox: Mutex::new(Inbox::default()),
            wake: Condvar::new(),
            answers: Mutex::new(Vec::new()),
            fan_outs: std::sync::atomic::AtomicUsize::new(0),
        });
        let ctx = WriterCtx {
            conn,
            path: path.to_path_buf(),
            worker: worker.to_string(),
            flush_every,
            shared: Arc::clone(&shared),
            notify,
            peers: Arc::new(peers),
        };
        let thread = std::thread::Builder::new()
            .name("stats-store".into())
            .spawn(move || ctx.run())
            .map_err(|e| format!("stats store thread: {e}"))?;
        Ok(Store {
            shared,
            thread: Some(thread),
        })
    }

    /// Counts one answered hello request (never blocks on disk).
    pub fn record(&self, success: bool, response: Duration) {
        let mut inbox = lock(&self.shared.inbox);
        let first = inbox.pending.is_empty();
        if success {
            inbox.pending.successes += 1;
        } else {
            inbox.pending.failures += 1;
        }
        inbox.pending.sum_us += response.as_micros() as u64;
        drop(inbox);
        if first {
            // The writer may be idle (long wait): start its flush interval now. Later
            // records in the same interval need no wake-up.
            self.shared.wake.notify_one();
        }
    }

    /// Asks for the stats JSON; the answer comes back through `take_answers` under `key`.
    pub fn request_stats(&self, key: u64, scope: Scope) {
        lock(&self.shared.inbox).stats_waiters.push((key, scope));
        self.shared.wake.notify_one();
    }

    /// Stats answers ready since the last call.
    pub fn take_answers(&self) -> Vec<StatsAnswer> {
        std::mem::take(&mut *lock(&self.shared.answers))
    }

    /// Flushes everything recorded and stops the thread. Errors if the last commit failed
    /// after retries (the message says how many requests were not saved).
    pub fn stop(mut self) -> Result<(), String> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<(), String> {
        lock(&self.shared.inbox).stop = true;
        self.shared.wake.notify_one();
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err("stats store thread panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

/// How long a stopping store keeps retrying a failing commit before giving up.
const STOP_RETRY: Duration = Duration::from_secs(30);

struct WriterCtx {
    conn: Connection,
    path: PathBuf,
    worker: String,
    flush_every: Duration,
    shared: Arc<Shared>,
    notify: Box<dyn Fn() + Send>,
    peers: Arc<Vec<String>>,
}

impl WriterCtx {
    fn run(self) -> Result<(), String> {
        // Counters taken from the inbox but not yet committed (kept across failed commits).
        let mut unsaved = Delta::default();
        let mut last_error_log: Option<Instant> = None;
        let mut stop_deadline: Option<Instant> = None;
        let mut next_flush = Instant::now() + self.flush_every;
        loop {
            let (waiters, stop, answers_ready) = self.wait_for_work(&mut unsaved, &mut next_flush);
            if answers_ready {
                (self.notify)();
            }
            next_flush = Instant::now() + self.flush_every;
            if !unsaved.is_empty() {
                self.commit_unsaved(&mut unsaved, &mut last_error_log);
            }
            if !waiters.is_empty() {
                self.answer_stats(waiters);
            }
            if stop && let Some(result) = self.stop_result(&unsaved, &mut stop_deadline) {
                return result;
            }
        }
    }

    /// Waits until there is something to do (a flush due, stats requests, the stop); moves
    /// the recorded counters into `unsaved` and returns the stats waiters and the stop flag.
    fn wait_for_work(
        &self,
        unsaved: &mut Delta,
        next_flush: &mut Instant,
    ) -> (Vec<(u64, Scope)>, bool, bool) {
        let mut inbox = lock(&self.shared.inbox);
        loop {
            let now = Instant::now();
            if inbox.stop || !inbox.stats_waiters.is_empty() || inbox.answers_ready {
                break;
            }
            let has_work = !inbox.pending.is_empty() || !unsaved.is_empty();
            if has_work && now >= *next_flush {
                break;
            }
            let wait = if has_work {
                *next_flush - now
            } else {
                // Idle: nothing to write; wake up now and then to keep the loop simple.
                Duration::from_secs(1)
            };
            inbox = self
                .shared
                .wake
                .wait_timeout(inbox, wait)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
            if inbox.pending.is_empty() && unsaved.is_empty() {
                *next_flush = Instant::now() + self.flush_every;
            }
        }
        unsaved.add(&std::mem::take(&mut inbox.pending));
        let ready = std::mem::take(&mut inbox.answers_ready);
        (std::mem::take(&mut inbox.stats_waiters), inbox.stop, ready)
    }

    /// Commits `unsaved`; on failure keeps it for the next round (never dropped) and logs at
    /// most every 5 s.
    fn commit_unsaved(&self, unsaved: &mut Delta, last_error_log: &mut Option<Instant>) {
        let Err(e) = commit(&self.conn, &self.worker, unsaved) else {
            *unsaved = Delta::default();
            return;
        };
        let now = Instant::now();
        if last_error_log.is_none_or(|t| now - t > Duration::from_secs(5)) {
            *last_error_log = Some(now);
            crate::warn!(
                "stats_commit_failed",
                "db={} unsaved_requests={} error={}",
                crate::sys::log::quote(&self.path.display().to_string()),
                unsaved.successes + unsaved.failures,
                crate::sys::log::quote(&describe(&e))
            );
        }
        if !is_busy(&e) {
            // Not a lock: do not spin on a broken disk.
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Reads every row and hands the JSON (or the error) to each waiting stats request; a
    /// merged answer with peers is left to a fan-out thread (it never holds up commits).
    fn answer_stats(&self, waiters: Vec<(u64, Scope)>) {
        let rows = read_rows(&self.conn).map_err(|e| describe(&e));
        let mut ready = Vec::new();
        for (key, scope) in waiters {
            let rows = match (&rows, scope) {
                (Err(e), _) => {
                    ready.push((key, Err(e.clone())));
                    continue;
                }
                (Ok(rows), Scope::Node) => {
                    ready.push((key, Ok(Arc::from(super::peers::node_json(rows)))));
                    continue;
                }
                (Ok(rows), Scope::All) if self.peers.is_empty() => {
                    ready.push((key, Ok(Arc::from(stats_json(rows)))));
                    continue;
                }
                (Ok(rows), Scope::All) => rows.clone(),
            };
            if let Err(e) = self.fan_out(key, rows) {
                ready.push((key, Err(e)));
            }
        }
        if !ready.is_empty() {
            lock(&self.shared.answers).extend(ready);
            (self.notify)();
        }
    }

    /// Starts the thread merging `rows` with the peers' answers for request `key`.
    fn fan_out(&self, key: u64, rows: Vec<WorkerRow>) -> Result<(), String> {
        use std::sync::atomic::Ordering;
        if self.shared.fan_outs.fetch_add(1, Ordering::AcqRel) >= MAX_FAN_OUTS {
            self.shared.fan_outs.fetch_sub(1, Ordering::AcqRel);
            return Err(format!(
                "{MAX_FAN_OUTS} stats requests already asking the peers"
            ));
        }
        let shared = Arc::clone(&self.shared);
        let peers = Arc::clone(&self.peers);
        let spawned = std::thread::Builder::new()
            .name("stats-peers".into())
            .spawn(move || {
                let body = super::peers::merged_json(rows, &peers, super::peers::PEER_TIMEOUT);
                lock(&shared.answers).push((key, Ok(Arc::from(body))));
                shared.fan_outs.fetch_sub(1, Ordering::AcqRel);
                lock(&shared.inbox).answers_ready = true;
                shared.wake.notify_one();
            });
        spawned.map(|_| ()).map_err(|e| {
            self.shared.fan_outs.fetch_sub(1, Ordering::AcqRel);
            format!("stats peers thread: {e}")
        })
    }

    /// Once stopping: Some(Ok) when everything is saved, Some(Err) when it could not be
    /// within `STOP_RETRY`, None to keep retrying.
    fn stop_result(
        &self,
        unsaved: &Delta,
        stop_deadline: &mut Option<Instant>,
    ) -> Option<Result<(), String>> {
        let pending_empty = lock(&self.shared.inbox).pending.is_empty();
        if unsaved.is_empty() && pending_empty {
            return Some(Ok(()));
        }
        let deadline = *stop_deadline.get_or_insert(Instant::now() + STOP_RETRY);
        if Instant::now() >= deadline {
            return Some(Err(format!(
                "stats database {}: {} requests not saved after retrying for {}s",
                self.path.display(),
                unsaved.successes + unsaved.failures,
                STOP_RETRY.as_secs()
            )));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("glb-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("stats.db")
    }

    #[test]
    fn prepare_creates_versioned_wal_database_and_is_idempotent() {
        let p = tmp("prepare");
        prepare(&p).unwrap();
        prepare(&p).unwrap();
        let c = Connection::open(&p).unwrap();
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let mode: String = c
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
    }

    #[test]
    fn newer_schema_is_refused_with_the_path() {
        let p = tmp("newer");
        prepare(&p).unwrap();
        Connection::open(&p)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let e = prepare(&p).unwrap_err();
        assert!(e.contains(&p.display().to_string()), "{e}");
        assert!(e.contains("schema version 99"), "{e}");
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
    }

    #[test]
    fn garbage_file_is_refused_with_the_path() {
        let p = tmp("garbage");
        std::fs::write(&p, vec![0x5au8; 8192]).unwrap();
        let e = prepare(&p).unwrap_err();
        assert!(e.contains(&p.display().to_string()), "{e}");
        assert!(e.contains("not an SQLite database"), "{e}");
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
    }

    #[test]
    fn json_has_seed_shape_and_true_total_mean() {
        let rows = vec![
            WorkerRow {
                id: "a".into(),
                successes: 3,
                failures: 1,
                total: 4,
                sum_us: 400_000,
            },
            WorkerRow {
                id: "b\"x".into(),
                successes: 0,
                failures: 0,
                total: 0,
                sum_us: 0,
            },
            WorkerRow {
                id: "c".into(),
                successes: 1,
                failures: 0,
                total: 1,
                sum_us: 1_500,
            },
        ];
        let v: serde_json::Value = serde_json::from_str(&stats_json(&rows)).unwrap();
        assert_eq!(v["SuccessfulRequests"][0]["total"], 4);
        assert_eq!(v["FailedRequests"][0]["total"], 1);
        assert_eq!(v["TotalRequests"][0]["total"], 5);
        assert_eq!(v["TotalRequests"][1]["a"], 4);
        assert_eq!(v["TotalRequests"][2]["b\"x"], 0);
        // (400000 + 1500) / 5 us = 80.3 ms, not (100 + 1.5) / 2.
        assert_eq!(v["AverageResponseTime"][0]["total"], 80.3);
        assert_eq!(v["AverageResponseTime"][1]["a"], 100.0);
        assert_eq!(v["AverageResponseTime"][2]["b\"x"], 0.0);
        assert_eq!(v["AverageResponseTime"][3]["c"], 1.5);
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 4);
    }

    #[test]
    fn store_flushes_on_stop_and_answers_stats() {
        let p = tmp("flush");
        let (tx, rx) = std::sync::mpsc::channel();
        let s = Store::start(
            &p,
            "w1",
            Duration::from_millis(5),
            Box::new(move || {
                let _ = tx.send(());
            }),
        )
        .unwrap();
        for i in 0..1000u64 {
            s.record(i % 4 != 0, Duration::from_micros(1000 + i));
        }
        s.request_stats(7, Scope::All);
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let answers = s.take_answers();
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].0, 7);
        let v: serde_json::Value = serde_json::from_str(answers[0].1.as_ref().unwrap()).unwrap();
        assert_eq!(v["TotalRequests"][1]["w1"], 1000);
        assert_eq!(v["FailedRequests"][1]["w1"], 250);
        s.record(true, Duration::from_millis(3));
        s.stop().unwrap();
        let c = Connection::open(&p).unwrap();
        let rows = read_rows(&c).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].total, 1001);
        assert_eq!(
            rows[0].sum_us,
            (0..1000u64).map(|i| 1000 + i).sum::<u64>() + 3000
        );
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
    }
}
