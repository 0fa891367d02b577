//! Block IPAM over the datastore: Calico's block model, where a block's owner is a field of the
//! block itself.
//!
//! An allocation on a node with room in one of its blocks costs one compare-and-swap of that
//! block (the client remembers each block's value and revision, so it does not even read it
//! first unless someone else wrote it meanwhile). When the node's blocks are full it claims a
//! free block of an eligible pool with one create; when no block is free it borrows a single
//! address from another node's block, unless strict affinity forbids it. Every address carries
//! its handle, so a write whose outcome was unknown (a timeout) is cleaned up by releasing the
//! handle: nothing leaks.

mod block;
mod check;
mod gc;
pub mod pools;
mod write_lock;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnetwork::IpNetwork;

pub use block::{Allocation, AllocationKind, Block, Released, recorded_form};
pub use check::{AddressConflict, BlockIssue, CheckReport, GcRecord, GoneNode, Leak, LeakSighting, PodKeys};
pub use gc::{GcOutcome, LeakOutcome, NodeOutcome};
use pools::Family;
pub use write_lock::WriteLock;

use crate::client::Client;
use crate::keys;
use crate::resource::{IpPool, IpamConfiguration, Node, PoolUse, Resource};
use crate::store::{KeyValue, KubernetesStore, Revision};
use crate::{Error, Result};

/// How many times one call retries after losing a compare-and-swap race.
const MAX_ATTEMPTS: usize = 100;

/// What to allocate.
#[derive(Debug, Clone, Default)]
pub struct AllocateRequest {
    /// Who the addresses are for; `holder.handle` releases them.
    pub holder: Allocation,
    /// How many IPv4 addresses.
    pub ipv4: u32,
    /// How many IPv6 addresses.
    pub ipv6: u32,
    /// IPv4 pools to use (names or CIDRs); empty means every eligible pool.
    pub ipv4_pools: Vec<String>,
    /// IPv6 pools to use.
    pub ipv6_pools: Vec<String>,
}

/// One allocated address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    /// The address.
    pub ip: IpAddr,
    /// The block it came from.
    pub block: IpNetwork,
    /// The pool the block belongs to.
    pub pool: String,
}

/// What an attempt to claim a block came to.
enum Claim {
    /// The block, with the addresses taken in it.
    Claimed(IpNetwork, Vec<IpAddr>),
    /// A block the listing showed free was taken: list again.
    Stale,
    /// The listing shows no block to claim.
    NoneFree,
}

/// A source of wall-clock milliseconds (injectable for tests of the cooldown).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The IPAM client. Cheap to share; keep one per process to benefit from its block cache.
pub struct Ipam {
    client: Client,
    clock: Clock,
    context_ttl: Duration,
    cache: Mutex<Cache>,
    kubernetes: Option<KubernetesStore>,
    write_lock: Option<WriteLock>,
}

impl std::fmt::Debug for Ipam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ipam").field("client", &self.client).finish_non_exhaustive()
    }
}

/// What the client remembers between calls.
#[derive(Default)]
struct Cache {
    /// Each block's last known value and revision.
    blocks: Blocks,
    /// The blocks of each node a listing has shown: of the nodes whose own blocks were
    /// listed, and of every node once every block was.
    owned: HashMap<String, BTreeSet<IpNetwork>>,
    /// Whether every block has been listed: a node missing from `owned` then owns none.
    listed_all: bool,
    /// Pools, settings and node labels, with when they were read.
    context: HashMap<String, (Instant, Arc<Context>)>,
    /// How many block writes lost a race to another writer.
    lost_races: u64,
}

/// Blocks by CIDR with their revisions, shared with the cache rather than copied: an
/// allocation copies only the block it edits.
type Blocks = HashMap<IpNetwork, (Arc<Block>, Revision)>;

/// The resources an allocation depends on.
struct Context {
    pools: Vec<Resource<IpPool>>,
    config: IpamConfiguration,
    labels: BTreeMap<String, String>,
}

