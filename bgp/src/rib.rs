//! The routing information bases, pure: Adj-RIB-In and Loc-RIB in one table (every peer's
//! accepted paths per prefix, best first), the decision process of RFC 4271 §9.1.2.2, and the
//! export rules that make each peer's Adj-RIB-Out: iBGP split horizon, route reflection
//! (RFC 4456), next-hop and AS_PATH handling for external peers, prefix filters, and graceful
//! restart's stale paths (RFC 4724).
//!
//! Adj-RIB-Out is not stored: what a peer was sent is a function of the old best path, so
//! the withdraw or replacement for it is computed from the change itself, as BIRD does.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnetwork::IpNetwork;
use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use crate::attrs::{Interner, PathAttrs};
use crate::wire::{Attribute, Family, Update};
use table::{Key, PrefixTable};

mod table;

/// A peer's index in the RIB.
pub type PeerId = u16;

/// The "peer" of routes this speaker originates.
pub const LOCAL: PeerId = PeerId::MAX;

/// The LOCAL_PREF of routes that arrive without one.
pub const DEFAULT_LOCAL_PREF: u32 = 100;

/// One accept-or-reject rule on routes of one family: their prefix, and optionally where
/// they come from and which interface their next hop is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterRule {
    /// The range the rule covers.
    pub prefix: IpNetwork,
    /// Shortest prefix length matched (default: the range's own).
    pub min_len: u8,
    /// Longest prefix length matched.
    pub max_len: u8,
    /// The rule matches the prefixes of its family that the range and lengths do not.
    pub negate: bool,
    /// Only routes learned from a BGP peer, not this speaker's own (Calico's `source:
    /// RemotePeers`).
    pub learned_only: bool,
    /// Only routes whose next hop is on an interface this names (Calico's `interface`).
    pub interface: Option<InterfaceMatch>,
    /// Accept (true) or reject.
    pub accept: bool,
}

/// The interfaces a rule names: the pattern as written, and the subnets of the interfaces it
/// matched, which a next hop must lie in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceMatch {
    /// The name or glob (`eth*`, `*.calico`).
    pub pattern: String,
    /// The subnets of the matching interfaces (none: the rule matches no route).
    pub subnets: Vec<IpNetwork>,
}

/// What a filter sees of a route besides its prefix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteFacts {
    /// Learned from a BGP peer (not originated here).
    pub learned: bool,
    /// Its next hop.
    pub next_hop: Option<IpAddr>,
}

impl RouteFacts {
    /// The facts of `path`.
    fn of(path: &Path) -> RouteFacts {
        RouteFacts { learned: path.peer != LOCAL, next_hop: path.attrs.next_hop }
    }
}

impl FilterRule {
    /// A rule on prefixes alone.
    pub fn on_prefixes(prefix: IpNetwork, min_len: u8, max_len: u8, negate: bool, accept: bool) -> FilterRule {
        FilterRule { prefix, min_len, max_len, negate, learned_only: false, interface: None, accept }
    }

    /// Whether the rule decides the route to `prefix` described by `route`.
    pub fn matches(&self, prefix: &IpNetwork, route: RouteFacts) -> bool {
        self.prefix.is_ipv4() == prefix.is_ipv4()
            && (self.prefix.contains(prefix.network()) && (self.min_len..=self.max_len).contains(&prefix.prefix()))
                != self.negate
            && (route.learned || !self.learned_only)
            && self
                .interface
                .as_ref()
                .is_none_or(|i| route.next_hop.is_some_and(|hop| i.subnets.iter().any(|subnet| subnet.contains(hop))))
    }
}

/// An ordered list of rules; the first that matches decides, otherwise `default_accept`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixFilter {
    /// The rules in order.
    pub rules: Vec<FilterRule>,
    /// What happens to prefixes no rule matches.
    pub default_accept: bool,
}

impl Default for PrefixFilter {
    fn default() -> Self {
        PrefixFilter { rules: Vec::new(), default_accept: true }
    }
}

impl PrefixFilter {
    /// Accepts only prefixes inside `ranges` (any length), rejecting the rest.
    pub fn only(ranges: &[IpNetwork]) -> Self {
        let rules = ranges
            .iter()
            .map(|r| FilterRule::on_prefixes(*r, r.prefix(), if r.is_ipv4() { 32 } else { 128 }, false, true))
            .collect();
        PrefixFilter { rules, default_accept: false }
    }

    /// Whether the route to `prefix` described by `route` passes.
    pub fn accepts(&self, prefix: &IpNetwork, route: RouteFacts) -> bool {
        self.rules.iter().find(|r| r.matches(prefix, route)).map_or(self.default_accept, |r| r.accept)
    }
}

