//! Network policy compiled for this node: per family, the chains (in `iptables-save` form) and
//! the ipsets they match. Pure: the iptables driver makes the kernel hold them.
//!
//! - Endpoints to which the same policies apply in a direction share one chain, named by a
//!   digest of those policies (their profile): `brin-fw-<digest>` (egress) and
//!   `brin-tw-<digest>` (ingress). `brin-from-wl` / `brin-to-wl` dispatch to it by an ipset
//!   per profile (`hash:net,iface`) holding each endpoint's address with its host veth, so a
//!   packet is dispatched only from (to) an endpoint's own address on its own veth; anything
//!   else from (to) a workload interface is dropped, and a pod sends nothing before its
//!   policy is in place. A pod whose policies other pods already have is one set member: no
//!   rule changes.
//! - A profile chain runs the policies that apply, tier by tier: each policy's chain
//!   (`brin-pi-<id>` / `brin-pe-<id>`, shared by every endpoint it applies to) marks an
//!   allowed packet ([`ALLOW_MARK`]: return, the packet goes on) or a passed one ([`PASS_MARK`]:
//!   the rest of the tier is skipped), or drops it; a tier with no verdict drops. A chain
//!   that falls off its end allows.
//! - Selectors, nets and named ports are ipsets named after what they hold, so a pod joining
//!   a selector is one set member, not a rule rewrite.
//! - A [`Memo`] carried from pass to pass makes a change cost what changed: a pod that comes
//!   compiles its own chains and the selections it joins, not every pod and policy again.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use brindle_datastore::policy::{
    Direction, EndpointView, NamespaceLabels, NamespaceScope, NormalRule, Policies, PolicyId, Selection, Selectors,
    Side,
};
use brindle_datastore::resource::{Action, PortMatch, Resource, WorkloadEndpoint};
use brindle_kernel::names::digest;
use ipnetwork::IpNetwork;

use crate::dataplane::iptables::{goto_rule, rule};

pub use brindle_datastore::resource::{POLICY_ALLOW_MARK as ALLOW_MARK, POLICY_PASS_MARK as PASS_MARK};

pub use brindle_kernel::names::{FROM_WORKLOADS, TO_WORKLOADS};

/// The prefix of every policy ipset's name (then `4-` or `6-` and a digest).
pub const SET_PREFIX: &str = "brin-p";

/// An ipset the rules match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IpSet {
    /// `hash:net` (addresses and networks) or `hash:ip,port` (named ports).
    pub kind: &'static str,
    /// Members as `ipset save` lists them.
    pub members: BTreeSet<String>,
}

/// One family's policy program. Its pieces are shared with the compiler's [`Memo`] and with
/// the last program: copying one is cheap, and comparing one with the last compares
/// pointers where nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FamilyProgram {
    /// Our policy chains (dispatch, endpoints, policies) by name, each its rules in
    /// `iptables-save` form.
    pub chains: BTreeMap<String, Arc<Vec<String>>>,
    /// The sets the rules match, by name.
    pub sets: BTreeMap<String, Arc<IpSet>>,
}

/// The policy program of both families: `[IPv4, IPv6]`.
pub type Program = [FamilyProgram; 2];

fn family_digit(v6: bool) -> char {
    if v6 { '6' } else { '4' }
}

/// The chain of one policy's rules for one direction.
pub fn policy_chain(id: &PolicyId, direction: Direction) -> String {
    brindle_kernel::names::policy_chain(&id.to_string(), direction == Direction::Ingress)
}

/// The dispatch chain of a direction.
fn dispatch_chain(direction: Direction) -> &'static str {
    if direction == Direction::Egress { FROM_WORKLOADS } else { TO_WORKLOADS }
}

/// The ipset type of a dispatch set: an endpoint's address with its host veth.
const DISPATCH_SET: &str = "hash:net,iface";

/// The dispatch set of a profile chain in one family.
pub fn dispatch_set(chain: &str, v6: bool) -> String {
    format!("{SET_PREFIX}{}-{}", family_digit(v6), digest(&format!("endpoints of {chain}")))
}

/// An endpoint's member of a dispatch set, as `ipset save` lists it.
pub fn dispatch_member(net: &IpNetwork, interface: &str) -> String {
    format!("{},{interface}", set_member(net))
}

fn protocol_name(number: u8) -> String {
    match number {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "ipv6-icmp".into(),
        132 => "sctp".into(),
        136 => "udplite".into(),
        n => n.to_string(),
    }
}

