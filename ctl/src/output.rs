//! How resources are printed: a table (`-o table`, `-o wide`) with columns chosen per kind,
//! or the resources themselves as YAML or JSON that `apply -f` takes back.

use std::fmt::Write as _;

use brindle_datastore::resource::AnyResource;
use serde_json::Value;

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Columns for reading.
    Table,
    /// More columns.
    Wide,
    /// YAML documents, as `apply -f` takes them.
    Yaml,
    /// JSON (one object, or a list of them).
    Json,
}

/// A column: its header and where its value is in the resource's JSON.
struct Column {
    header: &'static str,
    pointer: &'static str,
    wide_only: bool,
}

fn columns(kind: &str) -> &'static [Column] {
    match kind {
        "IPPool" => &[
            Column { header: "NAME", pointer: "/metadata/name", wide_only: false },
            Column { header: "CIDR", pointer: "/spec/cidr", wide_only: false },
            Column { header: "IPIP", pointer: "/spec/ipipMode", wide_only: false },
            Column { header: "VXLAN", pointer: "/spec/vxlanMode", wide_only: false },
            Column { header: "NAT", pointer: "/spec/natOutgoing", wide_only: false },
            Column { header: "DISABLED", pointer: "/spec/disabled", wide_only: false },
            Column { header: "BLOCKSIZE", pointer: "/spec/blockSize", wide_only: true },
            Column { header: "SELECTOR", pointer: "/spec/nodeSelector", wide_only: true },
            Column { header: "BGP-EXPORT-OFF", pointer: "/spec/disableBGPExport", wide_only: true },
        ],
        "Node" => &[
            Column { header: "NAME", pointer: "/metadata/name", wide_only: false },
            Column { header: "ADDRESS", pointer: "/spec/bgp/ipv4Address", wide_only: false },
            Column { header: "ASN", pointer: "/spec/bgp/asNumber", wide_only: false },
            Column { header: "RR-CLUSTER", pointer: "/spec/bgp/routeReflectorClusterID", wide_only: false },
            Column { header: "IPV6", pointer: "/spec/bgp/ipv6Address", wide_only: true },
            Column { header: "VXLAN-TUNNEL", pointer: "/spec/ipv4VXLANTunnelAddr", wide_only: true },
            Column { header: "VXLAN-MAC", pointer: "/spec/vxlanTunnelMACAddr", wide_only: true },
            Column { header: "LABELS", pointer: "/metadata/labels", wide_only: true },
        ],
        "BGPPeer" => &[
            Column { header: "NAME", pointer: "/metadata/name", wide_only: false },
            Column { header: "PEER-IP", pointer: "/spec/peerIP", wide_only: false },
            Column { header: "PEER-SELECTOR", pointer: "/spec/peerSelector", wide_only: false },
            Column { header: "NODE", pointer: "/spec/node", wide_only: false },
            Column { header: "NODE-SELECTOR", pointer: "/spec/nodeSelector", wide_only: false },
            Column { header: "ASN", pointer: "/spec/asNumber", wide_only: false },
            Column { header: "KEEP-NEXT-HOP", pointer: "/spec/keepOriginalNextHop", wide_only: true },
            Column { header: "MAX-RESTART", pointer: "/spec/maxRestartTime", wide_only: true },
            Column { header: "FILTERS", pointer: "/spec/filters", wide_only: true },
        ],
        "BGPConfiguration" => &[
            Column { header: "NAME", pointer: "/metadata/name", wide_only: false },
            Column { header: "ASN", pointer: "/spec/asNumber", wide_only: false },
            Column { header: "MESH", pointer: "/spec/nodeToNodeMeshEnabled", wide_only: false },
            Column { header: "LISTEN-PORT", pointer: "/spec/listenPort", wide_only: false },
            Column { header: "SERVICE-CLUSTER-IPS", pointer: "/spec/serviceClusterIPs", wide_only: true },
        ],
        "AgentConfiguration" => &[
            Column { header: "NAME", pointer: "/metadata/name", wide_only: false },
            Column { header: "BGP-BACKEND", pointer: "/spec/bgpBackend", wide_only: false },
            Column { header: "MTU", pointer: "/spec/mtu", wide_only: false },
            Column { header: "ROUTE-REFRESH", pointer: "/spec/routeRefreshInterval", wide_only: false },
            Column { header: "IPTABLES-BACKEND", pointer: "/spec/iptablesBackend", wide_only: true },
            Column { header: "VXLAN-VNI", pointer: "/spec/vxlanVNI", wide_only: true },
        ],
        "IPAMConfiguration" => &[
            Column { header: "NAME", pointer: "/metadata/name", wide_only: false },
            Column { header: "STRICT-AFFINITY", pointer: "/spec/strictAffinity", wide_only: false },
            Column { header: "MAX-BLOCKS-PER-NODE", pointer: "/spec/maxBlocksPerNode", wide_only: false },
            Column { header: "RELEASE-COOLDOWN", pointer: "/spec/releaseCooldown", wide_only: true },
        ],
        "WorkloadEndpoint" => &[
            Column { header: "NAMESPACE", pointer: "/metadata/namespace", wide_only: false },
            Column { header: "NAME", pointer: "/metadata/name", wide_only: false },
            Column { header: "NODE", pointer: "/spec/node", wide_only: false },
            Column { header: "POD", pointer: "/spec/pod", wide_only: false },
            Column { header: "NETWORKS", pointer: "/spec/ipNetworks", wide_only: false },
            Column { header: "INTERFACE", pointer: "/spec/interfaceName", wide_only: true },
            Column { header: "MAC", pointer: "/spec/mac", wide_only: true },
            Column { header: "CONTAINER", pointer: "/spec/containerID", wide_only: true },
        ],
        "NetworkPolicy" | "KubernetesNetworkPolicy" => &[
            Column { header: "NAMESPACE", pointer: "/metadata/namespace", wide_only: false },
            Column { header: "NAME", pointer: "/metadata/name", wide_only: false },
            Column { header: "API", pointer: "/apiVersion", wide_only: false },
            Column { header: "TIER", pointer: "/spec/tier", wide_only: false },
            Column { header: "ORDER", pointer: "/spec/order", wide_only: false },
            Column { header: "SELECTOR", pointer: "/spec/selector", wide_only: true },
            Column { header: "POD-SELECTOR", pointer: "/spec/podSelector", wide_only: true },
        ],
        "GlobalNetworkPolicy" => &[
            Column { header: "NAME", pointer: "/metadata/name", wide_only: false },
            Column { header: "TIER", pointer: "/spec/tier", wide_only: false },
            Column { header: "ORDER", pointer: "/spec/order", wide_only: false },
            Column { header: "SELECTOR", pointer: "/spec/selector", wide_only: false },
            Column { header: "NAMESPACE-SELECTOR", pointer: "/spec/namespaceSelector", wide_only: true },
        ],
        "Tier" => &[
            Column { header: "NAME", pointer: "/metadata/name", wide_only: false },
            Column { header: "ORDER", pointer: "/spec/order", wide_only: false },
        ],
        "Namespace" => &[
            Column { header: "NAME", pointer: "/metadata/name", wide_only: false },
            Column { header: "LABELS", pointer: "/metadata/labels", wide_only: false },
        ],
        _ => &[Column { header: "NAME", pointer: "/metadata/name", wide_only: false }],
    }
}