/// How a peer is configured, as far as routes are concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's address.
    pub address: IpAddr,
    /// The peer's AS.
    pub peer_as: u32,
    /// The peer is a route reflector client of ours.
    pub rr_client: bool,
    /// Which received prefixes are accepted.
    pub import: PrefixFilter,
    /// Which prefixes are sent.
    pub export: PrefixFilter,
    /// Routes learned from others keep their next hop when sent to this (external) peer,
    /// instead of ours (Calico's keepOriginalNextHop).
    pub keep_next_hop: bool,
    /// Our AS toward this peer, when it is not the speaker's (Calico's localASNumber).
    pub local_as: Option<u32>,
    /// How many times our AS may appear in a route's AS_PATH before the route is taken for a
    /// loop (allowas-in, Calico's numAllowedLocalASNumbers; 0 by default).
    pub allow_local_as: u8,
}

/// What the session established with a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSession {
    /// The peer's BGP identifier.
    pub router_id: Ipv4Addr,
    /// Our IPv4 address on the session, the next hop we give.
    pub local_v4: Option<Ipv4Addr>,
    /// Our IPv6 address on the session.
    pub local_v6: Option<Ipv6Addr>,
    /// Families in common.
    pub families: Vec<Family>,
    /// Whether the session speaks 4-octet AS numbers.
    pub four_octet_as: bool,
}

/// Route counts of one peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerCounts {
    /// Prefixes the peer announced and we hold (accepted or not).
    pub received: usize,
    /// Of those, the ones that passed import checks.
    pub accepted: usize,
    /// Prefixes we currently advertise to the peer.
    pub advertised: usize,
}

#[derive(Debug)]
struct PeerState {
    config: PeerConfig,
    session: Option<PeerSession>,
    counts: PeerCounts,
    /// The attribute sets made from the decoded attribute lists the peer sent recently, by
    /// the list's address (the decoder shares one list between UPDATEs with the same bytes).
    interned: FxHashMap<usize, Interned>,
}

/// A decoded attribute list (held, so its address stays its own) and the attribute sets made
/// from it.
#[derive(Debug)]
struct Interned {
    _source: Arc<[Attribute]>,
    ipv4: Option<Arc<PathAttrs>>,
    mp: Option<Arc<PathAttrs>>,
}

/// A path to a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    /// Who it came from ([`LOCAL`] for our own).
    pub peer: PeerId,
    /// Its attributes (shared).
    pub attrs: Arc<PathAttrs>,
    /// Kept from a restarting peer until it refreshes or its time runs out.
    pub stale: bool,
}

/// A change of a prefix's best path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BestChange {
    /// The prefix.
    pub prefix: IpNetwork,
    /// The best path before.
    pub old: Option<Path>,
    /// The best path now (`None`: unreachable).
    pub new: Option<Path>,
}

/// Exports for peers that are sent alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportBatch {
    /// The peers.
    pub peers: Vec<PeerId>,
    /// What each of them is sent, in order.
    pub exports: Vec<Export>,
}

impl ExportBatch {
    /// The batches' exports, peer by peer.
    pub fn per_peer(batches: Vec<ExportBatch>) -> Vec<(PeerId, Export)> {
        let mut out = Vec::new();
        for batch in batches {
            for peer in &batch.peers {
                out.extend(batch.exports.iter().map(|e| (*peer, e.clone())));
            }
        }
        out
    }
}

/// A route to send to a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Export {
    /// Announce (or replace) the prefix with these attributes.
    Announce(IpNetwork, Arc<PathAttrs>),
    /// Withdraw the prefix.
    Withdraw(IpNetwork),
}

type Paths = SmallVec<[Path; 1]>;

/// How many decoded attribute lists a peer's cache of attribute sets remembers.
const INTERNED_PER_PEER: usize = 4096;

/// What an export depends on: the source attribute set (by address; the cache holds the set
/// alive so the address cannot be reused), the sending and receiving peers, and the family.
type ExportKey = (usize, PeerId, PeerId, bool);

/// The RIB of one speaker.
#[derive(Debug)]
pub struct Rib {
    local_as: u32,
    router_id: Ipv4Addr,
    cluster_id: Ipv4Addr,
    peers: Vec<Option<PeerState>>,
    interner: Interner,
    v4: PrefixTable<u64>,
    v6: PrefixTable<[u8; 17]>,
    export_cache: HashMap<ExportKey, (Arc<PathAttrs>, Arc<PathAttrs>)>,
    /// Room for the attribute handles an UPDATE's prefixes take, kept between UPDATEs.
    handles: Vec<Arc<PathAttrs>>,
    /// Routes dropped because a prefix table was full.
    dropped: u64,
    /// Changes of a prefix's equal-cost paths are reported even when its best stays.
    multipath: bool,
    /// The update groups, until a peer comes, goes or changes.
    groups: Option<Vec<Vec<PeerId>>>,
}

impl Rib {
    /// An empty RIB. The cluster ID (for route reflection) defaults to the router ID.
    pub fn new(local_as: u32, router_id: Ipv4Addr, cluster_id: Option<Ipv4Addr>) -> Self {
        Rib {
            local_as,
            router_id,
            cluster_id: cluster_id.unwrap_or(router_id),
            peers: Vec::new(),
            interner: Interner::default(),
            v4: PrefixTable::default(),
            v6: PrefixTable::default(),
            export_cache: HashMap::new(),
            handles: Vec::new(),
            dropped: 0,
            multipath: false,
            groups: None,
        }
    }

