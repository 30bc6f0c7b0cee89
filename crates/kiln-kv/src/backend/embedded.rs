//! The embedded backend: one redb file with one table per namespace.
//!
//! Point reads run on the calling task, because redb read transactions never wait for writers
//! and a point read takes about a microsecond. `list` runs on tokio's blocking pool. Writes go to one writer thread, which commits every write
//! waiting in its queue in one transaction with `Durability::Immediate` (one fsync per batch),
//! and answers each caller only after that commit returned, so an acknowledged write survives a
//! crash or SIGKILL of the process.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use redb::{
    Database, Durability, ReadableDatabase, TableDefinition, TableError, TableHandle,
    WriteTransaction,
};
use tokio::sync::{mpsc, oneshot};

use super::record::{self, Record};
use super::{Backend, KeyPage, ListQuery};
use crate::error::{op, KvError};
use crate::types::{Entry, ListKey};

/// Table names are the namespace id after this prefix, so other tables can share the file.
const TABLE_PREFIX: &str = "kv:";
/// Writes waiting for the writer thread before callers wait for room.
const QUEUE_CAPACITY: usize = 1024;
/// Maximum number of writes, and approximate maximum of bytes, committed in one transaction.
const MAX_BATCH_WRITES: usize = 512;
const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;

type Table<'a> = TableDefinition<'a, &'static str, &'static [u8]>;

/// The redb backend.
pub(crate) struct EmbeddedBackend {
    db: Arc<Database>,
    path: Arc<Path>,
    /// The writer thread's queue; `None` only while the backend is dropped.
    writes: Option<mpsc::Sender<WriteRequest>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

enum WriteOp {
    Put {
        namespace: String,
        key: String,
        record: Vec<u8>,
    },
    Delete {
        namespace: String,
        key: String,
    },
    CreateNamespace(String),
    DeleteNamespace(String),
    PurgeExpired {
        now: i64,
    },
}

impl WriteOp {
    fn name(&self) -> &'static str {
        match self {
            WriteOp::Put { .. } => op::PUT,
            WriteOp::Delete { .. } => op::DELETE,
            WriteOp::CreateNamespace(_) => op::CREATE_NAMESPACE,
            WriteOp::DeleteNamespace(_) => op::DELETE_NAMESPACE,
            WriteOp::PurgeExpired { .. } => op::PURGE_EXPIRED,
        }
    }

    fn size(&self) -> usize {
        match self {
            WriteOp::Put { key, record, .. } => key.len() + record.len(),
            _ => 0,
        }
    }
}

/// Result of a committed write: whether a namespace was created or deleted, or how many
/// entries were purged.
#[derive(Debug, Clone, Copy)]
enum WriteOutcome {
    Done,
    Changed(bool),
    Count(u64),
}

struct WriteRequest {
    op: WriteOp,
    reply: oneshot::Sender<Result<WriteOutcome, String>>,
}

impl EmbeddedBackend {
    /// Opens or creates the file, repairing it first if the last process using it was killed,
    /// and starts the writer thread.
    pub(crate) async fn open(path: &Path) -> Result<EmbeddedBackend, KvError> {
        let path: Arc<Path> = Arc::from(path);
        let open_path = path.clone();
        let db = tokio::task::spawn_blocking(move || open_database(&open_path))
            .await
            .map_err(|error| unavailable(op::OPEN, &path, format!("open task failed: {error}")))?
            .map_err(|message| unavailable(op::OPEN, &path, message))?;
        let db = Arc::new(db);

        let (writes, queue) = mpsc::channel(QUEUE_CAPACITY);
        let writer_db = db.clone();
        let writer_path = path.clone();
        let writer = std::thread::Builder::new()
            .name("kiln-kv-writer".to_string())
            .spawn(move || run_writer(&writer_db, &writer_path, queue))
            .map_err(|error| {
                unavailable(
                    op::OPEN,
                    &path,
                    format!("cannot start the writer thread: {error}"),
                )
            })?;

        tracing::info!(path = %path.display(), "opened the embedded KV store");
        Ok(EmbeddedBackend {
            db,
            path,
            writes: Some(writes),
            writer: Some(writer),
        })
    }

