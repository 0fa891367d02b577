//! `node status`: what the local agent says on its status socket — its sync state, problems,
//! and BGP peers.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde_json::Value;

use crate::output::table;

/// The agent's default status socket.
pub const DEFAULT_SOCKET: &str = "/var/run/brindle/node.sock";

/// Asks the agent listening on `socket`.
pub fn query(socket: &Path) -> anyhow::Result<Value> {
    let mut conn = std::os::unix::net::UnixStream::connect(socket).with_context(|| {
        format!("cannot reach brindle-node's status socket {} (is the agent running on this node?)", socket.display())
    })?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut text = String::new();
    conn.read_to_string(&mut text).with_context(|| format!("reading {}", socket.display()))?;
    serde_json::from_str(&text).with_context(|| format!("brindle-node answered something that is not JSON: {text}"))
}

fn since(epoch_secs: u64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let secs = now.saturating_sub(epoch_secs);
    match secs {
        0..120 => format!("{secs}s ago"),
        120..7200 => format!("{}m ago", secs / 60),
        7200..172800 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

/// The status as tables.
pub fn render(status: &Value) -> String {
    let mut out = format!(
        "brindle-node on {} is {}\n",
        status["node"].as_str().unwrap_or("?"),
        if status["ready"] == true {
            "ready (in sync with the datastore, dataplane programmed)".to_owned()
        } else {
            match status["notReady"].as_str() {
                Some(why) if !why.is_empty() => format!("not ready: {why}"),
                _ => "not ready".to_owned(),
            }
        }
    );
    for problem in status["problems"].as_array().into_iter().flatten() {
        out += &format!("problem: {}\n", problem.as_str().unwrap_or_default());
    }
    match status["bgp"]["peers"].as_array() {
        None => out += "\nBGP is off on this node (routes between nodes come from the datastore)\n",
        Some(peers) if peers.is_empty() => out += "\nBGP is on, with no peers configured\n",
        Some(peers) => {
            let rows: Vec<Vec<String>> = peers
                .iter()
                .map(|p| {
                    vec![
                        p["address"].as_str().unwrap_or("?").to_owned(),
                        p["type"].as_str().unwrap_or("?").to_owned(),
                        p["state"].as_str().unwrap_or("?").to_owned(),
                        since(p["since"].as_u64().unwrap_or(0)),
                        format!("{} in, {} out", p["routes"], p["advertised"]),
                        p["bfd"].as_str().unwrap_or("-").to_owned(),
                        p["reason"].as_str().unwrap_or("").to_owned(),
                    ]
                })
                .collect();
            out += "\nBGP peers:\n";
            out += &table(&["PEER", "TYPE", "STATE", "SINCE", "ROUTES", "BFD", "INFO"].map(String::from), &rows);
        }
    }
    out + &render_wireguard(&status["wireguard"], "WireGuard")
        + &render_wireguard(&status["wireguardV6"], "IPv6 WireGuard")
}

/// A family's WireGuard section (`what` names it): the device and every peer with its last
/// handshake and traffic.
fn render_wireguard(wireguard: &Value, what: &str) -> String {
    if wireguard.is_null() {
        return format!("\n{what} is off on this node\n");
    }
    if let Some(waiting) = wireguard["waiting"].as_str() {
        return format!("\n{what} is on, waiting {waiting}\n");
    }
    let interface = wireguard["interface"].as_str().unwrap_or("?");
    if let Some(error) = wireguard["error"].as_str() {
        return format!("\n{what} on {interface}: cannot read the device: {error}\n");
    }
    let out = format!(
        "\n{what} on {interface} (port {}), public key {}, rule {}:\n",
        wireguard["port"],
        wireguard["publicKey"].as_str().unwrap_or("?"),
        wireguard["rule"].as_str().unwrap_or("?")
    );
    let rows: Vec<Vec<String>> = wireguard["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let handshake = match p["latestHandshake"].as_u64().unwrap_or(0) {
                0 => "never".to_owned(),
                at => {
                    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                    since(now.as_secs().saturating_sub(at))
                }
            };
            let allowed: Vec<&str> =
                p["allowedIps"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            vec![
                p["node"].as_str().unwrap_or("?").to_owned(),
                p["endpoint"].as_str().unwrap_or("?").to_owned(),
                if p["configured"] == true { handshake } else { "not in the kernel".to_owned() },
                format!("{} B in, {} B out", p["received"], p["sent"]),
                allowed.join(","),
            ]
        })
        .collect();
    out + &table(&["NODE", "ENDPOINT", "HANDSHAKE", "TRANSFER", "ALLOWED IPS"].map(String::from), &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_down_show_their_reason() {
        let status = serde_json::json!({
            "node": "n1", "ready": false, "problems": ["IP-in-IP needs the ipip module"],
            "bgp": {"peers": [{"address": "10.0.0.2", "type": "mesh", "state": "Active", "since": 0,
                               "reason": "connection refused", "routes": 0, "advertised": 0}]}
        });
        let shown = render(&status);
        assert!(shown.contains("not ready") && shown.contains("problem: IP-in-IP"), "{shown}");
        let row = shown.lines().find(|l| l.starts_with("10.0.0.2")).unwrap();
        assert!(row.contains("mesh") && row.contains("Active") && row.ends_with("connection refused"), "{row}");
        let with_bfd = serde_json::json!({
            "node": "n1", "ready": true,
            "bgp": {"peers": [{"address": "10.0.0.3", "type": "global", "state": "Active", "since": 0, "routes": 0,
                               "advertised": 0, "bfd": "Down (control detection time expired)",
                               "reason": "BFD session down: control detection time expired"}]}
        });
        let row = render(&with_bfd).lines().find(|l| l.starts_with("10.0.0.3")).unwrap().to_owned();
        assert!(row.contains("Down (control detection time expired)"), "{row}");
        assert!(render(&with_bfd).contains("\nWireGuard is off on this node"));
        assert!(render(&with_bfd).contains("\nIPv6 WireGuard is off on this node"));
    }

    #[test]
    fn wireguard_peers_show_their_handshake_and_traffic() {
        let status = serde_json::json!({
            "node": "n1", "ready": true,
            "wireguard": {"interface": "wg.brindle", "port": 51820, "publicKey": "bXlrZXk=",
                "rule": "99: not from all fwmark 0x100000/0x100000 lookup 1", "peers": [
                {"node": "n2", "endpoint": "10.0.0.2:51820", "allowedIps": ["10.244.1.0/26"], "configured": true,
                 "latestHandshake": 0, "received": 0, "sent": 92},
                {"node": "n3", "endpoint": "10.0.0.3:51820", "allowedIps": [], "configured": false,
                 "latestHandshake": 0, "received": 0, "sent": 0}]}
        });
        let shown = render(&status);
        assert!(
            shown.contains(
                "WireGuard on wg.brindle (port 51820), public key bXlrZXk=, rule 99: not from all fwmark \
                 0x100000/0x100000 lookup 1"
            ),
            "{shown}"
        );
        let n2 = shown.lines().find(|l| l.starts_with("n2")).unwrap();
        assert!(n2.contains("never") && n2.contains("0 B in, 92 B out") && n2.ends_with("10.244.1.0/26"), "{n2}");
        assert!(shown.lines().any(|l| l.starts_with("n3") && l.contains("not in the kernel")), "{shown}");
    }
}