fn protocol_label(number: u8) -> &'static str {
    match number {
        17 => "udp",
        132 => "sctp",
        136 => "udplite",
        _ => "tcp",
    }
}

/// Where a policy set's members come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum SetSource {
    /// Fixed networks (`hash:net` members).
    Nets(BTreeSet<String>),
    /// The addresses of a selection's endpoints.
    Endpoints(Selection),
    /// `address,protocol:port` of the named port `name` of a selection's endpoints (all
    /// endpoints when `None`).
    NamedPort { owners: Option<Selection>, name: String, label: &'static str },
}

impl SetSource {
    /// Whether a set of this source may hold other members now: its selection's members
    /// changed (`dirty`), or, for a named port of every endpoint, any endpoint did.
    fn is_stale(&self, dirty: &HashSet<Selection>, endpoints_changed: bool) -> bool {
        match self {
            SetSource::Nets(_) => false,
            SetSource::Endpoints(s) | SetSource::NamedPort { owners: Some(s), .. } => {
                !dirty.is_empty() && dirty.contains(s)
            }
            SetSource::NamedPort { owners: None, .. } => endpoints_changed,
        }
    }
}

/// A set a policy chain matches: its name, type and source.
type SetRequest = (String, &'static str, SetSource);

/// One policy's chain for one direction and family, with the sets it matches.
#[derive(Debug)]
struct CompiledPolicy {
    rules: Arc<Vec<String>>,
    sets: Vec<SetRequest>,
}

/// The policies that apply to some endpoints in one direction, as one chain.
#[derive(Debug)]
struct Profile {
    chain: String,
    rules: Arc<Vec<String>>,
    /// The policies its rules jump to.
    used: Vec<PolicyId>,
}

/// One family's policy chains and the sets they match, for the policies in use.
#[derive(Debug, Clone, Default)]
struct PolicyPart {
    /// The policies in use, with their directions.
    used: HashSet<(PolicyId, Direction)>,
    chains: Vec<(String, Arc<Vec<String>>)>,
    sets: BTreeMap<String, Arc<IpSet>>,
    /// Where each set's members come from.
    sources: Vec<SetRequest>,
}

/// A local endpoint's profiles: egress, then ingress.
type CompiledEndpoint = [Arc<Profile>; 2];

/// What decides which policies apply to an endpoint and which selections hold it: its
/// namespace, labels and service account.
type Identity = (String, BTreeMap<String, String>, Option<String>);

/// A hash of an endpoint's identity.
fn identity_hash(view: EndpointView<'_>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (view.namespace, view.labels, view.service_account).hash(&mut h);
    h.finish()
}

/// Whether two endpoints have the same identity.
fn same_identity(a: EndpointView<'_>, b: EndpointView<'_>) -> bool {
    a.namespace == b.namespace && a.labels == b.labels && a.service_account == b.service_account
}

/// An endpoint's identity across compilations: namespace and name.
type EndpointKey = (String, String);

fn key_of(endpoint: &Resource<WorkloadEndpoint>) -> EndpointKey {
    let (namespace, name) = key_ref(endpoint);
    (namespace.to_owned(), name.to_owned())
}

/// An endpoint's key, borrowed.
fn key_ref(endpoint: &Resource<WorkloadEndpoint>) -> (&str, &str) {
    (endpoint.metadata.namespace.as_deref().unwrap_or_default(), endpoint.metadata.name.as_str())
}

/// Everything of an endpoint that policy depends on, as one number.
fn fingerprint(endpoint: &Resource<WorkloadEndpoint>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    endpoint.metadata.labels.hash(&mut h);
    let spec = &endpoint.spec;
    (&spec.node, &spec.interface_name, &spec.ip_networks, &spec.service_account_name).hash(&mut h);
    for p in &spec.ports {
        (&p.name, &p.protocol, p.port).hash(&mut h);
    }
    h.finish()
}

/// What one compilation leaves for the next, which redoes only what changed: while the
/// policies and namespaces are the same, an unchanged endpoint keeps its chains, a policy its
/// chains, a selection its members (updated by the endpoints that changed) and a set its
/// members (rebuilt only when they may have changed). Pieces are shared (`Arc`), so a program
/// costs little to copy and to compare with the last.
#[derive(Debug, Default)]
pub struct Memo {
    context: Option<(Policies, NamespaceLabels)>,
    fingerprints: HashMap<EndpointKey, u64>,
    members: HashMap<Selection, BTreeSet<EndpointKey>>,
    policies: HashMap<(PolicyId, Direction, bool), Arc<CompiledPolicy>>,
    /// Profiles by chain name.
    profiles: HashMap<String, Arc<Profile>>,
    /// The profiles of each identity seen, by a hash of it.
    identities: HashMap<u64, Vec<(Identity, Arc<CompiledEndpoint>)>>,
    /// Each family's last policy part.
    parts: [Option<Arc<PolicyPart>>; 2],
    sets: HashMap<String, Arc<IpSet>>,
    /// Selectors parsed once for as long as the context lasts.
    selectors: Selectors,
}

/// Compiles policy for the endpoints of `node`, each family on its own, reusing `memo`.
pub struct Compiler<'a> {
    policies: &'a Policies,
    endpoints: &'a [Resource<WorkloadEndpoint>],
    namespaces: &'a NamespaceLabels,
    memo: &'a mut Memo,
    /// Endpoints (indices) in groups of one identity, with a hash of it.
    groups: Vec<(u64, Vec<usize>)>,
    /// Each endpoint's group.
    group_of: Vec<usize>,
    /// Groups by namespace: a selection looks only in its namespaces, and judges each
    /// identity once.
    by_namespace: BTreeMap<&'a str, Vec<usize>>,
    /// Endpoint indices by key, for this compilation.
    by_key: HashMap<(&'a str, &'a str), usize>,
}

