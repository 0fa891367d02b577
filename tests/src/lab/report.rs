//! What a lab shows: its nodes and their agents, BGP sessions, pods, and the reachability
//! matrix between every pair of pods.

use std::fmt::Write as _;
use std::io::Read;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::state::LabState;
use super::topology::cli_name;
use crate::netns::ping;
use crate::process::is_running;

/// Which pod pairs answered: `reached[a][b]` for a ping from pod `a` to pod `b`.
#[derive(Debug, Clone)]
pub struct Matrix {
    /// Indexed like the lab's pods; the diagonal is true.
    pub reached: Vec<Vec<bool>>,
}

impl Matrix {
    /// Pings every pair once at each address the target has (each source pod on a thread of
    /// its own); a ping that fails is tried once more, so one lost packet does not count.
    pub fn measure(state: &LabState) -> Matrix {
        let pods = &state.pods;
        let reached = std::thread::scope(|scope| {
            let rows: Vec<_> = pods
                .iter()
                .enumerate()
                .map(|(a, from)| {
                    scope.spawn(move || {
                        pods.iter()
                            .enumerate()
                            .map(|(b, to)| {
                                let reaches = |ip: &str| ping(&from.netns, ip) || ping(&from.netns, ip);
                                a == b || (reaches(&to.ip) && to.ipv6.as_deref().is_none_or(reaches))
                            })
                            .collect::<Vec<bool>>()
                    })
                })
                .collect();
            rows.into_iter().map(|row| row.join().unwrap_or_default()).collect()
        });
        Matrix { reached }
    }

    /// Measures until every pair reaches every other or `within` passes.
    pub fn settle(state: &LabState, within: Duration) -> Matrix {
        let deadline = std::time::Instant::now() + within;
        loop {
            let matrix = Matrix::measure(state);
            if matrix.complete() || std::time::Instant::now() > deadline {
                return matrix;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Whether every pod reaches every pod.
    pub fn complete(&self) -> bool {
        self.reached.iter().all(|row| row.iter().all(|&r| r))
    }

    /// The pairs that failed, as `(from, to)` indices.
    pub fn failing(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for (a, row) in self.reached.iter().enumerate() {
            for (b, &ok) in row.iter().enumerate() {
                if !ok {
                    out.push((a, b));
                }
            }
        }
        out
    }

    /// The matrix as a table: rows ping columns.
    pub fn render(&self, state: &LabState) -> String {
        let corner = "from \\ to";
        let width = state.pods.iter().map(|p| p.name.len()).max().unwrap_or(0).max(corner.len());
        let mut out = format!("{corner:width$}");
        for pod in &state.pods {
            let _ = write!(out, "  {:>w$}", pod.name, w = pod.name.len());
        }
        out.push('\n');
        for (a, row) in self.reached.iter().enumerate() {
            let _ = write!(out, "{:width$}", state.pods[a].name);
            for (b, &ok) in row.iter().enumerate() {
                let mark = if a == b {
                    "·"
                } else if ok {
                    "✓"
                } else {
                    "✗"
                };
                let _ = write!(out, "  {mark:>w$}", w = state.pods[b].name.len());
            }
            out.push('\n');
        }
        let pairs = state.pods.len() * state.pods.len().saturating_sub(1);
        let failing = self.failing();
        if failing.is_empty() {
            let _ = writeln!(out, "all {pairs} pod pairs reach each other");
        } else {
            let _ = writeln!(out, "{} of {pairs} pod pairs cannot reach each other", failing.len());
        }
        out
    }
}

/// What a node agent says on its status socket (null when it does not answer).
pub fn agent_status(socket: &std::path::Path) -> Value {
    let Ok(mut conn) = std::os::unix::net::UnixStream::connect(socket) else { return Value::Null };
    let _ = conn.set_read_timeout(Some(crate::wait::patience(Duration::from_secs(5))));
    let mut text = String::new();
    let _ = conn.read_to_string(&mut text);
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// How many of the BGP sessions an agent's status (from [`agent_status`]) lists are
/// established.
pub fn established_sessions(status: &Value) -> usize {
    status["bgp"]["peers"].as_array().map_or(0, |peers| peers.iter().filter(|p| p["state"] == "Established").count())
}

fn ago(since: u64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let secs = now.saturating_sub(since);
    match secs {
        0..120 => format!("{secs}s"),
        120..7200 => format!("{}m", secs / 60),
        _ => format!("{}h", secs / 3600),
    }
}

/// Nodes, BGP sessions and pods as tables.
pub fn render_status(state: &LabState) -> String {
    let o = &state.options;
    let mut out = format!(
        "lab {:?}: {} nodes, mode {}, peering {}, datastore {}\n\n",
        state.name,
        state.nodes.len(),
        cli_name(&o.mode),
        cli_name(&o.peering),
        state.datastore
    );
    let _ = writeln!(out, "{:<8} {:<12} {:<24} BGP", "NODE", "ADDRESS", "AGENT");
    let mut sessions = String::new();
    for node in &state.nodes {
        let status = agent_status(&node.status_socket());
        let agent = if !is_running(node.agent_pid, "brindle-node") {
            format!("not running (pid {})", node.agent_pid)
        } else if status["ready"] == true {
            format!("ready (pid {})", node.agent_pid)
        } else {
            format!("not ready (pid {})", node.agent_pid)
        };
        let peers = status["bgp"]["peers"].as_array().cloned().unwrap_or_default();
        let bgp = if status["bgp"].is_null() {
            "off".to_owned()
        } else {
            format!("{}/{} established", established_sessions(&status), peers.len())
        };
        let _ = writeln!(out, "{:<8} {:<12} {:<24} {bgp}", node.name, node.address.to_string(), agent);
        for peer in &peers {
            let peer_name = state
                .nodes
                .iter()
                .find(|n| peer["address"].as_str() == Some(n.address.to_string().as_str()))
                .map_or("", |n| n.name.as_str());
            let _ = writeln!(
                sessions,
                "{:<8} {:<12} {:<8} {:<10} {:<12} {:<6} {}",
                node.name,
                peer["address"].as_str().unwrap_or("?"),
                peer_name,
                peer["type"].as_str().unwrap_or("?"),
                peer["state"].as_str().unwrap_or("?"),
                ago(peer["since"].as_u64().unwrap_or(0)),
                match peer["reason"].as_str() {
                    Some(reason) => reason.to_owned(),
                    None => format!("{} in, {} out", peer["routes"], peer["advertised"]),
                }
            );
        }
        for problem in status["problems"].as_array().into_iter().flatten() {
            let _ = writeln!(sessions, "{:<8} problem: {}", node.name, problem.as_str().unwrap_or_default());
        }
    }
    if !sessions.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<8} {:<12} {:<8} {:<10} {:<12} {:<6} ROUTES",
            "NODE", "PEER", "IS", "TYPE", "STATE", "SINCE"
        );
        out += &sessions;
    }
    let _ = writeln!(out, "\n{:<10} {:<8} IP", "POD", "NODE");
    for pod in &state.pods {
        let ipv6 = pod.ipv6.as_deref().map(|a| format!("  {a}")).unwrap_or_default();
        let _ = writeln!(out, "{:<10} {:<8} {}{ipv6}", pod.name, state.nodes[pod.node].name, pod.ip);
    }
    out
}
