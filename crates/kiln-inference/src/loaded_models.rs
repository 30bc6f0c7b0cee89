//! The table of loaded models, shared by every task, with the node's memory budget.
//!
//! A model's size is the total size of its files, as the manifest records it. When loading a
//! model would take the loaded total over the budget, the least recently used idle models are
//! unloaded first. A model is idle when no [`Lease`] on it is alive: a request holds a lease
//! from before the model loads until its response (or its stream) ends. Unloading drops the
//! table's copy of the model only, so requests that already cloned it finish on that clone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use kiln_config::ByteSize;
use tokio::sync::OnceCell;

use crate::{ErrorKind, InferenceError};

/// Reason for an unload, as the log and the `reason` label of `kiln_model_unloads_total` name
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnloadReason {
    /// Another model needed its memory.
    MemoryBudget,
    /// The model's files were replaced by an upload.
    Replaced,
    /// The model was removed from the node.
    Removed,
}

impl UnloadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            UnloadReason::MemoryBudget => "memory_budget",
            UnloadReason::Replaced => "replaced",
            UnloadReason::Removed => "removed",
        }
    }
}

/// Reason for a load, as the `loading model` log line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadReason {
    /// A request needs it and it is not loaded (first use, or after an unload).
    Request,
    /// It is listed in `preload` in kiln.toml.
    Preload,
    /// Another model that is loading needs it, as a zero-shot classifier needs its encoder.
    Dependency,
}

impl LoadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            LoadReason::Request => "request",
            LoadReason::Preload => "preload",
            LoadReason::Dependency => "dependency",
        }
    }
}

/// Marks a model as in use while it is alive. Dropping it makes the model idle again unless
/// other leases remain.
#[derive(Debug, Clone)]
pub struct Lease(#[allow(dead_code)] Arc<()>);

/// A model in the table: loaded, or being loaded by the first request that asked for it.
pub(crate) struct Checkout<T> {
    /// Filled by the first caller's load; concurrent callers wait on the same cell.
    pub slot: Arc<OnceCell<T>>,
    pub lease: Lease,
}

/// A loaded model as the admin listing shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LoadedModel {
    pub id: String,
    pub bytes: u64,
    /// Whether requests hold a lease on it now.
    pub in_use: bool,
}

struct Entry<T> {
    slot: Arc<OnceCell<T>>,
    bytes: u64,
    /// Value of the table's clock at the last checkout; larger is more recent.
    last_used: u64,
    /// Cloned into each lease, so a strong count above 1 means the model is in use.
    users: Arc<()>,
}

impl<T> Entry<T> {
    fn in_use(&self) -> bool {
        Arc::strong_count(&self.users) > 1
    }
}

struct Table<T> {
    clock: u64,
    entries: HashMap<String, Entry<T>>,
}

/// Loaded models by installed model id, with an optional budget in bytes.
pub(crate) struct LoadedModels<T> {
    budget: Option<u64>,
    table: Mutex<Table<T>>,
}

/// A loaded model that [`choose_unloads`] may pick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub id: String,
    pub bytes: u64,
    pub last_used: u64,
    pub in_use: bool,
}

/// Chooses the models to unload so that `incoming` more bytes fit in `budget`: idle models
/// only, least recently used first. Returns the chosen ids and whether the incoming model then
/// fits. It does not fit when the models in use alone leave too little room.
pub(crate) fn choose_unloads(
    loaded: &[Candidate],
    incoming: u64,
    budget: u64,
) -> (Vec<String>, bool) {
    let mut total: u64 = loaded.iter().map(|model| model.bytes).sum();
    let mut idle: Vec<&Candidate> = loaded.iter().filter(|model| !model.in_use).collect();
    idle.sort_by_key(|model| model.last_used);
    let mut chosen = Vec::new();
    for model in idle {
        if total.saturating_add(incoming) <= budget {
            break;
        }
        total -= model.bytes;
        chosen.push(model.id.clone());
    }
    let fits = total.saturating_add(incoming) <= budget;
    (chosen, fits)
}