impl<'a> Compiler<'a> {
    /// A compiler over every endpoint of the cluster (sets hold remote ones too).
    pub fn new(
        policies: &'a Policies,
        endpoints: &'a [Resource<WorkloadEndpoint>],
        namespaces: &'a NamespaceLabels,
        memo: &'a mut Memo,
    ) -> Self {
        let mut groups: Vec<(u64, Vec<usize>)> = Vec::new();
        let mut group_of = Vec::with_capacity(endpoints.len());
        // Groups by identity hash.
        let mut buckets: HashMap<u64, Vec<usize>> = HashMap::new();
        let mut by_key = HashMap::with_capacity(endpoints.len());
        for (i, e) in endpoints.iter().enumerate() {
            let view = EndpointView::of(e);
            let hash = identity_hash(view);
            let bucket = buckets.entry(hash).or_default();
            let found =
                bucket.iter().copied().find(|&g| same_identity(EndpointView::of(&endpoints[groups[g].1[0]]), view));
            let g = found.unwrap_or_else(|| {
                groups.push((hash, Vec::new()));
                bucket.push(groups.len() - 1);
                groups.len() - 1
            });
            groups[g].1.push(i);
            group_of.push(g);
            by_key.insert(key_ref(e), i);
        }
        let mut by_namespace: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (g, (_, members)) in groups.iter().enumerate() {
            by_namespace.entry(key_ref(&endpoints[members[0]]).0).or_default().push(g);
        }
        Compiler { policies, endpoints, namespaces, memo, groups, group_of, by_namespace, by_key }
    }

    /// The index of the endpoint `key` names in this compilation, if it is there.
    fn index_of(&self, key: &EndpointKey) -> Option<usize> {
        self.by_key.get(&(key.0.as_str(), key.1.as_str())).copied()
    }

    /// The members of `selection`, computed in full the first time it is asked for.
    fn members_of(&mut self, selection: &Selection) -> &BTreeSet<EndpointKey> {
        if !self.memo.members.contains_key(selection) {
            let candidates: Vec<usize> = match &selection.namespaces {
                NamespaceScope::Named(ns) => {
                    self.by_namespace.get(ns.as_str()).into_iter().flatten().copied().collect()
                }
                _ => self.by_namespace.values().flatten().copied().collect(),
            };
            let found = candidates
                .into_iter()
                .map(|g| &self.groups[g].1)
                .filter(|group| {
                    let view = EndpointView::of(&self.endpoints[group[0]]);
                    selection.contains(view, self.namespaces, &mut self.memo.selectors)
                })
                .flat_map(|group| group.iter().map(|&i| key_of(&self.endpoints[i])))
                .collect();
            self.memo.members.insert(selection.clone(), found);
        }
        &self.memo.members[selection]
    }

