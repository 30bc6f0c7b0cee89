//! Usage accounting: per-hour counters of model runs and worker requests, kept in
//! `usage.redb` in the node's data folder.
//!
//! [`UsageRecorder`] adds each record to counters in memory, keyed by (UTC hour, worker,
//! model), and [`UsageRecorder::flush`] adds those counters to the file in one transaction.
//! The node flushes every few seconds and at shutdown, never once per request. A worker's own
//! requests are counted under the model `""`; model runs outside any worker (the REST and
//! OpenAI-compatible routes) under the worker `""`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kiln_inference::{UsageRecord, UsageSink};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, TableError};
use serde::{Deserialize, Serialize};

/// File of the usage counters, in the node's data folder.
pub const USAGE_FILE: &str = "usage.redb";

/// How often a running node adds its in-memory counters to [`USAGE_FILE`].
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// Stored key of a bucket: (hour since the Unix epoch, worker or "", model or "").
type StoredKey<'a> = (u64, &'a str, &'a str);

/// Stored counters, in the order of the [`Counters`] fields.
type Tuple = (u64, u64, u64, u64, f64);

/// Buckets of [`Counters`], one per (UTC hour, worker, model).
const TABLE: TableDefinition<StoredKey, Tuple> = TableDefinition::new("usage_hourly");

/// Counters of one (hour, worker, model) bucket, or of a sum of buckets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub images: u64,
    pub compute_seconds: f64,
}

impl Counters {
    fn add(&mut self, other: &Counters) {
        self.requests += other.requests;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.images += other.images;
        self.compute_seconds += other.compute_seconds;
    }

    fn from_tuple((requests, input_tokens, output_tokens, images, compute_seconds): Tuple) -> Self {
        Self {
            requests,
            input_tokens,
            output_tokens,
            images,
            compute_seconds,
        }
    }

    fn to_tuple(self) -> Tuple {
        (
            self.requests,
            self.input_tokens,
            self.output_tokens,
            self.images,
            self.compute_seconds,
        )
    }
}

/// Key of a bucket in memory, as [`StoredKey`] with owned names.
type BucketKey = (u64, String, String);

/// Usage of one (worker, model) pair over the queried hours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRow {
    /// The worker, or "" for runs outside any worker.
    pub worker: String,
    /// The installed model id, or "" for the worker's own requests.
    pub model: String,
    #[serde(flatten)]
    pub counters: Counters,
}

/// Rows of a query, sorted by worker then model, and their sum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageReport {
    pub rows: Vec<UsageRow>,
    pub total: Counters,
}

/// Selection of the buckets that a query sums.
#[derive(Debug, Clone, Default)]
pub struct UsageFilter {
    /// Only this worker's rows ("" selects runs outside any worker).
    pub worker: Option<String>,
    /// Only this installed model's rows.
    pub model: Option<String>,
    /// Only buckets whose hour overlaps the last `since`. Whole hours are summed, so up to an
    /// hour before the cutoff is included.
    pub since: Option<Duration>,
}

/// Reads a duration such as `90s`, `30m`, `24h` or `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || {
        format!(
            "invalid duration {text:?}: use a whole number followed by s, m, h or d, such as \
             30m, 24h or 7d"
        )
    };
    let unit_start = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (number, unit) = text.split_at(unit_start);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let unit_seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(invalid()),
    };
    number
        .checked_mul(unit_seconds)
        .map(Duration::from_secs)
        .ok_or_else(invalid)
}

fn hour_of(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        / 3600
}

/// The usage counters file.
pub struct UsageStore {
    db: Database,
    path: PathBuf,
}

impl UsageStore {
    /// Opens the file, creating it when missing. Fails when another process has it open.
    pub fn open(path: &Path) -> Result<Self, String> {
        let db = Database::create(path).map_err(|error| open_error(path, error))?;
        Ok(Self {
            db,
            path: path.to_owned(),
        })
    }

    /// Opens an existing file, or returns `None` when the node never wrote one.
    pub fn open_existing(path: &Path) -> Result<Option<Self>, String> {
        if !path.exists() {
            return Ok(None);
        }
        let db = Database::open(path).map_err(|error| open_error(path, error))?;
        Ok(Some(Self {
            db,
            path: path.to_owned(),
        }))
    }

    /// Adds `counters` to the bucket of (the hour that contains `time`, `worker`, `model`), in
    /// one transaction. Tests and tools use this to add usage at a chosen time.
    pub fn add_at(
        &self,
        time: SystemTime,
        worker: &str,
        model: &str,
        counters: Counters,
    ) -> Result<(), String> {
        let mut batch = HashMap::new();
        batch.insert(
            (hour_of(time), worker.to_owned(), model.to_owned()),
            counters,
        );
        self.add(&batch)
    }

