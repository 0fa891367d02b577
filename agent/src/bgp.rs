//! Glue between the calculation and the embedded speaker: which peers (the node-to-node
//! mesh), which prefixes to originate (this node's blocks and borrowed addresses), and the
//! learned best routes fed back into the calculation.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use brindle_bgp::attrs::PathAttrs;
use brindle_bgp::fsm::State;
use brindle_bgp::rib::PrefixFilter;
use brindle_bgp::speaker::{PeerSpec, RouteEvent, Speaker, SpeakerConfig};
use ipnetwork::IpNetwork;
use tokio::sync::watch;

use crate::calc::{Cluster, Learned, Me};

/// How long a starting agent waits for its peers before BGP alone decides its routes.
const CONVERGENCE_LIMIT: Duration = Duration::from_secs(30);

/// What BGP should be doing for a cluster snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The sessions.
    pub peers: Vec<PeerSpec>,
    /// The prefixes this node originates.
    pub originate: BTreeSet<IpNetwork>,
}

/// The plan for `me`: a session to every other node (opened by the lower address only, so
/// mesh sessions never collide), importing and exporting only prefixes inside pools.
pub fn plan(me: &Me, cluster: &Cluster) -> Plan {
    let pools: Vec<IpNetwork> = cluster.pools.iter().map(|p| p.spec.cidr).collect();
    let filter = PrefixFilter::only(&pools);
    let my_ip = me.ipv4.map(|n| n.ip());
    let mut peers = Vec::new();
    if cluster.bgp.node_to_node_mesh_enabled {
        for node in &cluster.nodes {
            if node.metadata.name == me.name {
                continue;
            }
            let Some(address) = node.spec.ipv4().map(|n| n.ip()) else { continue };
            let asn = node.spec.bgp.as_ref().and_then(|b| b.as_number).unwrap_or(cluster.bgp.as_number);
            let mut peer = PeerSpec::new(address, asn);
            peer.port = cluster.bgp.listen_port;
            peer.passive = my_ip.is_some_and(|mine| mine > address);
            peer.local_address = my_ip;
            peer.import = filter.clone();
            peer.export = filter.clone();
            peers.push(peer);
        }
    }
    peers.sort_by_key(|p| p.address);
    let mut originate = BTreeSet::new();
    for block in &cluster.blocks {
        let in_exported_pool =
            cluster.pools.iter().any(|p| p.spec.cidr.contains(block.cidr.network()) && !p.spec.disable_bgp_export);
        if !in_exported_pool {
            continue;
        }
        if block.owner.as_deref() == Some(me.name.as_str()) {
            originate.insert(block.cidr);
        }
        for (ip, allocation) in block.allocations() {
            if allocation.node == me.name && block.owner.as_deref() != Some(me.name.as_str()) {
                originate.insert(IpNetwork::new(ip, if ip.is_ipv4() { 32 } else { 128 }).expect("host prefix"));
            }
        }
    }
    Plan { peers, originate }
}

/// The running speaker and what it was last told.
pub struct Bgp {
    speaker: Speaker,
    applied: Plan,
}

impl Bgp {
    /// Starts the speaker on `me`'s address. Returns it and the learned routes as they change.
    pub async fn start(me: &Me, cluster: &Cluster) -> anyhow::Result<(Bgp, watch::Receiver<Learned>)> {
        let Some(IpAddr::V4(router_id)) = me.ipv4.map(|n| n.ip()) else {
            anyhow::bail!("BGP needs the node's IPv4 address as its router ID")
        };
        let node = cluster.nodes.iter().find(|n| n.metadata.name == me.name);
        let node_bgp = node.and_then(|n| n.spec.bgp.as_ref());
        let config = SpeakerConfig {
            asn: node_bgp.and_then(|b| b.as_number).unwrap_or(cluster.bgp.as_number),
            router_id,
            listen: Some(SocketAddr::new(router_id.into(), cluster.bgp.listen_port)),
            cluster_id: node_bgp.and_then(|b| b.route_reflector_cluster_id),
            graceful_restart: Some(120),
            forwarding_preserved: true,
        };
        let speaker = Speaker::start(config).await?;
        let (tx, rx) = watch::channel(Learned::default());
        tokio::spawn(follow(speaker.clone(), tx));
        Ok((Bgp { speaker, applied: Plan::default() }, rx))
    }

    /// Tells the speaker what changed since the last plan.
    pub async fn apply(&mut self, plan: Plan) -> anyhow::Result<()> {
        if plan.peers != self.applied.peers {
            self.speaker.set_peers(plan.peers.clone()).await?;
        }
        for prefix in plan.originate.difference(&self.applied.originate) {
            self.speaker.originate(*prefix, PathAttrs::local(None)).await?;
        }
        for prefix in self.applied.originate.difference(&plan.originate) {
            self.speaker.withdraw(*prefix).await?;
        }
        self.applied = plan;
        Ok(())
    }

    /// Tells peers we are going, keeping our routes with them (graceful restart).
    pub async fn shutdown(&self) {
        let _ = self.speaker.shutdown("brindle-node stopping").await;
    }
}

/// Follows the speaker's best-route changes into `tx`, and marks convergence once every
/// peer has been up (or after [`CONVERGENCE_LIMIT`]).
async fn follow(speaker: Speaker, tx: watch::Sender<Learned>) {
    let mut events = speaker.subscribe();
    let started = Instant::now();
    let mut routes: BTreeMap<IpNetwork, IpAddr> = BTreeMap::new();
    let mut converged = false;
    let mut all_up_since: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(RouteEvent::Best { prefix, attrs, peer: Some(_) }) => {
                    match attrs.next_hop {
                        Some(next_hop) => routes.insert(prefix, next_hop),
                        None => routes.remove(&prefix),
                    };
                }
                Ok(RouteEvent::Best { prefix, peer: None, .. }) | Ok(RouteEvent::Unreachable(prefix)) => {
                    routes.remove(&prefix);
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    // Start over from the speaker's table.
                    tracing::warn!(missed, "fell behind the speaker's route events; re-reading its table");
                    if let Ok(table) = speaker.routes().await {
                        routes = table
                            .into_iter()
                            .filter(|r| r.best && r.peer.is_some())
                            .filter_map(|r| r.attrs.next_hop.map(|nh| (r.prefix, nh)))
                            .collect();
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            _ = tick.tick(), if !converged => {
                // Every peer up, and a moment for their tables to arrive.
                let all_up = speaker.status().await.is_ok_and(|peers| peers.iter().all(|p| p.state == State::Established));
                all_up_since = if all_up { all_up_since.or(Some(Instant::now())) } else { None };
                converged = all_up_since.is_some_and(|t| t.elapsed() >= Duration::from_secs(1))
                    || started.elapsed() > CONVERGENCE_LIMIT;
                if converged {
                    tracing::info!(after = ?started.elapsed(), "BGP converged");
                }
            }
        }
        let learned = Learned { routes: routes.clone(), converged };
        if *tx.borrow() != learned && tx.send(learned).is_err() {
            return;
        }
    }
}