    /// Brings the memo up to date with the endpoints: returns whether any endpoint came,
    /// went or changed, and the selections whose members changed.
    fn refresh(&mut self) -> (bool, HashSet<Selection>) {
        let context_same = self.memo.context.as_ref().is_some_and(|(p, n)| p == self.policies && n == self.namespaces);
        if !context_same {
            *self.memo = Memo { context: Some((self.policies.clone(), self.namespaces.clone())), ..Memo::default() };
        }
        // The endpoints that came, went or changed (only counted while no selection is known
        // yet: there are no members to update then).
        let track = !self.memo.members.is_empty();
        let mut changed: Vec<EndpointKey> = Vec::new();
        let mut any = false;
        let mut last = std::mem::take(&mut self.memo.fingerprints);
        let mut now: HashMap<EndpointKey, u64> = HashMap::with_capacity(self.endpoints.len());
        for e in self.endpoints {
            let (key, print) = (key_of(e), fingerprint(e));
            if last.remove(&key) != Some(print) {
                any = true;
                if track {
                    changed.push(key.clone());
                }
            }
            now.insert(key, print);
        }
        any |= !last.is_empty(); // endpoints that went
        changed.extend(last.into_keys());
        self.memo.fingerprints = now;
        let mut dirty = HashSet::new();
        if !any {
            return (false, dirty);
        }
        let selections: Vec<Selection> = self.memo.members.keys().cloned().collect();
        for selection in selections {
            for key in &changed {
                let inside = self.index_of(key).is_some_and(|i| {
                    selection.contains(EndpointView::of(&self.endpoints[i]), self.namespaces, &mut self.memo.selectors)
                });
                let members = self.memo.members.get_mut(&selection).expect("listed above");
                let was = members.contains(key);
                if inside {
                    members.insert(key.clone());
                } else {
                    members.remove(key);
                }
                // A member that changed may have changed its addresses or ports too.
                if was || inside {
                    dirty.insert(selection.clone());
                }
            }
        }
        (true, dirty)
    }

    /// The program for the endpoints on `node`.
    pub fn compile(mut self, node: &str) -> Program {
        let (endpoints_changed, dirty) = self.refresh();

        // Profile chains are the same in both families; dispatch sets and rules are not.
        let mut shared: BTreeMap<String, Arc<Vec<String>>> = BTreeMap::new();
        let mut profiles: Vec<(Direction, Arc<Profile>)> = Vec::new();
        // Each profile's dispatch members per family, by its index in `profiles`.
        let mut members: Vec<[Vec<String>; 2]> = Vec::new();
        let mut index: HashMap<*const Profile, usize> = HashMap::new();
        // Each local identity's profiles, found once.
        let mut by_group: Vec<Option<Arc<CompiledEndpoint>>> = vec![None; self.groups.len()];
        let endpoints = self.endpoints;
        for (i, endpoint) in endpoints.iter().enumerate().filter(|(_, e)| e.spec.node == node) {
            let g = self.group_of[i];
            let compiled = match &by_group[g] {
                Some(compiled) => Arc::clone(compiled),
                None => {
                    let compiled = self.compile_endpoint(endpoint, self.groups[g].0);
                    by_group[g] = Some(Arc::clone(&compiled));
                    compiled
                }
            };
            let addresses: Vec<(usize, String)> = (endpoint.spec.ip_networks.iter())
                .map(|net| (usize::from(net.is_ipv6()), dispatch_member(net, &endpoint.spec.interface_name)))
                .collect();
            for (profile, direction) in compiled.iter().zip([Direction::Egress, Direction::Ingress]) {
                let i = *index.entry(Arc::as_ptr(profile)).or_insert_with(|| {
                    shared.insert(profile.chain.clone(), Arc::clone(&profile.rules));
                    profiles.push((direction, Arc::clone(profile)));
                    members.push(Default::default());
                    profiles.len() - 1
                });
                for (family, member) in &addresses {
                    members[i][*family].push(member.clone());
                }
            }
        }
        let mut members: Vec<[BTreeSet<String>; 2]> =
            members.into_iter().map(|[v4, v6]| [v4.into_iter().collect(), v6.into_iter().collect()]).collect();

        // Identities and profiles no endpoint has any more are let go (each is held by the
        // memo and, while this pass lasts, by every identity that has it here).
        self.memo.identities.retain(|_, known| {
            known.retain(|(_, compiled)| Arc::strong_count(compiled) > 1);
            !known.is_empty()
        });
        self.memo.profiles.retain(|_, profile| Arc::strong_count(profile) > 1);
        let used: HashSet<(&PolicyId, Direction)> =
            profiles.iter().flat_map(|(direction, p)| p.used.iter().map(|id| (id, *direction))).collect();
        let mut program = Program::default();
        for (family, out) in program.iter_mut().enumerate() {
            let v6 = family == 1;
            out.chains.clone_from(&shared);
            for direction in [Direction::Egress, Direction::Ingress] {
                let root = dispatch_chain(direction);
                let flags = if direction == Direction::Egress { "src,src" } else { "dst,dst" };
                let mut rules = Vec::new();
                let mut dispatched: Vec<(&str, usize)> = (profiles.iter().enumerate())
                    .filter(|(i, (d, _))| *d == direction && !members[*i][family].is_empty())
                    .map(|(i, (_, profile))| (profile.chain.as_str(), i))
                    .collect();
                dispatched.sort_unstable();
                for (chain, i) in dispatched {
                    let name = dispatch_set(chain, v6);
                    let members = std::mem::take(&mut members[i][family]);
                    let set = match self.memo.sets.get(&name).filter(|s| s.members == members) {
                        Some(set) => Arc::clone(set),
                        None => self.remember_set(&name, IpSet { kind: DISPATCH_SET, members }),
                    };
                    out.sets.insert(name.clone(), set);
                    let matches = format!("-m set --match-set {name} {flags}");
                    rules.push(goto_rule(root, &matches, &format!("endpoints of {chain}"), chain));
                }
                let why = "a workload address or interface with no endpoint";
                rules.push(rule(root, "", why, "DROP"));
                out.chains.insert(root.to_owned(), Arc::new(rules));
            }
            let part = self.policy_part(family, &used, &dirty, endpoints_changed);
            out.chains.extend(part.chains.iter().map(|(name, rules)| (name.clone(), Arc::clone(rules))));
            out.sets.extend(part.sets.iter().map(|(name, set)| (name.clone(), Arc::clone(set))));
        }
        program
    }