    /// Reports, from now on, a prefix whose set of equal-cost best paths changed while its
    /// best did not, as a [`BestChange`] whose old and new best are the same path (exports
    /// nothing; tells subscribers to read [`Rib::multipath`] again).
    pub fn set_multipath(&mut self, on: bool) {
        self.multipath = on;
    }

    /// The next hops of the prefix's best path and of every path as good but for the
    /// tie-breakers (router ID, address), at most `max`, best first, each once.
    pub fn multipath(&self, prefix: &IpNetwork, max: usize) -> Vec<IpAddr> {
        let paths = self.paths(prefix);
        let Some(best) = paths.first() else { return Vec::new() };
        let mut hops = Vec::new();
        for path in paths.iter().take_while(|p| equal_cost(p, best, &self.peers, self.local_as)) {
            if let Some(hop) = path.attrs.next_hop
                && !hops.contains(&hop)
            {
                hops.push(hop);
                if hops.len() == max {
                    break;
                }
            }
        }
        hops
    }

    /// Registers a peer; its session is down until [`Rib::peer_up`].
    pub fn add_peer(&mut self, config: PeerConfig) -> PeerId {
        let state = PeerState { config, session: None, counts: PeerCounts::default(), interned: FxHashMap::default() };
        match self.peers.iter().position(Option::is_none) {
            Some(free) => {
                self.peers[free] = Some(state);
                free as PeerId
            }
            None => {
                self.peers.push(Some(state));
                (self.peers.len() - 1) as PeerId
            }
        }
    }

    /// Forgets a peer, withdrawing its routes. Returns the best-path changes.
    pub fn remove_peer(&mut self, peer: PeerId) -> Vec<BestChange> {
        let changes = self.drop_paths(peer, |_, _| true);
        if let Some(slot) = self.peers.get_mut(usize::from(peer)) {
            *slot = None;
        }
        self.export_cache.clear();
        self.groups = None;
        changes
    }

    /// A peer's counters.
    pub fn counts(&self, peer: PeerId) -> PeerCounts {
        self.state(peer).map(|s| s.counts).unwrap_or_default()
    }

    fn state(&self, peer: PeerId) -> Option<&PeerState> {
        self.peers.get(usize::from(peer)).and_then(Option::as_ref)
    }

    /// How many prefixes have a best path.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Whether no prefix has a path.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many distinct attribute sets the routes share.
    pub fn attribute_sets(&self) -> usize {
        self.interner.len()
    }

    /// Every prefix with its paths, best first (IPv4 then IPv6, in no particular order).
    pub fn routes(&self) -> impl Iterator<Item = (IpNetwork, &[Path])> {
        self.v4
            .iter()
            .map(|(k, p)| (k.prefix(), p.as_slice()))
            .chain(self.v6.iter().map(|(k, p)| (k.prefix(), p.as_slice())))
    }

    /// The paths to one prefix, best first.
    pub fn paths(&self, prefix: &IpNetwork) -> &[Path] {
        let found = if prefix.is_ipv4() { self.v4.get(u64::of(prefix)) } else { self.v6.get(<[u8; 17]>::of(prefix)) };
        found.map_or(&[], |p| p.as_slice())
    }

    /// Originates `prefix` with `attrs` (replacing an earlier origination).
    pub fn originate(&mut self, prefix: IpNetwork, attrs: PathAttrs) -> Vec<BestChange> {
        let attrs = self.interner.intern(attrs);
        let path = Path { peer: LOCAL, attrs, stale: false };
        let mut changes = Vec::new();
        self.set_path(prefix, path.clone(), path, &mut changes);
        changes
    }

    /// Stops originating `prefix`.
    pub fn withdraw_local(&mut self, prefix: IpNetwork) -> Vec<BestChange> {
        self.remove_path(prefix, LOCAL).into_iter().collect()
    }

    /// Asks the processor to fetch the table slots of an UPDATE's announced prefixes, without
    /// waiting: a speaker does this for a whole batch before applying it, so that the batch's
    /// cache misses overlap instead of each prefix waiting for its own.
    pub fn prefetch(&self, update: &Update) {
        let mp_nlri: &[IpNetwork] = update.mp_reach().map_or(&[], |r| &r.nlri[..]);
        for prefix in update.nlri.iter().chain(mp_nlri) {
            match prefix {
                IpNetwork::V4(_) => self.v4.prefetch(u64::of(prefix)),
                IpNetwork::V6(_) => self.v6.prefetch(<[u8; 17]>::of(prefix)),
            }
        }
    }

