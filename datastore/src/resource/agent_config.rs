//! AgentConfiguration: the node agent's dataplane settings (Calico's FelixConfiguration).
//! `default` applies to the cluster, `node.<name>` overrides it for one node.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Spec, Validator};

/// The mark bit network policy gives a packet a policy allowed.
pub const POLICY_ALLOW_MARK: u32 = 0x10000;
/// The mark bit network policy gives a packet a policy passed to the next tier.
pub const POLICY_PASS_MARK: u32 = 0x20000;
/// Network policy's mark bits, which other marks must leave alone.
const POLICY_MARKS: u32 = POLICY_ALLOW_MARK | POLICY_PASS_MARK;

/// How loudly a component logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum LogSeverity {
    /// Everything.
    Debug,
    /// Normal operation.
    Info,
    /// Problems only.
    Warning,
    /// Failures only.
    Error,
}

impl LogSeverity {
    /// The level as a `tracing` filter directive.
    pub fn directive(self) -> &'static str {
        match self {
            LogSeverity::Debug => "debug",
            LogSeverity::Info => "info",
            LogSeverity::Warning => "warn",
            LogSeverity::Error => "error",
        }
    }
}

/// Which iptables the agent drives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum IptablesBackend {
    /// Use whichever the host already uses.
    #[default]
    Auto,
    /// iptables-legacy.
    Legacy,
    /// iptables-nft.
    NFT,
}

/// What happens to traffic from a workload to its own host once the workload's egress policy
/// allowed it (Calico's DefaultEndpointToHostAction).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum EndpointToHostAction {
    /// Accepted.
    #[default]
    Accept,
    /// Dropped.
    Drop,
    /// Left to the host's own INPUT rules.
    Return,
}

