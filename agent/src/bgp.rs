//! The embedded speaker, driven by the plan (`crate::calc::bgp`): sessions and originated
//! prefixes made to match it, passwords read from their files, and the learned best routes
//! fed back into the calculation.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use brindle_bgp::attrs::PathAttrs;
use brindle_bgp::fsm::State;
use brindle_bgp::speaker::{PeerSpec, RouteEvent, Speaker, SpeakerConfig};
use ipnetwork::IpNetwork;
use tokio::sync::Notify;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::calc::bgp::Plan;
use crate::calc::{Cluster, LearnedChanges, Me};

/// How long a starting agent waits for its peers before BGP alone decides its routes.
const CONVERGENCE_LIMIT: Duration = Duration::from_secs(30);

/// The running speaker and what it was last told.
pub struct Bgp {
    speaker: Speaker,
    applied: Plan,
    /// The peers last given to the speaker, passwords filled in.
    applied_peers: Vec<PeerSpec>,
}

/// Reads the TCP MD5 password of the peer at `address` from `file` (surrounding white space,
/// such as a final newline, is not part of it).
pub fn read_password(address: IpAddr, file: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("reading the BGP password of {address} from {}: {e}", file.display()))?;
    Ok(text.trim().to_owned())
}

/// BGP's best-route changes on their way from the speaker to the agent's loop: coalesced, so
/// a burst of events is one wake-up and a prefix that changed twice is taken in once, and never
/// a copy of the table.
#[derive(Debug, Default)]
pub struct LearnedFeed {
    pending: Mutex<LearnedChanges>,
    ready: Notify,
}