    /// Applies an UPDATE from an established peer, appending the best-path changes to
    /// `changes` (a receiver keeps one buffer for all its UPDATEs).
    pub fn update(&mut self, peer: PeerId, update: &Update, changes: &mut Vec<BestChange>) {
        let Some(state) = self.state(peer) else { return };
        let four_octet = state.session.as_ref().is_some_and(|s| s.four_octet_as);
        let withdrawn = update.withdrawn.iter().chain(update.mp_unreach().into_iter().flat_map(|u| u.withdrawn.iter()));
        let mp_nlri: &[IpNetwork] = update.mp_reach().map_or(&[], |r| &r.nlri[..]);
        let announced = update.nlri.len() + mp_nlri.len();
        if update.treat_as_withdraw() {
            for &prefix in withdrawn.chain(&update.nlri).chain(mp_nlri) {
                changes.extend(self.remove_path(prefix, peer));
            }
            return;
        }
        for &prefix in withdrawn {
            changes.extend(self.remove_path(prefix, peer));
        }
        if announced == 0 {
            return;
        }
        let (ipv4_attrs, mp_attrs) = self.interned(peer, update, four_octet);
        let mut handles = std::mem::take(&mut self.handles);
        for (shared, prefixes) in [(ipv4_attrs, &update.nlri[..]), (mp_attrs, mp_nlri)] {
            // Loops are a property of the attributes: checked once for all the prefixes.
            let usable = shared.filter(|a| !self.loops(peer, a));
            if let Some(attrs) = &usable {
                // Two handles per prefix (the table's and the change's), taken together up
                // front: an atomic increment waits for every store before it, so one per
                // prefix in the loop below would wait for each table write to land.
                handles.clear();
                handles.extend(std::iter::repeat_with(|| Arc::clone(attrs)).take(2 * prefixes.len()));
            }
            for &prefix in prefixes {
                match (&usable, handles.pop().zip(handles.pop())) {
                    (Some(_), Some((attrs, twin))) if self.imports(peer, &prefix, attrs.next_hop) => {
                        let path = Path { peer, attrs, stale: false };
                        self.set_path(prefix, path, Path { peer, attrs: twin, stale: false }, changes);
                    }
                    _ => changes.extend(self.remove_path(prefix, peer)),
                }
            }
        }
        self.handles = handles;
    }

    /// The shared attribute sets of an UPDATE's IPv4 and multiprotocol routes: those of the
    /// peer's previous UPDATE when the decoder handed over the same attribute list.
    fn interned(
        &mut self,
        peer: PeerId,
        update: &Update,
        four_octet: bool,
    ) -> (Option<Arc<PathAttrs>>, Option<Arc<PathAttrs>>) {
        let key = update.attributes.as_ptr() as usize;
        if let Some(hit) = self.state(peer).and_then(|s| s.interned.get(&key)) {
            return (hit.ipv4.clone(), hit.mp.clone());
        }
        let attrs = PathAttrs::from_update(update, four_octet);
        let mp = update.mp_reach().map(|r| {
            let mut a = attrs.clone();
            let hops = r.next_hops();
            a.next_hop = hops.first().copied();
            a.link_local_next_hop = hops.get(1).and_then(|h| if let IpAddr::V6(v) = h { Some(*v) } else { None });
            self.interner.intern(a)
        });
        let ipv4 = attrs.next_hop.is_some().then(|| self.interner.intern(attrs));
        if let Some(state) = self.peers.get_mut(usize::from(peer)).and_then(Option::as_mut) {
            if state.interned.len() >= INTERNED_PER_PEER {
                state.interned.clear();
            }
            let entry = Interned { _source: Arc::clone(&update.attributes), ipv4: ipv4.clone(), mp: mp.clone() };
            state.interned.insert(key, entry);
        }
        (ipv4, mp)
    }

    /// Whether routes with `attrs` from `peer` would loop: our AS toward the peer in the
    /// AS_PATH of an external peer's route (more often than its allowas-in lets it), or our router ID
    /// or cluster ID in a reflected one's.
    fn loops(&self, peer: PeerId, attrs: &PathAttrs) -> bool {
        let our_as_seen = self.state(peer).is_some_and(|s| {
            let ours = s.config.local_as.unwrap_or(self.local_as);
            let allowed = usize::from(s.config.allow_local_as);
            s.config.peer_as != ours && attrs.as_path.count(ours) > allowed
        });
        our_as_seen || attrs.originator_id == Some(self.router_id) || attrs.cluster_list.contains(&self.cluster_id)
    }

    /// Whether `peer`'s import filter lets its route to `prefix` through `next_hop` in.
    fn imports(&self, peer: PeerId, prefix: &IpNetwork, next_hop: Option<IpAddr>) -> bool {
        self.state(peer).is_some_and(|s| s.config.import.accepts(prefix, RouteFacts { learned: true, next_hop }))
    }

    /// Marks the session up and returns everything the peer should be sent now.
    pub fn peer_up(&mut self, peer: PeerId, session: PeerSession) -> Vec<Export> {
        let Some(state) = self.peers.get_mut(usize::from(peer)).and_then(Option::as_mut) else { return Vec::new() };
        state.session = Some(session);
        state.interned.clear();
        self.export_cache.clear();
        self.groups = None;
        self.refresh(peer)
    }

