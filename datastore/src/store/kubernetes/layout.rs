//! Where each key lives in the Kubernetes API, and how a stored value and an API object turn
//! into each other. Pure: no I/O.
//!
//! - `/brindle/v1/<plural>/[<namespace>/]<name>`: a custom resource of brindle's kind (group
//!   `brindle.io`), the value's metadata and spec as they are, so `kubectl get ippools` shows
//!   what brindlectl shows.
//! - `/brindle/v1/namespaces/<name>` and `/brindle/v1/kubernetesnetworkpolicies/<ns>/<name>`:
//!   Kubernetes' own Namespace and NetworkPolicy, as they are.
//! - `/brindle/v1/nodes/<name>`: the Kubernetes Node of that name. Its labels and
//!   annotations are the brindle Node's; the brindle spec is the annotation `brindle.io/node`,
//!   but for its AS number and route-reflector cluster ID, annotations of their own
//!   (`brindle.io/ASNumber`, `brindle.io/RouteReflectorClusterID`) that kubectl can set.
//! - `/brindle/ipam/v1/blocks/<cidr>`: an `IPAMBlock` whose spec shows the block's CIDR and
//!   owner and holds the whole block packed in one field (`state`: its JSON, zlib-compressed,
//!   base64-encoded). One opaque field is all the API server tracks on every allocation, where
//!   a structured map of allocations made each update two to three times slower; packed, a
//!   half-full /26 of pods is a third of its JSON, and every update, stored revision and watch
//!   event costs the API server and etcd that much less (`brindle-bench ipam`).
//! - Any other key: a `KeyValue` holding the key and the value's bytes (base64).

use std::collections::BTreeMap;

use kube::core::ApiResource;
use serde_json::{Map, Value, json};
use sha1::{Digest, Sha1};

use crate::keys;
use crate::resource::KIND_NAMES;
use crate::store::{KeyValue, Revision};
use crate::{Error, Result};

/// brindle's API group.
pub const GROUP: &str = "brindle.io";
/// Its version.
pub const VERSION: &str = "v1";
/// The annotation that carries a brindle Node's spec on the Kubernetes Node.
pub const NODE_SPEC_ANNOTATION: &str = "brindle.io/node";

/// Fields of a brindle Node's `spec.bgp` kept as annotations of their own, so an operator sets
/// them with `kubectl annotate node` (as Calico's `projectcalico.org/ASNumber` and
/// `projectcalico.org/RouteReflectorClusterID`): annotation, field.
pub const NODE_BGP_ANNOTATIONS: [(&str, &str); 2] =
    [("brindle.io/ASNumber", "asNumber"), ("brindle.io/RouteReflectorClusterID", "routeReflectorClusterID")];

/// The field of an `IPAMBlock` that names its owner, selectable (`fieldSelector=spec.owner=N`)
/// so that a node's first allocation reads its own blocks, not every node's.
pub const BLOCK_OWNER_FIELD: &str = "spec.owner";

/// How values of a collection are shaped as API objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A brindle resource as a custom resource of its kind.
    Resource,
    /// A brindle Node as the Kubernetes Node.
    Node,
    /// An IPAM block as an `IPAMBlock`.
    Block,
    /// Any other key as a `KeyValue`.
    Record,
}

/// One kind of API object and the keys it holds.
#[derive(Debug, Clone)]
pub struct Collection {
    /// Every key of the collection starts with this (the records' is empty: any other key).
    pub prefix: String,
    /// The API resource.
    pub api: ApiResource,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// How values map onto objects.
    pub shape: Shape,
}

