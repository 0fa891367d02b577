//! The Kubernetes backend: brindle's keys as objects of the Kubernetes API (see [`layout`]),
//! through kube-rs.
//!
//! Revisions are the API server's `resourceVersion`s, which are its etcd's revisions, so they
//! order every write of the cluster. Compare-and-swap is an update or delete carrying the
//! expected `resourceVersion` (a `409 Conflict` otherwise). A listing of several collections
//! reads the first at the latest revision and the others at exactly that revision, so it is
//! one snapshot. A watch follows each collection it covers from the same revision, with
//! bookmarks, and resumes where it was after a dropped connection; `410 Gone` (history
//! compacted away) becomes [`WatchEvent::Compacted`]. Events of one collection come in
//! revision order; those of different collections are interleaved as they arrive. Every call
//! is bounded by the configured timeout, and the API server's message is kept in errors.
//!
//! One difference from the other backends: an update that stores exactly what is there is no
//! write for the API server, and the revision stays. Compare-and-swap is unaffected (nothing
//! changed); a caller that needs every write to move the revision writes something new.
//! Another: a Node exists with or without brindle; deleting its brindle view deletes it.

pub mod layout;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams, Preconditions, VersionMatch, WatchParams};
use kube::core::WatchEvent as KubeEvent;
use serde_json::Value;
use tokio::sync::mpsc;

use self::layout::{Collection, Place, Shape};
use super::{AbortOnDrop, Datastore, KeyValue, Listing, Revision, WATCH_BUFFER, Watch, WatchEvent};
use crate::{Error, Result};

pub use super::selection::KubernetesOptions;

/// The longest pause between two attempts to re-establish a broken watch.
const WATCH_RETRY_MAX: Duration = Duration::from_secs(5);
/// How many objects one page of a long listing holds.
const LIST_PAGE: u32 = 500;
/// How long one watch request lasts before the server ends it (and it is resumed).
const WATCH_SECONDS: u32 = 290;
/// The media type that asks the API server to answer a write with the object's metadata only.
const METADATA_ONLY: &str = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";

/// What a pod's WorkloadEndpoint carries from its Kubernetes Pod, for policy: its labels, its
/// service account, and its containers' named ports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodFacts {
    /// The Pod's labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// `spec.serviceAccountName`.
    pub service_account: Option<String>,
    /// Every container port with a name.
    pub ports: Vec<crate::resource::EndpointPort>,
}

impl PodFacts {
    /// The facts of `pod`.
    pub fn of(pod: &k8s_openapi::api::core::v1::Pod) -> PodFacts {
        let spec = pod.spec.as_ref();
        let containers = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
        let ports = containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                Some(crate::resource::EndpointPort {
                    name: p.name.clone()?,
                    protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
                    port: u16::try_from(p.container_port).ok()?,
                })
            })
            .collect();
        PodFacts {
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            service_account: spec.and_then(|s| s.service_account_name.clone()),
            ports,
        }
    }

    /// `endpoint` carrying these facts, if it carries others now.
    pub fn apply_to(
        &self,
        endpoint: &crate::resource::Resource<crate::resource::WorkloadEndpoint>,
    ) -> Option<crate::resource::Resource<crate::resource::WorkloadEndpoint>> {
        let same = endpoint.metadata.labels == self.labels
            && endpoint.spec.service_account_name == self.service_account
            && endpoint.spec.ports == self.ports;
        (!same).then(|| {
            let mut updated = endpoint.clone();
            updated.metadata.labels.clone_from(&self.labels);
            updated.spec.service_account_name.clone_from(&self.service_account);
            updated.spec.ports.clone_from(&self.ports);
            updated
        })
    }
}

/// What a write reads of the API server's answer: the revision it made. The rest of the
/// metadata (timestamps, managed fields) is skipped unparsed.
#[derive(serde::Deserialize)]
struct Written {
    metadata: WrittenMetadata,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct WrittenMetadata {
    #[serde(default)]
    resource_version: String,
}

/// The Kubernetes backend.
#[derive(Clone)]
pub struct KubernetesStore {
    client: kube::Client,
    collections: Vec<Collection>,
    options: KubernetesOptions,
}

impl std::fmt::Debug for KubernetesStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kubeconfig = self.options.kubeconfig.as_ref().map(|p| p.display().to_string());
        write!(f, "KubernetesStore({})", kubeconfig.as_deref().unwrap_or("in-cluster"))
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("Kubernetes API {what}: {e}"))
}