    /// Everything an established peer should hold from us (for a ROUTE-REFRESH, or right
    /// after the session comes up).
    pub fn refresh(&mut self, peer: PeerId) -> Vec<Export> {
        self.exported_to(peer).into_iter().map(|(prefix, attrs)| Export::Announce(prefix, attrs)).collect()
    }

    /// What `peer` should hold from us now, by prefix (also its advertised count).
    fn exported_to(&mut self, peer: PeerId) -> BTreeMap<IpNetwork, Arc<PathAttrs>> {
        let bests: Vec<(IpNetwork, Path)> =
            self.routes().filter_map(|(p, paths)| paths.first().map(|b| (p, b.clone()))).collect();
        let out: BTreeMap<IpNetwork, Arc<PathAttrs>> = bests
            .into_iter()
            .filter_map(|(prefix, best)| self.export(&best, peer, &prefix).map(|attrs| (prefix, attrs)))
            .collect();
        if let Some(s) = self.peers.get_mut(usize::from(peer)).and_then(Option::as_mut) {
            s.counts.advertised = out.len();
        }
        out
    }

    /// Gives a peer a new configuration without touching its session (soft reconfiguration,
    /// as BIRD's `reload`): the paths its new import filter refuses are dropped, and it is
    /// sent the difference between what it held from us and what it should hold now. Returns
    /// the best-path changes, for the other peers (`peer` itself is covered by the second
    /// part), and this peer's announcements and withdrawals. Routes the new filter accepts but
    /// the old one refused were never kept: the caller asks the peer for them again
    /// (ROUTE-REFRESH).
    pub fn reconfigure(&mut self, peer: PeerId, config: PeerConfig) -> (Vec<BestChange>, Vec<Export>) {
        let established = self.state(peer).is_some_and(|s| s.session.is_some());
        let before = if established { self.exported_to(peer) } else { BTreeMap::new() };
        let Some(state) = self.peers.get_mut(usize::from(peer)).and_then(Option::as_mut) else {
            return (Vec::new(), Vec::new());
        };
        let import = config.import.clone();
        state.config = config;
        self.export_cache.clear();
        self.groups = None;
        let changes = self.drop_paths(peer, |prefix, path| !import.accepts(prefix, RouteFacts::of(path)));
        if !established {
            return (changes, Vec::new());
        }
        let after = self.exported_to(peer);
        let mut exports: Vec<Export> = before
            .keys()
            .filter(|prefix| !after.contains_key(prefix))
            .map(|prefix| Export::Withdraw(*prefix))
            .collect();
        for (prefix, attrs) in after {
            if before.get(&prefix).is_none_or(|old| !Arc::ptr_eq(old, &attrs) && **old != *attrs) {
                exports.push(Export::Announce(prefix, attrs));
            }
        }
        (changes, exports)
    }

    /// Marks the session down. With `keep_routes` (graceful restart) the peer's paths stay,
    /// marked stale, until [`Rib::sweep_stale`]; otherwise they are withdrawn now.
    pub fn peer_down(&mut self, peer: PeerId, keep_routes: bool) -> Vec<BestChange> {
        if let Some(state) = self.peers.get_mut(usize::from(peer)).and_then(Option::as_mut) {
            state.session = None;
            self.groups = None;
            state.counts.advertised = 0;
            state.interned.clear();
        }
        if keep_routes {
            for paths in
                self.v4.paths_mut().map(|p| p.as_mut_slice()).chain(self.v6.paths_mut().map(|p| p.as_mut_slice()))
            {
                paths.iter_mut().filter(|p| p.peer == peer).for_each(|p| p.stale = true);
            }
            return Vec::new();
        }
        self.drop_paths(peer, |_, _| true)
    }

    /// Removes the peer's stale paths of `family` (End-of-RIB arrived) or of every family
    /// (`None`: the restart time ran out).
    pub fn sweep_stale(&mut self, peer: PeerId, family: Option<Family>) -> Vec<BestChange> {
        self.drop_paths(peer, |prefix, p| p.stale && family.is_none_or(|f| f == Family::of(prefix)))
    }

    /// Turns best-path changes into what each established peer must be sent.
    pub fn exports(&mut self, changes: &[BestChange]) -> Vec<(PeerId, Export)> {
        ExportBatch::per_peer(self.exports_except(changes, None))
    }