    async fn write(&self, op: WriteOp) -> Result<WriteOutcome, KvError> {
        let name = op.name();
        let (reply, outcome) = oneshot::channel();
        let request = WriteRequest { op, reply };
        let Some(writes) = &self.writes else {
            return Err(unavailable(name, &self.path, "the store is closing"));
        };
        if writes.send(request).await.is_err() {
            return Err(unavailable(
                name,
                &self.path,
                "the writer thread has stopped",
            ));
        }
        match outcome.await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(message)) => Err(unavailable(name, &self.path, message)),
            Err(_) => Err(unavailable(
                name,
                &self.path,
                "the writer thread stopped mid-write",
            )),
        }
    }

    /// Reads entries from one snapshot, so a bulk read never mixes states before and after a
    /// write.
    // NOTE: the value is copied on the calling task; a value near the 25 MiB limit takes a few
    // milliseconds to copy there.
    fn read_entries(
        &self,
        op: &'static str,
        namespace: &str,
        keys: &[&str],
        now: i64,
    ) -> Result<Vec<Option<Entry>>, KvError> {
        let fail = |message: String| unavailable(op, &self.path, message);
        let txn = self
            .db
            .begin_read()
            .map_err(|error| fail(error.to_string()))?;
        let name = table_name(namespace);
        let table = match txn.open_table(Table::new(&name)) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(vec![None; keys.len()]),
            Err(error) => return Err(fail(error.to_string())),
        };

        let mut entries = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(stored) = table.get(*key).map_err(|error| fail(error.to_string()))? else {
                entries.push(None);
                continue;
            };
            let record = record::decode(stored.value()).map_err(&fail)?;
            if record.is_expired(now) {
                entries.push(None);
                continue;
            }
            entries.push(Some(to_entry(&record).map_err(&fail)?));
        }
        Ok(entries)
    }
}

impl Drop for EmbeddedBackend {
    /// Closes the queue and waits for the writer thread to commit the writes left in it and
    /// exit. The file is then closed, and can be opened again, once the last `Kv` clone is gone.
    fn drop(&mut self) {
        self.writes = None;
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::error!(path = %self.path.display(), "embedded KV writer thread panicked");
            }
        }
    }
}

#[async_trait]
impl Backend for EmbeddedBackend {
    async fn get(&self, namespace: &str, key: &str, now: i64) -> Result<Option<Entry>, KvError> {
        let mut entries = self.read_entries(op::GET, namespace, &[key], now)?;
        Ok(entries.pop().flatten())
    }

    async fn get_many(
        &self,
        namespace: &str,
        keys: &[String],
        now: i64,
    ) -> Result<Vec<Option<Entry>>, KvError> {
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        self.read_entries(op::GET_BULK, namespace, &keys, now)
    }

