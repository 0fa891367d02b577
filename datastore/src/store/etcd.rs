//! The distributed backend: etcd v3 through `etcd-client`.
//!
//! Compare-and-swap maps onto etcd transactions comparing `mod_revision` (or `create_revision`
//! for creates); the revision a caller sees is etcd's `mod_revision`, so it can be handed to
//! `kubectl`-style tools unchanged. Every call is wrapped in the configured timeout. Watches
//! survive connection loss: they reconnect from the last revision they delivered and only
//! end, with [`WatchEvent::Compacted`], when etcd no longer has that history.

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity, TlsOptions, Txn, TxnOp,
    TxnOpResponse, TxnResponse, WatchOptions,
};
use tokio::sync::mpsc;

use super::{AbortOnDrop, Datastore, EtcdOptions, KeyValue, Listing, Revision, WATCH_BUFFER, Watch, WatchEvent};
use crate::{Error, Result};

/// The longest pause between two attempts to re-establish a broken watch.
const WATCH_RETRY_MAX: Duration = Duration::from_secs(5);

/// The etcd backend.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    options: EtcdOptions,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EtcdStore({})", self.options.endpoints.join(","))
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("etcd {what}: {e}"))
}

impl EtcdStore {
    /// Connects to the endpoints, with TLS and authentication when the options ask for them.
    pub async fn connect(options: EtcdOptions) -> Result<Self> {
        let mut connect = ConnectOptions::new()
            .with_timeout(options.timeout)
            .with_connect_timeout(options.timeout)
            .with_keep_alive(Duration::from_secs(5), options.timeout)
            .with_keep_alive_while_idle(true);
        if let (Some(user), Some(password)) = (&options.username, &options.password) {
            connect = connect.with_user(user, password);
        }
        if let Some(ca) = &options.ca_cert {
            let read = |path: &std::path::Path| {
                std::fs::read(path).map_err(|e| Error::Invalid(format!("cannot read TLS file {}: {e}", path.display())))
            };
            let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca)?));
            if let (Some(cert), Some(key)) = (&options.cert, &options.key) {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            connect = connect.with_tls(tls);
        }
        let client = tokio::time::timeout(options.timeout, Client::connect(&options.endpoints, Some(connect)))
            .await
            .map_err(|_| unavailable("connect", format!("no answer within {:?}", options.timeout)))?
            .map_err(|e| unavailable("connect", e))?;
        Ok(EtcdStore { client, options })
    }

    /// Runs one call with the configured bound.
    async fn call<T>(&self, what: &str, call: impl Future<Output = Result<T, etcd_client::Error>>) -> Result<T> {
        match tokio::time::timeout(self.options.timeout, call).await {
            Ok(result) => result.map_err(|e| unavailable(what, e)),
            Err(_) => Err(unavailable(what, format!("no answer within {:?}", self.options.timeout))),
        }
    }

    async fn txn(&self, what: &str, txn: Txn) -> Result<TxnResponse> {
        let mut kv = self.client.kv_client();
        self.call(what, kv.txn(txn)).await
    }
}

/// The revision of the store after a transaction.
fn header_revision(response: &TxnResponse) -> Revision {
    response.header().map_or(0, |h| h.revision())
}

/// The key's current value from the `or_else` get of a failed transaction.
fn failed_txn_current(response: &TxnResponse) -> Result<Option<KeyValue>> {
    let found = response.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(get) => get.kvs().first().map(to_key_value),
        _ => None,
    });
    found.transpose()
}

fn conflict(key: &str, expected: Revision, current: KeyValue) -> Error {
    Error::Conflict { key: key.to_owned(), expected, actual: current.revision, current: Some(Box::new(current)) }
}

fn to_key_value(kv: &etcd_client::KeyValue) -> Result<KeyValue> {
    Ok(KeyValue {
        key: kv.key_str().map_err(|e| Error::Invalid(format!("etcd key is not UTF-8: {e}")))?.to_owned(),
        value: kv.value().to_vec(),
        revision: kv.mod_revision(),
    })
}