/// Where the agent learns routes between nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum BgpBackend {
    /// No BGP: routes come from the datastore (which node owns which block).
    #[default]
    None,
    /// The embedded BGP speaker.
    Embedded,
    /// BIRD 2, configured by the agent.
    #[serde(rename = "BIRD")]
    Bird,
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The AgentConfiguration spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AgentConfiguration {
    /// How often routes are compared with the kernel's and repaired.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub route_refresh_interval: Duration,
    /// How often the iptables chains are compared and repaired.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub iptables_refresh_interval: Duration,
    /// Which iptables to program.
    pub iptables_backend: IptablesBackend,
    /// What happens to workload-to-host traffic once the workload's policy allowed it.
    pub default_endpoint_to_host_action: EndpointToHostAction,
    /// Where routes between nodes come from: `None`, `Embedded` or `BIRD`.
    pub bgp_backend: BgpBackend,
    /// The uplink MTU to derive pod and tunnel MTUs from; 0 detects it.
    #[serde(rename = "mtu")]
    pub mtu: u32,
    /// VXLAN network identifier.
    #[serde(rename = "vxlanVNI")]
    pub vxlan_vni: u32,
    /// VXLAN UDP port.
    pub vxlan_port: u16,
    /// Whether pod traffic between nodes is encrypted with WireGuard (IPv4): each node makes
    /// a key pair, publishes its public key on its Node, and sends to every node that
    /// published one through the WireGuard device; nodes without a key are reached
    /// unencrypted.
    pub wireguard_enabled: bool,
    /// The WireGuard device's name.
    pub wireguard_interface_name: String,
    /// The WireGuard device's UDP port (every node's: peers are reached on it).
    pub wireguard_listening_port: u16,
    /// The WireGuard device's MTU; 0 takes the uplink's less WireGuard's overhead (60).
    #[serde(rename = "wireguardMTU")]
    pub wireguard_mtu: u32,
    /// Whether pods' IPv6 traffic between nodes is encrypted too, through a second device
    /// with its own key pair (published as the Node's `wireguardPublicKeyV6`), port and MTU.
    #[serde(rename = "wireguardEnabledV6")]
    pub wireguard_enabled_v6: bool,
    /// The IPv6 WireGuard device's name.
    #[serde(rename = "wireguardInterfaceNameV6")]
    pub wireguard_interface_name_v6: String,
    /// The IPv6 WireGuard device's UDP port (a device listens on both families, so not the
    /// IPv4 device's).
    #[serde(rename = "wireguardListeningPortV6")]
    pub wireguard_listening_port_v6: u16,
    /// The IPv6 WireGuard device's MTU; 0 takes the uplink's less WireGuard's IPv6 overhead
    /// (80).
    #[serde(rename = "wireguardMTUV6")]
    pub wireguard_mtu_v6: u32,
    /// The routing table of WireGuard's routes (each family has its own table of this index) (the other nodes' pods into the device).
    pub wireguard_routing_table_index: u32,
    /// The priority of the rule that sends every packet without `wireguardFirewallMark` to
    /// WireGuard's table, ahead of the main table (32766).
    pub wireguard_routing_rule_priority: u32,
    /// The firewall mark (one bit) WireGuard puts on its own encrypted packets, which the
    /// rule leaves to the main table. Bits 0x10000 and 0x20000 are network policy's.
    pub wireguard_firewall_mark: u32,
    /// The name prefix of host-side pod interfaces.
    pub interface_prefix: String,
    /// How the node's IPv4 address is found: `first-found`, `interface=REGEX`,
    /// `cidr=CIDR[,CIDR]`, `can-reach=ADDRESS`, or `none`.
    #[serde(rename = "ipv4AutodetectionMethod")]
    pub ipv4_autodetection_method: String,
    /// The same for IPv6.
    #[serde(rename = "ipv6AutodetectionMethod")]
    pub ipv6_autodetection_method: String,
    /// The agent's log level; unset, the agent logs warnings and errors only (its `--log`
    /// flag, when given, wins).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_severity_screen: Option<LogSeverity>,
    /// The health endpoint's port (on 127.0.0.1).
    pub health_port: u16,
    /// Whether Prometheus metrics are served.
    pub prometheus_metrics_enabled: bool,
    /// The metrics port.
    pub prometheus_metrics_port: u16,
}

impl Default for AgentConfiguration {
    fn default() -> Self {
        AgentConfiguration {
            route_refresh_interval: secs(90),
            iptables_refresh_interval: secs(90),
            iptables_backend: IptablesBackend::Auto,
            default_endpoint_to_host_action: EndpointToHostAction::Accept,
            bgp_backend: BgpBackend::None,
            mtu: 0,
            vxlan_vni: 4096,
            vxlan_port: 4789,
            wireguard_enabled: false,
            wireguard_interface_name: "wg.brindle".into(),
            wireguard_listening_port: 51820,
            wireguard_mtu: 0,
            wireguard_enabled_v6: false,
            wireguard_interface_name_v6: "wg-v6.brindle".into(),
            wireguard_listening_port_v6: 51821,
            wireguard_mtu_v6: 0,
            wireguard_routing_table_index: 1,
            wireguard_routing_rule_priority: 99,
            wireguard_firewall_mark: 0x100000,
            interface_prefix: "brin".into(),
            ipv4_autodetection_method: "first-found".into(),
            ipv6_autodetection_method: "none".into(),
            log_severity_screen: None,
            health_port: 9099,
            prometheus_metrics_enabled: true,
            prometheus_metrics_port: 9091,
        }
    }
}

