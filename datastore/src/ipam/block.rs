//! One IPAM block: a power-of-two slice of a pool, owned by one node, that records which of
//! its addresses are taken and by whom. Pure: no I/O, time is an argument.
//!
//! The owner lives inside the block, so claiming a block is a single create or
//! compare-and-swap of this one object; there is no separate affinity record to disagree with.
//! Addresses are handed out never-used first, then released ones in release order, and a
//! released address rests for the cooldown before it is handed out again.
//!
//! Every allocation rewrites the whole block, so a block records its holders compactly: a
//! handle that ends in a container runtime's 64-hex-digit ID records only the ID's first 16
//! digits (see [`recorded_form`]).

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// How many hex digits long the container IDs of containerd, CRI-O, Docker and Podman are
/// (32 random bytes).
const RUNTIME_ID_DIGITS: usize = 64;
/// How many of those digits a block records: 64 random bits tell a block's holders apart as
/// surely as 256 do, and remain a prefix that `crictl` and `podman` accept (their listings
/// show 13 and 12 digits).
const RECORDED_ID_DIGITS: usize = 16;

/// The form in which a block records a pod's handle `<network>.<containerID>`, and a
/// container ID alone: when the part after the last dot (or all of it) is a runtime's
/// 64-hex-digit ID, only its first 16 digits; anything else whole. The form is always a prefix
/// of the text. Those IDs are four fifths of a block's packed bytes otherwise. Pods' handles
/// are compared in this form, so the whole handle and the recorded one find the same
/// addresses, and so do handles recorded whole before. A node's tunnel address keeps its
/// handle whole (a node's name may be 64 hex digits too).
pub fn recorded_form(text: &str) -> &str {
    let start = text.rfind('.').map_or(0, |dot| dot + 1);
    let id = &text[start..];
    if id.len() == RUNTIME_ID_DIGITS && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        &text[..start + RECORDED_ID_DIGITS]
    } else {
        text
    }
}

/// What an address is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AllocationKind {
    /// A pod interface.
    #[default]
    Workload,
    /// A node's tunnel device.
    Tunnel,
}

impl AllocationKind {
    fn is_workload(&self) -> bool {
        *self == AllocationKind::Workload
    }
}

/// Who holds an address: the handle that releases it, and where it is used. Defaults are
/// left out when stored: every allocation of a block is written with each change to it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Allocation {
    /// The release handle: `<network>.<containerID>` for pods, in [`recorded_form`] once the
    /// block holds the address. Compare it with [`Allocation::is_held_by`].
    pub handle: String,
    /// The CNI network a pod's address was taken for (the first part of its handle; both
    /// parts may hold dots, so it is kept apart). `None` for tunnel addresses and for
    /// allocations stored before brindle recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// What the address is for (not written when it is a workload's: most are).
    #[serde(default, skip_serializing_if = "AllocationKind::is_workload")]
    pub kind: AllocationKind,
    /// Whether the plugin that took it writes a WorkloadEndpoint for it (the `brindle`
    /// plugin does; `brindle-ipam` under another plugin cannot). Garbage collection judges a
    /// pod's address by its endpoint only when one is expected.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub endpoint: bool,
    /// The node the address is used on.
    pub node: String,
    /// The pod, for workload addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The pod's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// When the address was handed out, in milliseconds since the Unix epoch (set by the
    /// block; 0 for allocations stored before brindle recorded it). Garbage collection leaves
    /// an address alone while it is younger than the grace period, so a pod whose ADD is still
    /// in flight keeps it.
    #[serde(default)]
    pub allocated_at_ms: u64,
}

impl Allocation {
    /// Whether `handle` is this address's holder: the same handle, or for a pod's address
    /// the same in [`recorded_form`].
    pub fn is_held_by(&self, handle: &str) -> bool {
        self.handle == handle || (self.kind.is_workload() && recorded_form(&self.handle) == recorded_form(handle))
    }