#[async_trait]
impl Datastore for EtcdStore {
    async fn get(&self, key: &str) -> Result<KeyValue> {
        let mut kv = self.client.kv_client();
        let response = self.call("get", kv.get(key, None)).await?;
        match response.kvs().first() {
            Some(found) => to_key_value(found),
            None => Err(Error::NotFound(key.to_owned())),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Listing> {
        let mut kv = self.client.kv_client();
        let response = self.call("list", kv.get(prefix, Some(GetOptions::new().with_prefix()))).await?;
        Ok(Listing {
            items: response.kvs().iter().map(to_key_value).collect::<Result<_>>()?,
            revision: response.header().map_or(0, |h| h.revision()),
        })
    }

    async fn create(&self, key: &str, value: &[u8]) -> Result<Revision> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None)]);
        let response = self.txn("create", txn).await?;
        if response.succeeded() { Ok(header_revision(&response)) } else { Err(Error::AlreadyExists(key.to_owned())) }
    }

    async fn update(&self, key: &str, value: &[u8], expected: Revision) -> Result<Revision> {
        let txn = Txn::new()
            .when([
                Compare::create_revision(key, CompareOp::Greater, 0),
                Compare::mod_revision(key, CompareOp::Equal, expected),
            ])
            .and_then([TxnOp::put(key, value, None)])
            .or_else([TxnOp::get(key, None)]);
        let response = self.txn("update", txn).await?;
        if response.succeeded() {
            return Ok(header_revision(&response));
        }
        match failed_txn_current(&response)? {
            None => Err(Error::NotFound(key.to_owned())),
            Some(current) => Err(conflict(key, expected, current)),
        }
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<()> {
        let mut compares = vec![Compare::create_revision(key, CompareOp::Greater, 0)];
        if let Some(expected) = expected {
            compares.push(Compare::mod_revision(key, CompareOp::Equal, expected));
        }
        let txn = Txn::new().when(compares).and_then([TxnOp::delete(key, None)]).or_else([TxnOp::get(key, None)]);
        let response = self.txn("delete", txn).await?;
        if response.succeeded() {
            return Ok(());
        }
        match (failed_txn_current(&response)?, expected) {
            (Some(current), Some(expected)) => Err(conflict(key, expected, current)),
            _ => Err(Error::NotFound(key.to_owned())),
        }
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<Watch> {
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        // The first stream is opened before we return, so an unreachable etcd is an error here.
        let first = self.open_watch(prefix, after).await?;
        let store = self.clone();
        let prefix = prefix.to_owned();
        let pump = tokio::spawn(async move {
            let mut stream = Some(first);
            let mut last = after;
            let mut backoff = Duration::from_millis(100);
            loop {
                let current = match stream.take() {
                    Some(s) => Ok(s),
                    None => store.open_watch(&prefix, last).await,
                };
                let outcome = match current {
                    Ok(s) => pump_watch(s, &tx, &mut last).await,
                    Err(e) => PumpEnd::Broken(e),
                };
                match outcome {
                    PumpEnd::Finished => return,
                    PumpEnd::Broken(e) => {
                        if tx.send(Err(e)).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(WATCH_RETRY_MAX);
                    }
                    PumpEnd::Progressed(e) => {
                        backoff = Duration::from_millis(100);
                        if tx.send(Err(e)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Watch::new(rx, AbortOnDrop(pump)))
    }
}

/// Why one watch stream stopped.
enum PumpEnd {
    /// Compacted, or the receiver went away: the watch is over.
    Finished,
    /// The stream broke before delivering anything.
    Broken(Error),
    /// The stream broke after delivering events: retry at once.
    Progressed(Error),
}

impl EtcdStore {
    async fn open_watch(&self, prefix: &str, after: Revision) -> Result<etcd_client::WatchStream> {
        let mut client = self.client.clone();
        let options = WatchOptions::new().with_prefix().with_start_revision(after + 1);
        self.call("watch", client.watch(prefix, Some(options))).await
    }
}

async fn pump_watch(
    mut stream: etcd_client::WatchStream,
    tx: &mpsc::Sender<Result<WatchEvent>>,
    last: &mut Revision,
) -> PumpEnd {
    let mut delivered = false;
    let broken = |delivered: bool, e: Error| {
        if delivered { PumpEnd::Progressed(e) } else { PumpEnd::Broken(e) }
    };
    loop {
        let response = match stream.message().await {
            Ok(Some(response)) => response,
            Ok(None) => return broken(delivered, unavailable("watch", "stream closed by the server")),
            Err(e) => return broken(delivered, unavailable("watch", e)),
        };
        if response.canceled() {
            if response.compact_revision() > 0 {
                let event = WatchEvent::Compacted { compact_revision: response.compact_revision() };
                let _ = tx.send(Ok(event)).await;
                return PumpEnd::Finished;
            }
            return broken(delivered, unavailable("watch", format!("cancelled: {}", response.cancel_reason())));
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let converted = match event.event_type() {
                EventType::Put => to_key_value(kv).map(WatchEvent::Put),
                EventType::Delete => kv
                    .key_str()
                    .map(|key| WatchEvent::Delete { key: key.to_owned(), revision: kv.mod_revision() })
                    .map_err(|e| Error::Invalid(format!("etcd key is not UTF-8: {e}"))),
            };
            *last = kv.mod_revision();
            delivered = true;
            if tx.send(converted).await.is_err() {
                return PumpEnd::Finished;
            }
        }
    }
}