fn brindle_api(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: GROUP.into(),
        version: VERSION.into(),
        api_version: format!("{GROUP}/{VERSION}"),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// Every collection: brindle's kinds (Node mapped onto the Kubernetes Node), IPAM blocks, and
/// the records, last (they take every key the others do not).
pub fn collections() -> Vec<Collection> {
    let mut out: Vec<Collection> = KIND_NAMES
        .iter()
        .map(|&(kind, plural, namespaced)| {
            let prefix = format!("{}{plural}/", keys::RESOURCES);
            let kubernetes = |group: &str, kind: &str, plural: &str| ApiResource {
                group: group.into(),
                version: "v1".into(),
                api_version: if group.is_empty() { "v1".into() } else { format!("{group}/v1") },
                kind: kind.into(),
                plural: plural.into(),
            };
            match kind {
                "Node" => Collection { prefix, api: kubernetes("", "Node", "nodes"), namespaced, shape: Shape::Node },
                "Namespace" => {
                    Collection { prefix, api: kubernetes("", kind, "namespaces"), namespaced, shape: Shape::Resource }
                }
                "KubernetesNetworkPolicy" => Collection {
                    prefix,
                    api: kubernetes("networking.k8s.io", "NetworkPolicy", "networkpolicies"),
                    namespaced,
                    shape: Shape::Resource,
                },
                _ => Collection { prefix, api: brindle_api(kind, plural), namespaced, shape: Shape::Resource },
            }
        })
        .collect();
    out.push(Collection {
        prefix: keys::BLOCKS.into(),
        api: brindle_api("IPAMBlock", "ipamblocks"),
        namespaced: false,
        shape: Shape::Block,
    });
    out.push(Collection {
        prefix: String::new(),
        api: brindle_api("KeyValue", "keyvalues"),
        namespaced: false,
        shape: Shape::Record,
    });
    out
}

/// Where one key's object is: its collection (an index into [`collections`]), namespace and
/// name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// The collection's index.
    pub collection: usize,
    /// The namespace, for namespaced kinds.
    pub namespace: Option<String>,
    /// The object's name.
    pub name: String,
}

/// The object a key is stored as. A key under a kind's prefix must name one object of it.
pub fn place(collections: &[Collection], key: &str) -> Result<Place> {
    for (i, c) in collections.iter().enumerate() {
        let Some(rest) = key.strip_prefix(&c.prefix).filter(|_| !c.prefix.is_empty()) else { continue };
        let parts: Vec<&str> = rest.split('/').collect();
        let place = match (c.shape, c.namespaced, parts.as_slice()) {
            (Shape::Block, _, [cidr]) if !cidr.is_empty() => {
                Place { collection: i, namespace: None, name: block_name(cidr) }
            }
            (Shape::Resource | Shape::Node, false, [name]) if is_object_name(name) => {
                Place { collection: i, namespace: None, name: (*name).into() }
            }
            (Shape::Resource | Shape::Node, true, [namespace, name])
                if is_object_name(namespace) && is_object_name(name) =>
            {
                Place { collection: i, namespace: Some((*namespace).into()), name: (*name).into() }
            }
            _ => return Err(Error::Invalid(format!("{key}: not a key of a {}", c.api.kind))),
        };
        return Ok(place);
    }
    let record = collections.iter().position(|c| c.shape == Shape::Record).expect("the records' collection");
    Ok(Place { collection: record, namespace: None, name: record_name(key) })
}

/// The collections a listing or a watch of `prefix` reads: those whose keys can start with it.
/// The records are read unless the prefix lies inside another collection's keys (a listing of
/// pools or blocks reads nothing else, and needs no right to records).
pub fn covering(collections: &[Collection], prefix: &str) -> Vec<usize> {
    let inside_another =
        collections.iter().any(|c| c.shape != Shape::Record && !c.prefix.is_empty() && prefix.starts_with(&c.prefix));
    collections
        .iter()
        .enumerate()
        .filter(|(_, c)| match c.shape {
            Shape::Record => !inside_another,
            _ => c.prefix.starts_with(prefix) || prefix.starts_with(&c.prefix),
        })
        .map(|(i, _)| i)
        .collect()
}

fn is_object_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253
}

/// A block's object name: its key's CIDR part as a DNS name (`10.244.0.64-26`,
/// `fd00--40-122`).
fn block_name(cidr: &str) -> String {
    cidr.to_ascii_lowercase().replace(':', "-")
}

/// A record's object name: a digest of its key.
fn record_name(key: &str) -> String {
    let digest: String = Sha1::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    format!("kv-{digest}")
}

/// The revision an object carries.
pub fn revision_of(object: &Value) -> Result<Revision> {
    parse_revision(object["metadata"]["resourceVersion"].as_str().unwrap_or_default())
}

