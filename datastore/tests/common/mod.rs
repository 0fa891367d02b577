//! Shared set-up for the datastore's integration tests.
#![allow(dead_code)]

use std::sync::Arc;

use brindle_datastore::testing::{Backend, TestStore};
use brindle_datastore::{Datastore, Revision};

/// Runs each listed async test body once per backend, as `etcd::name`, `sqlite::name` and
/// `kubernetes::name`.
#[macro_export]
macro_rules! per_backend {
    ($($name:ident),* $(,)?) => {
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(brindle_datastore::testing::Backend::Etcd).await
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(brindle_datastore::testing::Backend::Sqlite).await
                }
            )*
        }
        mod kubernetes {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(brindle_datastore::testing::Backend::Kubernetes).await
                }
            )*
        }
    };
}

/// A started store and a connection to it.
pub async fn open(backend: Backend) -> (TestStore, Arc<dyn Datastore>) {
    open_with(backend, "").await
}

/// Like [`open`], with extra selection options appended (`&name=value`).
pub async fn open_with(backend: Backend, extra: &str) -> (TestStore, Arc<dyn Datastore>) {
    let server = TestStore::start(backend).expect("start test datastore");
    let store =
        brindle_datastore::connect(&format!("{}{extra}", server.selection())).await.expect("connect to test datastore");
    (server, store)
}

/// Throws away history up to `revision`: etcd's compaction (the API server's etcd for
/// Kubernetes), or SQLite's when its history limit is small.
pub async fn compact(server: &TestStore, revision: Revision) {
    let endpoint = match server {
        TestStore::Etcd(etcd) => etcd.endpoint(),
        TestStore::Kubernetes(kube) => kube.etcd_endpoint(),
        TestStore::Sqlite(_) => return,
    };
    let mut client = etcd_client::Client::connect([endpoint], None).await.expect("connect etcd");
    client.compact(revision, None).await.expect("compact");
}
