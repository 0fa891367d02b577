//! The TOML configuration of `brindle-bgp run`, and its conversion into speaker settings.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use brindle_bgp::attrs::PathAttrs;
use brindle_bgp::rib::PrefixFilter;
use brindle_bgp::speaker::{BfdSpec, LimitAction, PeerSpec, PrefixLimit, SpeakerConfig};
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
    /// Seconds between KEEPALIVEs (default: a third of the hold time).
    #[serde(default)]
    keepalive_time: Option<u16>,
    /// GTSM (RFC 5082): the peer is this many hops away (1: directly connected).
    #[serde(default)]
    ttl_security: Option<u8>,
    /// Our AS toward this peer, when not `asn`.
    #[serde(default)]
    local_asn: Option<u32>,
    /// How often our AS may appear in a received AS_PATH (allowas-in; default 0).
    #[serde(default)]
    allow_local_as: u8,
    #[serde(default)]
    local_address: Option<IpAddr>,
    /// Accept only prefixes inside these ranges (default: everything).
    #[serde(default)]
    import: Option<Vec<IpNetwork>>,
    /// Send only prefixes inside these ranges (default: everything).
    #[serde(default)]
    export: Option<Vec<IpNetwork>>,
    /// The most prefixes the peer may have here (default: no limit).
    #[serde(default)]
    max_prefixes: Option<u32>,
    /// Passing `max_prefixes` only warns (default: the session ends with Cease 6/1).
    #[serde(default)]
    max_prefixes_warn_only: bool,
    /// Seconds before a peer that passed `max_prefixes` is taken back.
    #[serde(default = "default_limit_restart")]
    max_prefixes_restart: u64,
    /// A BFD session with the peer (`bfd = {}` for the defaults).
    #[serde(default)]
    bfd: Option<Bfd>,
}

/// A peer's BFD session: RFC 5880 asynchronous mode, single hop.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Bfd {
    /// How often we send once Up (default 300 ms).
    #[serde(default, with = "humantime_serde")]
    min_tx: Option<std::time::Duration>,
    /// How often we can take the peer's packets (default 300 ms).
    #[serde(default, with = "humantime_serde")]
    min_rx: Option<std::time::Duration>,
    /// Packets missed before the path is declared down (default 3).
    #[serde(default)]
    multiplier: Option<u8>,
    /// Keep the peer's routes as stale when BFD goes down, if graceful restart was negotiated.
    #[serde(default)]
    graceful: bool,
}

impl Bfd {
    fn spec(&self) -> BfdSpec {
        BfdSpec {
            timing: brindle_bgp::bfd::Config::or_defaults(self.min_tx, self.min_rx, self.multiplier),
            graceful: self.graceful,
        }
    }
}

fn default_limit_restart() -> u64 {
    60
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

/// A configuration that cannot be used, in words naming the field (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// Why `asn` cannot be an AS number, if it cannot.
fn unusable_asn(asn: u32) -> Option<&'static str> {
    match asn {
        0 => Some("0 is reserved (RFC 7607)"),
        23456 => Some("23456 is AS_TRANS, reserved (RFC 6793)"),
        _ => None,
    }
}

/// Why a peer cannot be at `ip`, if it cannot.
fn unusable_peer(ip: IpAddr) -> Option<&'static str> {
    match ip {
        _ if ip.is_unspecified() => Some("is unspecified"),
        _ if ip.is_multicast() => Some("is a multicast address"),
        IpAddr::V4(a) if a.is_broadcast() => Some("is the broadcast address"),
        _ => None,
    }
}

