//! A route's path attributes as the RIB sees them, interned: routes that share attributes
//! share one reference-counted copy, as BIRD does, because memory per route is what decides
//! how many routes fit.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use rustc_hash::FxHashSet;

use crate::wire::attribute::{flag, type_code};
use crate::wire::{Aggregator, AsPath, Attribute, LargeCommunity, Origin, SegmentKind, Update, Value};

/// The attributes of a route.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathAttrs {
    /// ORIGIN.
    pub origin: Origin,
    /// AS_PATH (for 2-octet sessions already merged with AS4_PATH).
    pub as_path: AsPath,
    /// The next hop: NEXT_HOP for IPv4 routes, the global address of MP_REACH_NLRI for others.
    pub next_hop: Option<IpAddr>,
    /// The IPv6 link-local next hop, when one came along.
    pub link_local_next_hop: Option<Ipv6Addr>,
    /// MULTI_EXIT_DISC.
    pub med: Option<u32>,
    /// LOCAL_PREF.
    pub local_pref: Option<u32>,
    /// ATOMIC_AGGREGATE.
    pub atomic_aggregate: bool,
    /// AGGREGATOR.
    pub aggregator: Option<Aggregator>,
    /// COMMUNITIES.
    pub communities: Vec<u32>,
    /// LARGE_COMMUNITY.
    pub large_communities: Vec<LargeCommunity>,
    /// ORIGINATOR_ID.
    pub originator_id: Option<Ipv4Addr>,
    /// CLUSTER_LIST.
    pub cluster_list: Vec<Ipv4Addr>,
    /// Optional transitive attributes brindle does not interpret, passed on as they came.
    pub other: Vec<Attribute>,
}

impl PathAttrs {
    /// Adds a community written `aa:nn` (standard, RFC 1997) or `aa:bb:cc` (large, RFC 8092).
    pub fn add_community(&mut self, text: &str) -> Result<(), String> {
        let parts: Vec<&str> = text.split(':').collect();
        let bad = || format!("community \"{text}\" is neither aa:nn (16-bit parts) nor aa:bb:cc (32-bit parts)");
        match parts.as_slice() {
            [high, low] => {
                let high: u16 = high.parse().map_err(|_| bad())?;
                let low: u16 = low.parse().map_err(|_| bad())?;
                self.communities.push((u32::from(high) << 16) | u32::from(low));
            }
            [global, local1, local2] => self.large_communities.push(LargeCommunity {
                global: global.parse().map_err(|_| bad())?,
                local1: local1.parse().map_err(|_| bad())?,
                local2: local2.parse().map_err(|_| bad())?,
            }),
            _ => return Err(bad()),
        }
        Ok(())
    }

    /// Attributes of a route this speaker originates.
    pub fn local(next_hop: Option<IpAddr>) -> Self {
        PathAttrs {
            origin: Origin::Igp,
            as_path: AsPath::default(),
            next_hop,
            link_local_next_hop: None,
            med: None,
            local_pref: None,
            atomic_aggregate: false,
            aggregator: None,
            communities: Vec::new(),
            large_communities: Vec::new(),
            originator_id: None,
            cluster_list: Vec::new(),
            other: Vec::new(),
        }
    }