    /// One family's policy chains and sets for the policies `used`. While the same policies
    /// are in use (new profiles of them are pods with other labels) the last part is reused:
    /// only the sets whose members may have changed are built again.
    fn policy_part(
        &mut self,
        family: usize,
        used: &HashSet<(&PolicyId, Direction)>,
        dirty: &HashSet<Selection>,
        endpoints_changed: bool,
    ) -> Arc<PolicyPart> {
        let v6 = family == 1;
        let same = |p: &PolicyPart| p.used.len() == used.len() && p.used.iter().all(|(id, d)| used.contains(&(id, *d)));
        let Some(mut part) = self.memo.parts[family].take().filter(|p| same(p)) else {
            let part = Arc::new(self.build_policy_part(v6, used, dirty, endpoints_changed));
            self.memo.parts[family] = Some(Arc::clone(&part));
            return part;
        };
        if endpoints_changed {
            let stale: Vec<usize> = (part.sources.iter().enumerate())
                .filter(|(_, (_, _, source))| source.is_stale(dirty, endpoints_changed))
                .map(|(i, _)| i)
                .collect();
            if !stale.is_empty() {
                let part = Arc::make_mut(&mut part);
                for i in stale {
                    let (name, kind, source) = part.sources[i].clone();
                    let set = IpSet { kind, members: self.set_members(&source, v6) };
                    part.sets.insert(name.clone(), self.remember_set(&name, set));
                }
            }
        }
        self.memo.parts[family] = Some(Arc::clone(&part));
        part
    }

    fn build_policy_part(
        &mut self,
        v6: bool,
        used: &HashSet<(&PolicyId, Direction)>,
        dirty: &HashSet<Selection>,
        endpoints_changed: bool,
    ) -> PolicyPart {
        let used_owned = used.iter().map(|(id, d)| ((*id).clone(), *d)).collect();
        let mut out = PolicyPart { used: used_owned, ..PolicyPart::default() };
        let policies = self.policies;
        for tier in &policies.tiers {
            for policy in &tier.policies {
                for direction in [Direction::Ingress, Direction::Egress] {
                    if !used.contains(&(&policy.id, direction)) {
                        continue;
                    }
                    let memo_key = (policy.id.clone(), direction, v6);
                    let compiled = match self.memo.policies.get(&memo_key) {
                        Some(compiled) => Arc::clone(compiled),
                        None => {
                            let rules = policy.rules(direction).unwrap_or_default();
                            let compiled = Arc::new(self.compile_policy(&policy.id, direction, rules, v6));
                            self.memo.policies.insert(memo_key, Arc::clone(&compiled));
                            compiled
                        }
                    };
                    out.chains.push((policy_chain(&policy.id, direction), Arc::clone(&compiled.rules)));
                    for (name, kind, source) in &compiled.sets {
                        if out.sets.contains_key(name) {
                            continue;
                        }
                        let stale = source.is_stale(dirty, endpoints_changed);
                        let set = match self.memo.sets.get(name).filter(|_| !stale) {
                            Some(set) => Arc::clone(set),
                            None => {
                                let members = self.set_members(source, v6);
                                self.remember_set(name, IpSet { kind, members })
                            }
                        };
                        out.sets.insert(name.clone(), set);
                        out.sources.push((name.clone(), kind, source.clone()));
                    }
                }
            }
        }
        out
    }