    /// Adds every bucket of `batch` to the file in one durable transaction.
    fn add(&self, batch: &HashMap<BucketKey, Counters>) -> Result<(), String> {
        let failed = |error: &dyn std::fmt::Display| {
            format!("writing {} failed: {error}", self.path.display())
        };
        let mut txn = self.db.begin_write().map_err(|error| failed(&error))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|error| failed(&error))?;
        {
            let mut table = txn.open_table(TABLE).map_err(|error| failed(&error))?;
            for ((hour, worker, model), counters) in batch {
                let key = (*hour, worker.as_str(), model.as_str());
                let mut total = match table.get(key).map_err(|error| failed(&error))? {
                    Some(stored) => Counters::from_tuple(stored.value()),
                    None => Counters::default(),
                };
                total.add(counters);
                table
                    .insert(key, total.to_tuple())
                    .map_err(|error| failed(&error))?;
            }
        }
        txn.commit().map_err(|error| failed(&error))
    }

    /// Sums the buckets that `filter` selects into one row per (worker, model).
    pub fn query(&self, filter: &UsageFilter, now: SystemTime) -> Result<UsageReport, String> {
        let failed = |error: &dyn std::fmt::Display| {
            format!("reading {} failed: {error}", self.path.display())
        };
        let first_hour = filter.since.map_or(0, |since| {
            hour_of(now.checked_sub(since).unwrap_or(UNIX_EPOCH))
        });
        let txn = self.db.begin_read().map_err(|error| failed(&error))?;
        let table = match txn.open_table(TABLE) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(report(BTreeMap::new())),
            Err(error) => return Err(failed(&error)),
        };
        let mut sums: BTreeMap<(String, String), Counters> = BTreeMap::new();
        for entry in table
            .range((first_hour, "", "")..)
            .map_err(|error| failed(&error))?
        {
            let (key, value) = entry.map_err(|error| failed(&error))?;
            let (_, worker, model) = key.value();
            let selected = filter.worker.as_deref().is_none_or(|name| name == worker)
                && filter.model.as_deref().is_none_or(|id| id == model);
            if selected {
                sums.entry((worker.to_owned(), model.to_owned()))
                    .or_default()
                    .add(&Counters::from_tuple(value.value()));
            }
        }
        Ok(report(sums))
    }
}

fn report(sums: BTreeMap<(String, String), Counters>) -> UsageReport {
    let mut total = Counters::default();
    let rows = sums
        .into_iter()
        .map(|((worker, model), counters)| {
            total.add(&counters);
            UsageRow {
                worker,
                model,
                counters,
            }
        })
        .collect();
    UsageReport { rows, total }
}

fn open_error(path: &Path, error: redb::DatabaseError) -> String {
    match error {
        redb::DatabaseError::DatabaseAlreadyOpen => format!(
            "the usage file {} is open in another process; if `kiln serve` or `kiln dev` runs on \
             this data folder, stop it, or reach a running `kiln serve` with --node and --token",
            path.display()
        ),
        other => format!("failed to open the usage file {}: {other}", path.display()),
    }
}

/// Counts usage in memory and adds it to a [`UsageStore`] on [`UsageRecorder::flush`].
pub struct UsageRecorder {
    store: UsageStore,
    pending: Mutex<HashMap<BucketKey, Counters>>,
    /// Serializes flushes, so that a flush that fails and puts its counters back cannot
    /// interleave with another.
    flushing: Mutex<()>,
}

impl UsageRecorder {
    /// Opens (or creates) [`USAGE_FILE`] in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Arc<Self>, String> {
        let store = UsageStore::open(&data_dir.join(USAGE_FILE))?;
        Ok(Arc::new(Self {
            store,
            pending: Mutex::new(HashMap::new()),
            flushing: Mutex::new(()),
        }))
    }

    /// Counts one request served by `worker`.
    pub fn record_worker_request(&self, worker: &str) {
        let counters = Counters {
            requests: 1,
            ..Counters::default()
        };
        self.add_pending(worker, "", &counters);
    }

    fn add_pending(&self, worker: &str, model: &str, counters: &Counters) {
        let key = (
            hour_of(SystemTime::now()),
            worker.to_owned(),
            model.to_owned(),
        );
        if let Ok(mut pending) = self.pending.lock() {
            pending.entry(key).or_default().add(counters);
        }
    }

    /// Adds the counters recorded since the last flush to the file. On failure they stay in
    /// memory for the next flush. Blocks on disk I/O.
    pub fn flush(&self) -> Result<(), String> {
        let _flushing = self
            .flushing
            .lock()
            .map_err(|_| "the usage flush lock is poisoned".to_owned())?;
        let batch = match self.pending.lock() {
            Ok(mut pending) => std::mem::take(&mut *pending),
            Err(_) => return Err("the usage counters lock is poisoned".into()),
        };
        if batch.is_empty() {
            return Ok(());
        }
        let result = self.store.add(&batch);
        if result.is_err() {
            if let Ok(mut pending) = self.pending.lock() {
                for (key, counters) in batch {
                    pending.entry(key).or_default().add(&counters);
                }
            }
        }
        result
    }

    /// Flushes, then sums the file's buckets that `filter` selects.
    pub fn query(&self, filter: &UsageFilter) -> Result<UsageReport, String> {
        self.flush()?;
        self.store.query(filter, SystemTime::now())
    }

    /// Flushes every [`FLUSH_INTERVAL`] until the runtime stops. Failures are logged and the
    /// counters kept for the next try.
    pub fn spawn_flusher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let recorder = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(FLUSH_INTERVAL);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let recorder = Arc::clone(&recorder);
                match tokio::task::spawn_blocking(move || recorder.flush()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        tracing::error!(error = %error, "usage flush failed; retrying at the next interval")
                    }
                    Err(error) => tracing::error!(error = %error, "the usage flush task failed"),
                }
            }
        })
    }

    /// Flushes before the node exits, logging a failure.
    pub fn flush_at_shutdown(&self) {
        match self.flush() {
            Ok(()) => tracing::info!(path = %self.store.path.display(), "usage flushed"),
            Err(error) => {
                tracing::error!(error = %error, "usage flush at shutdown failed; the counters since the last flush are lost")
            }
        }
    }
}

