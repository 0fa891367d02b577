//! BGPFilter: import and export rules a BGPPeer adds in front of brindle's defaults, as in
//! Calico. The first rule that matches a prefix decides; a prefix no rule matches is treated
//! as without the filter (imported only inside the pools; exported inside the pools and the
//! advertised service ranges).

use ipnetwork::IpNetwork;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::validation::is_interface_pattern;
use super::{Spec, Validator};

/// The BGPFilter spec: ordered rules per direction and family.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BgpFilter {
    /// Rules for IPv4 prefixes sent to the peer.
    #[serde(default, rename = "exportV4", skip_serializing_if = "Vec::is_empty")]
    pub export_v4: Vec<BgpFilterRule>,
    /// Rules for IPv4 prefixes received from the peer.
    #[serde(default, rename = "importV4", skip_serializing_if = "Vec::is_empty")]
    pub import_v4: Vec<BgpFilterRule>,
    /// Rules for IPv6 prefixes sent to the peer.
    #[serde(default, rename = "exportV6", skip_serializing_if = "Vec::is_empty")]
    pub export_v6: Vec<BgpFilterRule>,
    /// Rules for IPv6 prefixes received from the peer.
    #[serde(default, rename = "importV6", skip_serializing_if = "Vec::is_empty")]
    pub import_v6: Vec<BgpFilterRule>,
}

/// One rule: which prefixes it matches and what happens to them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BgpFilterRule {
    /// Accept or Reject.
    pub action: FilterAction,
    /// How `cidr` is compared with a prefix; required with `cidr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_operator: Option<MatchOperator>,
    /// The range compared with; without it the rule matches every prefix of its family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub cidr: Option<IpNetwork>,
    /// With `In`/`NotIn`: only prefixes this long count as in the range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_length: Option<PrefixLength>,
    /// Only routes of this source (`RemotePeers`: learned from BGP peers, not the node's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<RouteSource>,
    /// Only routes whose next hop is on an interface of this name; `*` and `?` are wildcards
    /// (`eth*`, `*.calico`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
}

/// Where a route comes from, as a BGPFilter rule tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RouteSource {
    /// Learned from a BGP peer.
    RemotePeers,
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FilterAction {
    /// Import or export the prefix.
    Accept,
    /// Drop it.
    Reject,
}

/// How a rule's `cidr` is compared with a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MatchOperator {
    /// The prefix is exactly `cidr`.
    Equal,
    /// The prefix is anything but `cidr`.
    NotEqual,
    /// The prefix lies inside `cidr` (or is it).
    In,
    /// The prefix lies outside `cidr`.
    NotIn,
}

/// Bounds on a prefix's length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrefixLength {
    /// Shortest (default: the cidr's own length).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u8>,
    /// Longest (default: 32 or 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u8>,
}

impl PrefixLength {
    /// The shortest and longest lengths with the defaults filled in: `cidr`'s own length, and
    /// the family's longest (`v6`: 128, else 32).
    fn bounds(self, cidr: IpNetwork, v6: bool) -> (u8, u8) {
        (self.min.unwrap_or(cidr.prefix()), self.max.unwrap_or(if v6 { 128 } else { 32 }))
    }
}

impl BgpFilterRule {
    /// The range, the length bounds and whether the match is negated, for the rule's family
    /// (`v6`): what a prefix filter needs.
    pub fn matching(&self, v6: bool) -> (IpNetwork, u8, u8, bool) {
        let longest = if v6 { 128 } else { 32 };
        let Some(cidr) = self.cidr else {
            let everything = if v6 { "::/0" } else { "0.0.0.0/0" };
            return (everything.parse().expect("a valid network"), 0, longest, false);
        };
        let (min, max) = match self.match_operator {
            Some(MatchOperator::Equal | MatchOperator::NotEqual) => (cidr.prefix(), cidr.prefix()),
            Some(MatchOperator::In | MatchOperator::NotIn) | None => {
                self.prefix_length.unwrap_or_default().bounds(cidr, v6)
            }
        };
        (cidr, min, max, matches!(self.match_operator, Some(MatchOperator::NotEqual | MatchOperator::NotIn)))
    }
}

impl Spec for BgpFilter {
    const KIND: &'static str = "BGPFilter";
    const PLURAL: &'static str = "bgpfilters";

    fn validate(&self, v: &mut Validator) {
        let lists = [
            ("exportV4", &self.export_v4, false),
            ("importV4", &self.import_v4, false),
            ("exportV6", &self.export_v6, true),
            ("importV6", &self.import_v6, true),
        ];
        for (list, rules, v6) in lists {
            for (i, rule) in rules.iter().enumerate() {
                rule.validate(&format!("spec.{list}[{i}]"), v6, v);
            }
        }
    }
}

