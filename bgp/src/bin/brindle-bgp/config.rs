//! The TOML configuration of `brindle-bgp run`, and its conversion into speaker settings.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context, bail};
use brindle_bgp::attrs::PathAttrs;
use brindle_bgp::rib::PrefixFilter;
use brindle_bgp::speaker::{PeerSpec, SpeakerConfig};
use ipnetwork::IpNetwork;
use serde::Deserialize;

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 179))
}

fn default_socket() -> PathBuf {
    "/run/brindle-bgp.sock".into()
}

fn default_restart() -> u16 {
    120
}

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    asn: u32,
    router_id: Ipv4Addr,
    #[serde(default = "default_listen")]
    listen: SocketAddr,
    #[serde(default = "default_socket")]
    pub control_socket: PathBuf,
    #[serde(default)]
    cluster_id: Option<Ipv4Addr>,
    /// Seconds peers keep our routes while we restart; 0 turns graceful restart off.
    #[serde(default = "default_restart")]
    graceful_restart: u16,
    #[serde(default)]
    peers: Vec<Peer>,
    #[serde(default)]
    originate: Vec<Originate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Peer {
    address: IpAddr,
    asn: u32,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    passive: bool,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    route_reflector_client: bool,
    #[serde(default)]
    hold_time: Option<u16>,
    #[serde(default)]
    local_address: Option<IpAddr>,
    /// Accept only prefixes inside these ranges (default: everything).
    #[serde(default)]
    import: Option<Vec<IpNetwork>>,
    /// Send only prefixes inside these ranges (default: everything).
    #[serde(default)]
    export: Option<Vec<IpNetwork>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Originate {
    prefix: IpNetwork,
    #[serde(default)]
    next_hop: Option<IpAddr>,
    /// Communities: `aa:nn` (standard) or `aa:bb:cc` (large).
    #[serde(default)]
    communities: Vec<String>,
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &std::path::Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let config: Config =
            toml::from_str(&text).with_context(|| format!("{} is not a valid configuration", path.display()))?;
        for p in &config.peers {
            if p.hold_time.is_some_and(|h| h == 1 || h == 2) {
                bail!("peer {}: hold_time must be 0 or at least 3", p.address);
            }
        }
        for o in &config.originate {
            if o.prefix.network() != o.prefix.ip() {
                bail!(
                    "originate {}: host bits are set (did you mean {}/{}?)",
                    o.prefix,
                    o.prefix.network(),
                    o.prefix.prefix()
                );
            }
        }
        Ok(config)
    }

    pub fn speaker(&self) -> SpeakerConfig {
        SpeakerConfig {
            asn: self.asn,
            router_id: self.router_id,
            listen: vec![self.listen],
            cluster_id: self.cluster_id,
            graceful_restart: (self.graceful_restart > 0).then_some(self.graceful_restart),
            forwarding_preserved: false,
            hold_expiry_keeps_routes: true,
        }
    }

    pub fn peers(&self) -> Vec<PeerSpec> {
        self.peers
            .iter()
            .map(|p| {
                let mut spec = PeerSpec::new(p.address, p.asn);
                spec.port = p.port.unwrap_or(179);
                spec.passive = p.passive;
                spec.password = p.password.clone();
                spec.rr_client = p.route_reflector_client;
                spec.hold_time = p.hold_time.unwrap_or(90);
                spec.local_address = p.local_address;
                spec.import = p.import.as_deref().map_or_else(PrefixFilter::default, PrefixFilter::only);
                spec.export = p.export.as_deref().map_or_else(PrefixFilter::default, PrefixFilter::only);
                spec
            })
            .collect()
    }

    pub fn originations(&self) -> anyhow::Result<Vec<(IpNetwork, PathAttrs)>> {
        self.originate
            .iter()
            .map(|o| {
                let mut attrs = PathAttrs::local(o.next_hop);
                for c in &o.communities {
                    attrs.add_community(c).map_err(anyhow::Error::msg)?;
                }
                Ok((o.prefix, attrs))
            })
            .collect()
    }
}