    /// [`Rib::exports`] for every established peer but `except` (one whose exports were
    /// worked out whole, by [`Rib::reconfigure`]), in batches: peers whose exports are alike
    /// (an update group) share one, worked out once. A prefix whose change involves a member's
    /// own path is worked out per member instead (a peer is never sent its own routes), in a
    /// batch of that member alone; so no prefix is in two batches of one peer.
    pub fn exports_except(&mut self, changes: &[BestChange], except: Option<PeerId>) -> Vec<ExportBatch> {
        let mut out = Vec::new();
        let source = |path: &Option<Path>| path.as_ref().map(|p| p.peer);
        for mut members in self.update_groups() {
            members.retain(|m| Some(*m) != except);
            let Some(&first) = members.first() else { continue };
            let own: std::collections::HashSet<IpNetwork> = if members.len() > 1 {
                changes
                    .iter()
                    .filter(|c| [source(&c.old), source(&c.new)].into_iter().flatten().any(|p| members.contains(&p)))
                    .map(|c| c.prefix)
                    .collect()
            } else {
                Default::default()
            };
            let mut shared = Vec::new();
            let mut shared_delta = 0;
            let mut alone: Vec<(Vec<Export>, isize)> =
                vec![Default::default(); if own.is_empty() { 0 } else { members.len() }];
            for change in changes {
                if own.contains(&change.prefix) {
                    for (i, &member) in members.iter().enumerate() {
                        if let Some((export, delta)) = self.export_change(change, member) {
                            alone[i].0.push(export);
                            alone[i].1 += delta;
                        }
                    }
                } else if let Some((export, delta)) = self.export_change(change, first) {
                    shared.push(export);
                    shared_delta += delta;
                }
            }
            for (i, &member) in members.iter().enumerate() {
                let delta = shared_delta + alone.get(i).map_or(0, |a| a.1);
                if let Some(s) = self.peers.get_mut(usize::from(member)).and_then(Option::as_mut) {
                    s.counts.advertised = s.counts.advertised.saturating_add_signed(delta);
                }
            }
            if !shared.is_empty() {
                out.push(ExportBatch { peers: members.clone(), exports: shared });
            }
            for (member, (exports, _)) in members.into_iter().zip(alone) {
                if !exports.is_empty() {
                    out.push(ExportBatch { peers: vec![member], exports });
                }
            }
        }
        out
    }

    /// What `peer` must be sent for `change`, if anything, and how its count of advertised
    /// prefixes changes.
    fn export_change(&mut self, change: &BestChange, peer: PeerId) -> Option<(Export, isize)> {
        let source = |path: &Option<Path>| path.as_ref().map(|p| p.peer);
        // A peer is never sent its own routes: nothing to do when every path is its.
        if source(&change.old).is_none_or(|p| p == peer) && source(&change.new).is_none_or(|p| p == peer) {
            return None;
        }
        let before = change.old.as_ref().and_then(|p| self.export(p, peer, &change.prefix));
        let after = change.new.as_ref().and_then(|p| self.export(p, peer, &change.prefix));
        match (before, after) {
            (Some(b), Some(a)) if Arc::ptr_eq(&b, &a) => None,
            (before, Some(a)) => Some((Export::Announce(change.prefix, a), if before.is_some() { 0 } else { 1 })),
            (Some(_), None) => Some((Export::Withdraw(change.prefix), -1)),
            (None, None) => None,
        }
    }

    /// The established peers in groups that are sent alike: the same export filter, AS
    /// numbers, reflection role and next-hop keeping, and sessions with the same families,
    /// local addresses and AS number size. Kept until a peer comes, goes or changes.
    fn update_groups(&mut self) -> Vec<Vec<PeerId>> {
        if let Some(groups) = &self.groups {
            return groups.clone();
        }
        let alike = |a: &PeerState, b: &PeerState| {
            let (Some(x), Some(y)) = (&a.session, &b.session) else { return false };
            let (c, d) = (&a.config, &b.config);
            (c.peer_as, c.local_as, c.rr_client, c.keep_next_hop)
                == (d.peer_as, d.local_as, d.rr_client, d.keep_next_hop)
                && (x.local_v4, x.local_v6, x.four_octet_as) == (y.local_v4, y.local_v6, y.four_octet_as)
                && x.families == y.families
                && c.export == d.export
        };
        let mut groups: Vec<Vec<PeerId>> = Vec::new();
        for (id, state) in self.peers.iter().enumerate() {
            let Some(state) = state.as_ref().filter(|s| s.session.is_some()) else { continue };
            let id = id as PeerId;
            match groups.iter_mut().find(|g| self.state(g[0]).is_some_and(|first| alike(first, state))) {
                Some(group) => group.push(id),
                None => groups.push(vec![id]),
            }
        }
        self.groups = Some(groups.clone());
        groups
    }