    async fn put(
        &self,
        namespace: &str,
        key: &str,
        entry: Entry,
        _now: i64,
    ) -> Result<(), KvError> {
        let metadata = entry
            .metadata
            .as_ref()
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|error| KvError::Type(format!("KV metadata is not serialisable: {error}")))?;
        let record = record::encode(&entry.value, entry.expiration, metadata.as_deref());
        self.write(WriteOp::Put {
            namespace: namespace.to_string(),
            key: key.to_string(),
            record,
        })
        .await
        .map(|_| ())
    }

    async fn delete(&self, namespace: &str, key: &str) -> Result<(), KvError> {
        self.write(WriteOp::Delete {
            namespace: namespace.to_string(),
            key: key.to_string(),
        })
        .await
        .map(|_| ())
    }

    async fn list(&self, namespace: &str, query: ListQuery, now: i64) -> Result<KeyPage, KvError> {
        // A page may scan up to 1000 live keys plus any number of expired ones, so it runs on
        // the blocking pool instead of the calling task.
        let db = self.db.clone();
        let path = self.path.clone();
        let namespace = namespace.to_string();
        tokio::task::spawn_blocking(move || list_page(&db, &namespace, &query, now))
            .await
            .map_err(|error| unavailable(op::LIST, &path, format!("list task failed: {error}")))?
            .map_err(|message| unavailable(op::LIST, &path, message))
    }

    async fn create_namespace(&self, namespace: &str) -> Result<bool, KvError> {
        match self
            .write(WriteOp::CreateNamespace(namespace.to_string()))
            .await?
        {
            WriteOutcome::Changed(created) => Ok(created),
            other => unreachable!("create namespace returned {other:?}"),
        }
    }

    async fn list_namespaces(&self) -> Result<Vec<String>, KvError> {
        let fail = |message: String| unavailable(op::LIST_NAMESPACES, &self.path, message);
        let txn = self
            .db
            .begin_read()
            .map_err(|error| fail(error.to_string()))?;
        let tables = txn.list_tables().map_err(|error| fail(error.to_string()))?;
        let mut namespaces: Vec<String> = tables
            .filter_map(|table| table.name().strip_prefix(TABLE_PREFIX).map(str::to_string))
            .collect();
        namespaces.sort();
        Ok(namespaces)
    }

    async fn delete_namespace(&self, namespace: &str) -> Result<bool, KvError> {
        match self
            .write(WriteOp::DeleteNamespace(namespace.to_string()))
            .await?
        {
            WriteOutcome::Changed(deleted) => Ok(deleted),
            other => unreachable!("delete namespace returned {other:?}"),
        }
    }

    async fn purge_expired(&self, now: i64) -> Result<u64, KvError> {
        match self.write(WriteOp::PurgeExpired { now }).await? {
            WriteOutcome::Count(removed) => Ok(removed),
            other => unreachable!("purge returned {other:?}"),
        }
    }
}

fn open_database(path: &Path) -> Result<Database, String> {
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent)
            .map_err(|error| format!("cannot create folder {}: {error}", parent.display()))?;
    }
    Database::create(path).map_err(|error| match error {
        redb::DatabaseError::DatabaseAlreadyOpen => {
            "the file is already open in another process or another Kv".to_string()
        }
        other => other.to_string(),
    })
}

fn unavailable(op: &'static str, path: &Path, message: impl std::fmt::Display) -> KvError {
    KvError::Unavailable {
        op,
        message: format!(
            "embedded KV store {} failed: {message}. Check that no other process has it open, \
             the file's permissions and the free disk space.",
            path.display()
        ),
    }
}

fn table_name(namespace: &str) -> String {
    format!("{TABLE_PREFIX}{namespace}")
}

fn to_entry(record: &Record<'_>) -> Result<Entry, String> {
    Ok(Entry {
        value: Bytes::copy_from_slice(record.value),
        expiration: record.expiration,
        metadata: record.metadata_json()?,
    })
}

fn list_page(
    db: &Database,
    namespace: &str,
    query: &ListQuery,
    now: i64,
) -> Result<KeyPage, String> {
    let txn = db.begin_read().map_err(|error| error.to_string())?;
    let name = table_name(namespace);
    let table = match txn.open_table(Table::new(&name)) {
        Ok(table) => table,
        Err(TableError::TableDoesNotExist(_)) => {
            return Ok(KeyPage {
                keys: Vec::new(),
                next_after: None,
            })
        }
        Err(error) => return Err(error.to_string()),
    };

    // Start at the later of the prefix and the cursor, so a cursor from a different prefix
    // cannot return keys outside this one.
    let start = match query.start_after.as_deref() {
        Some(after) if after >= query.prefix.as_str() => Bound::Excluded(after),
        _ => Bound::Included(query.prefix.as_str()),
    };
    let range = table
        .range::<&str>((start, Bound::Unbounded))
        .map_err(|error| error.to_string())?;

    let mut keys = Vec::new();
    for item in range {
        let (stored_key, stored) = item.map_err(|error| error.to_string())?;
        let name = stored_key.value();
        if !name.starts_with(query.prefix.as_str()) {
            break;
        }
        let record = record::decode(stored.value())?;
        if record.is_expired(now) {
            continue;
        }
        if keys.len() == query.limit {
            // One more live key exists past the page.
            let last: &ListKey = keys.last().expect("limit is at least 1");
            let next_after = Some(last.name.clone());
            return Ok(KeyPage { keys, next_after });
        }
        keys.push(ListKey {
            name: name.to_string(),
            expiration: record.expiration,
            metadata: record.metadata_json()?,
        });
    }
    Ok(KeyPage {
        keys,
        next_after: None,
    })
}