impl BgpFilterRule {
    fn validate(&self, at: &str, v6: bool, v: &mut Validator) {
        if let Some(interface) = &self.interface {
            let usable = is_interface_pattern(interface);
            v.require(
                usable,
                &format!("{at}.interface"),
                interface,
                "must be an interface name or glob (eth*, *.calico)",
            );
        }
        let Some(cidr) = self.cidr else {
            v.require(self.match_operator.is_none(), &format!("{at}.matchOperator"), "", "needs a cidr to compare");
            v.require(self.prefix_length.is_none(), &format!("{at}.prefixLength"), "", "needs a cidr");
            return;
        };
        let family = if v6 { "IPv6" } else { "IPv4" };
        v.require(cidr.is_ipv6() == v6, &format!("{at}.cidr"), cidr, &format!("must be an {family} network here"));
        v.network_address(&format!("{at}.cidr"), &cidr);
        v.require(self.match_operator.is_some(), &format!("{at}.matchOperator"), "", "is required with cidr");
        if let Some(bounds) = self.prefix_length {
            v.require(
                matches!(self.match_operator, Some(MatchOperator::In | MatchOperator::NotIn)),
                &format!("{at}.prefixLength"),
                "",
                "works with matchOperator In or NotIn only",
            );
            let longest = if v6 { 128 } else { 32 };
            let (min, max) = bounds.bounds(cidr, v6);
            v.require(
                cidr.prefix() <= min && min <= max && max <= longest,
                &format!("{at}.prefixLength"),
                format!("{min}-{max}"),
                &format!("must satisfy {} <= min <= max <= {longest}", cidr.prefix()),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::Resource;

    fn problems(filter: BgpFilter) -> String {
        Resource::new("f", filter).validate().map(|_| String::new()).unwrap_or_else(|e| e.to_string())
    }

    fn rule(op: Option<MatchOperator>, cidr: Option<&str>) -> BgpFilterRule {
        BgpFilterRule {
            action: FilterAction::Accept,
            match_operator: op,
            cidr: cidr.map(|c| c.parse().unwrap()),
            prefix_length: None,
            source: None,
            interface: None,
        }
    }

    #[test]
    fn calicos_filter_yaml_parses() {
        let text = "apiVersion: brindle.io/v1\nkind: BGPFilter\nmetadata: {name: upstream}\nspec:\n  importV4:\n    \
                    - {action: Accept, matchOperator: In, cidr: 192.168.77.0/24, prefixLength: {max: 26}}\n    \
                    - {action: Reject, source: RemotePeers, interface: '*.calico'}\n";
        let docs = crate::resource::parse_documents(text).unwrap();
        let crate::resource::AnyResource::BgpFilter(filter) = &docs[0] else { panic!("{docs:?}") };
        assert_eq!(filter.spec.import_v4.len(), 2);
        assert_eq!(filter.spec.import_v4[0].matching(false), ("192.168.77.0/24".parse().unwrap(), 24, 26, false));
        assert_eq!(filter.spec.import_v4[1].matching(false), ("0.0.0.0/0".parse().unwrap(), 0, 32, false));
        assert_eq!(filter.spec.import_v4[1].source, Some(RouteSource::RemotePeers));
        assert_eq!(filter.spec.import_v4[1].interface.as_deref(), Some("*.calico"));
        assert_eq!(problems(filter.spec.clone()), "");
    }

    #[test]
    fn operators_become_ranges() {
        let net = |s: &str| s.parse::<IpNetwork>().unwrap();
        let r = rule(Some(MatchOperator::NotEqual), Some("10.1.0.0/16"));
        assert_eq!(r.matching(false), (net("10.1.0.0/16"), 16, 16, true));
        let r = rule(Some(MatchOperator::NotIn), Some("fd00::/48"));
        assert_eq!(r.matching(true), (net("fd00::/48"), 48, 128, true));
    }

    #[test]
    fn rules_of_the_wrong_family_or_shape_are_named() {
        let filter = BgpFilter {
            import_v4: vec![rule(Some(MatchOperator::In), Some("fd00::/48")), rule(None, Some("10.0.0.0/8"))],
            export_v6: vec![
                rule(Some(MatchOperator::Equal), None),
                BgpFilterRule { interface: Some("eth 0".into()), ..rule(None, None) },
                BgpFilterRule {
                    prefix_length: Some(PrefixLength { min: Some(40), max: None }),
                    ..rule(Some(MatchOperator::In), Some("fd00::/48"))
                },
            ],
            ..BgpFilter::default()
        };
        let err = problems(filter);
        assert!(err.contains("spec.importV4[0].cidr \"fd00::/48\": must be an IPv4 network here"), "{err}");
        assert!(err.contains("spec.importV4[1].matchOperator: is required with cidr"), "{err}");
        assert!(err.contains("spec.exportV6[0].matchOperator: needs a cidr to compare"), "{err}");
        assert!(err.contains("spec.exportV6[1].interface \"eth 0\": must be an interface name"), "{err}");
        assert!(err.contains("spec.exportV6[2].prefixLength \"40-128\": must satisfy 48 <= min"), "{err}");
    }
}