    /// Keeps `set` as the memo's `name`, and returns it.
    fn remember_set(&mut self, name: &str, set: IpSet) -> Arc<IpSet> {
        let set = Arc::new(set);
        self.memo.sets.insert(name.to_owned(), Arc::clone(&set));
        set
    }

    /// An endpoint's profiles, worked out once for every endpoint of the same identity
    /// (`hash` is a hash of it).
    fn compile_endpoint(&mut self, endpoint: &Resource<WorkloadEndpoint>, hash: u64) -> Arc<CompiledEndpoint> {
        let view = EndpointView::of(endpoint);
        let same = |identity: &Identity| {
            let known = EndpointView {
                namespace: &identity.0,
                labels: &identity.1,
                service_account: identity.2.as_deref(),
                ports: &[],
            };
            same_identity(known, view)
        };
        if let Some((_, known)) = self.memo.identities.get(&hash).into_iter().flatten().find(|(i, _)| same(i)) {
            return Arc::clone(known);
        }
        let compiled =
            Arc::new([Direction::Egress, Direction::Ingress].map(|direction| self.profile(endpoint, direction)));
        let identity = (view.namespace.to_owned(), view.labels.clone(), view.service_account.map(str::to_owned));
        self.memo.identities.entry(hash).or_default().push((identity, Arc::clone(&compiled)));
        compiled
    }

    /// The profile chain of `endpoint` in `direction`: its name and rules, built once for
    /// every endpoint with the same policies.
    fn profile(&mut self, endpoint: &Resource<WorkloadEndpoint>, direction: Direction) -> Arc<Profile> {
        let view = EndpointView::of(endpoint);
        let applying = self.policies.applying(view, self.namespaces, direction, &mut self.memo.selectors);
        let mut profile = String::new();
        for (tier, policies) in &applying {
            profile += &format!("tier {}:", tier.name);
            for policy in policies {
                profile += &format!(" {}", policy.id);
            }
            profile += ";";
        }
        let chain = brindle_kernel::names::profile_chain(&profile, direction == Direction::Ingress);
        if let Some(known) = self.memo.profiles.get(&chain) {
            return Arc::clone(known);
        }
        let used = applying.iter().flat_map(|(_, policies)| policies.iter().map(|p| p.id.clone())).collect();
        let clear = format!("MARK --set-xmark 0x0/{:#x}", ALLOW_MARK | PASS_MARK);
        let not_passed = format!("-m mark --mark 0x0/{PASS_MARK:#x}");
        let allowed = format!("-m mark --mark {ALLOW_MARK:#x}/{ALLOW_MARK:#x}");
        // No policy: not isolated, an empty chain returns at once.
        let mut rules = Vec::new();
        for (tier, policies) in applying {
            if rules.is_empty() {
                rules.push(rule(&chain, "", "policy marks cleared", &clear));
            }
            for policy in policies {
                let target = policy_chain(&policy.id, direction);
                rules.push(rule(&chain, &not_passed, &format!("tier {} {}", tier.name, policy.id), &target));
                rules.push(rule(&chain, &allowed, &format!("allowed by {}", policy.id), "RETURN"));
            }
            rules.push(rule(&chain, &not_passed, &format!("end of tier {}: no policy allowed it", tier.name), "DROP"));
            rules.push(rule(&chain, "", &format!("passed on from tier {}", tier.name), &clear));
        }
        let profile = Arc::new(Profile { chain: chain.clone(), rules: Arc::new(rules), used });
        self.memo.profiles.insert(chain, Arc::clone(&profile));
        profile
    }