impl UsageSink for UsageRecorder {
    fn record(&self, record: UsageRecord) {
        let counters = Counters {
            requests: 1,
            input_tokens: record.input_tokens,
            output_tokens: record.output_tokens,
            images: record.images,
            compute_seconds: record.compute_seconds,
        };
        let worker = record.worker.as_deref().unwrap_or("");
        self.add_pending(worker, &record.model, &counters);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(worker: Option<&str>, model: &str, input_tokens: u64) -> UsageRecord {
        UsageRecord {
            model: model.to_owned(),
            worker: worker.map(str::to_owned),
            input_tokens,
            output_tokens: 2,
            images: 0,
            compute_seconds: 0.5,
        }
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for invalid in [
            "",
            "h",
            "10",
            "10w",
            "-1h",
            "1.5h",
            "1h30m",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(invalid).is_err(), "{invalid:?} was accepted");
        }
    }

    #[test]
    fn recorder_sums_records_by_worker_and_model() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = UsageRecorder::open(dir.path()).unwrap();
        recorder.record(run(None, "m1", 10));
        recorder.record(run(None, "m1", 5));
        recorder.record(run(Some("w"), "m1", 7));
        recorder.record_worker_request("w");
        recorder.flush().unwrap();
        recorder.record(run(None, "m2", 1));

        let report = recorder.query(&UsageFilter::default()).unwrap();
        let keys: Vec<(&str, &str)> = report
            .rows
            .iter()
            .map(|row| (row.worker.as_str(), row.model.as_str()))
            .collect();
        assert_eq!(keys, [("", "m1"), ("", "m2"), ("w", ""), ("w", "m1")]);
        assert_eq!(report.rows[0].counters.requests, 2);
        assert_eq!(report.rows[0].counters.input_tokens, 15);
        assert_eq!(report.rows[0].counters.output_tokens, 4);
        assert_eq!(report.rows[2].counters.requests, 1);
        assert_eq!(report.rows[2].counters.input_tokens, 0);
        assert_eq!(report.total.requests, 5);
        assert_eq!(report.total.input_tokens, 23);
        assert_eq!(report.total.compute_seconds, 2.0);

        let filter = UsageFilter {
            worker: Some("w".into()),
            model: Some("m1".into()),
            since: None,
        };
        let report = recorder.query(&filter).unwrap();
        assert_eq!(report.rows.len(), 1);
        assert_eq!(report.total.input_tokens, 7);
    }

    #[test]
    fn counters_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = UsageRecorder::open(dir.path()).unwrap();
        recorder.record(run(None, "m1", 3));
        recorder.flush_at_shutdown();
        drop(recorder);

        let recorder = UsageRecorder::open(dir.path()).unwrap();
        recorder.record(run(None, "m1", 4));
        recorder.flush().unwrap();
        drop(recorder);

        let store = UsageStore::open_existing(&dir.path().join(USAGE_FILE))
            .unwrap()
            .unwrap();
        let report = store
            .query(&UsageFilter::default(), SystemTime::now())
            .unwrap();
        assert_eq!(report.total.requests, 2);
        assert_eq!(report.total.input_tokens, 7);
    }

    #[test]
    fn since_selects_recent_hours() {
        let dir = tempfile::tempdir().unwrap();
        let store = UsageStore::open(&dir.path().join(USAGE_FILE)).unwrap();
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        let old = Counters {
            requests: 1,
            input_tokens: 100,
            ..Counters::default()
        };
        let recent = Counters {
            requests: 1,
            input_tokens: 1,
            ..Counters::default()
        };
        store.add_at(now - 3 * day, "", "m", old).unwrap();
        store.add_at(now, "", "m", recent).unwrap();

        let all = store.query(&UsageFilter::default(), now).unwrap();
        assert_eq!(all.total.input_tokens, 101);
        let filter = UsageFilter {
            since: Some(day),
            ..UsageFilter::default()
        };
        let last_day = store.query(&filter, now).unwrap();
        assert_eq!(last_day.total.input_tokens, 1);
        assert_eq!(last_day.rows.len(), 1);
    }

    #[test]
    fn missing_file_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = UsageStore::open_existing(&dir.path().join(USAGE_FILE)).unwrap();
        assert!(store.is_none());
    }
}