/// A `resourceVersion` as a revision.
pub fn parse_revision(text: &str) -> Result<Revision> {
    text.parse().map_err(|_| Error::Invalid(format!("the API server gave resourceVersion \"{text}\", not a number")))
}

fn parse_json(key: &str, value: &[u8]) -> Result<Map<String, Value>> {
    match serde_json::from_slice(value) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(Error::Invalid(format!("{key}: the Kubernetes datastore stores a JSON object here"))),
    }
}

/// What an `IPAMBlock`'s spec shows of its block beside the packed state.
#[derive(serde::Deserialize)]
struct BlockShown {
    cidr: String,
    #[serde(default)]
    owner: Option<String>,
}

/// The most a block's state may unpack to: a full /20 of pods is under 2 MiB of JSON.
const MAX_STATE_BYTES: u64 = 64 << 20;

/// A block's JSON as `spec.state` holds it: zlib-compressed (fastest level: the higher ones
/// save a few per cent more) and base64-encoded. Each thread keeps one compressor, reset for
/// every block: a new one would allocate and clear a few hundred KiB each time.
fn pack_state(value: &[u8]) -> String {
    use base64::Engine;
    use flate2::{Compress, Compression, FlushCompress, Status};
    thread_local! {
        static DEFLATE: std::cell::RefCell<Compress> = std::cell::RefCell::new(Compress::new(Compression::fast(), true));
    }
    let packed = DEFLATE.with_borrow_mut(|deflate| {
        deflate.reset();
        let mut packed = Vec::with_capacity(value.len() / 2 + 64);
        loop {
            let consumed = usize::try_from(deflate.total_in()).unwrap_or(value.len()).min(value.len());
            let status = deflate
                .compress_vec(&value[consumed..], &mut packed, FlushCompress::Finish)
                .expect("compressing into memory cannot fail");
            if status == Status::StreamEnd {
                return packed;
            }
            packed.reserve(packed.capacity());
        }
    });
    base64::engine::general_purpose::STANDARD.encode(packed)
}

/// A block's JSON from `spec.state`; the error says what is wrong with the text.
fn unpack_state(state: &str) -> std::result::Result<Vec<u8>, String> {
    use base64::Engine;
    use std::io::Read;
    let packed = base64::engine::general_purpose::STANDARD.decode(state).map_err(|e| format!("is not base64: {e}"))?;
    let mut value = Vec::new();
    flate2::read::ZlibDecoder::new(&packed[..])
        .take(MAX_STATE_BYTES + 1)
        .read_to_end(&mut value)
        .map_err(|e| format!("is not zlib-compressed: {e}"))?;
    if value.len() as u64 > MAX_STATE_BYTES {
        return Err(format!("unpacks to more than {MAX_STATE_BYTES} bytes"));
    }
    Ok(value)
}

/// The metadata a value may set: name, namespace, labels, annotations.
fn own_metadata(metadata: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    for field in ["name", "namespace", "labels", "annotations"] {
        if let Some(v) = metadata.get(field).filter(|v| !v.is_null()) {
            out.insert(field.into(), v.clone());
        }
    }
    out
}