    /// The members of a set of `source`, as `ipset save` lists them.
    fn set_members(&mut self, source: &SetSource, v6: bool) -> BTreeSet<String> {
        let family = |n: &&IpNetwork| n.is_ipv6() == v6;
        match source {
            SetSource::Nets(nets) => nets.clone(),
            SetSource::Endpoints(selection) => {
                let keys: Vec<EndpointKey> = self.members_of(selection).iter().cloned().collect();
                keys.iter()
                    .filter_map(|k| self.index_of(k))
                    .flat_map(|i| self.endpoints[i].spec.ip_networks.iter().filter(family).map(set_member))
                    .collect()
            }
            SetSource::NamedPort { owners, name, label } => {
                let owners: Vec<usize> = match owners {
                    Some(selection) => {
                        let keys: Vec<EndpointKey> = self.members_of(selection).iter().cloned().collect();
                        keys.iter().filter_map(|k| self.index_of(k)).collect()
                    }
                    None => (0..self.endpoints.len()).collect(),
                };
                let mut members = BTreeSet::new();
                for i in owners {
                    let spec = &self.endpoints[i].spec;
                    for port in spec.ports.iter().filter(|p| p.name == *name && p.protocol.eq_ignore_ascii_case(label))
                    {
                        for net in spec.ip_networks.iter().filter(family) {
                            members.insert(format!("{},{label}:{}", net.ip(), port.port));
                        }
                    }
                }
                members
            }
        }
    }

    fn compile_policy(
        &mut self,
        id: &PolicyId,
        direction: Direction,
        rules: &[NormalRule],
        v6: bool,
    ) -> CompiledPolicy {
        let chain = policy_chain(id, direction);
        let mut out = Vec::new();
        let mut sets = Vec::new();
        let dir = if direction == Direction::Ingress { "ingress" } else { "egress" };
        for (i, normal) in rules.iter().enumerate() {
            let why = format!("{id} {dir}[{i}]");
            let Some(variants) = rule_matches(normal, v6, &mut sets) else { continue };
            let (target, then_return) = match normal.action {
                Action::Allow => (format!("MARK --set-xmark {ALLOW_MARK:#x}/{ALLOW_MARK:#x}"), Some(ALLOW_MARK)),
                Action::Pass => (format!("MARK --set-xmark {PASS_MARK:#x}/{PASS_MARK:#x}"), Some(PASS_MARK)),
                Action::Deny => ("DROP".into(), None),
                Action::Log => (format!("LOG --log-prefix \"{}\"", log_prefix(id)), None),
            };
            for matches in &variants {
                out.push(rule(&chain, matches, &why, &target));
            }
            if let Some(mark) = then_return {
                out.push(rule(&chain, &format!("-m mark --mark {mark:#x}/{mark:#x}"), &why, "RETURN"));
            }
        }
        CompiledPolicy { rules: Arc::new(out), sets }
    }
}

/// The match strings of one rule in one family (several when its ports need several rules),
/// or `None` when the rule cannot match in this family; the sets they match are added to
/// `sets`.
fn rule_matches(rule: &NormalRule, v6: bool, sets: &mut Vec<SetRequest>) -> Option<Vec<String>> {
    if rule.ip_version.is_some_and(|v| (v == 6) != v6) {
        return None;
    }
    let wrong_icmp = if v6 { 1 } else { 58 };
    if rule.protocol == Some(wrong_icmp) {
        return None;
    }
    let mut common = String::new();
    match (rule.protocol, rule.not_protocol) {
        (Some(p), Some(not)) if p == not => return None,
        (Some(p), _) => common += &format!(" -p {}", protocol_name(p)),
        (None, Some(p)) => common += &format!(" ! -p {}", protocol_name(p)),
        _ => {}
    }
    let (icmp_module, icmp_option) = if v6 { ("icmp6", "--icmpv6-type") } else { ("icmp", "--icmp-type") };
    for (icmp, negate) in [(rule.icmp, ""), (rule.not_icmp, "! ")] {
        if let Some(icmp) = icmp {
            let value = match icmp.code {
                Some(code) => format!("{}/{code}", icmp.kind),
                None => icmp.kind.to_string(),
            };
            common += &format!(" -m {icmp_module} {negate}{icmp_option} {value}");
        }
    }
    let mut port_variants = vec![String::new()];
    for (side, direction) in [(&rule.source, "src"), (&rule.destination, "dst")] {
        common += &side_matches(side, direction, v6, sets)?;
        if let Some(variants) = port_matches(side, direction, rule.protocol, v6, sets) {
            port_variants =
                port_variants.iter().flat_map(|a| variants.iter().map(move |b| format!("{a}{b}"))).collect();
        }
    }
    Some(port_variants.into_iter().map(|ports| format!("{common}{ports}").trim_start().to_owned()).collect())
}