    /// The container IDs a pod's handle `<network>.<containerID>` may name, in
    /// [`recorded_form`]: exactly the part after its network when the allocation recorded it;
    /// otherwise whatever follows any of its dots, since both parts may hold dots. Longest
    /// first.
    pub fn containers_named(&self) -> Vec<&str> {
        let handle = self.handle.as_str();
        if let Some(container) =
            self.network.as_deref().and_then(|n| handle.strip_prefix(n)).and_then(|rest| rest.strip_prefix('.'))
        {
            return vec![recorded_form(container)];
        }
        handle.match_indices('.').map(|(i, _)| recorded_form(&handle[i + 1..])).collect()
    }

    /// Whether this is a pod's address taken for container `container_id` (compared in
    /// [`recorded_form`]).
    pub fn names_container(&self, container_id: &str) -> bool {
        self.kind.is_workload() && self.containers_named().contains(&recorded_form(container_id))
    }

    /// This allocation as a block records it: a pod's handle in its recorded form.
    fn recorded(mut self) -> Self {
        if self.kind.is_workload() {
            let recorded = recorded_form(&self.handle).len();
            self.handle.truncate(recorded);
        }
        self
    }
}

/// A released address at rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Released {
    /// The address's position in the block.
    pub ordinal: u32,
    /// When it was released, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// An IPAM block as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Block {
    /// The block's range.
    pub cidr: IpNetwork,
    /// The node the block belongs to; `None` once that node let it go.
    pub owner: Option<String>,
    /// Ordinals at or above this have never been handed out.
    next_fresh: u32,
    /// Released ordinals, oldest release first.
    released: VecDeque<Released>,
    /// Taken ordinals and their holders.
    allocations: BTreeMap<u32, Allocation>,
}

impl Block {
    /// A fresh block owned by `owner`.
    pub fn new(cidr: IpNetwork, owner: Option<String>) -> Self {
        Block { cidr, owner, next_fresh: 0, released: VecDeque::new(), allocations: BTreeMap::new() }
    }

    /// How many addresses the block has.
    pub fn size(&self) -> u64 {
        let host_bits = u32::from(if self.cidr.is_ipv4() { 32u8 } else { 128u8 } - self.cidr.prefix());
        1u64 << host_bits.min(63)
    }

    /// How many addresses are taken.
    pub fn in_use(&self) -> usize {
        self.allocations.len()
    }

    /// Whether no address is taken.
    pub fn is_empty(&self) -> bool {
        self.allocations.is_empty()
    }

    /// How many addresses could be handed out at `now_ms` with this cooldown.
    pub fn available(&self, now_ms: u64, cooldown_ms: u64) -> u64 {
        let fresh = self.size() - u64::from(self.next_fresh);
        let rested = self.released.iter().take_while(|r| r.at_ms.saturating_add(cooldown_ms) <= now_ms).count();
        fresh + rested as u64
    }

    /// How many released addresses are still resting at `now_ms`.
    pub fn cooling(&self, now_ms: u64, cooldown_ms: u64) -> usize {
        self.released.iter().filter(|r| r.at_ms.saturating_add(cooldown_ms) > now_ms).count()
    }

    /// Takes the next address for `allocation`, stamped with `now_ms`, or `None` when none is
    /// available.
    pub fn allocate(&mut self, mut allocation: Allocation, now_ms: u64, cooldown_ms: u64) -> Option<IpAddr> {
        let ordinal = if u64::from(self.next_fresh) < self.size() {
            self.next_fresh += 1;
            self.next_fresh - 1
        } else {
            let oldest = self.released.front()?;
            if oldest.at_ms.saturating_add(cooldown_ms) > now_ms {
                return None;
            }
            self.released.pop_front()?.ordinal
        };
        allocation.allocated_at_ms = now_ms;
        self.allocations.insert(ordinal, allocation.recorded());
        Some(self.ip(ordinal))
    }

