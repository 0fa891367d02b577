//! The key-value contract every backend honours, and the selection string that picks one.
//!
//! Values are opaque bytes here; [`crate::client`] puts typed resources on top. Every write is
//! a compare-and-swap on the key's revision (etcd's `mod_revision`): the store-wide revision
//! at which the key was last written. A watch delivers every change after a revision, in
//! revision order, or [`WatchEvent::Compacted`] when that history is gone and the caller must
//! list again.

mod etcd;
pub mod kubernetes;
mod selection;
mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::Result;
pub use etcd::EtcdStore;
pub use kubernetes::KubernetesStore;
pub use selection::{EtcdOptions, KubernetesOptions, Selection, SqliteOptions};
pub use sqlite::SqliteStore;

/// A store-wide revision: every write moves it forward by one.
pub type Revision = i64;

/// One stored key with its value and the revision of its last write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The full key, e.g. `/brindle/v1/ippools/default-ipv4`.
    pub key: String,
    /// The stored bytes.
    pub value: Vec<u8>,
    /// The revision of the key's last write; the CAS token for the next one.
    pub revision: Revision,
}

/// The keys under a prefix, as of one revision of the whole store.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// The keys, sorted by key.
    pub items: Vec<KeyValue>,
    /// The store revision the listing reflects: watch after it to see every later change.
    pub revision: Revision,
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The key was created or updated.
    Put(KeyValue),
    /// The key was deleted at `revision`.
    Delete {
        /// The deleted key.
        key: String,
        /// The revision of the delete.
        revision: Revision,
    },
    /// The history the watch started from has been compacted away: events were lost, the
    /// caller must list again and watch from the listing's revision. The watch ends after this.
    Compacted {
        /// The oldest revision the store still has history for.
        compact_revision: Revision,
    },
}

/// A running watch. Dropping it stops the watch.
pub struct Watch {
    rx: mpsc::Receiver<Result<WatchEvent>>,
    _stop: Box<dyn Send + Sync>,
}

impl Watch {
    fn new(rx: mpsc::Receiver<Result<WatchEvent>>, stop: impl Send + Sync + 'static) -> Self {
        Watch { rx, _stop: Box::new(stop) }
    }

    /// The next event. An `Err` reports a passing problem (the backend is unreachable); the
    /// watch keeps trying and resumes where it was, so no event is lost. `None` once the
    /// watch has ended, right after [`WatchEvent::Compacted`].
    pub async fn next(&mut self) -> Option<Result<WatchEvent>> {
        self.rx.recv().await
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

/// Aborts a spawned task when dropped: ties a watch's pump task to the [`Watch`] handle.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How many watch events may wait unread before the pump blocks.
const WATCH_BUFFER: usize = 1024;

/// A revisioned key-value store with compare-and-swap writes and ordered watches.
///
/// Every call is bounded in time: a backend that does not answer yields
/// [`crate::Error::Unavailable`], never a hang.
#[async_trait]
pub trait Datastore: Send + Sync + std::fmt::Debug {
    /// Reads one key.
    async fn get(&self, key: &str) -> Result<KeyValue>;

    /// Reads every key that starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Listing>;

    /// Creates a key that must not exist yet ([`crate::Error::AlreadyExists`] otherwise).
    /// Returns the new revision.
    async fn create(&self, key: &str, value: &[u8]) -> Result<Revision>;

    /// Replaces a key's value if its revision is still `expected`
    /// ([`crate::Error::Conflict`] otherwise, [`crate::Error::NotFound`] if it is gone).
    async fn update(&self, key: &str, value: &[u8], expected: Revision) -> Result<Revision>;

    /// Deletes a key, only if its revision is `expected` when one is given.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<()>;

    /// The IPAM blocks (keys under [`crate::keys::BLOCKS`]) whose owner is `owner`, where the
    /// backend can pick them out itself (the Kubernetes API, by a field selector), so that a
    /// node's first allocation does not read every node's blocks; `None` where it cannot, and
    /// the caller lists every block.
    async fn list_owned_blocks(&self, _owner: &str) -> Result<Option<Listing>> {
        Ok(None)
    }

    /// Streams every change to keys under `prefix` made after revision `after`, in order.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<Watch>;

    /// The Kubernetes API this store is, on the Kubernetes datastore: for what only Kubernetes
    /// has (Pods, a Node's addresses and conditions).
    fn kubernetes(&self) -> Option<&KubernetesStore> {
        None
    }
}

/// Opens the backend a selection string names: `etcd://host:port[,host:port][?options]`,
/// `sqlite:///path/to/file` or `kubernetes://[/path/to/kubeconfig]`.
pub async fn connect(selection: &str) -> Result<Arc<dyn Datastore>> {
    connect_with(selection.parse()?).await
}

/// Opens the backend of an already parsed [`Selection`].
pub async fn connect_with(selection: Selection) -> Result<Arc<dyn Datastore>> {
    Ok(match selection {
        Selection::Etcd(options) => Arc::new(EtcdStore::connect(options).await?),
        Selection::Sqlite(options) => Arc::new(SqliteStore::open(options).await?),
        Selection::Kubernetes(options) => Arc::new(KubernetesStore::connect(options).await?),
    })
}

/// The Kubernetes API beside `store`: the store itself on the Kubernetes datastore, else a
/// connection with `kubeconfig` (`None`: the in-cluster service account, `KUBECONFIG` or
/// `~/.kube/config`), for a datastore such as etcd kept in a Kubernetes cluster.
pub async fn kubernetes_api(store: &dyn Datastore, kubeconfig: Option<std::path::PathBuf>) -> Result<KubernetesStore> {
    match store.kubernetes() {
        Some(api) => Ok(api.clone()),
        None => KubernetesStore::connect(KubernetesOptions { kubeconfig, timeout: DEFAULT_TIMEOUT }).await,
    }
}

/// The default bound on one datastore call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