impl LearnedFeed {
    fn change(&self, change: impl FnOnce(&mut LearnedChanges)) {
        change(&mut self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        self.ready.notify_one();
    }

    /// Waits until something changed since the last [`LearnedFeed::take`] (at once when it
    /// already has).
    pub async fn changed(&self) {
        self.ready.notified().await;
    }

    /// What changed since the last time.
    pub fn take(&self) -> LearnedChanges {
        std::mem::take(&mut self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// One peer as `brindlectl node status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerReport {
    /// The peer's address.
    pub address: IpAddr,
    /// mesh, reflector, client, node or global.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The session state.
    pub state: String,
    /// Seconds since the epoch when it entered that state.
    pub since: u64,
    /// Why it last failed, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Routes accepted from it.
    pub routes: usize,
    /// Routes sent to it.
    pub advertised: usize,
    /// The BFD session's state (with why it is down), when the peer has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bfd: Option<String>,
}

impl Bgp {
    /// Starts the speaker on `me`'s addresses (IPv4, and IPv6 when the node has one).
    /// Returns it and the feed of its learned routes' changes.
    pub async fn start(me: &Me, cluster: &Cluster) -> anyhow::Result<(Bgp, Arc<LearnedFeed>)> {
        let Some(IpAddr::V4(router_id)) = me.ipv4.map(|n| n.ip()) else {
            anyhow::bail!("BGP needs the node's IPv4 address as its router ID")
        };
        let node = cluster.nodes.iter().find(|n| n.metadata.name == me.name);
        let node_bgp = node.and_then(|n| n.spec.bgp.as_ref());
        let config = SpeakerConfig {
            asn: node_bgp.and_then(|b| b.as_number).unwrap_or(cluster.bgp.as_number),
            router_id,
            listen: [me.ipv4, me.ipv6]
                .into_iter()
                .flatten()
                .map(|n| SocketAddr::new(n.ip(), cluster.bgp.listen_port))
                .collect(),
            cluster_id: node_bgp.and_then(|b| b.route_reflector_cluster_id),
            graceful_restart: Some(120),
            forwarding_preserved: true,
            // A node that goes silent is gone (an agent that restarts closes its sessions):
            // its routes leave the others within the hold time.
            hold_expiry_keeps_routes: false,
            max_paths: usize::from(cluster.bgp.max_paths),
        };
        let speaker = Speaker::start(config).await?;
        let feed = Arc::new(LearnedFeed::default());
        tokio::spawn(follow(speaker.clone(), Arc::clone(&feed)));
        Ok((Bgp { speaker, applied: Plan::default(), applied_peers: Vec::new() }, feed))
    }

    /// Tells the speaker what changed since the last plan. Passwords are read from their
    /// files every time, so a rotated secret reaches the session at the next resync. A peer
    /// whose password cannot be read keeps the session it had if that one was signed, and
    /// otherwise gets none (it must not go on unsigned); the error names it, and every other
    /// change is still applied.
    pub async fn apply(&mut self, plan: Plan) -> anyhow::Result<()> {
        let mut unreadable = Vec::new();
        let mut peers = Vec::with_capacity(plan.peers.len());
        for peer in &plan.peers {
            let Some(file) = plan.passwords.get(&peer.address) else {
                peers.push(peer.clone());
                continue;
            };
            match read_password(peer.address, file) {
                Ok(password) => peers.push(PeerSpec { password: Some(password), ..peer.clone() }),
                Err(e) => {
                    unreadable.push(format!("{e:#}"));
                    let signed = self.applied_peers.iter().find(|p| p.address == peer.address && p.password.is_some());
                    peers.extend(signed.cloned());
                }
            }
        }
        if peers != self.applied_peers {
            self.speaker.set_peers(peers.clone()).await?;
            self.applied_peers = peers;
        }
        for (prefix, communities) in &plan.originate {
            if self.applied.originate.get(prefix) == Some(communities) {
                continue;
            }
            let mut attrs = PathAttrs::local(None);
            for community in communities {
                attrs.add_community(community).map_err(anyhow::Error::msg)?;
            }
            self.speaker.originate(*prefix, attrs).await?;
        }
        for prefix in self.applied.originate.keys().filter(|p| !plan.originate.contains_key(p)) {
            self.speaker.withdraw(*prefix).await?;
        }
        self.applied = plan;
        if unreadable.is_empty() { Ok(()) } else { Err(anyhow::anyhow!(unreadable.join("; "))) }
    }

    /// Every peer's state.
    pub async fn report(&self) -> anyhow::Result<Vec<PeerReport>> {
        let peers = self.speaker.status().await?;
        Ok(peers
            .into_iter()
            .map(|p| PeerReport {
                address: p.address,
                kind: self.applied.kinds.get(&p.address).copied().unwrap_or("global"),
                state: format!("{:?}", p.state),
                since: p.since.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default(),
                reason: p.last_error,
                routes: p.prefixes_accepted,
                advertised: p.prefixes_advertised,
                bfd: p.bfd.map(|bfd| match bfd {
                    None => "unavailable".to_owned(),
                    Some(s) if s.state == brindle_bgp::bfd::State::Up => "Up".to_owned(),
                    Some(s) if s.diagnostic == brindle_bgp::bfd::Diagnostic::None => s.state.to_string(),
                    Some(s) => format!("{} ({})", s.state, s.diagnostic),
                }),
            })
            .collect())
    }

    /// Tells peers we are going, keeping our routes with them (graceful restart).
    pub async fn shutdown(&self) {
        let _ = self.speaker.shutdown("brindle-node stopping").await;
    }
}

/// Follows the speaker's best-route changes into `feed`, and marks convergence once every
/// peer has been up (or after [`CONVERGENCE_LIMIT`]). Stops when the agent lets go of the feed.
async fn follow(speaker: Speaker, feed: Arc<LearnedFeed>) {
    let mut events = speaker.subscribe();
    let started = Instant::now();
    let mut all_up_since: Option<Instant> = None;
    let mut converged = false;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            event = events.recv() => {
                // Everything already buffered is taken in at once, under one lock and one
                // wake-up (recv alone would hand over a budget's worth per turn of this task).
                let mut lagged = None;
                let mut closed = false;
                feed.change(|pending| {
                    let mut next = Some(event);
                    while let Some(event) = next.take() {
                        match event {
                            Ok(RouteEvent::Best { prefix, attrs, peer: Some(_), multipath }) => {
                                pending.routes.insert(prefix, attrs.next_hop);
                                pending.multipath.insert(prefix, multipath);
                            }
                            Ok(RouteEvent::Best { prefix, peer: None, .. }) | Ok(RouteEvent::Unreachable(prefix)) => {
                                pending.routes.insert(prefix, None);
                            }
                            Err(RecvError::Lagged(missed)) => lagged = Some(missed),
                            Err(RecvError::Closed) => closed = true,
                        }
                        next = match events.try_recv() {
                            Ok(event) => Some(Ok(event)),
                            Err(TryRecvError::Lagged(missed)) => Some(Err(RecvError::Lagged(missed))),
                            Err(TryRecvError::Empty) => None,
                            Err(TryRecvError::Closed) => Some(Err(RecvError::Closed)),
                        };
                    }
                });
                if closed {
                    return;
                }
                if let Some(missed) = lagged {
                    // Start over from the speaker's table.
                    tracing::warn!(missed, "fell behind the speaker's route events; re-reading its table");
                    if let Ok(table) = speaker.routes().await {
                        let table: HashMap<IpNetwork, IpAddr> = table
                            .into_iter()
                            .filter(|r| r.best && r.peer.is_some())
                            .filter_map(|r| r.attrs.next_hop.map(|nh| (r.prefix, nh)))
                            .collect();
                        feed.change(|pending| {
                            pending.routes.clear();
                            pending.table = Some(table);
                        });
                    }
                }
            }
            _ = tick.tick(), if !converged => {
                // Every peer up, and a moment for their tables to arrive.
                let all_up = speaker.status().await.is_ok_and(|peers| peers.iter().all(|p| p.state == State::Established));
                all_up_since = if all_up { all_up_since.or(Some(Instant::now())) } else { None };
                converged = all_up_since.is_some_and(|t| t.elapsed() >= Duration::from_secs(1))
                    || started.elapsed() > CONVERGENCE_LIMIT;
                if converged {
                    tracing::info!(after = ?started.elapsed(), "BGP converged");
                    feed.change(|pending| pending.converged = true);
                }
            }
        }
        if Arc::strong_count(&feed) == 1 {
            return;
        }
    }
}