    /// Takes `ip` itself for `allocation` (a pod that asks for a fixed address), stamped with
    /// `now_ms`, whether or not it is resting after a release (the pod asking for it again is
    /// usually the one that had it). Already held by the same handle, it is left as it is.
    /// Refused with the reason when `ip` is not in the block or another handle holds it.
    pub fn allocate_ip(&mut self, ip: IpAddr, mut allocation: Allocation, now_ms: u64) -> Result<(), String> {
        let Some(ordinal) = self.ordinal(ip) else { return Err(format!("{ip} is not in block {}", self.cidr)) };
        if let Some(holder) = self.allocations.get(&ordinal) {
            return match holder.is_held_by(&allocation.handle) {
                true => Ok(()),
                false => Err(format!("{ip} is already taken by {}", holder.handle)),
            };
        }
        if ordinal >= self.next_fresh {
            // The addresses skipped over were never handed out: they wait as long rested.
            for skipped in (self.next_fresh..ordinal).rev() {
                self.released.push_front(Released { ordinal: skipped, at_ms: 0 });
            }
            self.next_fresh = ordinal + 1;
        } else {
            self.released.retain(|r| r.ordinal != ordinal);
        }
        allocation.allocated_at_ms = now_ms;
        self.allocations.insert(ordinal, allocation.recorded());
        Ok(())
    }

    /// Releases every address held by `handle`; returns them.
    pub fn release_handle(&mut self, handle: &str, now_ms: u64) -> Vec<IpAddr> {
        let ordinals: Vec<u32> =
            self.allocations.iter().filter(|(_, a)| a.is_held_by(handle)).map(|(o, _)| *o).collect();
        for ordinal in &ordinals {
            self.allocations.remove(ordinal);
            self.released.push_back(Released { ordinal: *ordinal, at_ms: now_ms });
        }
        ordinals.into_iter().map(|o| self.ip(o)).collect()
    }

    /// Releases one address; returns its holder, or `None` if it was not taken.
    pub fn release_ip(&mut self, ip: IpAddr, now_ms: u64) -> Option<Allocation> {
        let ordinal = self.ordinal(ip)?;
        let allocation = self.allocations.remove(&ordinal)?;
        self.released.push_back(Released { ordinal, at_ms: now_ms });
        Some(allocation)
    }

    /// Every taken address and its holder, in address order.
    pub fn allocations(&self) -> impl Iterator<Item = (IpAddr, &Allocation)> {
        self.allocations.iter().map(|(o, a)| (self.ip(*o), a))
    }

    /// The holder of `ip`, if it is taken.
    pub fn holder(&self, ip: IpAddr) -> Option<&Allocation> {
        self.allocations.get(&self.ordinal(ip)?)
    }

    /// Whether `handle` holds any address here.
    pub fn holds(&self, handle: &str) -> bool {
        self.allocations.values().any(|a| a.is_held_by(handle))
    }

    fn ip(&self, ordinal: u32) -> IpAddr {
        match self.cidr {
            IpNetwork::V4(net) => IpAddr::V4((u32::from(net.network()) + ordinal).into()),
            IpNetwork::V6(net) => IpAddr::V6((u128::from(net.network()) + u128::from(ordinal)).into()),
        }
    }