fn system_clock() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Ipam {
    /// An IPAM client that reads pools and settings fresh on every call.
    pub fn new(client: Client) -> Self {
        Ipam {
            client,
            clock: Arc::new(system_clock),
            context_ttl: Duration::ZERO,
            cache: Mutex::default(),
            kubernetes: None,
            write_lock: None,
        }
    }

    /// Judges pods' addresses by their Pods in `kubernetes` (brindle-controllers, whose
    /// cluster has a Pod for every pod it wires): garbage collection then releases a pod's
    /// address only when its Pod is gone, and never while it exists. Without it, a pod's
    /// address is judged by its WorkloadEndpoint.
    pub fn with_kubernetes(mut self, kubernetes: KubernetesStore) -> Self {
        self.kubernetes = Some(kubernetes);
        self
    }

    /// Reuses pools, IPAM settings and node labels for up to `ttl` (long-lived callers such as
    /// the agent): pool changes then take up to `ttl` to be seen.
    pub fn with_context_ttl(mut self, ttl: Duration) -> Self {
        self.context_ttl = ttl;
        self
    }

    /// Holds `lock` around each write of a block (see [`WriteLock`]): for the short-lived
    /// processes of one node that allocate at the same time, such as CNI calls.
    pub fn with_write_lock(mut self, lock: WriteLock) -> Self {
        self.write_lock = Some(lock);
        self
    }

    /// Uses `clock` instead of the system clock.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Allocates the requested addresses. On any failure, what was already taken for this
    /// request is given back.
    pub async fn allocate(&self, request: &AllocateRequest) -> Result<Vec<Assigned>> {
        if request.holder.handle.is_empty() || request.holder.node.is_empty() {
            return Err(Error::Invalid("an allocation needs a handle and a node".into()));
        }
        let context = self.context(&request.holder.node).await?;
        let mut assigned = Vec::new();
        let usage = match request.holder.kind {
            AllocationKind::Workload => PoolUse::Workload,
            AllocationKind::Tunnel => PoolUse::Tunnel,
        };
        for (family, count, requested) in
            [(Family::V4, request.ipv4, &request.ipv4_pools), (Family::V6, request.ipv6, &request.ipv6_pools)]
        {
            if count == 0 {
                continue;
            }
            let outcome = match pools::eligible(
                &context.pools,
                requested,
                family,
                usage,
                &request.holder.node,
                &context.labels,
            ) {
                Ok(eligible) => self.allocate_family(&context, &eligible, &request.holder, count, &mut assigned).await,
                Err(e) => Err(e),
            };
            if let Err(e) = outcome {
                let ips: Vec<IpAddr> = assigned.iter().map(|a: &Assigned| a.ip).collect();
                if let Err(undo) = self.release_ips(&ips).await {
                    tracing::warn!(error = %undo, ?ips, "could not give back a partial allocation; release the handle to clean up");
                }
                return Err(e);
            }
        }
        Ok(assigned)
    }

    /// Takes exactly `ips` for `holder` (a pod that asks for fixed addresses): each must lie in
    /// an enabled IPPool that allows workload addresses, and be free or already the holder's.
    /// A block that does not exist yet is claimed for the holder's node; one owned by another
    /// node lends the address. All or nothing: on a refusal, what was taken is given back.
    pub async fn allocate_ips(&self, holder: &Allocation, ips: &[IpAddr]) -> Result<Vec<Assigned>> {
        if holder.handle.is_empty() || holder.node.is_empty() {
            return Err(Error::Invalid("an allocation needs a handle and a node".into()));
        }
        let context = self.context(&holder.node).await?;
        let mut assigned = Vec::new();
        for &ip in ips {
            match self.allocate_ip(&context, holder, ip).await {
                Ok(one) => assigned.push(one),
                Err(e) => {
                    let taken: Vec<IpAddr> = assigned.iter().map(|a| a.ip).collect();
                    if let Err(undo) = self.release_handle_ips(&holder.handle, &taken).await {
                        tracing::warn!(error = %undo, ?taken, "could not give back a partial allocation; release the handle to clean up");
                    }
                    return Err(e);
                }
            }
        }
        Ok(assigned)
    }

    async fn allocate_ip(&self, context: &Context, holder: &Allocation, ip: IpAddr) -> Result<Assigned> {
        let usable = |p: &&Resource<IpPool>| !p.spec.disabled && p.spec.allows(PoolUse::Workload);
        let pool = context
            .pools
            .iter()
            .filter(usable)
            .find(|p| p.spec.cidr.contains(ip))
            .ok_or_else(|| Error::Invalid(format!("{ip} is in no enabled IPPool for workload addresses")))?;
        let cidr = pools::block_of(&pool.spec, ip)
            .ok_or_else(|| Error::Invalid(format!("{ip} is in no block of IPPool \"{}\"", pool.metadata.name)))?;
        for _ in 0..MAX_ATTEMPTS {
            let mut refusal = None;
            let taken = self
                .edit_block(cidr, |b, now| match b.allocate_ip(ip, holder.clone(), now) {
                    Ok(()) => Some(()),
                    Err(why) => {
                        refusal = Some(why);
                        None
                    }
                })
                .await?;
            if taken.is_some() {
                return Ok(assigned(ip, cidr, Some(&pool)));
            }
            if let Some(why) = refusal {
                return Err(Error::AddressTaken(why));
            }
            // No such block yet: claim it for the node, with the address in it.
            let mut block = Block::new(cidr, Some(holder.node.clone()));
            block.allocate_ip(ip, holder.clone(), (self.clock)()).map_err(Error::Invalid)?;
            match self.create_block(&block).await {
                Ok(revision) => {
                    self.remember(block, revision);
                    return Ok(assigned(ip, cidr, Some(&pool)));
                }
                Err(Error::AlreadyExists(_)) => continue, // another claimed it meanwhile
                Err(e) => return Err(e),
            }
        }
        Err(Error::Unavailable(format!("gave up taking {ip} after {MAX_ATTEMPTS} lost races")))
    }

    async fn allocate_family(
        &self,
        context: &Context,
        eligible: &[&Resource<IpPool>],
        holder: &Allocation,
        count: u32,
        out: &mut Vec<Assigned>,
    ) -> Result<()> {
        let node = holder.node.as_str();
        let cooldown = context.config.release_cooldown.as_millis() as u64;
        let mut remaining = count as usize;
        let pool_of = |cidr: &IpNetwork| eligible.iter().find(|p| p.spec.cidr.contains(cidr.network()));
        let take = |block: &mut Block, remaining: usize, now: u64| -> Vec<IpAddr> {
            (0..remaining).map_while(|_| block.allocate(holder.clone(), now, cooldown)).collect()
        };
        // Whether step 2 may claim from the blocks the cache knows rather than a fresh listing
        // (see there).
        let mut trust_cache = context.config.max_blocks_per_node == 0;
        let lost_races = self.cache().lost_races;
        for _ in 0..MAX_ATTEMPTS {
            // 1. The node's own blocks.
            // Blocks the cache knows to be full are passed over; a stale "full" (addresses
            // another process released since) at worst makes step 2 claim a block early.
            let owned: Vec<IpNetwork> = {
                let owned = self.owned_blocks(node).await?;
                let now = (self.clock)();
                let cache = self.cache();
                owned
                    .into_iter()
                    .filter(|c| pool_of(c).is_some())
                    .filter(|c| cache.blocks.get(c).is_none_or(|(b, _)| b.available(now, cooldown) > 0))
                    .collect()
            };
            for cidr in owned {
                let got = self
                    .edit_block(cidr, |b, now| {
                        if b.owner.as_deref() != Some(node) {
                            return None;
                        }
                        Some(take(b, remaining, now)).filter(|ips| !ips.is_empty())
                    })
                    .await?;
                if let Some(ips) = got {
                    remaining -= ips.len();
                    out.extend(ips.into_iter().map(|ip| assigned(ip, cidr, pool_of(&cidr))));
                }
                if remaining == 0 {
                    return Ok(());
                }
            }

            // 2. Claim a block: a fresh one (created with our addresses already in it), or one
            // that no node owns any more. The blocks the cache knows (of a listing of every
            // block, or of the node's own) are tried first: the node's next block in claim order
            // is then one create, with no listing of every block. A block the cache did not know
            // of fails its create as a lost race does. Losing the race for a block moves on to
            // the next, as on a fresh listing
            // (the node's processes share one claim order: each loser takes a block of its
            // own rather than crowd the winner's); losing it again, or a cache that knows of no
            // free block, means the cache is stale, and the step is taken again on a fresh
            // listing. So is a claim after a write of this call lost a race: other processes
            // then share the node's blocks, and a fresh listing shows which has room. A cap on
            // the node's blocks is only judged on a fresh listing.
            trust_cache &= self.cache().lost_races == lost_races;
            let cached = if trust_cache { self.cached_blocks(node) } else { None };
            let from_cache = cached.is_some();
            let listing = match cached {
                Some(blocks) => blocks,
                None => self.list_blocks().await?,
            };
            let now = (self.clock)();
            let mine: Vec<&Block> =
                listing.values().map(|(b, _)| &**b).filter(|b| b.owner.as_deref() == Some(node)).collect();
            if !from_cache && mine.iter().any(|b| pool_of(&b.cidr).is_some() && b.available(now, cooldown) > 0) {
                continue; // another process of this node claimed a block meanwhile: use it
            }
            let family_owned =
                mine.iter().filter(|b| pools::Family::of(&b.cidr) == pools::Family::of(&eligible[0].spec.cidr)).count();
            let max = context.config.max_blocks_per_node as usize;
            if max == 0 || family_owned < max {
                match self.claim_block(eligible, &listing, node, from_cache, |b, now| take(b, remaining, now)).await? {
                    Claim::Claimed(cidr, ips) => {
                        remaining -= ips.len();
                        out.extend(ips.into_iter().map(|ip| assigned(ip, cidr, pool_of(&cidr))));
                        if remaining == 0 {
                            return Ok(());
                        }
                        continue;
                    }
                    Claim::Stale => {
                        trust_cache = false;
                        continue;
                    }
                    Claim::NoneFree => {}
                }
            }
            if from_cache {
                trust_cache = false; // no free block that the cache knows of
                continue;
            }

            // 3. Borrow single addresses from other nodes' blocks.
            if context.config.strict_affinity {
                return Err(exhausted(eligible, &listing, node, now, cooldown, "strict affinity forbids borrowing"));
            }
            let lenders: Vec<IpNetwork> = listing
                .values()
                .map(|(b, _)| b)
                .filter(|b| pool_of(&b.cidr).is_some() && b.available(now, cooldown) > 0)
                .map(|b| b.cidr)
                .collect();
            if lenders.is_empty() {
                return Err(exhausted(eligible, &listing, node, now, cooldown, "no block has a free address"));
            }
            for cidr in lenders {
                if let Some(ips) =
                    self.edit_block(cidr, |b, now| Some(take(b, remaining, now)).filter(|ips| !ips.is_empty())).await?
                {
                    remaining -= ips.len();
                    out.extend(ips.into_iter().map(|ip| assigned(ip, cidr, pool_of(&cidr))));
                }
                if remaining == 0 {
                    return Ok(());
                }
            }
        }
        Err(Error::Unavailable(format!("gave up allocating for node \"{node}\" after {MAX_ATTEMPTS} lost races")))
    }

    /// Claims the first claimable block of the eligible pools, in the node's claim order,
    /// filling it with `fill` in the same write. A block found taken meanwhile passes the
    /// walk on to the next; with a `stale` listing, a second one ends it (the listing is
    /// then too old to walk on).
    async fn claim_block(
        &self,
        eligible: &[&Resource<IpPool>],
        listing: &Blocks,
        node: &str,
        stale: bool,
        mut fill: impl FnMut(&mut Block, u64) -> Vec<IpAddr>,
    ) -> Result<Claim> {
        // Blocks that exist are skipped, so in a pool of any size the walk ends at most one
        // step past the number of blocks that exist.
        let mut lost = 0;
        for pool in eligible {
            for cidr in pools::claim_order(&pool.spec, node) {
                let unowned = match listing.get(&cidr) {
                    Some((b, _)) => b.owner.is_none(),
                    None => {
                        let mut block = Block::new(cidr, Some(node.to_owned()));
                        let ips = fill(&mut block, (self.clock)());
                        match self.create_block(&block).await {
                            Ok(revision) => {
                                self.remember(block, revision);
                                return Ok(Claim::Claimed(cidr, ips));
                            }
                            // Lost the race for it, or a block the listing did not show, which
                            // may be one no node owns.
                            Err(Error::AlreadyExists(_)) => {
                                let unowned = self.fetch_block(cidr).await?.is_some_and(|(b, _)| b.owner.is_none());
                                lost += usize::from(!unowned);
                                unowned
                            }
                            Err(e) => return Err(e),
                        }
                    }
                };
                if unowned {
                    // Claimed only with room for this call: a node that owned a full block
                    // would claim another at once.
                    let got = self
                        .edit_block(cidr, |b, now| {
                            if b.owner.is_some() {
                                return None;
                            }
                            b.owner = Some(node.to_owned());
                            Some(fill(b, now)).filter(|ips| !ips.is_empty())
                        })
                        .await?;
                    match got {
                        Some(ips) => return Ok(Claim::Claimed(cidr, ips)),
                        None => lost += 1,
                    }
                }
                if stale && lost > 1 {
                    return Ok(Claim::Stale);
                }
            }
        }
        Ok(Claim::NoneFree)
    }

    /// Releases addresses one by one; returns the holders of those that were taken.
    pub async fn release_ips(&self, ips: &[IpAddr]) -> Result<Vec<(IpAddr, Allocation)>> {
        let mut released = Vec::new();
        let pools = if ips.is_empty() { Vec::new() } else { self.client.list::<IpPool>().await?.0 };
        for &ip in ips {
            let Some(cidr) = self.block_for(&pools, ip).await? else { continue };
            if let Some(holder) = self.edit_block(cidr, |b, now| b.release_ip(ip, now)).await? {
                released.push((ip, holder));
            }
        }
        Ok(released)
    }

    /// Releases those of `ips` that `handle` holds, leaving alone any that has since gone to
    /// someone else; returns the released ones. The cheap way to release a handle whose
    /// addresses are known (no scan of every block).
    pub async fn release_handle_ips(&self, handle: &str, ips: &[IpAddr]) -> Result<Vec<IpAddr>> {
        let mut released = Vec::new();
        let pools = if ips.is_empty() { Vec::new() } else { self.client.list::<IpPool>().await?.0 };
        for &ip in ips {
            let Some(cidr) = self.block_for(&pools, ip).await? else { continue };
            let freed = self
                .edit_block(cidr, |b, now| {
                    b.holder(ip).filter(|a| a.is_held_by(handle))?;
                    b.release_ip(ip, now).map(|_| ip)
                })
                .await?;
            released.extend(freed);
        }
        Ok(released)
    }

    /// The block an address belongs to: computed from its pool, or found among the blocks
    /// when its pool is gone.
    async fn block_for(&self, pools: &[Resource<IpPool>], ip: IpAddr) -> Result<Option<IpNetwork>> {
        match pools.iter().find_map(|p| pools::block_of(&p.spec, ip)) {
            Some(cidr) => Ok(Some(cidr)),
            None => Ok(self.list_blocks().await?.into_keys().find(|c| c.contains(ip))),
        }
    }

    /// Whether an allocation of `family` for `node` from `requested` pools (empty: any
    /// eligible) could succeed now: a block with a free address it may use, or a block left
    /// to claim. Errors say why not when no pool is eligible.
    pub async fn has_room(&self, node: &str, family: Family, requested: &[String]) -> Result<bool> {
        let context = self.context(node).await?;
        let eligible = pools::eligible(&context.pools, requested, family, PoolUse::Workload, node, &context.labels)?;
        let listing = self.list_blocks().await?;
        let now = (self.clock)();
        let cooldown = context.config.release_cooldown.as_millis() as u64;
        let usable = |b: &Block| {
            b.owner.is_none()
                || b.owner.as_deref() == Some(node)
                || (!context.config.strict_affinity && b.available(now, cooldown) > 0)
        };
        Ok(eligible.iter().any(|pool| {
            let blocks: Vec<&Block> =
                listing.values().map(|(b, _)| &**b).filter(|b| pool.spec.cidr.contains(b.cidr.network())).collect();
            (blocks.len() as u64) < pools::block_count(&pool.spec)
                || blocks.iter().any(|b| usable(b) && b.available(now, cooldown) > 0)
        }))
    }

    /// Releases every address held by `handle`; returns them.
    pub async fn release_handle(&self, handle: &str) -> Result<Vec<IpAddr>> {
        let mut released = Vec::new();
        for (cidr, (block, _)) in self.list_blocks().await? {
            if block.holds(handle)
                && let Some(ips) = self
                    .edit_block(cidr, |b, now| Some(b.release_handle(handle, now)).filter(|ips| !ips.is_empty()))
                    .await?
            {
                released.extend(ips);
            }
        }
        Ok(released)
    }

    /// The node's tunnel address of a family: the one it already holds, or a new one.
    pub async fn tunnel_address(&self, node: &str, ipv6: bool) -> Result<Assigned> {
        let family = if ipv6 { "ipv6" } else { "ipv4" };
        let handle = format!("tunnel-{family}.{node}");
        for (cidr, (block, _)) in self.list_blocks().await? {
            if let Some((ip, _)) = block.allocations().find(|(_, a)| a.is_held_by(&handle)) {
                let (pools, _) = self.client.list::<IpPool>().await?;
                let pool = pools.iter().find(|p| p.spec.cidr.contains(ip)).map(|p| p.metadata.name.clone());
                return Ok(Assigned { ip, block: cidr, pool: pool.unwrap_or_default() });
            }
        }
        let holder =
            Allocation { handle, kind: AllocationKind::Tunnel, node: node.to_owned(), ..Allocation::default() };
        let request =
            AllocateRequest { holder, ipv4: u32::from(!ipv6), ipv6: u32::from(ipv6), ..AllocateRequest::default() };
        self.allocate(&request)
            .await?
            .pop()
            .ok_or_else(|| Error::Exhausted(format!("no tunnel address for node \"{node}\"")))
    }

    /// Every block with its revision, straight from the store.
    pub async fn blocks(&self) -> Result<Vec<(Block, Revision)>> {
        let mut blocks: Vec<_> =
            self.list_blocks().await?.into_values().map(|(b, revision)| (Arc::unwrap_or_clone(b), revision)).collect();
        blocks.sort_by_key(|(b, _)| b.cidr);
        Ok(blocks)
    }

    /// Reads (or reuses) the pools, IPAM settings and node labels.
    async fn context(&self, node: &str) -> Result<Arc<Context>> {
        if let Some((at, context)) = self.cache().context.get(node)
            && at.elapsed() < self.context_ttl
        {
            return Ok(Arc::clone(context));
        }
        let (pools, config, node_resource) = tokio::try_join!(
            self.client.list::<IpPool>(),
            self.client.find::<IpamConfiguration>(None, "default"),
            self.client.find::<Node>(None, node),
        )?;
        let context = Arc::new(Context {
            pools: pools.0,
            config: config.map(|c| c.spec).unwrap_or_default(),
            labels: node_resource.map(|n| n.metadata.labels).unwrap_or_default(),
        });
        self.cache().context.insert(node.to_owned(), (Instant::now(), Arc::clone(&context)));
        Ok(context)
    }

    /// The blocks the node owned at the last listing. Listing now if there was none: only
    /// the node's blocks where the store can pick them out (a CNI plugin's one allocation in a
    /// cluster of a thousand nodes then reads a block or two, not a thousand), else every
    /// block.
    async fn owned_blocks(&self, node: &str) -> Result<BTreeSet<IpNetwork>> {
        {
            let cache = self.cache();
            if let Some(owned) = cache.owned.get(node) {
                return Ok(owned.clone());
            }
            if cache.listed_all {
                return Ok(BTreeSet::new());
            }
        }
        let Some(listing) = self.client.store().list_owned_blocks(node).await? else {
            self.list_blocks().await?;
            return Ok(self.cache().owned.get(node).cloned().unwrap_or_default());
        };
        let mut owned = BTreeSet::new();
        for kv in &listing.items {
            let block = decode_block(kv)?;
            if block.owner.as_deref() == Some(node) {
                owned.insert(block.cidr);
                self.remember(block, kv.revision);
            }
        }
        self.cache().owned.insert(node.to_owned(), owned.clone());
        Ok(owned)
    }

    /// Reads every block and refreshes the cache with them.
    async fn list_blocks(&self) -> Result<Blocks> {
        let listing = self.client.store().list(keys::BLOCKS).await?;
        let mut blocks = HashMap::with_capacity(listing.items.len());
        for kv in listing.items {
            let block = decode_block(&kv)?;
            blocks.insert(block.cidr, (Arc::new(block), kv.revision));
        }
        let mut owned: HashMap<String, BTreeSet<IpNetwork>> = HashMap::new();
        for (block, _) in blocks.values() {
            if let Some(owner) = &block.owner {
                owned.entry(owner.clone()).or_default().insert(block.cidr);
            }
        }
        let mut cache = self.cache();
        cache.blocks.clone_from(&blocks);
        cache.owned = owned;
        cache.listed_all = true;
        Ok(blocks)
    }

    /// Every block the cache knows, once a listing has shown it every block or every block
    /// of `node`. Enough to walk the node's claim order: a block it does not know of that
    /// exists makes the create fail, and the walk moves on.
    fn cached_blocks(&self, node: &str) -> Option<Blocks> {
        let cache = self.cache();
        (cache.listed_all || cache.owned.contains_key(node)).then(|| cache.blocks.clone())
    }

    /// Puts a block written or read into the cache; returns it as the cache shares it.
    fn remember(&self, block: Block, revision: Revision) -> Arc<Block> {
        let mut cache = self.cache();
        for blocks in cache.owned.values_mut() {
            blocks.remove(&block.cidr);
        }
        if let Some(owner) = &block.owner {
            // A node the cache knows nothing of stays unknown: one block is not all it owns.
            if cache.listed_all {
                cache.owned.entry(owner.clone()).or_default().insert(block.cidr);
            } else if let Some(blocks) = cache.owned.get_mut(owner) {
                blocks.insert(block.cidr);
            }
        }
        let block = Arc::new(block);
        cache.blocks.insert(block.cidr, (Arc::clone(&block), revision));
        block
    }

    fn forget(&self, cidr: &IpNetwork) {
        let mut cache = self.cache();
        cache.blocks.remove(cidr);
        for blocks in cache.owned.values_mut() {
            blocks.remove(cidr);
        }
    }

    async fn create_block(&self, block: &Block) -> Result<Revision> {
        let value = serde_json::to_vec(block).map_err(|e| Error::Invalid(format!("cannot encode block: {e}")))?;
        self.client.store().create(&keys::block(&block.cidr), &value).await
    }

    async fn fetch_block(&self, cidr: IpNetwork) -> Result<Option<(Arc<Block>, Revision)>> {
        match self.client.store().get(&keys::block(&cidr)).await {
            Ok(kv) => Ok(Some((self.remember(decode_block(&kv)?, kv.revision), kv.revision))),
            Err(Error::NotFound(_)) => {
                self.forget(&cidr);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Read-modify-writes one block with compare-and-swap, retrying lost races. `change` edits
    /// a copy and returns `Some` if it changed something to write. A cached copy is tried
    /// first; a decision not to change is only trusted on a fresh read. An unowned block left
    /// empty is deleted rather than written, once no released address in it is still resting
    /// (deleting it sooner would hand those out fresh to the next claimer). With a write lock,
    /// the call holds it throughout, and a cached copy older than the host's last write of the
    /// block gives way to the lock's copy or a fresh read.
    async fn edit_block<T>(
        &self,
        cidr: IpNetwork,
        mut change: impl FnMut(&mut Block, u64) -> Option<T>,
    ) -> Result<Option<T>> {
        let mut held = match &self.write_lock {
            Some(lock) => lock.take().await,
            None => None,
        };
        let mut current = self.cache().blocks.get(&cidr).cloned();
        if let Some(held) = &held {
            // A copy older than this host's last write of the block would only lose a race:
            // the lock's copy replaces it, or a fresh read. The lock's copy is still only a
            // copy (another host may have written since), so it is not `fresh`.
            if current.as_ref().is_none_or(|(_, revision)| held.outdates(&cidr, *revision)) {
                current = held.latest(&cidr).map(|(block, revision)| (self.remember(block, revision), revision));
            }
        }
        let mut fresh = current.is_none();
        if fresh {
            current = self.fetch_block(cidr).await?;
        }
        for _ in 0..MAX_ATTEMPTS {
            let Some((block, revision)) = current.take() else { return Ok(None) };
            let mut edited = Block::clone(&block);
            let result = match change(&mut edited, (self.clock)()) {
                Some(result) => result,
                None if fresh => return Ok(None),
                None => {
                    fresh = true;
                    current = self.fetch_block(cidr).await?;
                    continue;
                }
            };
            let key = keys::block(&cidr);
            let idle = edited.is_empty()
                && edited.owner.is_none()
                && edited.cooling((self.clock)(), self.release_cooldown_ms().await?) == 0;
            let written = if idle {
                self.client.store().delete(&key, Some(revision)).await.map(|()| None)
            } else {
                let value =
                    serde_json::to_vec(&edited).map_err(|e| Error::Invalid(format!("cannot encode block: {e}")))?;
                self.client.store().update(&key, &value, revision).await.map(|revision| Some((revision, value)))
            };
            if let (Ok(written), Some(held)) = (&written, held.as_mut()) {
                held.wrote(cidr, written.as_ref().map(|(revision, value)| (*revision, value.as_slice())));
            }
            match written {
                Ok(Some((new_revision, _))) => {
                    self.remember(edited, new_revision);
                    return Ok(Some(result));
                }
                Ok(None) => {
                    self.forget(&cidr);
                    return Ok(Some(result));
                }
                Err(Error::Conflict { current: Some(kv), .. }) => {
                    // Lost a race: the refusal carries the winner's block, retry on it.
                    self.cache().lost_races += 1;
                    fresh = true;
                    current = Some((self.remember(decode_block(&kv)?, kv.revision), kv.revision));
                }
                Err(Error::Conflict { .. } | Error::NotFound(_)) => {
                    self.cache().lost_races += 1;
                    fresh = true;
                    current = self.fetch_block(cidr).await?;
                }
                Err(e) => {
                    self.forget(&cidr);
                    return Err(e);
                }
            }
        }
        Err(Error::Unavailable(format!("block {cidr}: gave up after {MAX_ATTEMPTS} lost races")))
    }
}

impl Ipam {
    /// The release cooldown, read fresh (only for the rare decision to delete a block).
    async fn release_cooldown_ms(&self) -> Result<u64> {
        let config = self.client.find::<IpamConfiguration>(None, "default").await?.map(|c| c.spec).unwrap_or_default();
        Ok(u64::try_from(config.release_cooldown.as_millis()).unwrap_or(u64::MAX))
    }
}

fn decode_block(kv: &KeyValue) -> Result<Block> {
    serde_json::from_slice(&kv.value).map_err(|e| Error::Invalid(format!("stored block at {}: {e}", kv.key)))
}

fn assigned(ip: IpAddr, block: IpNetwork, pool: Option<&&Resource<IpPool>>) -> Assigned {
    Assigned { ip, block, pool: pool.map(|p| p.metadata.name.clone()).unwrap_or_default() }
}

/// The exhaustion error: which pools, how full, and why borrowing did not help.
fn exhausted(
    eligible: &[&Resource<IpPool>],
    listing: &Blocks,
    node: &str,
    now: u64,
    cooldown: u64,
    why: &str,
) -> Error {
    let pools: Vec<String> = eligible
        .iter()
        .map(|p| {
            let blocks: Vec<&Block> =
                listing.values().map(|(b, _)| &**b).filter(|b| p.spec.cidr.contains(b.cidr.network())).collect();
            let cooling: usize = blocks.iter().map(|b| b.cooling(now, cooldown)).sum();
            let mut text = format!(
                "IPPool \"{}\" ({}): {} of {} blocks claimed",
                p.metadata.name,
                p.spec.cidr,
                blocks.len(),
                pools::block_count(&p.spec)
            );
            if cooling > 0 {
                text.push_str(&format!(", {cooling} released addresses still cooling down"));
            }
            text
        })
        .collect();
    Error::Exhausted(format!("no free address for node \"{node}\" ({why}): {}", pools.join("; ")))
}
