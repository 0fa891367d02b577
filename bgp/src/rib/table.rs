//! The prefix table: where the RIB keeps each prefix's paths.
//!
//! An open-addressing hash table with linear probing over compact slots (an IPv4 prefix and
//! the index of its paths fit in 8 octets), with the path lists in a dense array beside it.
//! Unlike hashbrown, it can prefetch the slot a prefix's probe starts at, which is nearly
//! always the cache line it will be found or inserted in. A speaker does that for a whole
//! batch of UPDATEs before applying it, so the batch's cache misses overlap instead of each
//! insert waiting for its own. hashbrown cannot name the slot of an absent key, and a table
//! arriving is nearly all absent keys.
//!
//! The slots stay at most three-quarters full; a table of a million IPv4 prefixes takes 16 MiB
//! of slots and 24 MiB of path lists (a hashbrown map of the lists took 33 MiB, and stalled
//! on every insert).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

use super::Paths;

/// A prefix as the table keys it.
pub(super) trait Key: Copy + Eq {
    /// A key and the index of its path list, as stored. The all-zero slot is a free one.
    type Slot: Copy + Eq;
    /// A free slot.
    const FREE: Self::Slot;
    /// The key of a prefix (of the table's family).
    fn of(prefix: &IpNetwork) -> Self;
    /// The prefix back.
    fn prefix(self) -> IpNetwork;
    /// A well-mixed hash: its top bits pick the slot probing starts at.
    fn hash(self) -> u64;
    /// The slot for the key and a path list index, or `None` when the index does not fit.
    fn slot(self, index: u32) -> Option<Self::Slot>;
    /// The key in a used slot.
    fn key(slot: Self::Slot) -> Self;
    /// The path list index in a used slot.
    fn index(slot: Self::Slot) -> usize;
}

/// MurmurHash3's finalizer: every input bit changes each output bit with probability near one
/// half. (A plain multiplicative hash clustered the regular keys of a real table: a linear
/// probe averaged 11 slots at two-thirds load, and 20 to 40 while a table loaded.)
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ x >> 33
}

/// IPv4 prefixes packed as address << 8 | length. A slot holds the address in its top 32 bits,
/// the length in the next 6 and the path list's index plus one in the low 26: up to 67 million
/// prefixes.
impl Key for u64 {
    type Slot = u64;
    const FREE: u64 = 0;
    fn of(prefix: &IpNetwork) -> Self {
        match prefix {
            IpNetwork::V4(n) => (u64::from(u32::from(n.network())) << 8) | u64::from(n.prefix()),
            IpNetwork::V6(_) => 0,
        }
    }
    fn prefix(self) -> IpNetwork {
        IpNetwork::new(IpAddr::V4(Ipv4Addr::from((self >> 8) as u32)), (self & 0xff) as u8)
            .expect("stored prefixes are valid")
    }
    fn hash(self) -> u64 {
        mix(self)
    }
    fn slot(self, index: u32) -> Option<u64> {
        let tagged = u64::from(index).checked_add(1).filter(|i| *i < 1 << 26)?;
        Some((self >> 8) << 32 | (self & 0x3f) << 26 | tagged)
    }
    fn key(slot: u64) -> Self {
        (slot >> 32) << 8 | (slot >> 26 & 0x3f)
    }
    fn index(slot: u64) -> usize {
        (slot & ((1 << 26) - 1)) as usize - 1
    }
}

/// IPv6 prefixes as 16 address octets and the length. A slot adds the path list's index plus
/// one.
impl Key for [u8; 17] {
    type Slot = ([u8; 17], u32);
    const FREE: Self::Slot = ([0; 17], 0);
    fn of(prefix: &IpNetwork) -> Self {
        let mut k = [0u8; 17];
        if let IpAddr::V6(a) = prefix.network() {
            k[..16].copy_from_slice(&a.octets());
        }
        k[16] = prefix.prefix();
        k
    }
    fn prefix(self) -> IpNetwork {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self[..16]);
        IpNetwork::new(IpAddr::V6(Ipv6Addr::from(a)), self[16]).expect("stored prefixes are valid")
    }
    fn hash(self) -> u64 {
        let (high, low) = self[..16].split_at(8);
        let word = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("eight octets"));
        mix(word(high) ^ mix(word(low) ^ u64::from(self[16])))
    }
    fn slot(self, index: u32) -> Option<Self::Slot> {
        Some((self, index.checked_add(1)?))
    }
    fn key(slot: Self::Slot) -> Self {
        slot.0
    }
    fn index(slot: Self::Slot) -> usize {
        slot.1 as usize - 1
    }
}