/// Runs the writer thread until every sender is dropped. The thread then drops its handle on
/// the database, and redb closes the file cleanly when the last handle is dropped.
fn run_writer(db: &Database, path: &Path, mut queue: mpsc::Receiver<WriteRequest>) {
    while let Some(first) = queue.blocking_recv() {
        let mut bytes = first.op.size();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_WRITES && bytes < MAX_BATCH_BYTES {
            let Ok(next) = queue.try_recv() else {
                break;
            };
            bytes += next.op.size();
            batch.push(next);
        }

        match commit_batch(db, &batch) {
            Ok(outcomes) => {
                for (request, outcome) in batch.into_iter().zip(outcomes) {
                    // A caller that stopped waiting no longer needs the outcome.
                    let _ = request.reply.send(Ok(outcome));
                }
            }
            Err(message) => {
                tracing::error!(
                    path = %path.display(),
                    writes = batch.len(),
                    error = %message,
                    "KV write transaction failed"
                );
                for request in batch {
                    let _ = request.reply.send(Err(message.clone()));
                }
            }
        }
    }
    tracing::info!(path = %path.display(), "embedded KV writer stopped");
}

/// Applies a batch of writes in one transaction and commits it durably. An error aborts the
/// whole batch, because redb errors here come from the file and would fail the others too.
fn commit_batch(db: &Database, batch: &[WriteRequest]) -> Result<Vec<WriteOutcome>, String> {
    let mut txn = db.begin_write().map_err(|error| error.to_string())?;
    txn.set_durability(Durability::Immediate)
        .map_err(|error| error.to_string())?;

    let mut outcomes = Vec::with_capacity(batch.len());
    for request in batch {
        let outcome = apply(&txn, &request.op).map_err(|error| error.to_string())?;
        outcomes.push(outcome);
    }

    txn.commit().map_err(|error| error.to_string())?;
    Ok(outcomes)
}

fn apply(txn: &WriteTransaction, op: &WriteOp) -> Result<WriteOutcome, redb::Error> {
    match op {
        WriteOp::Put {
            namespace,
            key,
            record,
        } => {
            let name = table_name(namespace);
            let mut table = txn.open_table(Table::new(&name))?;
            table.insert(key.as_str(), record.as_slice())?;
            Ok(WriteOutcome::Done)
        }
        WriteOp::Delete { namespace, key } => {
            // Opening a missing table in a write transaction would create the namespace.
            let name = table_name(namespace);
            if table_exists(txn, &name)? {
                let mut table = txn.open_table(Table::new(&name))?;
                table.remove(key.as_str())?;
            }
            Ok(WriteOutcome::Done)
        }
        WriteOp::CreateNamespace(namespace) => {
            let name = table_name(namespace);
            if table_exists(txn, &name)? {
                return Ok(WriteOutcome::Changed(false));
            }
            txn.open_table(Table::new(&name))?;
            Ok(WriteOutcome::Changed(true))
        }
        WriteOp::DeleteNamespace(namespace) => {
            let name = table_name(namespace);
            let deleted = txn.delete_table(Table::new(&name))?;
            Ok(WriteOutcome::Changed(deleted))
        }
        WriteOp::PurgeExpired { now } => {
            let names: Vec<String> = txn
                .list_tables()?
                .map(|table| table.name().to_string())
                .filter(|name| name.starts_with(TABLE_PREFIX))
                .collect();
            let mut removed = 0;
            for name in names {
                let mut table = txn.open_table(Table::new(&name))?;
                // A record that does not decode is kept: purging only reclaims space, and a
                // damaged record is better left for inspection.
                table.retain(|_, stored| match record::decode(stored) {
                    Ok(record) if record.is_expired(*now) => {
                        removed += 1;
                        false
                    }
                    _ => true,
                })?;
            }
            Ok(WriteOutcome::Count(removed))
        }
    }
}

fn table_exists(txn: &WriteTransaction, name: &str) -> Result<bool, redb::Error> {
    Ok(txn.list_tables()?.any(|table| table.name() == name))
}