    /// The attributes `path` is sent to `to` with, or `None` if it is not sent there.
    fn export(&mut self, path: &Path, to: PeerId, prefix: &IpNetwork) -> Option<Arc<PathAttrs>> {
        if path.peer == to {
            return None;
        }
        let to_state = self.state(to)?;
        let session = to_state.session.as_ref()?;
        if !session.families.contains(&Family::of(prefix))
            || !to_state.config.export.accepts(prefix, RouteFacts::of(path))
        {
            return None;
        }
        let to_local_as = to_state.config.local_as.unwrap_or(self.local_as);
        let to_ibgp = to_state.config.peer_as == to_local_as;
        let from = (path.peer != LOCAL).then(|| self.state(path.peer)).flatten();
        let from_ibgp = from.is_some_and(|f| f.config.peer_as == f.config.local_as.unwrap_or(self.local_as));
        if from_ibgp && to_ibgp {
            // Split horizon, relaxed by reflection (RFC 4456 §6).
            let from_client = from.is_some_and(|f| f.config.rr_client);
            if !(from_client || to_state.config.rr_client) {
                return None;
            }
        }
        let key = (Arc::as_ptr(&path.attrs) as usize, path.peer, to, prefix.is_ipv6());
        if let Some((_, cached)) = self.export_cache.get(&key) {
            return Some(Arc::clone(cached));
        }
        let mut a = (*path.attrs).clone();
        let own_hop =
            if prefix.is_ipv4() { session.local_v4.map(IpAddr::V4) } else { session.local_v6.map(IpAddr::V6) };
        if to_ibgp {
            a.local_pref = Some(a.local_pref.unwrap_or(DEFAULT_LOCAL_PREF));
            if path.peer == LOCAL && a.next_hop.is_none() {
                a.next_hop = own_hop;
            }
            if from_ibgp {
                let from_id = from.and_then(|f| f.session.as_ref()).map(|s| s.router_id);
                a.originator_id = a.originator_id.or(from_id);
                a.cluster_list.insert(0, self.cluster_id);
            }
        } else {
            a.as_path = a.as_path.prepend(to_local_as);
            if !(to_state.config.keep_next_hop && path.peer != LOCAL && a.next_hop.is_some()) {
                a.next_hop = own_hop;
            }
            a.link_local_next_hop = None;
            a.local_pref = None;
            a.originator_id = None;
            a.cluster_list.clear();
            if path.peer != LOCAL {
                a.med = None;
            }
        }
        a.next_hop?;
        let shared = self.interner.intern(a);
        self.export_cache.insert(key, (Arc::clone(&path.attrs), Arc::clone(&shared)));
        Some(shared)
    }

    /// Frees attribute sets no route uses any more.
    pub fn collect_garbage(&mut self) {
        self.export_cache.clear();
        self.interner.collect_garbage();
    }

    /// Puts `path` in the table and appends the best-path change, if any, to `changes`. For a
    /// new prefix `twin` (the same path) is the change's new best; otherwise it is dropped and
    /// the change holds its own clones. (Appended rather than returned: the change is not
    /// read back right away, so the table write it follows need not land first.)
    fn set_path(&mut self, prefix: IpNetwork, path: Path, twin: Path, changes: &mut Vec<BestChange>) {
        let peer = path.peer;
        let paths = match prefix {
            IpNetwork::V4(_) => self.v4.get_or_insert(u64::of(&prefix)),
            IpNetwork::V6(_) => self.v6.get_or_insert(<[u8; 17]>::of(&prefix)),
        };
        let Some(paths) = paths else {
            // Said at the first drop and then at every power of two, not once per route.
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                tracing::warn!(%prefix, dropped = self.dropped, "the prefix table is full: routes dropped");
            }
            return;
        };
        let fresh = if paths.is_empty() {
            // A new prefix (most of a table arriving): no comparison, no previous best.
            paths.push(path);
            changes.push(BestChange { prefix, old: None, new: Some(twin) });
            true
        } else {
            let Some((change, fresh)) = place(paths, path, &self.peers, self.local_as, self.multipath) else { return };
            changes.extend(change.map(|(old, new)| BestChange { prefix, old, new: Some(new) }));
            fresh
        };
        if fresh && let Some(s) = self.peers.get_mut(usize::from(peer)).and_then(Option::as_mut) {
            s.counts.received += 1;
            s.counts.accepted += 1;
        }
    }

    fn remove_path(&mut self, prefix: IpNetwork, peer: PeerId) -> Option<BestChange> {
        let ranking = self.multipath.then_some((&self.peers[..], self.local_as));
        let change = if prefix.is_ipv4() {
            take_path(&mut self.v4, u64::of(&prefix), peer, ranking)
        } else {
            take_path(&mut self.v6, <[u8; 17]>::of(&prefix), peer, ranking)
        };
        let best_change = change?;
        if let Some(s) = self.peers.get_mut(usize::from(peer)).and_then(Option::as_mut) {
            s.counts.received = s.counts.received.saturating_sub(1);
            s.counts.accepted = s.counts.accepted.saturating_sub(1);
        }
        best_change.map(|(old, new)| BestChange { prefix, old: Some(old), new })
    }

    fn drop_paths(&mut self, peer: PeerId, which: impl Fn(&IpNetwork, &Path) -> bool) -> Vec<BestChange> {
        let prefixes: Vec<IpNetwork> = self
            .routes()
            .filter(|(prefix, paths)| paths.iter().any(|p| p.peer == peer && which(prefix, p)))
            .map(|(prefix, _)| prefix)
            .collect();
        prefixes.into_iter().filter_map(|p| self.remove_path(p, peer)).collect()
    }
}