/// The API object (without a resourceVersion) for `value` stored at `key`, placed at `place`.
pub fn to_object(collection: &Collection, place: &Place, key: &str, value: &[u8]) -> Result<Value> {
    let mut metadata = Map::new();
    metadata.insert("name".into(), place.name.clone().into());
    if let Some(namespace) = &place.namespace {
        metadata.insert("namespace".into(), namespace.clone().into());
    }
    let api = &collection.api;
    let object = match collection.shape {
        Shape::Resource => {
            let mut value = parse_json(key, value)?;
            let mut own = own_metadata(value.get("metadata").unwrap_or(&Value::Null));
            own.extend(metadata);
            value.insert("metadata".into(), own.into());
            value.insert("apiVersion".into(), api.api_version.clone().into());
            value.insert("kind".into(), api.kind.clone().into());
            Value::Object(value)
        }
        Shape::Node => {
            let value = parse_json(key, value)?;
            let mut own = own_metadata(value.get("metadata").unwrap_or(&Value::Null));
            own.extend(metadata);
            let mut spec = value.get("spec").cloned().unwrap_or_else(|| json!({}));
            let annotations = own.entry("annotations").or_insert_with(|| json!({}));
            for (annotation, field) in NODE_BGP_ANNOTATIONS {
                let held = spec.get_mut("bgp").and_then(Value::as_object_mut).and_then(|bgp| bgp.remove(field));
                match held {
                    Some(Value::String(text)) => annotations[annotation] = text.into(),
                    Some(other) => annotations[annotation] = other.to_string().into(),
                    None => drop(annotations.as_object_mut().map(|a| a.remove(annotation))),
                }
            }
            if spec.get("bgp").and_then(Value::as_object).is_some_and(Map::is_empty) {
                spec.as_object_mut().map(|s| s.remove("bgp"));
            }
            match spec.as_object().is_some_and(Map::is_empty) {
                true => drop(annotations.as_object_mut().map(|a| a.remove(NODE_SPEC_ANNOTATION))),
                false => annotations[NODE_SPEC_ANNOTATION] = spec.to_string().into(),
            }
            json!({"apiVersion": "v1", "kind": "Node", "metadata": own})
        }
        Shape::Block => {
            let shown: BlockShown = serde_json::from_slice(value)
                .map_err(|e| Error::Invalid(format!("{key}: not a block with a cidr: {e}")))?;
            let spec = json!({"cidr": shown.cidr, "owner": shown.owner, "state": pack_state(value)});
            json!({"apiVersion": api.api_version, "kind": api.kind, "metadata": metadata, "spec": spec})
        }
        Shape::Record => {
            use base64::Engine;
            let data = base64::engine::general_purpose::STANDARD.encode(value);
            json!({"apiVersion": api.api_version, "kind": api.kind, "metadata": metadata, "spec": {"key": key, "value": data}})
        }
    };
    Ok(object)
}

/// The key and value an API object holds, with its revision; `None` for an object that is not
/// one of ours (a record without a key).
pub fn from_object(collection: &Collection, object: &Value) -> Result<Option<KeyValue>> {
    let revision = revision_of(object)?;
    let metadata = &object["metadata"];
    let name = metadata["name"].as_str().unwrap_or_default();
    let (key, value) = match collection.shape {
        Shape::Resource => {
            let key = match metadata["namespace"].as_str() {
                Some(namespace) => format!("{}{namespace}/{name}", collection.prefix),
                None => format!("{}{name}", collection.prefix),
            };
            let mut value = Map::new();
            value.insert("apiVersion".into(), collection.api.api_version.clone().into());
            value.insert("kind".into(), collection.api.kind.clone().into());
            value.insert("metadata".into(), own_metadata(metadata).into());
            if let Some(spec) = object.get("spec") {
                value.insert("spec".into(), spec.clone());
            }
            (key, Value::Object(value))
        }
        Shape::Node => {
            let mut own = own_metadata(metadata);
            let spec = match own.get_mut("annotations").and_then(Value::as_object_mut) {
                Some(annotations) => match annotations.remove(NODE_SPEC_ANNOTATION) {
                    Some(Value::String(text)) => serde_json::from_str(&text).map_err(|e| {
                        Error::Invalid(format!("Node {name}: annotation {NODE_SPEC_ANNOTATION} is not JSON: {e}"))
                    })?,
                    _ => json!({}),
                },
                None => json!({}),
            };
            let mut spec = spec;
            for (annotation, field) in NODE_BGP_ANNOTATIONS {
                let Some(Value::String(text)) =
                    own.get_mut("annotations").and_then(Value::as_object_mut).and_then(|a| a.remove(annotation))
                else {
                    continue;
                };
                let value = match field {
                    "asNumber" => text.trim().parse::<u32>().map(Value::from).map_err(|_| {
                        Error::Invalid(format!("Node {name}: annotation {annotation} {text:?} is not an AS number"))
                    })?,
                    _ => Value::String(text),
                };
                if !spec["bgp"].is_object() {
                    spec["bgp"] = json!({});
                }
                spec["bgp"][field] = value;
            }
            if own.get("annotations").and_then(Value::as_object).is_some_and(Map::is_empty) {
                own.remove("annotations");
            }
            let value =
                json!({"apiVersion": format!("{GROUP}/{VERSION}"), "kind": "Node", "metadata": own, "spec": spec});
            (format!("{}{name}", collection.prefix), value)
        }
        Shape::Block => {
            let state = object["spec"]["state"].as_str().unwrap_or_default();
            let value = unpack_state(state).map_err(|e| Error::Invalid(format!("IPAMBlock {name}: spec.state {e}")))?;
            let shown: BlockShown = serde_json::from_slice(&value)
                .map_err(|e| Error::Invalid(format!("IPAMBlock {name}: spec.state is not a block: {e}")))?;
            let Ok(cidr) = shown.cidr.parse() else {
                return Err(Error::Invalid(format!("IPAMBlock {name} has no valid cidr")));
            };
            return Ok(Some(KeyValue { key: keys::block(&cidr), value, revision }));
        }
        Shape::Record => {
            use base64::Engine;
            let (Some(key), Some(data)) = (object["spec"]["key"].as_str(), object["spec"]["value"].as_str()) else {
                return Ok(None);
            };
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|e| Error::Invalid(format!("KeyValue {name}: spec.value is not base64: {e}")))?;
            return Ok(Some(KeyValue { key: key.into(), value: bytes, revision }));
        }
    };
    let bytes = serde_json::to_vec(&value).map_err(|e| Error::Invalid(format!("{key}: {e}")))?;
    Ok(Some(KeyValue { key, value: bytes, revision }))
}