/// Checks an autodetection method's form; returns the reason when it is wrong.
fn check_autodetection(method: &str) -> Result<(), String> {
    let (name, arg) = method.split_once('=').unwrap_or((method, ""));
    match (name, arg.is_empty()) {
        ("first-found" | "none", true) => Ok(()),
        ("interface" | "skip-interface", false) => Ok(()),
        ("cidr", false) => arg
            .split(',')
            .try_for_each(|c| c.trim().parse::<ipnetwork::IpNetwork>().map(drop).map_err(|e| format!("\"{c}\": {e}"))),
        ("can-reach", false) => {
            arg.parse::<std::net::IpAddr>().map(drop).map_err(|_| format!("\"{arg}\" is not an IP address"))
        }
        _ => Err(
            "expected first-found, interface=REGEX, skip-interface=REGEX, cidr=CIDR[,CIDR], can-reach=ADDRESS or none"
                .into(),
        ),
    }
}

impl Spec for AgentConfiguration {
    const KIND: &'static str = "AgentConfiguration";
    const PLURAL: &'static str = "agentconfigurations";

    fn validate(&self, v: &mut Validator) {
        for (field, interval) in [
            ("spec.routeRefreshInterval", self.route_refresh_interval),
            ("spec.iptablesRefreshInterval", self.iptables_refresh_interval),
        ] {
            v.require(
                interval >= Duration::from_secs(1),
                field,
                humantime_serde::re::humantime::format_duration(interval),
                "must be at least 1s",
            );
        }
        v.require(
            self.mtu == 0 || (576..=65535).contains(&self.mtu),
            "spec.mtu",
            self.mtu,
            "must be 0 (detect) or 576-65535",
        );
        v.require((1..1 << 24).contains(&self.vxlan_vni), "spec.vxlanVNI", self.vxlan_vni, "must be 1 to 16777215");
        v.require(self.vxlan_port != 0, "spec.vxlanPort", self.vxlan_port, "must be a port number 1-65535");
        for (field, port) in [
            ("spec.wireguardListeningPort", self.wireguard_listening_port),
            ("spec.wireguardListeningPortV6", self.wireguard_listening_port_v6),
        ] {
            v.require(port != 0, field, port, "must be a port number 1-65535");
        }
        v.require(
            self.wireguard_listening_port != self.wireguard_listening_port_v6,
            "spec.wireguardListeningPortV6",
            self.wireguard_listening_port_v6,
            "must differ from wireguardListeningPort (each device listens on both families)",
        );
        for (field, mtu, overhead) in
            [("spec.wireguardMTU", self.wireguard_mtu, 60), ("spec.wireguardMTUV6", self.wireguard_mtu_v6, 80)]
        {
            v.require(
                mtu == 0 || (1280..=65535).contains(&mtu),
                field,
                mtu,
                &format!("must be 0 (the uplink's less {overhead}) or 1280-65535"),
            );
        }
        for (field, name) in [
            ("spec.wireguardInterfaceName", &self.wireguard_interface_name),
            ("spec.wireguardInterfaceNameV6", &self.wireguard_interface_name_v6),
        ] {
            v.require(
                (1..=15).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)),
                field,
                name,
                "must be 1-15 letters, digits, '-', '.' or '_' (the kernel's limit on names)",
            );
        }
        v.require(
            self.wireguard_interface_name != self.wireguard_interface_name_v6,
            "spec.wireguardInterfaceNameV6",
            &self.wireguard_interface_name_v6,
            "must differ from wireguardInterfaceName",
        );
        let table = self.wireguard_routing_table_index;
        v.require(
            table != 0 && !(253..=255).contains(&table),
            "spec.wireguardRoutingTableIndex",
            table,
            "must be a table of its own: not 0, 253 (default), 254 (main) or 255 (local)",
        );
        v.require(
            (1..=32765).contains(&self.wireguard_routing_rule_priority),
            "spec.wireguardRoutingRulePriority",
            self.wireguard_routing_rule_priority,
            "must be 1-32765 (0 is the local table's rule, 32766 the main table's)",
        );
        let mark = self.wireguard_firewall_mark;
        v.require(
            mark.is_power_of_two() && mark & POLICY_MARKS == 0,
            "spec.wireguardFirewallMark",
            format!("{mark:#x}"),
            "must be a single bit, not 0x10000 or 0x20000 (network policy's)",
        );
        let prefix_ok = !self.interface_prefix.is_empty()
            && self.interface_prefix.len() <= 4
            && self.interface_prefix.chars().all(|c| c.is_ascii_alphanumeric());
        v.require(
            prefix_ok,
            "spec.interfacePrefix",
            &self.interface_prefix,
            "must be 1-4 letters or digits (the rest of the 15-character name is a hash)",
        );
        for (field, method) in [
            ("spec.ipv4AutodetectionMethod", &self.ipv4_autodetection_method),
            ("spec.ipv6AutodetectionMethod", &self.ipv6_autodetection_method),
        ] {
            if let Err(reason) = check_autodetection(method) {
                v.problem(field, method, reason);
            }
        }
        for (field, port) in
            [("spec.healthPort", self.health_port), ("spec.prometheusMetricsPort", self.prometheus_metrics_port)]
        {
            v.require(port != 0, field, port, "must be a port number 1-65535");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{Resource, from_value};

    #[test]
    fn empty_spec_gives_felix_like_defaults() {
        let config: Resource<AgentConfiguration> = from_value(serde_json::json!({
            "apiVersion": "brindle.io/v1", "kind": "AgentConfiguration",
            "metadata": {"name": "default"}, "spec": {"routeRefreshInterval": "30s"}
        }))
        .unwrap();
        assert_eq!(config.spec.route_refresh_interval, secs(30));
        assert_eq!((config.spec.vxlan_vni, config.spec.vxlan_port), (4096, 4789));
        assert_eq!(config.spec.interface_prefix, "brin");
        assert!(config.validate().is_ok());
    }

    #[test]
    fn autodetection_methods_are_checked() {
        for good in ["first-found", "interface=eth.*", "cidr=10.0.0.0/8,fd00::/8", "can-reach=8.8.8.8", "none"] {
            assert_eq!(check_autodetection(good), Ok(()), "{good}");
        }
        for bad in ["first", "interface=", "cidr=10.0.0/33", "can-reach=example"] {
            assert!(check_autodetection(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn out_of_range_values_are_named() {
        let spec = AgentConfiguration {
            vxlan_vni: 1 << 24,
            mtu: 100,
            interface_prefix: "toolong".into(),
            ..AgentConfiguration::default()
        };
        let err = Resource::new("default", spec).validate().unwrap_err().to_string();
        assert!(err.contains("spec.vxlanVNI \"16777216\""), "{err}");
        assert!(err.contains("spec.mtu \"100\""), "{err}");
        assert!(err.contains("spec.interfacePrefix \"toolong\""), "{err}");
        let spec = AgentConfiguration {
            wireguard_routing_table_index: 254,
            wireguard_routing_rule_priority: 32766,
            wireguard_firewall_mark: POLICY_ALLOW_MARK,
            ..AgentConfiguration::default()
        };
        let err = Resource::new("default", spec).validate().unwrap_err().to_string();
        assert!(err.contains("spec.wireguardRoutingTableIndex \"254\""), "{err}");
        assert!(err.contains("spec.wireguardRoutingRulePriority \"32766\""), "{err}");
        assert!(err.contains("spec.wireguardFirewallMark \"0x10000\""), "{err}");
        let clash = AgentConfiguration {
            wireguard_listening_port_v6: 51820,
            wireguard_interface_name_v6: "wg.brindle".into(),
            ..AgentConfiguration::default()
        };
        let err = Resource::new("default", clash).validate().unwrap_err().to_string();
        assert!(err.contains("spec.wireguardListeningPortV6 \"51820\""), "{err}");
        assert!(err.contains("spec.wireguardInterfaceNameV6 \"wg.brindle\""), "{err}");
        let two_bits = AgentConfiguration { wireguard_firewall_mark: 0x300000, ..AgentConfiguration::default() };
        assert!(Resource::new("default", two_bits).validate().is_err());
    }
}