/// Puts `path` among `paths` (not empty; replacing the same peer's), keeping the best first.
/// Returns `Some((best change, whether the peer's path is new))` when anything changed; with
/// `multipath`, a change of the equal-cost paths beside an unchanged best is one too.
#[allow(clippy::type_complexity)]
fn place(
    paths: &mut Paths,
    path: Path,
    peers: &[Option<PeerState>],
    local_as: u32,
    multipath: bool,
) -> Option<(Option<(Option<Path>, Path)>, bool)> {
    let peer = path.peer;
    let old_best = paths.first().cloned();
    let (fresh, replaced) = match paths.iter_mut().find(|p| p.peer == peer) {
        Some(existing) if same(existing, &path) => return None,
        Some(existing) => (false, Some(std::mem::replace(existing, path))),
        None => {
            paths.push(path);
            (true, None)
        }
    };
    paths.sort_by(|a, b| compare(a, b, peers, local_as));
    let new_best = paths.first().cloned().expect("just inserted");
    let mut changed = !old_best.as_ref().is_some_and(|old| same(old, &new_best));
    if !changed && multipath {
        let placed = paths.iter().find(|p| p.peer == peer).expect("just placed");
        changed = equal_cost(placed, &new_best, peers, local_as)
            || replaced.as_ref().zip(old_best.as_ref()).is_some_and(|(r, b)| equal_cost(r, b, peers, local_as));
    }
    Some((changed.then_some((old_best, new_best)), fresh))
}

/// Whether two paths are the same: interned attributes compare by address.
fn same(a: &Path, b: &Path) -> bool {
    a.peer == b.peer && a.stale == b.stale && Arc::ptr_eq(&a.attrs, &b.attrs)
}

/// Removes `peer`'s path to the prefix. `None` when it had none; otherwise the best change,
/// if the removed path was the best, or, given the peers and AS to rank paths with
/// (multipath), one of the paths as good as the best.
#[allow(clippy::type_complexity)]
fn take_path<K: Key>(
    table: &mut PrefixTable<K>,
    key: K,
    peer: PeerId,
    multipath: Option<(&[Option<PeerState>], u32)>,
) -> Option<Option<(Path, Option<Path>)>> {
    let paths = table.get_mut(key)?;
    let at = paths.iter().position(|p| p.peer == peer)?;
    let old_best = paths[0].clone();
    let removed = paths.remove(at);
    let new_best = paths.first().cloned();
    if paths.is_empty() {
        table.remove(key);
    }
    let changed =
        at == 0 || multipath.is_some_and(|(peers, local_as)| equal_cost(&removed, &old_best, peers, local_as));
    Some(changed.then_some((old_best, new_best)))
}

/// The decision process (RFC 4271 §9.1.2.2 with the usual tie-breakers): `Less` when `a` is
/// better.
fn compare(a: &Path, b: &Path, peers: &[Option<PeerState>], local_as: u32) -> Ordering {
    let id = |p: &Path| {
        p.attrs
            .originator_id
            .or_else(|| state_of(p, peers).and_then(|s| s.session.as_ref()).map(|x| x.router_id))
            .unwrap_or(Ipv4Addr::UNSPECIFIED)
    };
    let address = |p: &Path| state_of(p, peers).map(|s| s.config.address);
    compare_cost(a, b, peers, local_as).then_with(|| id(a).cmp(&id(b))).then_with(|| address(a).cmp(&address(b)))
}

/// Whether two paths are as good as each other but for the tie-breakers: together they are
/// the equal-cost paths of multipath (BIRD's `merge paths`).
fn equal_cost(a: &Path, b: &Path, peers: &[Option<PeerState>], local_as: u32) -> bool {
    compare_cost(a, b, peers, local_as) == Ordering::Equal
}

/// The peer a path came from (`None`: originated here).
fn state_of<'a>(path: &Path, peers: &'a [Option<PeerState>]) -> Option<&'a PeerState> {
    if path.peer == LOCAL {
        return None;
    }
    peers.get(usize::from(path.peer)).and_then(Option::as_ref)
}

/// [`compare`] up to the tie-breakers.
fn compare_cost(a: &Path, b: &Path, peers: &[Option<PeerState>], local_as: u32) -> Ordering {
    let lp = |p: &Path| p.attrs.local_pref.unwrap_or(DEFAULT_LOCAL_PREF);
    let local = |p: &Path| p.peer == LOCAL;
    let ebgp = |p: &Path| state_of(p, peers).is_some_and(|s| s.config.peer_as != s.config.local_as.unwrap_or(local_as));
    // Fresh paths beat stale ones (RFC 4724: stale paths are a last resort).
    a.stale
        .cmp(&b.stale)
        .then_with(|| lp(b).cmp(&lp(a)))
        .then_with(|| local(b).cmp(&local(a)))
        .then_with(|| a.attrs.as_path.hop_count().cmp(&b.attrs.as_path.hop_count()))
        .then_with(|| a.attrs.origin.cmp(&b.attrs.origin))
        .then_with(|| {
            if a.attrs.as_path.first_as() == b.attrs.as_path.first_as() {
                a.attrs.med.unwrap_or(0).cmp(&b.attrs.med.unwrap_or(0))
            } else {
                Ordering::Equal
            }
        })
        .then_with(|| ebgp(b).cmp(&ebgp(a)))
        .then_with(|| a.attrs.cluster_list.len().cmp(&b.attrs.cluster_list.len()))
}

#[cfg(test)]
mod tests;
