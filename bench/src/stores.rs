//! Which datastores a benchmark runs on: each a private server or file started for the run.

use brindle_datastore::testing::Backend;
use clap::ValueEnum;

/// The datastores to measure.
#[derive(Clone, Copy, ValueEnum)]
pub enum Which {
    Etcd,
    Sqlite,
    Kubernetes,
    /// etcd and SQLite.
    Both,
    /// etcd, SQLite and Kubernetes.
    All,
}

impl Which {
    /// Each backend with the short name the tables show.
    pub fn backends(self) -> &'static [(Backend, &'static str)] {
        match self {
            Which::Etcd => &[(Backend::Etcd, "etcd")],
            Which::Sqlite => &[(Backend::Sqlite, "sqlite")],
            Which::Kubernetes => &[(Backend::Kubernetes, "k8s")],
            Which::Both => &[(Backend::Etcd, "etcd"), (Backend::Sqlite, "sqlite")],
            Which::All => &[(Backend::Etcd, "etcd"), (Backend::Sqlite, "sqlite"), (Backend::Kubernetes, "k8s")],
        }
    }
}