/// A JSON value as a table cell: strings bare, lists joined, maps as `k=v`, absent as `-`.
fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) if s.is_empty() => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) if items.is_empty() => "-".into(),
        Some(Value::Array(items)) => items.iter().map(|v| cell(Some(v))).collect::<Vec<_>>().join(","),
        Some(Value::Object(map)) if map.is_empty() => "-".into(),
        Some(Value::Object(map)) => {
            map.iter().map(|(k, v)| format!("{k}={}", cell(Some(v)))).collect::<Vec<_>>().join(",")
        }
        Some(other) => other.to_string(),
    }
}

/// Renders rows of cells under headers, each column as wide as its widest cell.
pub fn table(headers: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for line in std::iter::once(headers).chain(rows.iter().map(Vec::as_slice)) {
        let mut text = String::new();
        for (i, (c, w)) in line.iter().zip(&widths).enumerate() {
            if i + 1 == line.len() {
                text += c;
            } else {
                let _ = write!(text, "{c:<w$}   ", w = *w);
            }
        }
        out += text.trim_end();
        out.push('\n');
    }
    out
}

/// Prints resources of one kind in `format`. `extra` adds columns (header, one cell per
/// resource) to the wide table.
pub fn render(kind: &str, resources: &[AnyResource], format: Format, extra: &[(String, Vec<String>)]) -> String {
    match format {
        Format::Json => {
            let values: Vec<Value> = resources.iter().map(AnyResource::to_json).collect();
            let value =
                if values.len() == 1 { values.into_iter().next().unwrap_or(Value::Null) } else { Value::Array(values) };
            serde_json::to_string_pretty(&value).unwrap_or_default() + "\n"
        }
        Format::Yaml => {
            let values: Vec<Value> = resources.iter().map(AnyResource::to_json).collect();
            serde_saphyr::to_string_multiple(&values).unwrap_or_default()
        }
        Format::Table | Format::Wide => {
            let shown: Vec<&Column> = columns(kind).iter().filter(|c| format == Format::Wide || !c.wide_only).collect();
            let mut headers: Vec<String> = shown.iter().map(|c| c.header.to_owned()).collect();
            let mut rows: Vec<Vec<String>> = resources
                .iter()
                .map(|r| {
                    let json = r.to_json();
                    shown.iter().map(|c| cell(json.pointer(c.pointer))).collect()
                })
                .collect();
            if format == Format::Wide {
                for (header, cells) in extra {
                    headers.push(header.clone());
                    for (row, cell) in rows.iter_mut().zip(cells) {
                        row.push(cell.clone());
                    }
                }
            }
            table(&headers, &rows)
        }
    }
}

#[cfg(test)]
mod tests {
    use brindle_datastore::resource::parse_documents;

    use super::*;

    #[test]
    fn pools_print_as_a_table_and_round_trip_as_yaml_and_json() {
        let pools = parse_documents(
            "kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {name: a}\nspec: {cidr: 10.1.0.0/16, vxlanMode: Always}\n---\n\
             kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {name: b, labels: {x: y}}\nspec: {cidr: 10.2.0.0/16}\n",
        )
        .unwrap();
        let shown = render("IPPool", &pools, Format::Table, &[]);
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["NAME", "CIDR", "IPIP", "VXLAN", "NAT", "DISABLED"]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["a", "10.1.0.0/16", "Never", "Always", "false", "false"]
        );
        assert!(render("IPPool", &pools, Format::Wide, &[]).contains("BLOCKSIZE"));
        for format in [Format::Yaml, Format::Json] {
            let text = render("IPPool", &pools, format, &[]);
            assert_eq!(parse_documents(&text).unwrap(), pools, "{format:?}:\n{text}");
        }
    }

    #[test]
    fn cells_flatten_lists_and_maps() {
        assert_eq!(cell(Some(&serde_json::json!(["a", "b"]))), "a,b");
        assert_eq!(cell(Some(&serde_json::json!({"k": "v"}))), "k=v");
        assert_eq!(cell(None), "-");
    }
}