/// A set request named after what it holds; its name.
fn request(sets: &mut Vec<SetRequest>, v6: bool, kind: &'static str, identity: &str, source: SetSource) -> String {
    let name = format!("{SET_PREFIX}{}-{}", family_digit(v6), digest(identity));
    sets.push((name.clone(), kind, source));
    name
}

/// Nets and endpoint sets of one side; `None` when its nets leave nothing in this family.
fn side_matches(side: &Side, direction: &str, v6: bool, sets: &mut Vec<SetRequest>) -> Option<String> {
    let mut out = String::new();
    let family_nets = |nets: &[IpNetwork]| -> BTreeSet<String> {
        nets.iter().filter(|n| n.is_ipv6() == v6).map(set_member).collect()
    };
    let nets = family_nets(&side.nets);
    if !side.nets.is_empty() && nets.is_empty() {
        return None;
    }
    for (nets, negate) in [(nets, ""), (family_nets(&side.not_nets), "! ")] {
        if !nets.is_empty() {
            let name = request(sets, v6, "hash:net", &format!("nets {nets:?}"), SetSource::Nets(nets));
            out += &format!(" -m set {negate}--match-set {name} {direction}");
        }
    }
    for (selection, negate) in [(&side.endpoints, ""), (&side.not_endpoints, "! ")] {
        if let Some(selection) = selection {
            let identity = format!("endpoints {selection}");
            let name = request(sets, v6, "hash:net", &identity, SetSource::Endpoints(selection.clone()));
            out += &format!(" -m set {negate}--match-set {name} {direction}");
        }
    }
    Some(out)
}

/// The port matches of one side, one per rule the ports need (numbers by fifteen, one per
/// named port); `None` when the side names no ports.
fn port_matches(
    side: &Side,
    direction: &str,
    protocol: Option<u8>,
    v6: bool,
    sets: &mut Vec<SetRequest>,
) -> Option<Vec<String>> {
    let option = if direction == "src" { "--sports" } else { "--dports" };
    let mut negated = String::new();
    for chunk in multiport_chunks(&side.not_ports) {
        negated += &format!(" -m multiport ! {option} {chunk}");
    }
    if side.ports.is_empty() {
        return (!negated.is_empty()).then(|| vec![negated]);
    }
    let mut variants: Vec<String> =
        multiport_chunks(&side.ports).into_iter().map(|c| format!(" -m multiport {option} {c}{negated}")).collect();
    let label = protocol_label(protocol.unwrap_or(6));
    for port in &side.ports {
        let PortMatch::Named(name) = port else { continue };
        let identity = format!("port {name}/{label} of {:?}", side.endpoints.as_ref().map(ToString::to_string));
        let source = SetSource::NamedPort { owners: side.endpoints.clone(), name: name.clone(), label };
        let set = request(sets, v6, "hash:ip,port", &identity, source);
        variants.push(format!(" -m set --match-set {set} {direction},{direction}{negated}"));
    }
    Some(variants)
}

/// A member of a `hash:net` set as `ipset save` lists it (a host without its length).
fn set_member(net: &IpNetwork) -> String {
    let host = if net.is_ipv4() { 32 } else { 128 };
    if net.prefix() == host { net.ip().to_string() } else { net.to_string() }
}

/// Numeric ports and ranges as `multiport` lists of at most fifteen slots (a range takes
/// two); named ports are left to sets.
fn multiport_chunks(ports: &[PortMatch]) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut slots = 0;
    for port in ports {
        let (text, size) = match port {
            PortMatch::Range(a, b) if a == b => (a.to_string(), 1),
            PortMatch::Range(a, b) => (format!("{a}:{b}"), 2),
            PortMatch::Named(_) => continue,
        };
        if slots + size > 15 {
            chunks.push(current.join(","));
            current.clear();
            slots = 0;
        }
        current.push(text);
        slots += size;
    }
    if !current.is_empty() {
        chunks.push(current.join(","));
    }
    chunks
}

/// The LOG prefix naming a policy (the kernel keeps 29 characters).
fn log_prefix(id: &PolicyId) -> String {
    let name = match &id.namespace {
        Some(ns) => format!("{ns}/{}", id.name),
        None => id.name.clone(),
    };
    let mut prefix = format!("brindle {name}");
    prefix.truncate(27);
    prefix + ": "
}

#[cfg(test)]
mod tests;