/// Prefixes of one family and their path lists.
#[derive(Debug)]
pub(super) struct PrefixTable<K: Key> {
    /// A power of two long; at most three-quarters used.
    slots: Vec<K::Slot>,
    /// How far a hash is shifted right to index `slots`.
    shift: u32,
    /// The path lists the slots point at.
    paths: Vec<Paths>,
    /// Indices in `paths` no slot points at (their lists are empty).
    unused: Vec<u32>,
}

/// The slots a new table starts with.
const FIRST_SLOTS: usize = 16;

impl<K: Key> Default for PrefixTable<K> {
    fn default() -> Self {
        PrefixTable {
            slots: vec![K::FREE; FIRST_SLOTS],
            shift: 64 - FIRST_SLOTS.trailing_zeros(),
            paths: Vec::new(),
            unused: Vec::new(),
        }
    }
}

impl<K: Key> PrefixTable<K> {
    /// How many prefixes the table holds.
    pub fn len(&self) -> usize {
        self.paths.len() - self.unused.len()
    }

    /// The paths to a prefix.
    pub fn get(&self, key: K) -> Option<&Paths> {
        let at = self.find(key).ok()?;
        Some(&self.paths[K::index(self.slots[at])])
    }

    /// The paths to a prefix, to change (leaving a prefix without paths is for
    /// [`PrefixTable::remove`]).
    pub fn get_mut(&mut self, key: K) -> Option<&mut Paths> {
        let at = self.find(key).ok()?;
        Some(&mut self.paths[K::index(self.slots[at])])
    }

    /// The paths to a prefix, an empty list first if it had none; `None` only when the table
    /// is full (67 million IPv4 prefixes, or four billion IPv6 ones).
    pub fn get_or_insert(&mut self, key: K) -> Option<&mut Paths> {
        let index = match self.find(key) {
            Ok(at) => K::index(self.slots[at]),
            Err(mut free) => {
                if (self.len() + 1) * 4 > self.slots.len() * 3 {
                    self.grow();
                    free = self.free_slot(key);
                }
                let index = match self.unused.last() {
                    Some(&unused) => unused,
                    None => u32::try_from(self.paths.len()).ok()?,
                };
                self.slots[free] = key.slot(index)?;
                if self.unused.pop().is_none() {
                    self.paths.push(Paths::new());
                }
                index as usize
            }
        };
        Some(&mut self.paths[index])
    }

    /// Removes a prefix, returning its paths.
    pub fn remove(&mut self, key: K) -> Option<Paths> {
        let at = self.find(key).ok()?;
        let index = K::index(self.slots[at]);
        let paths = std::mem::take(&mut self.paths[index]);
        self.vacate(at);
        self.unused.push(index as u32);
        if self.len() == 0 {
            // The last prefix: the path lists start again from nothing.
            self.paths.clear();
            self.unused.clear();
        }
        Some(paths)
    }

