//! The revisioned key-value store behind the API: etcd's model (one global revision, per-key
//! create/mod revisions, watch from a revision, compaction) behind one trait, so the embedded
//! SQLite store and real etcd are interchangeable. resourceVersion is the store revision.

mod heap;
mod sqlite;
#[cfg(test)]
mod tests;

use std::pin::Pin;

use futures::Stream;

pub use sqlite::{SqliteStore, WriterStats};

/// One stored key at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that created this key (etcd's create_revision).
    pub create_revision: i64,
    /// Revision of the last write to this key (etcd's mod_revision); the object's resourceVersion.
    pub mod_revision: i64,
}

/// A change to a key, as a watch delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was created (`prev` is None) or updated (`prev` is its value before).
    Put {
        kv: KeyValue,
        prev: Option<KeyValue>,
    },
    /// A key was deleted; `prev` is its last value, `revision` the deleting write's revision.
    Delete { prev: KeyValue, revision: i64 },
}

impl WatchEvent {
    /// The revision of the write this event reports.
    pub fn revision(&self) -> i64 {
        match self {
            Self::Put { kv, .. } => kv.mod_revision,
            Self::Delete { revision, .. } => *revision,
        }
    }
}

/// A stream of watch events in revision order.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, StoreError>> + Send>>;

/// A consistent list: the keys under a prefix and the revision they were read at.
#[derive(Debug, Clone)]
pub struct ListResult {
    pub items: Vec<KeyValue>,
    /// The store revision the list reflects (the list's resourceVersion).
    pub revision: i64,
    /// Set when `limit` cut the list: more keys follow `items.last()`.
    pub more: bool,
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {0} already exists")]
    AlreadyExists(String),
    #[error("key {0} not found")]
    NotFound(String),
    /// Compare-and-swap failed: the key's mod_revision is not the expected one.
    #[error("key {key} was modified (expected revision {expected}, found {found})")]
    Conflict {
        key: String,
        expected: i64,
        found: i64,
    },
    /// The requested revision is older than the compacted revision (HTTP 410 Gone).
    #[error("revision {requested} is compacted (oldest available {compacted})")]
    Compacted { requested: i64, compacted: i64 },
    /// The requested revision is newer than the current one.
    #[error("revision {requested} is in the future (current {current})")]
    FutureRevision { requested: i64, current: i64 },
    #[error("storage backend: {0}")]
    Backend(String),
}

/// The store contract. Every write bumps the one global revision by exactly one.
pub trait Store: Send + Sync + 'static {
    /// Current revision of the store.
    fn current_revision(&self) -> impl Future<Output = Result<i64, StoreError>> + Send;
    /// One key at the current revision.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<KeyValue>, StoreError>> + Send;
    /// Keys under `prefix`, in key order, starting strictly after `start_after` when given,
    /// at most `limit` of them (0: no limit), all read at one revision.
    fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<ListResult, StoreError>> + Send;
    /// Keys under `prefix` as they were at `revision`, otherwise as [`Store::list`]: every page of
    /// a paginated list is read at the revision of its first page, and `resourceVersionMatch=Exact`
    /// reads at the asked revision. Fails with Compacted below the compacted revision and
    /// FutureRevision above the current one.
    fn list_at(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: i64,
    ) -> impl Future<Output = Result<ListResult, StoreError>> + Send;
    /// Creates `key`; fails with AlreadyExists if it is there. Returns the new revision.
    fn create(
        &self,
        key: &str,
        value: Vec<u8>,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;
    /// Replaces `key` if its mod_revision is `expected` (compare-and-swap). Returns the new revision.
    fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: i64,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;
    /// Deletes `key`, if `expected` is given only when its mod_revision matches.
    /// Returns the deleted value and the deleting revision.
    fn delete(
        &self,
        key: &str,
        expected: Option<i64>,
    ) -> impl Future<Output = Result<(KeyValue, i64), StoreError>> + Send;
    /// Every change under `prefix` with a revision greater than `after`, in order, then live.
    /// Fails with Compacted when `after` is older than the compacted revision.
    fn watch(
        &self,
        prefix: &str,
        after: i64,
    ) -> impl Future<Output = Result<WatchStream, StoreError>> + Send;
    /// Forgets history at and below `revision`; watches from there get Compacted.
    fn compact(&self, revision: i64) -> impl Future<Output = Result<(), StoreError>> + Send;
}