impl Config {
    /// Reads and checks a configuration file; every error names the file and the field.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let fail = |what: String| ConfigError(format!("{}: {what}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
        let config: Config = toml::from_str(&text).map_err(|e| fail(format!("not a valid configuration: {e}")))?;
        config.check().map_err(fail)?;
        Ok(config)
    }

    /// The rules TOML cannot express.
    fn check(&self) -> Result<(), String> {
        if let Some(why) = unusable_asn(self.asn) {
            return Err(format!("asn: {why}"));
        }
        if self.router_id.is_unspecified() {
            return Err("router_id: 0.0.0.0 is not a BGP identifier (RFC 6286: it must be nonzero)".into());
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.peers {
            let peer = format!("peer {}", p.address);
            if !seen.insert(p.address) {
                return Err(format!("{peer}: listed twice; give each peer once"));
            }
            if let Some(why) = unusable_peer(p.address) {
                return Err(format!("{peer}: address {why}"));
            }
            if let Some(why) = unusable_asn(p.asn) {
                return Err(format!("{peer}: asn: {why}"));
            }
            if let Some(why) = p.local_asn.and_then(unusable_asn) {
                return Err(format!("{peer}: local_asn: {why}"));
            }
            if p.hold_time.is_some_and(|h| h == 1 || h == 2) {
                return Err(format!("{peer}: hold_time must be 0 or at least 3"));
            }
            if p.keepalive_time == Some(0) {
                return Err(format!("{peer}: keepalive_time must be at least 1 (seconds)"));
            }
            if p.ttl_security == Some(0) {
                return Err(format!("{peer}: ttl_security must be 1-255 hops"));
            }
            if p.port == Some(0) {
                return Err(format!("{peer}: port must be 1-65535"));
            }
            if p.max_prefixes == Some(0) {
                return Err(format!("{peer}: max_prefixes must be at least 1 (leave it out for no limit)"));
            }
            if let Some(bfd) = &p.bfd {
                let timing = bfd.spec().timing;
                let ms = std::time::Duration::from_millis(1);
                if timing.desired_min_tx < ms || timing.required_min_rx < ms {
                    return Err(format!("{peer}: bfd: min_tx and min_rx must be at least 1ms"));
                }
                if timing.detect_mult == 0 {
                    return Err(format!("{peer}: bfd: multiplier must be 1-255"));
                }
            }
            if let Some(local) = p.local_address
                && local.is_ipv4() != p.address.is_ipv4()
            {
                return Err(format!("{peer}: local_address {local} is not of the peer's address family"));
            }
        }
        for o in &self.originate {
            for c in &o.communities {
                PathAttrs::local(None)
                    .add_community(c)
                    .map_err(|e| format!("originate {}: communities: {e}", o.prefix))?;
            }
            if o.prefix.network() != o.prefix.ip() {
                return Err(format!(
                    "originate {}: host bits are set (did you mean {}/{}?)",
                    o.prefix,
                    o.prefix.network(),
                    o.prefix.prefix()
                ));
            }
        }
        Ok(())
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
            // Nothing here installs routes: the best path is all it needs.
            max_paths: 1,
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
                spec.keepalive_time = p.keepalive_time;
                spec.ttl_security = p.ttl_security;
                spec.local_as = p.local_asn;
                spec.allow_local_as = p.allow_local_as;
                spec.local_address = p.local_address;
                spec.import = p.import.as_deref().map_or_else(PrefixFilter::default, PrefixFilter::only);
                spec.export = p.export.as_deref().map_or_else(PrefixFilter::default, PrefixFilter::only);
                spec.prefix_limit = p.max_prefixes.map(|max| PrefixLimit {
                    max,
                    action: if p.max_prefixes_warn_only {
                        LimitAction::Warn
                    } else {
                        LimitAction::Restart(std::time::Duration::from_secs(p.max_prefixes_restart))
                    },
                });
                spec.bfd = p.bfd.as_ref().map(Bfd::spec);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn check(toml: &str) -> Result<(), String> {
        toml::from_str::<Config>(toml).map_err(|e| e.to_string())?.check()
    }

    const PEER: &str = "[[peers]]\naddress = \"10.0.0.2\"\nasn = 65002\n";

    #[test]
    fn unusable_values_are_refused_by_field() {
        let base = "asn = 65001\nrouter_id = \"10.0.0.1\"\n";
        assert_eq!(check(&format!("{base}{PEER}")), Ok(()));
        let cases = [
            ("asn = 0\nrouter_id = \"10.0.0.1\"\n", "asn: 0 is reserved"),
            ("asn = 65001\nrouter_id = \"0.0.0.0\"\n", "router_id: 0.0.0.0 is not a BGP identifier"),
            (&format!("{base}{PEER}{PEER}"), "peer 10.0.0.2: listed twice"),
            (
                &format!("{base}[[peers]]\naddress = \"224.0.0.5\"\nasn = 65002\n"),
                "peer 224.0.0.5: address is a multicast",
            ),
            (&format!("{base}[[peers]]\naddress = \"10.0.0.3\"\nasn = 0\n"), "peer 10.0.0.3: asn: 0 is reserved"),
            (
                &format!("{base}[[originate]]\nprefix = \"10.9.0.0/24\"\ncommunities = [\"gold\"]\n"),
                "originate 10.9.0.0/24: communities:",
            ),
            (
                &format!("{base}[[peers]]\naddress = \"10.0.0.3\"\nasn = 65002\nlocal_address = \"fd00::1\"\n"),
                "local_address fd00::1 is not of the peer's address family",
            ),
            (&format!("{base}{PEER}bfd = {{ min_rx = \"0ms\" }}\n"), "peer 10.0.0.2: bfd: min_tx and min_rx must be"),
            (&format!("{base}{PEER}bfd = {{ multiplier = 0 }}\n"), "peer 10.0.0.2: bfd: multiplier must be 1-255"),
            (&format!("{base}{PEER}ttl_security = 0\n"), "peer 10.0.0.2: ttl_security must be 1-255 hops"),
            (&format!("{base}{PEER}local_asn = 23456\n"), "peer 10.0.0.2: local_asn: 23456 is AS_TRANS"),
            (&format!("{base}{PEER}keepalive_time = 0\n"), "peer 10.0.0.2: keepalive_time must be at least 1"),
            (&format!("{base}{PEER}bfd = {{ interval = \"1s\" }}\n"), "unknown field `interval`"),
        ];
        for (toml, expected) in cases {
            let err = check(toml).unwrap_err();
            assert!(err.contains(expected), "{toml}: {err}");
        }
    }
}
