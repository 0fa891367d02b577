//! The confd loop: list the prefixes the templates depend on, render, then watch and render
//! again after each burst of changes (debounced), only the templates whose keys changed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use brindle_datastore::{Datastore, WatchEvent};
use serde_json::{Map, Value};

use crate::{Error, TemplateResource, render};

/// A resource with its template text.
#[derive(Debug, Clone)]
pub struct Template {
    /// The resource.
    pub resource: TemplateResource,
    /// The template's text.
    pub text: String,
}

/// The context templates see: `node` (this node's name) and `kv` (every key under the
/// resource's prefixes, its value parsed as JSON when it is JSON, else as text).
pub fn context(node: &str, kv: &BTreeMap<String, Vec<u8>>, keys: &[String]) -> Value {
    let mut map = Map::new();
    for (key, value) in kv.iter().filter(|(k, _)| keys.iter().any(|p| k.starts_with(p.as_str()))) {
        let value = serde_json::from_slice(value)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(value).into_owned()));
        map.insert(key.clone(), value);
    }
    serde_json::json!({ "node": node, "kv": map })
}

fn render_all(templates: &[&Template], node: &str, kv: &BTreeMap<String, Vec<u8>>) {
    for template in templates {
        let ctx = context(node, kv, &template.resource.keys);
        match render(&template.resource, &template.text, &ctx) {
            Ok(outcome) => tracing::debug!(dest = %template.resource.dest.display(), ?outcome, "rendered"),
            Err(e) => tracing::warn!(error = %e, "render failed; the old file stays"),
        }
    }
}

/// Renders every template now; unless `once`, keeps them current until the watch fails.
pub async fn run(
    store: Arc<dyn Datastore>,
    templates: &[Template],
    node: &str,
    debounce: Duration,
    once: bool,
) -> Result<(), Error> {
    let mut kv = BTreeMap::new();
    let mut revision = 0;
    let mut prefixes: Vec<&str> = templates.iter().flat_map(|t| t.resource.keys.iter().map(String::as_str)).collect();
    prefixes.sort();
    prefixes.dedup();
    for prefix in &prefixes {
        let listing = store.list(prefix).await?;
        revision = revision.max(listing.revision);
        kv.extend(listing.items.into_iter().map(|i| (i.key, i.value)));
    }
    render_all(&templates.iter().collect::<Vec<_>>(), node, &kv);
    if once {
        return Ok(());
    }
    let mut watch = store.watch("/", revision).await?;
    loop {
        let Some(event) = watch.next().await else { return Ok(()) };
        let mut changed = Vec::new();
        let mut apply = |event: WatchEvent, changed: &mut Vec<String>| match event {
            WatchEvent::Put(item) => {
                changed.push(item.key.clone());
                kv.insert(item.key, item.value);
            }
            WatchEvent::Delete { key, .. } => {
                kv.remove(&key);
                changed.push(key);
            }
            WatchEvent::Compacted { .. } => changed.push(String::new()),
        };
        apply(event?, &mut changed);
        // Debounce: a burst of changes renders once.
        while let Ok(Some(more)) = tokio::time::timeout(debounce, watch.next()).await {
            apply(more?, &mut changed);
        }
        let affected: Vec<&Template> = templates
            .iter()
            .filter(|t| {
                changed.iter().any(|k| k.is_empty() || t.resource.keys.iter().any(|p| k.starts_with(p.as_str())))
            })
            .collect();
        render_all(&affected, node, &kv);
    }
}