/// A 404 for Kubernetes Node `node` as the trait's NotFound.
fn node_not_found(status: &kube::core::Status, node: &str) -> Option<Error> {
    (status.code == 404).then(|| Error::NotFound(format!("Kubernetes Node {node}")))
}

/// The API server's refusal, if that is what `e` is.
fn status(e: &kube::Error) -> Option<&kube::core::Status> {
    match e {
        kube::Error::Api(status) => Some(status),
        _ => None,
    }
}

impl KubernetesStore {
    /// Connects with the kubeconfig the options name, or the in-cluster service account (or
    /// `KUBECONFIG`, or `~/.kube/config`) when they name none.
    pub async fn connect(options: KubernetesOptions) -> Result<Self> {
        let config = match &options.kubeconfig {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| Error::Invalid(format!("kubeconfig {}: {e}", path.display())))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                    .await
                    .map_err(|e| Error::Invalid(format!("kubeconfig {}: {e}", path.display())))?
            }
            None => kube::Config::infer().await.map_err(|e| {
                Error::Invalid(format!("no Kubernetes configuration (in-cluster, KUBECONFIG or ~/.kube/config): {e}"))
            })?,
        };
        let mut config = config;
        config.connect_timeout = Some(options.timeout);
        config.read_timeout = None; // watches stay open; every other call has its own bound
        let client = kube::Client::try_from(config).map_err(|e| unavailable("client", e))?;
        Ok(KubernetesStore { client, collections: layout::collections(), options })
    }

    /// Sets the Kubernetes Node's `NetworkUnavailable` condition to False (reason
    /// `BrindleIsUp`), as a network plugin does once the node's pod network works: some clouds'
    /// node controllers start Nodes with it True, and the scheduler keeps pods off such a Node.
    pub async fn mark_network_available(&self, node: &str) -> Result<()> {
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
        let patch = serde_json::json!({"status": {"conditions": [{
            "type": "NetworkUnavailable",
            "status": "False",
            "reason": "BrindleIsUp",
            "message": "brindle-node programmed this node's pod network",
            "lastTransitionTime": now,
            "lastHeartbeatTime": now,
        }]}});
        let (nodes, params, patch) =
            (self.nodes(), kube::api::PatchParams::default(), kube::api::Patch::Strategic(&patch));
        let patched = nodes.patch_status(node, &params, &patch);
        let what = format!("patching Node {node}'s NetworkUnavailable condition");
        self.call(&what, patched, |s| node_not_found(s, node)).await?;
        Ok(())
    }

    /// The Kubernetes Nodes.
    fn nodes(&self) -> Api<k8s_openapi::api::core::v1::Node> {
        Api::all(self.client.clone())
    }

    /// The Kubernetes Node's InternalIP addresses, as kubelet reported them.
    pub async fn node_internal_ips(&self, node: &str) -> Result<Vec<std::net::IpAddr>> {
        let object =
            self.call(&format!("reading Node {node}"), self.nodes().get(node), |s| node_not_found(s, node)).await?;
        let addresses = object.status.and_then(|s| s.addresses).unwrap_or_default();
        Ok(addresses.iter().filter(|a| a.type_ == "InternalIP").filter_map(|a| a.address.parse().ok()).collect())
    }

    /// Pod `namespace/name`; None when there is no such Pod.
    pub async fn pod(&self, namespace: &str, name: &str) -> Result<Option<k8s_openapi::api::core::v1::Pod>> {
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(self.client.clone(), namespace);
        self.call(&format!("reading Pod {namespace}/{name}"), pods.get_opt(name), |_| None).await
    }

    /// The annotations of Kubernetes namespace `name` (none when there is no such namespace).
    pub async fn namespace_annotations(&self, name: &str) -> Result<BTreeMap<String, String>> {
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        let found =
            self.call(&format!("reading Namespace {name}"), namespaces.get_metadata_opt(name), |_| None).await?;
        Ok(found.and_then(|n| n.metadata.annotations).unwrap_or_default())
    }

    /// The client this store speaks through, for what brindle's controllers do beside the
    /// datastore (leader election).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// Every Pod of the cluster, as `(namespace, name)`.
    pub async fn pod_keys(&self) -> Result<crate::ipam::PodKeys> {
        let pods = self.metadata_of("Pods", Api::<k8s_openapi::api::core::v1::Pod>::all(self.client.clone())).await?;
        Ok(pods.into_iter().map(|p| (p.namespace.unwrap_or_default(), p.name.unwrap_or_default())).collect())
    }

    /// The metadata of every object `api` lists, a page at a time.
    async fn metadata_of<K>(&self, kind: &str, api: Api<K>) -> Result<Vec<kube::core::ObjectMeta>>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let mut objects = Vec::new();
        let mut params = ListParams::default().limit(LIST_PAGE);
        loop {
            let page = self.call(&format!("listing {kind}"), api.list_metadata(&params), |_| None).await?;
            objects.extend(page.items.into_iter().map(|o| o.metadata));
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => return Ok(objects),
            }
        }
    }

    /// Follows the Pods on `node`: `(namespace, name, facts)` for each as it is listed and as it
    /// changes (all again after a relist), with no facts once it is deleted. A failed watch
    /// yields its error and resumes after a back-off; the stream never ends on its own.
    pub fn pods_on(
        &self,
        node: &str,
    ) -> impl futures::Stream<Item = Result<(String, String, Option<PodFacts>)>> + Send + use<> {
        use kube::runtime::{WatchStreamExt, watcher};
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::all(self.client.clone());
        let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let key = |pod: &k8s_openapi::api::core::v1::Pod| {
            (pod.metadata.namespace.clone().unwrap_or_default(), pod.metadata.name.clone().unwrap_or_default())
        };
        watcher(pods, config).default_backoff().filter_map(move |event| {
            futures::future::ready(match event {
                Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                    let (namespace, name) = key(&pod);
                    Some(Ok((namespace, name, Some(PodFacts::of(&pod)))))
                }
                Ok(watcher::Event::Delete(pod)) => {
                    let (namespace, name) = key(&pod);
                    Some(Ok((namespace, name, None)))
                }
                Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
                Err(e) => Some(Err(unavailable("watching Pods", e))),
            })
        })
    }

    fn api(&self, collection: &Collection, namespace: Option<&str>) -> Api<DynamicObject> {
        match (collection.namespaced, namespace) {
            (true, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &collection.api),
            _ => Api::all_with(self.client.clone(), &collection.api),
        }
    }

    fn api_of(&self, place: &Place) -> (&Collection, Api<DynamicObject>) {
        let collection = &self.collections[place.collection];
        (collection, self.api(collection, place.namespace.as_deref()))
    }

    /// Sends a create or replace (bounded and mapped as [`Self::call`]) and returns the
    /// revision it made. The API server is asked to answer with the object's metadata only:
    /// the revision is all a write needs, and echoing a whole block back would cost the server
    /// an encoding and us a decoding of every byte just sent.
    async fn write(
        &self,
        what: &str,
        request: std::result::Result<http::Request<Vec<u8>>, kube::core::request::Error>,
        refused: impl FnOnce(&kube::core::Status) -> Option<Error>,
    ) -> Result<Revision> {
        let send = async {
            let mut request = request.map_err(kube::Error::BuildRequest)?;
            request.headers_mut().insert(http::header::ACCEPT, http::HeaderValue::from_static(METADATA_ONLY));
            self.client.request::<Written>(request).await
        };
        let written = self.call(what, send, refused).await?;
        layout::parse_revision(&written.metadata.resource_version)
    }

    /// Runs one call with the configured bound; API refusals are mapped by `refused`.
    async fn call<T>(
        &self,
        what: &str,
        call: impl Future<Output = kube::Result<T>>,
        refused: impl FnOnce(&kube::core::Status) -> Option<Error>,
    ) -> Result<T> {
        match tokio::time::timeout(self.options.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(match status(&e).and_then(refused) {
                Some(mapped) => mapped,
                None => match status(&e) {
                    Some(s) if s.code == 400 || s.code == 422 => {
                        Error::Invalid(format!("Kubernetes API {what}: {}", s.message))
                    }
                    Some(s) => unavailable(what, format!("{} ({})", s.message, s.code)),
                    None => unavailable(what, e),
                },
            }),
            Err(_) => Err(unavailable(what, format!("no answer within {:?}", self.options.timeout))),
        }
    }

    async fn get_object(&self, key: &str) -> Result<(Place, Value)> {
        let place = layout::place(&self.collections, key)?;
        let (_, api) = self.api_of(&place);
        let not_found = |s: &kube::core::Status| (s.code == 404).then(|| Error::NotFound(key.to_owned()));
        let object = self.call("get", api.get(&place.name), not_found).await?;
        Ok((place, to_value(object)?))
    }

    async fn key_value(&self, place: &Place, object: &Value, key: &str) -> Result<KeyValue> {
        layout::from_object(&self.collections[place.collection], object)?
            .filter(|kv| kv.key == key)
            .ok_or_else(|| Error::NotFound(key.to_owned()))
    }

    /// The conflict error for `key`, carrying what is stored now.
    async fn conflict(&self, key: &str, expected: Revision) -> Error {
        match self.get(key).await {
            Ok(current) => Error::Conflict {
                key: key.to_owned(),
                expected,
                actual: current.revision,
                current: Some(Box::new(current)),
            },
            Err(e) => e,
        }
    }

    /// Lists one collection, at `at` exactly or (`None`) at the latest revision, the objects
    /// that match the field selector `fields` if one is given.
    async fn list_collection(
        &self,
        index: usize,
        at: Option<Revision>,
        fields: Option<&str>,
    ) -> Result<(Vec<KeyValue>, Revision)> {
        let collection = &self.collections[index];
        let mut params = ListParams::default();
        if let Some(fields) = fields {
            params = params.fields(fields);
        }
        if let Some(at) = at {
            params = params.at(&at.to_string()).matching(VersionMatch::Exact);
        }
        let list = self.call("list", self.api(collection, None).list(&params), |_| None).await?;
        let revision = list.metadata.resource_version.as_deref().unwrap_or_default();
        let revision: Revision = revision
            .parse()
            .map_err(|_| Error::Invalid(format!("the API server gave list resourceVersion \"{revision}\"")))?;
        let mut items = Vec::with_capacity(list.items.len());
        for object in list.items {
            if let Some(kv) = layout::from_object(collection, &to_value(object)?)? {
                items.push(kv);
            }
        }
        Ok((items, revision))
    }

    /// Creates the namespace a namespaced object needs, when the cluster lacks it (a real
    /// cluster's pods live in namespaces that exist; a test's may not).
    async fn ensure_namespace(&self, namespace: &str) -> Result<()> {
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        let object = k8s_openapi::api::core::v1::Namespace {
            metadata: kube::core::ObjectMeta { name: Some(namespace.to_owned()), ..Default::default() },
            ..Default::default()
        };
        let exists = |s: &kube::core::Status| (s.code == 409).then_some(Error::AlreadyExists(namespace.to_owned()));
        match self.call("create namespace", namespaces.create(&PostParams::default(), &object), exists).await {
            Ok(_) | Err(Error::AlreadyExists(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn to_value(object: DynamicObject) -> Result<Value> {
    serde_json::to_value(object).map_err(|e| Error::Invalid(format!("an object of the API server: {e}")))
}

/// The body of a write.
fn encode(object: &Value) -> Result<Vec<u8>> {
    serde_json::to_vec(object).map_err(|e| Error::Invalid(format!("cannot build an API object: {e}")))
}

#[async_trait]
impl Datastore for KubernetesStore {
    fn kubernetes(&self) -> Option<&KubernetesStore> {
        Some(self)
    }

    async fn get(&self, key: &str) -> Result<KeyValue> {
        let (place, object) = self.get_object(key).await?;
        self.key_value(&place, &object, key).await
    }

    /// One snapshot of every collection the prefix covers. A read at the latest revision is
    /// quick (the API server brings its cache up to date on demand) and a read at an exact
    /// revision is not (it waits, about a second, for the cache of a kind nobody writes to
    /// catch up on its own). So the collections are read at the latest revision together, and
    /// when they all come back at the same revision that is the snapshot; a write between
    /// the reads makes them differ, and after a few tries they are read at the newest
    /// revision exactly.
    async fn list(&self, prefix: &str) -> Result<Listing> {
        const LATEST_TRIES: usize = 3;
        let covering = layout::covering(&self.collections, prefix);
        let mut parts = Vec::new();
        for _ in 0..LATEST_TRIES {
            parts =
                futures::future::try_join_all(covering.iter().map(|&i| self.list_collection(i, None, None))).await?;
            if parts.windows(2).all(|w| w[0].1 == w[1].1) {
                break;
            }
        }
        let newest = parts.iter().map(|(_, at)| *at).max().unwrap_or_default();
        if parts.iter().any(|(_, at)| *at != newest) {
            let at = Some(newest);
            parts = futures::future::try_join_all(covering.iter().map(|&i| self.list_collection(i, at, None))).await?;
        }
        let mut items: Vec<KeyValue> =
            parts.into_iter().flat_map(|(found, _)| found).filter(|kv| kv.key.starts_with(prefix)).collect();
        items.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Listing { items, revision: newest })
    }

    /// Selected by the API server on `spec.owner`. An API server that cannot (one older than
    /// Kubernetes 1.32, or a definition applied without its selectable field) says so, and
    /// every block is listed instead.
    async fn list_owned_blocks(&self, owner: &str) -> Result<Option<Listing>> {
        let index = self.collections.iter().position(|c| c.shape == Shape::Block).expect("the blocks' collection");
        let fields = format!("{}={owner}", layout::BLOCK_OWNER_FIELD);
        match self.list_collection(index, None, Some(&fields)).await {
            Ok((mut items, revision)) => {
                items.sort_by(|a, b| a.key.cmp(&b.key));
                Ok(Some(Listing { items, revision }))
            }
            Err(Error::Invalid(why)) if why.contains("field label not supported") => {
                tracing::debug!(%why, "the API server cannot select blocks by owner: listing them all");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    async fn create(&self, key: &str, value: &[u8]) -> Result<Revision> {
        let place = layout::place(&self.collections, key)?;
        let (collection, api) = self.api_of(&place);
        let body = encode(&layout::to_object(collection, &place, key, value)?)?;
        let refused = |s: &kube::core::Status| match s.code {
            409 => Some(Error::AlreadyExists(key.to_owned())),
            404 => Some(Error::NotFound(s.message.clone())),
            _ => None,
        };
        let create = || kube::core::Request::new(api.resource_url()).create(&PostParams::default(), body.clone());
        match self.write("create", create(), refused).await {
            // Only a missing namespace makes a create "not found".
            Err(Error::NotFound(_)) if place.namespace.is_some() => {
                self.ensure_namespace(place.namespace.as_deref().unwrap_or_default()).await?;
                self.write("create", create(), refused).await
            }
            other => other,
        }
    }

    async fn update(&self, key: &str, value: &[u8], expected: Revision) -> Result<Revision> {
        let place = layout::place(&self.collections, key)?;
        let (collection, api) = self.api_of(&place);
        let mut object = layout::to_object(collection, &place, key, value)?;
        if collection.shape == Shape::Node {
            // A Node holds much besides what brindle writes: keep it, change labels and
            // annotations only.
            let (_, mut current) = self.get_object(key).await?;
            if layout::revision_of(&current)? != expected {
                return Err(self.conflict(key, expected).await);
            }
            current["metadata"]["labels"] = object["metadata"]["labels"].take();
            current["metadata"]["annotations"] = object["metadata"]["annotations"].take();
            object = current;
        }
        object["metadata"]["resourceVersion"] = expected.to_string().into();
        let refused = |s: &kube::core::Status| match s.code {
            404 => Some(Error::NotFound(key.to_owned())),
            409 => Some(Error::Conflict { key: key.to_owned(), expected, actual: 0, current: None }),
            _ => None,
        };
        let request =
            kube::core::Request::new(api.resource_url()).replace(&place.name, &PostParams::default(), encode(&object)?);
        match self.write("update", request, refused).await {
            Err(Error::Conflict { .. }) => Err(self.conflict(key, expected).await),
            written => written,
        }
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<()> {
        let place = layout::place(&self.collections, key)?;
        let (_, api) = self.api_of(&place);
        if self.collections[place.collection].shape == Shape::Record {
            // The record's name is a digest: make sure it is this key's.
            self.get(key).await?;
        }
        let params = DeleteParams {
            preconditions: expected.map(|rv| Preconditions { resource_version: Some(rv.to_string()), uid: None }),
            ..DeleteParams::default()
        };
        let refused = |s: &kube::core::Status| match s.code {
            404 => Some(Error::NotFound(key.to_owned())),
            409 => Some(Error::Conflict {
                key: key.to_owned(),
                expected: expected.unwrap_or_default(),
                actual: 0,
                current: None,
            }),
            _ => None,
        };
        match self.call("delete", api.delete(&place.name, &params), refused).await {
            Ok(_) => Ok(()),
            Err(Error::Conflict { .. }) => Err(self.conflict(key, expected.unwrap_or_default()).await),
            Err(e) => Err(e),
        }
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<Watch> {
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let tasks: Vec<AbortOnDrop> = layout::covering(&self.collections, prefix)
            .into_iter()
            .map(|index| {
                let follow = Follow {
                    api: self.api(&self.collections[index], None),
                    collection: self.collections[index].clone(),
                    prefix: prefix.to_owned(),
                    tx: tx.clone(),
                };
                AbortOnDrop(tokio::spawn(follow.run(after)))
            })
            .collect();
        Ok(Watch::new(rx, tasks))
    }
}

/// One collection's part of a watch.
struct Follow {
    api: Api<DynamicObject>,
    collection: Collection,
    prefix: String,
    tx: mpsc::Sender<Result<WatchEvent>>,
}

impl Follow {
    /// Streams the collection's changes after `after` into `tx` until the receiver is gone or
    /// the history is compacted away.
    async fn run(self, after: Revision) {
        let mut from = after;
        let mut retry = Duration::from_millis(100);
        // What was last said of each key: a Node rewritten by kubelet, with nothing of
        // brindle's changed, is not news.
        let mut last: HashMap<String, Vec<u8>> = HashMap::new();
        loop {
            let params = WatchParams::default().timeout(WATCH_SECONDS);
            let stream = match self.api.watch(&params, &from.to_string()).await {
                Ok(stream) => stream,
                Err(e) => {
                    if self.tx.send(Err(unavailable("watch", e))).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(WATCH_RETRY_MAX);
                    continue;
                }
            };
            let mut stream = stream.boxed();
            loop {
                let event = match stream.try_next().await {
                    Ok(Some(event)) => event,
                    Ok(None) => break, // the server ended this request: resume from `from`
                    Err(e) => {
                        if self.tx.send(Err(unavailable("watch", e))).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(retry).await;
                        retry = (retry * 2).min(WATCH_RETRY_MAX);
                        break;
                    }
                };
                retry = Duration::from_millis(100);
                let outcome = match event {
                    KubeEvent::Added(o) | KubeEvent::Modified(o) => self.changed(o, false, &mut last),
                    KubeEvent::Deleted(o) => self.changed(o, true, &mut last),
                    KubeEvent::Bookmark(b) => Ok((b.metadata.resource_version.parse().ok(), None)),
                    KubeEvent::Error(status) if status.code == 410 => {
                        let _ = self.tx.send(Ok(WatchEvent::Compacted { compact_revision: from + 1 })).await;
                        return;
                    }
                    KubeEvent::Error(status) => Err(unavailable("watch", status.message)),
                };
                match outcome {
                    Ok((revision, event)) => {
                        if let Some(revision) = revision {
                            from = from.max(revision);
                        }
                        if let Some(event) = event
                            && self.tx.send(Ok(event)).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        if self.tx.send(Err(e)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// The event for a changed object (with its revision), or none when it is not news.
    fn changed(
        &self,
        object: DynamicObject,
        deleted: bool,
        last: &mut HashMap<String, Vec<u8>>,
    ) -> Result<(Option<Revision>, Option<WatchEvent>)> {
        let object = to_value(object)?;
        let Some(kv) = layout::from_object(&self.collection, &object)? else {
            return Ok((layout::revision_of(&object).ok(), None));
        };
        let revision = Some(kv.revision);
        if !kv.key.starts_with(&self.prefix) {
            return Ok((revision, None));
        }
        if deleted {
            last.remove(&kv.key);
            return Ok((revision, Some(WatchEvent::Delete { key: kv.key, revision: kv.revision })));
        }
        if self.collection.shape == Shape::Node && last.get(&kv.key) == Some(&kv.value) {
            return Ok((revision, None));
        }
        if self.collection.shape == Shape::Node {
            last.insert(kv.key.clone(), kv.value.clone());
        }
        Ok((revision, Some(WatchEvent::Put(kv))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pods_facts_are_its_labels_service_account_and_named_ports() {
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "x", "labels": {"app": "web"}},
            "spec": {"serviceAccountName": "robot", "containers": [
                {"name": "a", "ports": [{"name": "http", "containerPort": 8080}, {"containerPort": 9090}]},
                {"name": "b", "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"}]},
            ]},
        }))
        .unwrap();
        let facts = PodFacts::of(&pod);
        assert_eq!(facts.labels, [("app".to_owned(), "web".to_owned())].into());
        assert_eq!(facts.service_account.as_deref(), Some("robot"));
        let ports: Vec<(&str, &str, u16)> =
            facts.ports.iter().map(|p| (p.name.as_str(), p.protocol.as_str(), p.port)).collect();
        assert_eq!(ports, [("http", "TCP", 8080), ("dns", "UDP", 53)], "unnamed ports are no use to policy");
    }
}
