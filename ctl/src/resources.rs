//! `create`, `apply`, `replace`, `delete`, `get`, `label` and `patch`: resources from files
//! (YAML or JSON, many documents) or by kind and name.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, bail};
use brindle_datastore::resource::{AnyResource, KINDS, kind_is_namespaced, kind_named, parse_documents};
use brindle_datastore::{Applied, Client, Error};
use serde_json::Value;

/// A write that `create`, `apply`, `replace` or `delete` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Create; an error if it exists.
    Create,
    /// Create or replace.
    Apply,
    /// Replace; an error if it does not exist.
    Replace,
    /// Delete.
    Delete,
}

/// Reads a file of resources (`-` for stdin).
pub fn read_file(path: &Path) -> anyhow::Result<Vec<AnyResource>> {
    let text = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("reading stdin")?;
        text
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    let resources = parse_documents(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if resources.is_empty() {
        bail!("{}: no resources in it", path.display());
    }
    Ok(resources)
}

fn describe(r: &AnyResource) -> String {
    let m = r.metadata();
    match &m.namespace {
        Some(ns) => format!("{} \"{ns}/{}\"", r.kind(), m.name),
        None => format!("{} \"{}\"", r.kind(), m.name),
    }
}

/// Applies `write` to every resource, reporting each; an error naming those that failed. A
/// file with an invalid resource is refused whole before anything is written.
pub async fn write_all(client: &Client, write: Write, resources: Vec<AnyResource>) -> anyhow::Result<String> {
    if !matches!(write, Write::Delete) {
        let invalid: Vec<String> = resources.iter().filter_map(|r| r.validate().err()).map(|e| e.to_string()).collect();
        if !invalid.is_empty() {
            bail!("{}\nnothing was written", invalid.join("\n"));
        }
    }
    let mut report = String::new();
    let mut failed = Vec::new();
    for r in resources {
        let what = describe(&r);
        let outcome = match write {
            Write::Create => r.create(client).await.map(|_| "created"),
            Write::Replace => r.replace(client).await.map(|_| "replaced"),
            Write::Delete => r.delete(client).await.map(|()| "deleted"),
            Write::Apply => r.apply(client).await.map(|(_, done)| match done {
                Applied::Created => "created",
                Applied::Replaced => "replaced",
                Applied::Unchanged => "unchanged",
            }),
        };
        match outcome {
            Ok(done) => report += &format!("{what} {done}\n"),
            Err(e) => failed.push(explain(&what, e)),
        }
    }
    if failed.is_empty() {
        Ok(report)
    } else {
        print!("{report}");
        bail!("{}", failed.join("\n"))
    }
}

/// An error with the resource it is about, unless it already names it.
fn explain(what: &str, e: Error) -> String {
    let text = e.to_string();
    match e {
        Error::Validation(_) => text,
        Error::Conflict { .. } => {
            format!("{what}: changed since it was read (metadata.resourceVersion is stale); read it again and retry")
        }
        _ if text.contains(what) => text,
        _ => format!("{what}: {text}"),
    }
}

/// Short names, as calicoctl has them.
const SHORT_NAMES: &[(&str, &str)] = &[
    ("ipp", "IPPool"),
    ("pool", "IPPool"),
    ("pools", "IPPool"),
    ("no", "Node"),
    ("bgpp", "BGPPeer"),
    ("bgpconfig", "BGPConfiguration"),
    ("agentconfig", "AgentConfiguration"),
    ("ipamconfig", "IPAMConfiguration"),
    ("wep", "WorkloadEndpoint"),
    ("weps", "WorkloadEndpoint"),
    ("netpol", "KubernetesNetworkPolicy"),
    ("knp", "KubernetesNetworkPolicy"),
    ("gnp", "GlobalNetworkPolicy"),
    ("ns", "Namespace"),
];

/// The kinds a listing of `kind` shows: NetworkPolicies of both APIs together (as Kubernetes
/// and brindle both call theirs `networkpolicies`), every other kind alone.
pub fn listed_with(kind: &'static str) -> &'static [&'static str] {
    match kind {
        "NetworkPolicy" => &["NetworkPolicy", "KubernetesNetworkPolicy"],
        _ => std::slice::from_ref(KINDS.iter().find(|k| **k == kind).expect("a kind from KINDS")),
    }
}

/// The kind an operator typed (kind, plural or short name), or an error listing the kinds.
pub fn kind(typed: &str) -> anyhow::Result<&'static str> {
    kind_named(typed)
        .or_else(|| SHORT_NAMES.iter().find(|(short, _)| typed.eq_ignore_ascii_case(short)).map(|(_, kind)| *kind))
        .with_context(|| format!("unknown kind \"{typed}\" (known: {})", KINDS.join(", ")))
}

/// Which namespace a get or edit is about: none for cluster-wide kinds.
pub fn namespace_for(kind: &str, namespace: &str) -> Option<String> {
    kind_is_namespaced(kind).then(|| namespace.to_owned())
}

/// `get KIND [NAME]`: one resource, or all of a kind (in `namespace`, or every namespace
/// when it is `None`).
pub async fn get(
    client: &Client,
    kind: &'static str,
    name: Option<&str>,
    namespace: Option<&str>,
) -> anyhow::Result<Vec<AnyResource>> {
    match name {
        Some(name) => {
            let ns = namespace_for(kind, namespace.unwrap_or("default"));
            Ok(vec![AnyResource::get(client, kind, ns.as_deref(), name).await?])
        }
        None => {
            let mut all = Vec::new();
            for kind in listed_with(kind) {
                all.extend(AnyResource::list(client, kind).await?);
            }
            Ok(match namespace.filter(|_| kind_is_namespaced(kind)) {
                Some(ns) => all.into_iter().filter(|r| r.metadata().namespace.as_deref() == Some(ns)).collect(),
                None => all,
            })
        }
    }
}

/// Reads a resource, changes its JSON with `edit`, and writes it back at the revision it was
/// read at, retrying when another writer got in between.
pub async fn edit(
    client: &Client,
    kind: &'static str,
    namespace: Option<&str>,
    name: &str,
    edit: impl Fn(&mut Value) -> anyhow::Result<()>,
) -> anyhow::Result<AnyResource> {
    let ns = namespace_for(kind, namespace.unwrap_or("default"));
    for _ in 0..5 {
        let current = AnyResource::get(client, kind, ns.as_deref(), name).await?;
        let revision = current.metadata().resource_version.clone();
        let mut json = current.to_json();
        edit(&mut json)?;
        let mut changed = AnyResource::from_value(json).map_err(|e| anyhow::anyhow!("{kind} \"{name}\": {e}"))?;
        changed.metadata_mut().resource_version = revision;
        match changed.replace(client).await {
            Err(Error::Conflict { .. }) => continue,
            other => return other.map_err(|e| anyhow::anyhow!(explain(&format!("{kind} \"{name}\""), e))),
        }
    }
    bail!("{kind} \"{name}\" kept changing under us; try again")
}

/// Applies `key=value` (set) and `key-` (remove) to a resource's labels.
pub fn set_labels(json: &mut Value, changes: &[String], overwrite: bool) -> anyhow::Result<()> {
    let labels = json["metadata"]
        .as_object_mut()
        .context("the resource has no metadata")?
        .entry("labels")
        .or_insert_with(|| Value::Object(Default::default()));
    let labels = labels.as_object_mut().context("metadata.labels is not a map")?;
    for change in changes {
        if let Some(key) = change.strip_suffix('-') {
            labels.remove(key);
        } else if let Some((key, value)) = change.split_once('=') {
            if !overwrite && labels.get(key).is_some_and(|old| old != value) {
                bail!("label {key} is already set to {}; pass --overwrite to change it", labels[key]);
            }
            labels.insert(key.to_owned(), Value::String(value.to_owned()));
        } else {
            bail!("\"{change}\" is neither key=value nor key-");
        }
    }
    Ok(())
}

/// Merges `patch` into `target` as a JSON merge patch (RFC 7386): objects merge, `null`
/// removes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(entries) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            let map = target.as_object_mut().expect("made an object above");
            for (key, value) in entries {
                if value.is_null() {
                    map.remove(key);
                } else {
                    merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        other => *target = other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut doc, &json!({"a": "z", "c": {"f": null}, "n": [1]}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}, "n": [1]}));
    }

    #[test]
    fn labels_are_set_removed_and_not_overwritten_by_accident() {
        let mut doc = json!({"metadata": {"name": "x"}});
        set_labels(&mut doc, &["a=1".into(), "b=2".into()], false).unwrap();
        set_labels(&mut doc, &["b-".into()], false).unwrap();
        assert_eq!(doc["metadata"]["labels"], json!({"a": "1"}));
        let err = set_labels(&mut doc, &["a=2".into()], false).unwrap_err().to_string();
        assert!(err.contains("--overwrite"), "{err}");
        set_labels(&mut doc, &["a=2".into()], true).unwrap();
        assert_eq!(doc["metadata"]["labels"]["a"], "2");
        assert!(set_labels(&mut doc, &["junk".into()], true).is_err());
    }
}