    /// Every prefix with its paths, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (K, &Paths)> {
        self.slots.iter().filter(|s| **s != K::FREE).map(|&s| (K::key(s), &self.paths[K::index(s)]))
    }

    /// Every path list, to change (some may be empty).
    pub fn paths_mut(&mut self) -> impl Iterator<Item = &mut Paths> {
        self.paths.iter_mut()
    }

    /// Asks the processor to fetch the slot a key's probe starts at, without waiting for it
    /// (on x86-64; elsewhere this does nothing). Slots prefetched before the table grows are
    /// wasted, which happens a few times in a table's life.
    pub fn prefetch(&self, key: K) {
        let slot: *const K::Slot = &self.slots[self.home(key)];
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        // SAFETY: a prefetch is a hint: it never faults and changes nothing observable, and
        // SSE, which it needs, is part of every x86-64 processor.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(slot.cast())
        };
        #[cfg(not(target_arch = "x86_64"))]
        std::hint::black_box(slot);
    }

    /// The slot probing for a key starts at.
    fn home(&self, key: K) -> usize {
        (key.hash() >> self.shift) as usize
    }

    /// The slot holding a key, or else the free slot it would go in.
    fn find(&self, key: K) -> Result<usize, usize> {
        let mask = self.slots.len() - 1;
        let mut at = self.home(key);
        loop {
            let slot = self.slots[at];
            if slot == K::FREE {
                return Err(at);
            }
            if K::key(slot) == key {
                return Ok(at);
            }
            at = (at + 1) & mask;
        }
    }

    /// The first free slot of a key's probe (for a key known to be absent).
    fn free_slot(&self, key: K) -> usize {
        let mask = self.slots.len() - 1;
        let mut at = self.home(key);
        while self.slots[at] != K::FREE {
            at = (at + 1) & mask;
        }
        at
    }

    /// Frees a slot, moving later slots of the same run back so that every key stays
    /// reachable from its home slot without passing a free one (no tombstones).
    fn vacate(&mut self, at: usize) {
        let mask = self.slots.len() - 1;
        let mut hole = at;
        let mut next = at;
        loop {
            next = (next + 1) & mask;
            let slot = self.slots[next];
            if slot == K::FREE {
                break;
            }
            // The key may fill the hole unless its home lies after the hole (cyclically).
            let home = self.home(K::key(slot));
            if next.wrapping_sub(home) & mask >= next.wrapping_sub(hole) & mask {
                self.slots[hole] = slot;
                hole = next;
            }
        }
        self.slots[hole] = K::FREE;
    }

    /// Doubles the slots.
    fn grow(&mut self) {
        let doubled = vec![K::FREE; self.slots.len() * 2];
        let old = std::mem::replace(&mut self.slots, doubled);
        self.shift -= 1;
        for slot in old.into_iter().filter(|s| *s != K::FREE) {
            let free = self.free_slot(K::key(slot));
            self.slots[free] = slot;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attrs::PathAttrs;

    fn v4(s: &str) -> u64 {
        u64::of(&s.parse().unwrap())
    }

    /// A table of `n` /24s and /32s from 10.0.0.0, each with one path list marked by its
    /// position (the list's length is the position modulo 3).
    fn filled(n: u32) -> PrefixTable<u64> {
        let mut table = PrefixTable::default();
        for i in 0..n {
            let paths = table.get_or_insert(key(i)).unwrap();
            assert!(paths.is_empty(), "{i} was new");
            paths.extend((0..i % 3).map(|_| path()));
        }
        table
    }

    fn key(i: u32) -> u64 {
        let len = if i.is_multiple_of(2) { 24 } else { 32 };
        u64::of(&IpNetwork::new(Ipv4Addr::from(0x0a00_0000 + (i << 8) + (i % 2)).into(), len).unwrap())
    }

    fn path() -> super::super::Path {
        super::super::Path { peer: 1, attrs: std::sync::Arc::new(PathAttrs::local(None)), stale: false }
    }

    #[test]
    fn keys_round_trip_through_slots() {
        for s in ["0.0.0.0/0", "255.255.255.255/32", "10.1.2.0/24", "128.0.0.0/1"] {
            for index in [0, 41, (1 << 26) - 2] {
                let key = v4(s);
                let slot = key.slot(index).unwrap();
                assert_ne!(slot, <u64 as Key>::FREE);
                assert_eq!((u64::key(slot), u64::index(slot)), (key, index as usize));
                assert_eq!(u64::key(slot).prefix().to_string(), s);
            }
        }
        let v6 = <[u8; 17]>::of(&"::/0".parse().unwrap());
        assert_ne!(v6.slot(0).unwrap(), <[u8; 17] as Key>::FREE);
        assert_eq!(v4("0.0.0.0/0").slot((1 << 26) - 1), None, "an index beyond 26 bits is refused");
    }

    #[test]
    fn finds_every_prefix_after_growing() {
        let table = filled(10_000);
        assert_eq!(table.len(), 10_000);
        assert!(table.slots.len() >= 10_000 * 4 / 3);
        for i in 0..10_000 {
            assert_eq!(table.get(key(i)).map(|p| p.len()), Some((i % 3) as usize), "{i}");
        }
        assert_eq!(table.get(v4("10.0.0.0/23")), None);
        assert_eq!(table.iter().count(), 10_000);
    }

    #[test]
    fn removing_keeps_the_others_reachable_and_reuses_lists() {
        let mut table = filled(5_000);
        for i in (0..5_000).filter(|i| i % 4 != 1) {
            assert_eq!(table.remove(key(i)).map(|p| p.len()), Some((i % 3) as usize), "{i}");
        }
        assert_eq!(table.remove(key(0)), None);
        assert_eq!(table.len(), 1_250);
        for i in 0..5_000 {
            assert_eq!(table.get(key(i)).is_some(), i % 4 == 1, "{i}");
        }
        let lists = table.paths.len();
        assert!(table.get_or_insert(v4("192.0.2.0/24")).unwrap().is_empty());
        assert_eq!(table.paths.len(), lists, "a freed list is used again");
        assert_eq!(table.iter().count(), 1_251);
    }

    #[test]
    fn emptied_table_starts_its_lists_again() {
        let mut table = filled(100);
        (0..100).for_each(|i| assert!(table.remove(key(i)).is_some()));
        assert_eq!((table.len(), table.paths.len(), table.unused.len()), (0, 0, 0));
        assert_eq!(table.iter().count(), 0);
        table.get_or_insert(key(7)).unwrap();
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn ipv6_prefixes_are_kept_apart_by_length() {
        let mut table = PrefixTable::<[u8; 17]>::default();
        for s in ["2001:db8::/32", "2001:db8::/48", "2001:db8::/64", "::/0"] {
            table.get_or_insert(<[u8; 17]>::of(&s.parse().unwrap())).unwrap().push(path());
        }
        assert_eq!(table.len(), 4);
        let mut all: Vec<String> = table.iter().map(|(k, _)| k.prefix().to_string()).collect();
        all.sort();
        assert_eq!(all, ["2001:db8::/32", "2001:db8::/48", "2001:db8::/64", "::/0"]);
        assert!(table.remove(<[u8; 17]>::of(&"2001:db8::/48".parse().unwrap())).is_some());
        assert!(table.get(<[u8; 17]>::of(&"2001:db8::/64".parse().unwrap())).is_some());
    }

    #[test]
    fn a_real_tables_regular_prefixes_are_found_in_a_few_probes() {
        // A mix like a full table's: runs of /24s, /23s, /22s and /20s, one after another.
        let mut table = PrefixTable::<u64>::default();
        for i in 0..400_000u32 {
            let len = [24, 24, 24, 24, 24, 24, 23, 23, 22, 20][i as usize % 10];
            let address = (0x1000_0000 + (i << 8)) & (u32::MAX << (32 - len));
            table.get_or_insert(u64::of(&IpNetwork::new(Ipv4Addr::from(address).into(), len as u8).unwrap()));
        }
        let load = table.len() as f64 / table.slots.len() as f64;
        let probes: usize = table
            .iter()
            .map(|(k, _)| (table.find(k).unwrap().wrapping_sub(table.home(k)) & (table.slots.len() - 1)) + 1)
            .sum();
        let mean = probes as f64 / table.len() as f64;
        // A found key takes (1 + 1/(1 - load)) / 2 probes with a perfectly random hash.
        let ideal = (1.0 + 1.0 / (1.0 - load)) / 2.0;
        assert!(
            mean < 1.2 * ideal,
            "{mean:.2} slots probed on average (random: {ideal:.2}) for {} prefixes in {} slots",
            table.len(),
            table.slots.len()
        );
    }

    /// IPv4 keys that all hash to the last slot of a table, so every run wraps past the end.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Colliding(u64);

    impl Key for Colliding {
        type Slot = u64;
        const FREE: u64 = 0;
        fn of(prefix: &IpNetwork) -> Self {
            Colliding(u64::of(prefix))
        }
        fn prefix(self) -> IpNetwork {
            self.0.prefix()
        }
        fn hash(self) -> u64 {
            u64::MAX
        }
        fn slot(self, index: u32) -> Option<u64> {
            self.0.slot(index)
        }
        fn key(slot: u64) -> Self {
            Colliding(u64::key(slot))
        }
        fn index(slot: u64) -> usize {
            u64::index(slot)
        }
    }

    #[test]
    fn removing_from_a_run_that_wraps_keeps_the_rest_reachable() {
        let mut table = PrefixTable::<Colliding>::default();
        let keys: Vec<Colliding> = (0..10).map(|i| Colliding(key(i))).collect();
        keys.iter().for_each(|k| assert!(table.get_or_insert(*k).unwrap().is_empty()));
        assert_eq!(table.slots.len(), FIRST_SLOTS, "one run of ten from the last slot, wrapping");
        for removed in [0, 5, 9, 1] {
            assert!(table.remove(keys[removed]).is_some());
            assert!(table.get(keys[removed]).is_none());
        }
        for k in [2, 3, 4, 6, 7, 8] {
            assert!(table.get(keys[k]).is_some(), "{k} reachable");
        }
        assert_eq!(table.iter().count(), 6);
    }
}