/// The schema Kubernetes checks a kind's spec against: the spec type's own (field names,
/// types, enums, required fields), made structural as the API server requires (enums hoisted,
/// no `additionalProperties: false`) and without defaults, so the API server stores exactly
/// what brindle wrote and the resource model alone fills defaults.
fn spec_schema(kind: &str) -> Option<Value> {
    let mut generator = schemars::generate::SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_transform(schemars::transform::AddNullable::default())
        .with_transform(kube_core::schema::StructuralSchemaRewriter)
        .with_transform(kube_core::schema::OptionalEnum)
        .with_transform(schemars::transform::RecursiveTransform(|schema: &mut schemars::Schema| {
            if let Some(object) = schema.as_object_mut() {
                object.remove("default");
                object.remove("title");
            }
        }))
        .into_generator();
    let schema = crate::resource::spec_schema(kind, &mut generator)?;
    Some(schema.to_value())
}

/// The CustomResourceDefinitions the collections need (not Node: Kubernetes has it), as
/// `apiextensions.k8s.io/v1` objects. The API server validates every write against the
/// kind's schema, so `kubectl apply` of a malformed resource is refused naming the field.
pub fn crds(collections: &[Collection]) -> Vec<Value> {
    let short: BTreeMap<&str, &str> = [("IPPool", "ipp"), ("WorkloadEndpoint", "wep"), ("BGPPeer", "bgpp")].into();
    collections
        .iter()
        .filter(|c| c.api.group == GROUP)
        .map(|c| {
            let spec_schema = match c.shape {
                Shape::Record => json!({
                    "type": "object",
                    "required": ["key", "value"],
                    "properties": {"key": {"type": "string"}, "value": {"type": "string", "format": "byte"}},
                }),
                Shape::Block => json!({
                    "type": "object",
                    "required": ["cidr", "state"],
                    "properties": {
                        "cidr": {"type": "string"},
                        "owner": {"type": "string", "nullable": true},
                        // Not `format: byte`: the API server checks that with a backtracking
                        // regular expression, most of its validation of every update of a
                        // block; brindle checks a state whenever it reads one.
                        "state": {"type": "string"},
                    },
                }),
                Shape::Resource | Shape::Node => {
                    spec_schema(&c.api.kind).expect("every brindle kind has a spec schema")
                }
            };
            let mut names = json!({
                "kind": c.api.kind,
                "plural": c.api.plural,
                "singular": c.api.kind.to_ascii_lowercase(),
                "categories": ["brindle"],
            });
            if let Some(s) = short.get(c.api.kind.as_str()) {
                names["shortNames"] = json!([s]);
            }
            let mut version = json!({
                "name": VERSION,
                "served": true,
                "storage": true,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "required": ["spec"],
                    "properties": {"spec": spec_schema},
                }},
            });
            if c.shape == Shape::Block {
                version["selectableFields"] = json!([{"jsonPath": format!(".{BLOCK_OWNER_FIELD}")}]);
            }
            json!({
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": format!("{}.{GROUP}", c.api.plural)},
                "spec": {
                    "group": GROUP,
                    "scope": if c.namespaced { "Namespaced" } else { "Cluster" },
                    "names": names,
                    "versions": [version],
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(c: &[Collection], key: &str, value: &[u8]) -> (Place, Value) {
        let place = place(c, key).unwrap();
        let mut object = to_object(&c[place.collection], &place, key, value).unwrap();
        object["metadata"]["resourceVersion"] = "42".into();
        object["metadata"]["uid"] = "server-set".into();
        (place, object)
    }

    #[test]
    fn resources_blocks_nodes_and_other_keys_have_their_places() {
        let c = collections();
        let shape = |key: &str| c[place(&c, key).unwrap().collection].shape;
        assert_eq!(shape("/brindle/v1/ippools/default"), Shape::Resource);
        assert_eq!(shape("/brindle/v1/nodes/node-1"), Shape::Node);
        assert_eq!(shape("/brindle/ipam/v1/blocks/10.244.0.64-26"), Shape::Block);
        assert_eq!(shape("/brindle/ipam/v1/gc"), Shape::Record);
        assert_eq!(shape("/t/a"), Shape::Record);
        assert!(place(&c, "/brindle/v1/ippools/a/b").is_err(), "not a pool's key");
        let wep = place(&c, "/brindle/v1/workloadendpoints/ns1/pod-eth0").unwrap();
        assert_eq!((wep.namespace.as_deref(), wep.name.as_str()), (Some("ns1"), "pod-eth0"));
        assert_eq!(place(&c, "/brindle/ipam/v1/blocks/fd00::40-122").unwrap().name, "fd00--40-122");
        assert_ne!(place(&c, "/t/a").unwrap().name, place(&c, "/t/b").unwrap().name);
    }

    #[test]
    fn a_listing_reads_the_collections_its_prefix_can_hold() {
        let c = collections();
        let kinds =
            |prefix: &str| -> Vec<String> { covering(&c, prefix).iter().map(|i| c[*i].api.kind.clone()).collect() };
        assert_eq!(kinds("/brindle/v1/ippools/"), ["IPPool"]);
        assert_eq!(kinds("/brindle/ipam/v1/blocks/"), ["IPAMBlock"]);
        assert_eq!(kinds("/brindle/ipam/v1/"), ["IPAMBlock", "KeyValue"]);
        assert_eq!(kinds("/brindle/").len(), c.len(), "everything");
        assert_eq!(kinds("/t/"), ["KeyValue"]);
    }

    #[test]
    fn values_round_trip_through_their_objects() {
        let c = collections();
        let pool = br#"{"apiVersion":"brindle.io/v1","kind":"IPPool","metadata":{"name":"p","labels":{"a":"b"}},"spec":{"cidr":"10.0.0.0/16"}}"#;
        for (key, value) in [
            ("/brindle/v1/ippools/p", &pool[..]),
            ("/brindle/ipam/v1/blocks/10.0.0.0-26", br#"{"cidr":"10.0.0.0/26","owner":"n1"}"#),
            ("/t/a", b"\x00 not json"),
        ] {
            let (place, object) = kv(&c, key, value);
            let back = from_object(&c[place.collection], &object).unwrap().unwrap();
            assert_eq!(back.key, key);
            assert_eq!(back.revision, 42);
            let (a, b): (Result<Value, _>, Result<Value, _>) =
                (serde_json::from_slice(value), serde_json::from_slice(&back.value));
            match (a, b) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{key}"),
                _ => assert_eq!(back.value, value, "{key}"),
            }
        }
    }

    #[test]
    fn a_block_shows_its_cidr_and_owner_and_packs_its_state_to_a_fraction() {
        let c = collections();
        let key = "/brindle/ipam/v1/blocks/10.0.0.0-26";
        // Container IDs are 64 random hex digits: what compresses is everything else.
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let mut container_id = || {
            (0..4)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    format!("{x:016x}")
                })
                .collect::<String>()
        };
        let allocations: Map<String, Value> = (0..32_u64)
            .map(|i| {
                let holder = json!({
                    "handle": format!("k8s-pod-network.{}", container_id()),
                    "network": "k8s-pod-network", "endpoint": true, "node": "n1",
                    "pod": format!("web-7d9f8c6b5-{i:05}"), "namespace": "default",
                    "allocatedAtMs": 1_764_000_000_000_u64 + i * 137,
                });
                (i.to_string(), holder)
            })
            .collect();
        let block = json!({"cidr": "10.0.0.0/26", "owner": "n1", "nextFresh": 32, "allocations": allocations});
        let value = serde_json::to_vec(&block).unwrap();
        let (place, object) = kv(&c, key, &value);
        assert_eq!((&object["spec"]["cidr"], &object["spec"]["owner"]), (&json!("10.0.0.0/26"), &json!("n1")));
        let state = object["spec"]["state"].as_str().unwrap();
        assert!(state.len() * 2 < value.len(), "{} bytes packed from {}", state.len(), value.len());
        let back = from_object(&c[place.collection], &object).unwrap().unwrap();
        assert_eq!((back.key.as_str(), back.value), (key, value));
    }

    #[test]
    fn states_that_do_not_compress_round_trip_too() {
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        for len in [0, 1, 100, 10_000, 100_000] {
            let noise: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            // One compressor serves every call of a thread: each starts afresh.
            assert_eq!(unpack_state(&pack_state(&noise)).unwrap(), noise, "{len} bytes");
        }
    }

    #[test]
    fn a_block_whose_state_cannot_be_unpacked_is_refused_naming_the_field() {
        let c = collections();
        let (place, mut object) = kv(&c, "/brindle/ipam/v1/blocks/10.0.0.0-26", br#"{"cidr":"10.0.0.0/26"}"#);
        for (state, says) in [
            ("{\"cidr\":\"10.0.0.0/26\"}", "spec.state is not base64"),
            ("bm90IHpsaWI=", "spec.state is not zlib-compressed"),
            (pack_state(b"[1]").as_str(), "spec.state is not a block"),
            (pack_state(br#"{"cidr":"ten"}"#).as_str(), "has no valid cidr"),
        ] {
            object["spec"]["state"] = state.into();
            let error = from_object(&c[place.collection], &object).unwrap_err().to_string();
            assert!(error.contains("IPAMBlock 10.0.0.0-26") && error.contains(says), "{error}");
        }
    }

    #[test]
    fn a_brindle_node_is_the_kubernetes_node_with_its_spec_in_an_annotation() {
        let c = collections();
        let node = br#"{"apiVersion":"brindle.io/v1","kind":"Node","metadata":{"name":"n1","labels":{"rr":"true"}},"spec":{"bgp":{"ipv4Address":"10.0.0.1/24"}}}"#;
        let (place, mut object) = kv(&c, "/brindle/v1/nodes/n1", node);
        assert_eq!(object["apiVersion"], "v1");
        assert_eq!(object["metadata"]["annotations"][NODE_SPEC_ANNOTATION], r#"{"bgp":{"ipv4Address":"10.0.0.1/24"}}"#);
        // What kubelet adds stays the Node's: its labels are the brindle Node's.
        object["metadata"]["labels"]["kubernetes.io/hostname"] = "n1".into();
        object["status"] = json!({"capacity": {"cpu": "2"}});
        let back = from_object(&c[place.collection], &object).unwrap().unwrap();
        let back: Value = serde_json::from_slice(&back.value).unwrap();
        assert_eq!(back["spec"]["bgp"]["ipv4Address"], "10.0.0.1/24");
        assert_eq!(back["metadata"]["labels"]["kubernetes.io/hostname"], "n1");
        assert!(back["metadata"].get("annotations").is_none(), "the spec annotation is not shown twice");
        assert!(back["metadata"].get("uid").is_none() && back.get("status").is_none());
    }

    #[test]
    fn a_nodes_as_number_and_reflector_cluster_are_annotations_kubectl_can_set() {
        let c = collections();
        let node = br#"{"apiVersion":"brindle.io/v1","kind":"Node","metadata":{"name":"n1"},"spec":{"bgp":{"ipv4Address":"10.0.0.1/24","asNumber":64513,"routeReflectorClusterID":"224.0.0.1"}}}"#;
        let (place, mut object) = kv(&c, "/brindle/v1/nodes/n1", node);
        let annotations = &object["metadata"]["annotations"];
        assert_eq!(annotations["brindle.io/ASNumber"], "64513");
        assert_eq!(annotations["brindle.io/RouteReflectorClusterID"], "224.0.0.1");
        assert_eq!(annotations[NODE_SPEC_ANNOTATION], r#"{"bgp":{"ipv4Address":"10.0.0.1/24"}}"#);
        let back = from_object(&c[place.collection], &object).unwrap().unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&back.value).unwrap(),
            serde_json::from_slice::<Value>(node).unwrap()
        );

        // `kubectl annotate node n1 brindle.io/ASNumber=64600 --overwrite`, and a wrong one.
        object["metadata"]["annotations"]["brindle.io/ASNumber"] = "64600".into();
        let back = from_object(&c[place.collection], &object).unwrap().unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&back.value).unwrap()["spec"]["bgp"]["asNumber"], 64600);
        object["metadata"]["annotations"]["brindle.io/ASNumber"] = "AS64600".into();
        let refused = from_object(&c[place.collection], &object).unwrap_err().to_string();
        assert!(refused.contains("annotation brindle.io/ASNumber \"AS64600\" is not an AS number"), "{refused}");

        // On a Node brindle has not written yet, the annotation alone is the spec.
        let bare = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n2", "resourceVersion": "7",
            "annotations": {"brindle.io/RouteReflectorClusterID": "224.0.0.2"}}});
        let back = from_object(&c[place.collection], &bare).unwrap().unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&back.value).unwrap()["spec"],
            json!({"bgp": {"routeReflectorClusterID": "224.0.0.2"}})
        );
    }

    #[test]
    fn every_brindle_kind_has_a_definition() {
        let c = collections();
        let crds = crds(&c);
        let names: Vec<&str> = crds.iter().map(|d| d["metadata"]["name"].as_str().unwrap()).collect();
        assert!(names.contains(&"ippools.brindle.io") && names.contains(&"ipamblocks.brindle.io"));
        assert!(!names.iter().any(|n| n.starts_with("nodes.")), "Kubernetes has Nodes");
        let wep = crds.iter().find(|d| d["spec"]["names"]["kind"] == "WorkloadEndpoint").unwrap();
        assert_eq!(wep["spec"]["scope"], "Namespaced");
    }

    /// Every node of a schema has a type (or keeps unknown fields) and none uses `anyOf`,
    /// `oneOf`, `allOf` or `$ref`: what the API server requires of a structural schema.
    fn assert_structural(schema: &Value, path: &str) {
        let object = schema.as_object().unwrap_or_else(|| panic!("{path}: not an object"));
        assert!(
            ["type", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string"]
                .iter()
                .any(|k| object.contains_key(*k)),
            "{path} has no type: {schema}"
        );
        for word in ["anyOf", "oneOf", "allOf", "$ref", "default"] {
            assert!(!object.contains_key(word), "{path} uses {word}: {schema}");
        }
        for (name, property) in object.get("properties").and_then(Value::as_object).into_iter().flatten() {
            assert_structural(property, &format!("{path}.{name}"));
        }
        for (word, suffix) in [("items", "[]"), ("additionalProperties", "{}")] {
            if let Some(inner) = object.get(word).filter(|v| v.is_object()) {
                assert_structural(inner, &format!("{path}{suffix}"));
            }
        }
    }

    #[test]
    fn every_schema_is_structural_and_describes_the_spec() {
        for crd in crds(&collections()) {
            let name = crd["metadata"]["name"].as_str().unwrap();
            let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
            assert_structural(schema, name);
        }
        let crds = crds(&collections());
        let pool = crds.iter().find(|d| d["spec"]["names"]["kind"] == "IPPool").unwrap();
        let spec = &pool["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["required"], json!(["cidr"]));
        assert_eq!(spec["properties"]["vxlanMode"]["enum"], json!(["Never", "Always", "CrossSubnet"]));
        assert_eq!(spec["properties"]["blockSize"]["type"], "integer");
    }
}