    /// The attributes an UPDATE carries. `four_octet_as` says whether the session negotiated
    /// 4-octet AS numbers; if not, AS4_PATH and AS4_AGGREGATOR are merged in (RFC 6793 §4.2.3).
    pub fn from_update(update: &Update, four_octet_as: bool) -> Self {
        let mut attrs = PathAttrs::local(None);
        let mut as4_path = None;
        let mut as4_aggregator = None;
        for a in update.attributes.iter() {
            match &a.value {
                Value::Origin(o) => attrs.origin = *o,
                Value::AsPath(p) => attrs.as_path = p.clone(),
                Value::NextHop(n) => attrs.next_hop = Some(IpAddr::V4(*n)),
                Value::Med(m) => attrs.med = Some(*m),
                Value::LocalPref(l) => attrs.local_pref = Some(*l),
                Value::AtomicAggregate => attrs.atomic_aggregate = true,
                Value::Aggregator(g) => attrs.aggregator = Some(*g),
                Value::Communities(c) => attrs.communities = c.clone(),
                Value::LargeCommunities(c) => attrs.large_communities = c.clone(),
                Value::OriginatorId(o) => attrs.originator_id = Some(*o),
                Value::ClusterList(c) => attrs.cluster_list = c.clone(),
                Value::As4Path(p) => as4_path = Some(p.clone()),
                Value::As4Aggregator(g) => as4_aggregator = Some(*g),
                // The MP next hop belongs to the MP routes only: the RIB sets it for them.
                Value::MpReach(_) | Value::MpUnreach(_) => {}
                _ if a.flags & flag::TRANSITIVE != 0 => attrs.other.push(a.clone()),
                _ => {}
            }
        }
        if !four_octet_as {
            // An AGGREGATOR that is not AS_TRANS beside an AS4_AGGREGATOR means a 2-octet
            // speaker aggregated after the AS4 attributes were made: both are stale.
            let stale = matches!((attrs.aggregator, as4_aggregator), (Some(g), Some(_)) if g.asn != u32::from(crate::wire::open::AS_TRANS));
            if !stale {
                if let Some(g) = as4_aggregator {
                    attrs.aggregator = Some(g);
                }
                if let Some(p) = as4_path {
                    attrs.as_path = merge_as4_path(&attrs.as_path, &p);
                }
            }
        }
        attrs
    }

    /// The wire attributes for an UPDATE of IPv4 routes (NEXT_HOP) or, with `mp`, of another
    /// family (the MP_REACH_NLRI attribute is added by the caller). For 2-octet sessions
    /// AS4_PATH and AS4_AGGREGATOR are added where the 2-octet fields cannot say it.
    pub fn to_attributes(&self, ipv4_next_hop: bool, four_octet_as: bool) -> Vec<Attribute> {
        let mut out =
            vec![Attribute::new(Value::Origin(self.origin)), Attribute::new(Value::AsPath(self.as_path.clone()))];
        if ipv4_next_hop && let Some(IpAddr::V4(n)) = self.next_hop {
            out.push(Attribute::new(Value::NextHop(n)));
        }
        if let Some(m) = self.med {
            out.push(Attribute::new(Value::Med(m)));
        }
        if let Some(l) = self.local_pref {
            out.push(Attribute::new(Value::LocalPref(l)));
        }
        if self.atomic_aggregate {
            out.push(Attribute::new(Value::AtomicAggregate));
        }
        if let Some(g) = self.aggregator {
            out.push(Attribute::new(Value::Aggregator(g)));
        }
        if !self.communities.is_empty() {
            out.push(Attribute::new(Value::Communities(self.communities.clone())));
        }
        if let Some(o) = self.originator_id {
            out.push(Attribute::new(Value::OriginatorId(o)));
        }
        if !self.cluster_list.is_empty() {
            out.push(Attribute::new(Value::ClusterList(self.cluster_list.clone())));
        }
        if !four_octet_as {
            if self.as_path.asns().any(|a| a > u32::from(u16::MAX)) {
                out.push(Attribute::new(Value::As4Path(self.as_path.clone())));
            }
            if let Some(g) = self.aggregator.filter(|g| g.asn > u32::from(u16::MAX)) {
                out.push(Attribute::new(Value::As4Aggregator(g)));
            }
        }
        if !self.large_communities.is_empty() {
            out.push(Attribute::new(Value::LargeCommunities(self.large_communities.clone())));
        }
        for a in &self.other {
            let mut passed = a.clone();
            passed.flags |= flag::PARTIAL;
            out.push(passed);
        }
        out.sort_by_key(|a| if a.type_code == type_code::MP_REACH_NLRI { 0 } else { a.type_code });
        out
    }
}

/// Reconstructs the true AS path from a 2-octet AS_PATH and the AS4_PATH (RFC 6793 §4.2.3):
/// the leading ASes of AS_PATH that AS4_PATH does not cover, then AS4_PATH.
fn merge_as4_path(as_path: &AsPath, as4_path: &AsPath) -> AsPath {
    let count = as_path.hop_count();
    let count4 = as4_path.hop_count();
    if count4 > count {
        return as_path.clone(); // AS4_PATH longer than AS_PATH: ignore it
    }
    let mut keep = count - count4;
    let mut segments = Vec::new();
    for s in &as_path.segments {
        if keep == 0 {
            break;
        }
        match s.kind {
            SegmentKind::Sequence => {
                let take = keep.min(s.asns.len());
                segments.push(crate::wire::Segment { kind: s.kind, asns: s.asns[..take].to_vec() });
                keep -= take;
            }
            SegmentKind::Set => {
                segments.push(s.clone());
                keep -= 1;
            }
            SegmentKind::ConfedSequence | SegmentKind::ConfedSet => segments.push(s.clone()),
        }
    }
    segments.extend(as4_path.segments.iter().cloned());
    AsPath { segments }
}

