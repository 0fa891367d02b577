//! brindle's datastore: the resource model, the [`Datastore`] trait with its etcd and SQLite
//! backends, the typed [`Client`], and block IPAM.
//!
//! Boundaries: this crate knows nothing of the kernel, BGP or CNI; everything above it (agent,
//! CNI plugins, brindlectl, the lab) reaches the store only through it.

pub mod client;
mod error;
pub mod ipam;
pub mod keys;
pub mod policy;
pub mod resource;
pub mod selector;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use client::{Applied, Client};
pub use error::{Error, Result};
pub use store::{Datastore, KeyValue, Listing, Revision, Watch, WatchEvent, connect};