impl<T: Clone> LoadedModels<T> {
    pub fn new(budget: Option<u64>) -> Self {
        Self {
            budget,
            table: Mutex::new(Table {
                clock: 0,
                entries: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, Table<T>>, InferenceError> {
        self.table
            .lock()
            .map_err(|_| InferenceError::internal("the model table lock is poisoned"))
    }

    /// Returns the slot of model `id` with a lease on it, creating the slot when the model is
    /// not in the table. A new slot of `bytes` first unloads idle models as the budget needs.
    /// `is_alive` returns whether a loaded copy still works; a dead one is replaced by an empty
    /// slot, which the caller then fills.
    pub fn checkout(
        &self,
        id: &str,
        bytes: u64,
        is_alive: impl Fn(&T) -> bool,
    ) -> Result<Checkout<T>, InferenceError> {
        let mut table = self.lock()?;
        table.clock += 1;
        let now = table.clock;
        if let Some(entry) = table.entries.get_mut(id) {
            if entry.slot.get().is_some_and(|model| !is_alive(model)) {
                tracing::warn!(model = %id, "the model's worker stopped; loading it again");
                entry.slot = Arc::default();
            }
            entry.last_used = now;
            return Ok(Checkout {
                slot: Arc::clone(&entry.slot),
                lease: Lease(Arc::clone(&entry.users)),
            });
        }

        if let Some(budget) = self.budget {
            if bytes > budget {
                return Err(too_large(id, bytes, budget));
            }
            // A slot that is empty and has no lease is a failed load: it holds no memory.
            table
                .entries
                .retain(|_, entry| entry.slot.initialized() || entry.in_use());
            let candidates: Vec<Candidate> = table
                .entries
                .iter()
                .map(|(id, entry)| Candidate {
                    id: id.clone(),
                    bytes: entry.bytes,
                    last_used: entry.last_used,
                    in_use: entry.in_use(),
                })
                .collect();
            let (unloads, fits) = choose_unloads(&candidates, bytes, budget);
            for victim in unloads {
                if let Some(entry) = table.entries.remove(&victim) {
                    record_unload(&victim, &entry, UnloadReason::MemoryBudget);
                }
            }
            if !fits {
                let loaded: u64 = table.entries.values().map(|entry| entry.bytes).sum();
                tracing::warn!(
                    model = %id,
                    bytes,
                    loaded_bytes = loaded,
                    budget,
                    "loading a model over the memory budget, because the other loaded models \
                     have requests in flight; the next load unloads them once they are idle"
                );
            }
        }

        let entry = Entry {
            slot: Arc::default(),
            bytes,
            last_used: now,
            users: Arc::new(()),
        };
        let checkout = Checkout {
            slot: Arc::clone(&entry.slot),
            lease: Lease(Arc::clone(&entry.users)),
        };
        table.entries.insert(id.to_owned(), entry);
        Ok(checkout)
    }

    /// Sets the `kiln_model_memory_bytes` gauge of a model whose load into `slot` finished,
    /// unless the slot left the table during the load (the model was removed or replaced).
    pub fn record_loaded(&self, id: &str, slot: &Arc<OnceCell<T>>) {
        let Ok(table) = self.lock() else {
            return;
        };
        if let Some(entry) = table.entries.get(id) {
            if Arc::ptr_eq(&entry.slot, slot) {
                metrics::gauge!("kiln_model_memory_bytes", "model" => id.to_owned())
                    .set(entry.bytes as f64);
            }
        }
    }

    /// Drops the table's copy of model `id`. Returns whether the model was in the table.
    pub fn unload(&self, id: &str, reason: UnloadReason) -> bool {
        let Ok(mut table) = self.lock() else {
            return false;
        };
        match table.entries.remove(id) {
            Some(entry) => {
                record_unload(id, &entry, reason);
                true
            }
            None => false,
        }
    }

    /// Returns the loaded model `id`, if it is loaded, without a lease or a use.
    pub fn peek(&self, id: &str) -> Option<T> {
        let table = self.lock().ok()?;
        table.entries.get(id)?.slot.get().cloned()
    }

    /// Lists the loaded models, sorted by id. Models still loading are left out.
    pub fn list(&self) -> Vec<LoadedModel> {
        let Ok(table) = self.lock() else {
            return Vec::new();
        };
        let mut models: Vec<LoadedModel> = table
            .entries
            .iter()
            .filter(|(_, entry)| entry.slot.initialized())
            .map(|(id, entry)| LoadedModel {
                id: id.clone(),
                bytes: entry.bytes,
                in_use: entry.in_use(),
            })
            .collect();
        models.sort_by(|a, b| a.id.cmp(&b.id));
        models
    }
}

/// Logs an unload and updates the gauge and counter. An empty slot (a load still running or
/// one that failed) held no memory, so only loaded models count as unloaded.
fn record_unload<T>(id: &str, entry: &Entry<T>, reason: UnloadReason) {
    if !entry.slot.initialized() {
        tracing::debug!(model = %id, reason = reason.as_str(), "dropped a model that was not loaded");
        return;
    }
    metrics::gauge!("kiln_model_memory_bytes", "model" => id.to_owned()).set(0.0);
    metrics::counter!("kiln_model_unloads_total", "model" => id.to_owned(), "reason" => reason.as_str())
        .increment(1);
    tracing::info!(
        model = %id,
        reason = reason.as_str(),
        bytes = entry.bytes,
        in_use = entry.in_use(),
        "model unloaded"
    );
}

fn too_large(id: &str, bytes: u64, budget: u64) -> InferenceError {
    InferenceError::new(
        ErrorKind::ModelUnavailable,
        format!(
            "model {id} cannot be loaded: its files take {bytes} bytes ({}), more than the \
             node's whole memory budget of {budget} bytes ({}). Raise [models] memory_budget \
             in kiln.toml or use a smaller model",
            ByteSize(bytes),
            ByteSize(budget)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(id: &str, bytes: u64, last_used: u64, in_use: bool) -> Candidate {
        Candidate {
            id: id.into(),
            bytes,
            last_used,
            in_use,
        }
    }

    #[test]
    fn unloads_least_recent_first() {
        let loaded = [
            candidate("recent", 40, 9, false),
            candidate("oldest", 40, 1, false),
            candidate("middle", 40, 5, false),
        ];
        let (chosen, fits) = choose_unloads(&loaded, 50, 100);
        assert_eq!(chosen, vec!["oldest".to_owned(), "middle".to_owned()]);
        assert!(fits);
    }

    #[test]
    fn unloads_nothing_when_it_fits() {
        let loaded = [candidate("a", 30, 1, false), candidate("b", 30, 2, false)];
        let (chosen, fits) = choose_unloads(&loaded, 40, 100);
        assert!(chosen.is_empty(), "{chosen:?}");
        assert!(fits);
    }

    #[test]
    fn skips_models_in_use() {
        let loaded = [
            candidate("busy-oldest", 60, 1, true),
            candidate("idle", 30, 5, false),
        ];
        let (chosen, fits) = choose_unloads(&loaded, 40, 100);
        assert_eq!(chosen, vec!["idle".to_owned()]);
        assert!(fits);
    }

    #[test]
    fn reports_no_fit_when_busy_models_fill_budget() {
        let loaded = [
            candidate("busy", 80, 1, true),
            candidate("idle", 10, 2, false),
        ];
        let (chosen, fits) = choose_unloads(&loaded, 50, 100);
        assert_eq!(chosen, vec!["idle".to_owned()]);
        assert!(!fits);
    }

    #[test]
    fn exact_fit_unloads_nothing() {
        let loaded = [candidate("a", 60, 1, false)];
        let (chosen, fits) = choose_unloads(&loaded, 40, 100);
        assert!(chosen.is_empty(), "{chosen:?}");
        assert!(fits);
    }

    #[tokio::test]
    async fn checkout_unloads_idle_model_over_budget() {
        let models: LoadedModels<u32> = LoadedModels::new(Some(100));
        let first = models.checkout("a", 60, |_| true).unwrap();
        first.slot.get_or_init(|| async { 1 }).await;
        drop(first);
        let second = models.checkout("b", 60, |_| true).unwrap();
        second.slot.get_or_init(|| async { 2 }).await;
        let loaded: Vec<String> = models.list().into_iter().map(|model| model.id).collect();
        assert_eq!(loaded, vec!["b".to_owned()]);
        assert_eq!(models.peek("a"), None);
    }

    #[tokio::test]
    async fn checkout_keeps_leased_model() {
        let models: LoadedModels<u32> = LoadedModels::new(Some(100));
        let first = models.checkout("a", 60, |_| true).unwrap();
        first.slot.get_or_init(|| async { 1 }).await;
        let second = models.checkout("b", 60, |_| true).unwrap();
        second.slot.get_or_init(|| async { 2 }).await;
        let loaded: Vec<String> = models.list().into_iter().map(|model| model.id).collect();
        assert_eq!(loaded, vec!["a".to_owned(), "b".to_owned()]);
        drop(first);
        drop(second);
        let third = models.checkout("c", 60, |_| true).unwrap();
        third.slot.get_or_init(|| async { 3 }).await;
        let loaded: Vec<String> = models.list().into_iter().map(|model| model.id).collect();
        assert_eq!(loaded, vec!["c".to_owned()]);
    }

    #[test]
    fn model_over_whole_budget_is_rejected() {
        let models: LoadedModels<u32> = LoadedModels::new(Some(100));
        let error = models.checkout("huge", 150, |_| true).err().unwrap();
        assert_eq!(error.status(), 503);
        assert!(error.message.contains("huge"), "{}", error.message);
        assert!(error.message.contains("150 bytes"), "{}", error.message);
        assert!(error.message.contains("100 bytes"), "{}", error.message);
    }

    #[tokio::test]
    async fn same_model_shares_one_slot() {
        let models: LoadedModels<u32> = LoadedModels::new(None);
        let first = models.checkout("a", 10, |_| true).unwrap();
        let second = models.checkout("a", 10, |_| true).unwrap();
        assert!(Arc::ptr_eq(&first.slot, &second.slot));
    }

    #[tokio::test]
    async fn unload_keeps_caller_clone() {
        let models: LoadedModels<Arc<u32>> = LoadedModels::new(None);
        let checkout = models.checkout("a", 10, |_| true).unwrap();
        let model = checkout
            .slot
            .get_or_init(|| async { Arc::new(7) })
            .await
            .clone();
        assert!(models.unload("a", UnloadReason::Removed));
        assert_eq!(*model, 7);
        assert!(models.list().is_empty());
        assert!(!models.unload("a", UnloadReason::Removed));
    }

    #[tokio::test]
    async fn dead_model_gets_fresh_slot() {
        let models: LoadedModels<u32> = LoadedModels::new(None);
        let first = models.checkout("a", 10, |_| true).unwrap();
        first.slot.get_or_init(|| async { 1 }).await;
        let second = models.checkout("a", 10, |value| *value != 1).unwrap();
        assert!(!second.slot.initialized());
    }
}