/// Hands out one shared copy of each distinct set of attributes.
#[derive(Debug, Default)]
pub struct Interner {
    sets: FxHashSet<Arc<PathAttrs>>,
}

impl Interner {
    /// The shared copy of `attrs`.
    pub fn intern(&mut self, attrs: PathAttrs) -> Arc<PathAttrs> {
        if let Some(existing) = self.sets.get(&attrs) {
            return Arc::clone(existing);
        }
        let shared = Arc::new(attrs);
        self.sets.insert(Arc::clone(&shared));
        shared
    }

    /// Forgets sets no route uses any more.
    pub fn collect_garbage(&mut self) {
        self.sets.retain(|a| Arc::strong_count(a) > 1);
    }

    /// How many distinct sets are held.
    pub fn len(&self) -> usize {
        self.sets.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn communities_parse_standard_and_large_or_say_why_not() {
        let mut attrs = PathAttrs::local(None);
        attrs.add_community("64512:100").unwrap();
        attrs.add_community("4200000000:1:2").unwrap();
        assert_eq!(attrs.communities, [(64512 << 16) | 100]);
        assert_eq!(attrs.large_communities, [LargeCommunity { global: 4_200_000_000, local1: 1, local2: 2 }]);
        assert!(attrs.add_community("70000:1").unwrap_err().contains("70000:1"));
        assert!(attrs.add_community("1:2:3:4").is_err());
        assert!(attrs.add_community("no").is_err());
    }
    use crate::wire::Codec;

    #[test]
    fn interning_shares_equal_sets() {
        let mut i = Interner::default();
        let a = i.intern(PathAttrs::local(Some("10.0.0.1".parse().unwrap())));
        let b = i.intern(PathAttrs::local(Some("10.0.0.1".parse().unwrap())));
        let c = i.intern(PathAttrs::local(Some("10.0.0.2".parse().unwrap())));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        drop(c);
        i.collect_garbage();
        assert_eq!(i.len(), 1);
    }

    #[test]
    fn as4_path_restores_the_true_path_on_2_octet_sessions() {
        // AS_PATH [23456 65001 23456] with AS4_PATH [200000 65001 300000].
        let as_path = AsPath::sequence(vec![23456, 65001, 23456]);
        let as4 = AsPath::sequence(vec![200_000, 65001, 300_000]);
        assert_eq!(merge_as4_path(&as_path, &as4), as4);
        // A 2-octet speaker prepended 65002 after the path left 4-octet land.
        let as_path = AsPath::sequence(vec![65002, 23456]);
        let as4 = AsPath::sequence(vec![200_000]);
        assert_eq!(merge_as4_path(&as_path, &as4).asns().collect::<Vec<_>>(), [65002, 200_000]);
    }

    #[test]
    fn attributes_survive_the_wire_both_ways() {
        let mut attrs = PathAttrs::local(Some("10.99.0.1".parse().unwrap()));
        attrs.as_path = AsPath::sequence(vec![64512, 200_000]);
        attrs.local_pref = Some(100);
        attrs.communities = vec![0xfc00_0001];
        for four in [true, false] {
            let update = Update {
                attributes: attrs.to_attributes(true, four).into(),
                nlri: vec!["10.1.0.0/16".parse().unwrap()],
                ..Update::default()
            };
            let mut buf = bytes::BytesMut::new();
            let codec = Codec { four_octet_as: four, ebgp: false };
            crate::wire::encode(&crate::wire::Message::Update(update), &codec, &mut buf).unwrap();
            let crate::wire::Message::Update(back) = crate::wire::decode(&buf, &codec).unwrap() else { panic!() };
            assert_eq!(PathAttrs::from_update(&back, four), attrs, "four_octet_as = {four}");
        }
    }
}