    fn ordinal(&self, ip: IpAddr) -> Option<u32> {
        if !self.cidr.contains(ip) {
            return None;
        }
        let offset = match (self.cidr, ip) {
            (IpNetwork::V4(net), IpAddr::V4(ip)) => u128::from(u32::from(ip) - u32::from(net.network())),
            (IpNetwork::V6(net), IpAddr::V6(ip)) => u128::from(ip) - u128::from(net.network()),
            _ => return None,
        };
        u32::try_from(offset).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(handle: &str) -> Allocation {
        Allocation { handle: handle.into(), node: "n1".into(), ..Allocation::default() }
    }

    fn block(cidr: &str) -> Block {
        Block::new(cidr.parse().unwrap(), Some("n1".into()))
    }

    #[test]
    fn fresh_addresses_come_first_in_order() {
        let mut b = block("10.0.0.0/30");
        let got: Vec<_> = (0..4).map(|i| b.allocate(alloc(&format!("h{i}")), 0, 0).unwrap().to_string()).collect();
        assert_eq!(got, ["10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        assert_eq!(b.allocate(alloc("h5"), 0, 0), None);
        assert_eq!(b.in_use(), 4);
    }

    #[test]
    fn released_addresses_rest_for_the_cooldown_then_return_oldest_first() {
        let mut b = block("10.0.0.0/31");
        b.allocate(alloc("a"), 0, 60_000);
        b.allocate(alloc("b"), 0, 60_000);
        b.release_handle("b", 1_000);
        b.release_handle("a", 2_000);
        assert_eq!(b.available(60_999, 60_000), 0);
        assert_eq!(b.cooling(60_999, 60_000), 2);
        assert_eq!(b.allocate(alloc("c"), 60_999, 60_000), None, "nothing has rested long enough");
        assert_eq!(b.allocate(alloc("c"), 61_000, 60_000).unwrap().to_string(), "10.0.0.1", "b was released first");
        assert_eq!(b.allocate(alloc("d"), 61_000, 60_000), None, "a rests until 62s");
        assert_eq!(b.allocate(alloc("d"), 62_000, 60_000).unwrap().to_string(), "10.0.0.0");
    }

    #[test]
    fn a_fixed_address_is_taken_as_asked_and_the_rest_of_the_block_still_counts() {
        let mut b = block("10.0.0.0/29");
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        b.allocate(alloc("first"), 0, 60_000);
        assert_eq!(b.allocate_ip(ip("10.0.0.5"), alloc("fixed"), 7), Ok(()));
        assert_eq!(b.holder(ip("10.0.0.5")).map(|a| a.allocated_at_ms), Some(7));
        assert_eq!(b.allocate_ip(ip("10.0.0.5"), alloc("fixed"), 8), Ok(()), "asked again by its holder");
        assert_eq!(b.allocate_ip(ip("10.0.0.5"), alloc("other"), 8), Err("10.0.0.5 is already taken by fixed".into()));
        assert_eq!(
            b.allocate_ip(ip("10.0.1.1"), alloc("other"), 8),
            Err("10.0.1.1 is not in block 10.0.0.0/29".into())
        );
        // The fresh addresses come next, then those skipped over (never handed out, so as good
        // as fresh); none is handed out twice.
        let next: Vec<String> =
            (0..6).map_while(|i| b.allocate(alloc(&format!("h{i}")), 100_000, 60_000)).map(|a| a.to_string()).collect();
        assert_eq!(next, ["10.0.0.6", "10.0.0.7", "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]);
        // A released address resting after its release may be asked for again at once.
        b.release_handle("fixed", 100_000);
        assert_eq!(b.allocate_ip(ip("10.0.0.5"), alloc("fixed-again"), 100_001), Ok(()));
        assert_eq!(b.available(1_000_000, 60_000), 0, "it no longer rests in the queue");
    }

    #[test]
    fn release_by_handle_and_ip() {
        let mut b = block("fd00::/126");
        let first = b.allocate(alloc("pod-a"), 0, 0).unwrap();
        b.allocate(alloc("pod-a"), 0, 0).unwrap();
        let third = b.allocate(alloc("pod-b"), 3, 0).unwrap();
        assert_eq!(third.to_string(), "fd00::2");
        assert_eq!(b.holder(third), Some(&Allocation { allocated_at_ms: 3, ..alloc("pod-b") }), "stamped when taken");
        assert_eq!(b.release_ip(first, 5).map(|a| a.handle), Some("pod-a".into()));
        assert_eq!(b.release_ip(first, 5), None, "already free");
        assert_eq!(b.release_handle("pod-a", 5), vec!["fd00::1".parse::<IpAddr>().unwrap()]);
        assert_eq!(b.release_handle("pod-b", 5), vec![third]);
        assert!(b.is_empty());
        assert_eq!(b.release_ip("10.0.0.1".parse().unwrap(), 5), None, "outside the block");
    }

    #[test]
    fn a_runtimes_container_id_is_recorded_by_its_first_16_digits_and_either_form_finds_it() {
        let whole = format!("k8s-pod-network.{}", "0123456789abcdef".repeat(4));
        let mut b = block("10.0.0.0/29");
        let ip = b.allocate(alloc(&whole), 0, 0).unwrap();
        assert_eq!(b.holder(ip).map(|a| a.handle.as_str()), Some("k8s-pod-network.0123456789abcdef"));
        assert!(b.holds(&whole) && b.holds("k8s-pod-network.0123456789abcdef"));
        assert!(!b.holds(&format!("k8s-pod-network.{}", "f123456789abcdef".repeat(4))), "another container");
        assert!(!b.holds(&format!("other-network.{}", "0123456789abcdef".repeat(4))), "another network");
        assert_eq!(b.allocate_ip(ip, alloc(&whole), 1), Ok(()), "asked again by its holder");
        assert_eq!(b.release_handle(&whole, 2), vec![ip]);

        // A handle recorded whole (before blocks recorded the short form) is found by both.
        let old = Allocation { handle: whole.clone(), ..alloc("") };
        b.allocations.insert(5, old.clone());
        let ip = b.ip(5);
        assert!(b.holder(ip).is_some_and(|a| a.is_held_by("k8s-pod-network.0123456789abcdef")));
        assert_eq!(b.release_handle("k8s-pod-network.0123456789abcdef", 3), vec![ip]);
        b.allocations.insert(5, old);
        assert_eq!(b.release_handle(&whole, 3), vec![ip]);
    }

    #[test]
    fn a_tunnel_address_keeps_its_handle_whole_even_for_a_node_named_in_hex() {
        let (node, twin) = ("0123456789abcdef".repeat(4), format!("0123456789abcdef{}", "f".repeat(48)));
        let tunnel = |node: &str| Allocation { kind: AllocationKind::Tunnel, ..alloc(&format!("tunnel-ipv4.{node}")) };
        let mut b = block("10.0.0.0/30");
        let ip = b.allocate(tunnel(&node), 0, 0).unwrap();
        assert_eq!(b.holder(ip).map(|a| a.handle.clone()), Some(format!("tunnel-ipv4.{node}")));
        assert!(b.holds(&format!("tunnel-ipv4.{node}")));
        assert!(!b.holds(&format!("tunnel-ipv4.{twin}")), "another node with the same first 16 digits");
        assert!(b.release_handle(&format!("tunnel-ipv4.{twin}"), 1).is_empty());
    }

    #[test]
    fn other_handles_are_recorded_whole() {
        for handle in [
            "tunnel-ipv4.node-1".to_owned(),
            "net.short-container-id".to_owned(),
            "no-dot-at-all".to_owned(),
            format!("net.{}", "0123456789abcdef".repeat(4)[..63].to_owned()),
            format!("net.{}", "z".repeat(64)),
            format!("net.{}-1", "0123456789abcdef".repeat(4)),
        ] {
            assert_eq!(recorded_form(&handle), handle.as_str());
            let mut b = block("10.0.0.0/30");
            let ip = b.allocate(alloc(&handle), 0, 0).unwrap();
            assert_eq!(b.holder(ip).map(|a| a.handle.as_str()), Some(handle.as_str()));
        }
        assert_eq!(recorded_form("ABCDEF0123456789".repeat(4).as_str()), "ABCDEF0123456789");
    }

    #[test]
    fn a_container_id_with_dots_is_recorded_by_the_same_rule_as_its_handle() {
        let id = format!("sandbox.{}", "0123456789abcdef".repeat(4));
        let mut b = block("10.0.0.0/30");
        let holder = Allocation { network: Some("net".into()), ..alloc(&format!("net.{id}")) };
        let ip = b.allocate(holder, 0, 0).unwrap();
        let a = b.holder(ip).unwrap();
        assert_eq!(a.handle, "net.sandbox.0123456789abcdef");
        assert_eq!(a.containers_named(), [recorded_form(&id)]);
        assert!(a.names_container(&id) && a.names_container("sandbox.0123456789abcdef"));
        assert!(!a.names_container(&"0123456789abcdef".repeat(4)), "without its first part");
    }

    #[test]
    fn size_covers_ipv4_and_ipv6_blocks() {
        assert_eq!(block("10.0.0.0/26").size(), 64);
        assert_eq!(block("10.0.0.0/32").size(), 1);
        assert_eq!(block("fd00::/116").size(), 4096);
    }

    #[test]
    fn stored_form_round_trips() {
        let mut b = block("10.0.0.0/29");
        b.allocate(alloc("x"), 0, 0);
        b.release_handle("x", 7);
        b.allocate(alloc("y"), 7, 0);
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(serde_json::from_str::<Block>(&json).unwrap(), b);
    }
}
