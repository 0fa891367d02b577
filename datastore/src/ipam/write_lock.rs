//! One host's lock on its writes of IPAM blocks.
//!
//! Every write of a block is a compare-and-swap, so no lock is needed for correctness. But the
//! processes of one node (CNI calls for pods started together) all write the node's one open
//! block, and without a lock most of their writes lose a race to each other: eight processes
//! made four writes and three reads per allocation on the Kubernetes API (a refusal there
//! carries no object, so each loser reads the block again). Held around the read-modify-write
//! of one block, this lock (an advisory `flock` on a file) lets one process of the host write
//! at a time. The file records the revision at which each block was last written and the last
//! block written, whole: a process whose copy of that block is older takes the file's instead
//! of reading it from the store, and writes it once. The lock covers only that write:
//! processes connect, read pools and settings and list their node's blocks in parallel. A
//! write that waits longer than [`WAIT`] goes ahead without it.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use super::Block;
use crate::store::Revision;

/// How long a write waits for the lock before it goes ahead without it (every write is a
/// compare-and-swap, so that is only slower). A holder's requests are each bounded by the
/// store's timeouts; this bounds the wait behind one that hangs.
const WAIT: Duration = Duration::from_secs(2);

/// How many blocks' revisions the file keeps, the most recently written (a node writes a few).
const REMEMBERED: usize = 32;

/// The lock file of a host's IPAM writes.
#[derive(Debug, Clone)]
pub struct WriteLock {
    path: PathBuf,
}

/// The lock, held until dropped, and what the file records.
pub(super) struct Held {
    file: File,
    record: Record,
    /// The last block written, as the store holds it (JSON), decoded only when asked for.
    last_block: Vec<u8>,
}

/// What the lock file holds: this as a line of JSON, then the last block written as the
/// store holds it.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct Record {
    /// Each block's revision at the host's last write of it. Revisions grow with every write
    /// to the store, so the lowest is the block written longest ago.
    written: BTreeMap<IpNetwork, Revision>,
    /// The block written last and its revision.
    last: Option<(IpNetwork, Revision)>,
}

impl WriteLock {
    /// A lock on the file at `path` (created, with its directory, when first taken). Every
    /// process that writes the same node's blocks should name the same file.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        WriteLock { path: path.into() }
    }

    /// Takes the lock, waiting up to [`WAIT`]; `None` (logged) when the file cannot be used or
    /// the wait ran out, and the caller writes without it.
    pub(super) async fn take(&self) -> Option<Held> {
        match Held::try_take(&self.path) {
            Ok(Some(held)) => return Some(held),
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(path = %self.path.display(), error = %e, "IPAM write lock unusable; writing without it");
                return None;
            }
        }
        // Busy. `flock` blocks: it waits on a thread of its own, which the caller abandons when
        // the wait runs out (it then releases the lock as soon as it gets it, or when the
        // process ends, whichever comes first).
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let path = self.path.clone();
        let spawned = std::thread::Builder::new()
            .name("ipam-write-lock".into())
            .spawn(move || drop(sender.send(Held::take(&path))));
        if let Err(e) = spawned {
            tracing::debug!(error = %e, "IPAM write lock: cannot start its thread; writing without it");
            return None;
        }
        match tokio::time::timeout(WAIT, receiver).await {
            Ok(Ok(Ok(held))) => Some(held),
            Ok(Ok(Err(e))) => {
                tracing::debug!(path = %self.path.display(), error = %e, "IPAM write lock unusable; writing without it");
                None
            }
            Ok(Err(_)) => None,
            Err(_) => {
                tracing::debug!(path = %self.path.display(), wait = ?WAIT, "IPAM write lock busy; writing without it");
                None
            }
        }
    }
}

impl Held {
    /// Waits for the lock.
    fn take(path: &Path) -> std::io::Result<Held> {
        let file = open(path)?;
        file.lock()?;
        Held::read(file)
    }

    /// The lock if it is free (no thread is needed to wait for it then).
    fn try_take(path: &Path) -> std::io::Result<Option<Held>> {
        let file = open(path)?;
        match file.try_lock() {
            Ok(()) => Held::read(file).map(Some),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }

    /// The lock and what its file records. A new file is empty; a record that does not read
    /// (a writer that died mid-write, another version's) counts as empty: at worst a write then
    /// loses a race.
    fn read(mut file: File) -> std::io::Result<Held> {
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (record, last_block) = bytes.split_at(bytes.iter().position(|b| *b == b'\n').unwrap_or(bytes.len()));
        let record = match serde_json::from_slice(record) {
            Ok(record) => record,
            Err(e) => {
                if !bytes.is_empty() {
                    tracing::debug!(error = %e, "IPAM write lock: its record does not read; starting afresh");
                }
                Record::default()
            }
        };
        let last_block = last_block.get(1..).unwrap_or_default().to_vec();
        Ok(Held { file, record, last_block })
    }

    /// Whether a copy of block `cidr` at `revision` is older than the host's last write of it
    /// (it would only lose a race).
    pub(super) fn outdates(&self, cidr: &IpNetwork, revision: Revision) -> bool {
        self.record.written.get(cidr).is_some_and(|written| *written > revision)
    }

    /// Block `cidr` as the host last wrote it, when it was the last block written.
    pub(super) fn latest(&self, cidr: &IpNetwork) -> Option<(Block, Revision)> {
        let (_, revision) = self.record.last.filter(|(last, _)| last == cidr)?;
        self.record.written.get(cidr).filter(|written| **written == revision)?;
        let block: Block = serde_json::from_slice(&self.last_block).ok()?;
        (block.cidr == *cidr).then_some((block, revision))
    }

    /// Records that block `cidr` was written, with its value as the store holds it (`None`:
    /// deleted). A record that cannot be saved is only logged: the next writer then loses a
    /// race instead.
    pub(super) fn wrote(&mut self, cidr: IpNetwork, written: Option<(Revision, &[u8])>) {
        let record = &mut self.record;
        match written {
            Some((revision, value)) => {
                record.written.insert(cidr, revision);
                while record.written.len() > REMEMBERED {
                    let oldest = record.written.iter().min_by_key(|(_, revision)| **revision).map(|(c, _)| *c);
                    oldest.map(|c| record.written.remove(&c));
                }
                record.last = Some((cidr, revision));
                value.clone_into(&mut self.last_block);
            }
            None => {
                record.written.remove(&cidr);
                if record.last.take_if(|(last, _)| *last == cidr).is_some() {
                    self.last_block.clear();
                }
            }
        }
        if let Err(e) = self.save() {
            tracing::debug!(error = %e, "IPAM write lock: cannot record a block's write");
        }
    }

    fn save(&mut self) -> std::io::Result<()> {
        let mut bytes = serde_json::to_vec(&self.record)?;
        bytes.push(b'\n');
        bytes.extend_from_slice(&self.last_block);
        // Written over the old record, then cut to length: ext4 writes out a file truncated to
        // zero and written again when it is closed (its `auto_da_alloc`), 20 times the cost.
        self.file.rewind()?;
        self.file.write_all(&bytes)?;
        self.file.set_len(bytes.len() as u64)
    }
}

/// Opens the lock file, creating it and its directory when missing.
fn open(path: &Path) -> std::io::Result<File> {
    let open = || OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path);
    match open() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            open()
        }
        opened => opened,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::Allocation;

    fn cidr(text: &str) -> IpNetwork {
        text.parse().unwrap()
    }

    fn block(text: &str, pods: usize) -> Block {
        let mut block = Block::new(cidr(text), Some("n1".into()));
        for i in 0..pods {
            block.allocate(Allocation { handle: format!("net.c{i}"), ..Allocation::default() }, 0, 0);
        }
        block
    }

    fn json(block: &Block) -> Vec<u8> {
        serde_json::to_vec(block).unwrap()
    }

    #[tokio::test]
    async fn the_next_holder_sees_what_was_written_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let lock = WriteLock::new(dir.path().join("locks/ipam.lock"));
        let (first, second) = (block("10.0.0.0/26", 3), block("10.0.0.64/26", 1));
        let mut held = lock.take().await.unwrap();
        assert!(!held.outdates(&first.cidr, 5), "nothing written yet");
        assert_eq!(held.latest(&first.cidr), None);
        held.wrote(first.cidr, Some((7, &json(&first))));
        held.wrote(second.cidr, Some((9, &json(&second))));
        held.wrote(second.cidr, None);
        drop(held);

        let mut held = lock.take().await.unwrap();
        assert!(held.outdates(&first.cidr, 6));
        assert!(!held.outdates(&first.cidr, 7), "the copy is the one written");
        assert!(!held.outdates(&first.cidr, 8), "a newer copy (another host wrote it)");
        assert!(!held.outdates(&second.cidr, 1), "deleted");
        assert_eq!(held.latest(&second.cidr), None, "deleted");
        assert_eq!(held.latest(&first.cidr), None, "not the last block written");

        held.wrote(first.cidr, Some((10, &json(&first))));
        drop(held);
        let held = lock.take().await.unwrap();
        assert_eq!(held.latest(&first.cidr), Some((first, 10)));
    }

    #[tokio::test]
    async fn a_second_taker_waits_for_the_first_to_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let lock = WriteLock::new(dir.path().join("ipam.lock"));
        let mut held = lock.take().await.unwrap();
        let second = tokio::spawn({
            let lock = lock.clone();
            async move { lock.take().await.map(|held| held.outdates(&cidr("10.0.0.0/26"), 1)) }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!second.is_finished(), "taken while held");
        held.wrote(cidr("10.0.0.0/26"), Some((2, &json(&block("10.0.0.0/26", 1)))));
        drop(held);
        assert_eq!(second.await.unwrap(), Some(true), "saw the first holder's write");
    }

    #[test]
    fn only_the_most_recently_written_blocks_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.lock");
        let mut held = Held::take(&path).unwrap();
        for i in 0..=REMEMBERED as u8 {
            let b = block(&format!("10.{i}.0.0/26"), 1);
            held.wrote(b.cidr, Some((i.into(), &json(&b))));
        }
        drop(held);
        let held = Held::take(&path).unwrap();
        assert_eq!(held.record.written.len(), REMEMBERED);
        assert!(!held.outdates(&cidr("10.0.0.0/26"), -1), "the oldest went");
        assert!(held.outdates(&cidr(&format!("10.{REMEMBERED}.0.0/26")), REMEMBERED as i64 - 1));
    }

    #[test]
    fn a_record_or_block_cut_short_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.lock");
        let b = block("10.0.0.0/26", 2);
        let mut held = Held::take(&path).unwrap();
        held.wrote(b.cidr, Some((3, &json(&b))));
        drop(held);
        let text = std::fs::read(&path).unwrap();
        let newline = text.iter().position(|b| *b == b'\n').unwrap();

        std::fs::write(&path, &text[..text.len() - 10]).unwrap();
        let held = Held::take(&path).unwrap();
        assert!(held.outdates(&b.cidr, 2), "the record reads");
        assert_eq!(held.latest(&b.cidr), None, "the block does not");
        drop(held);

        std::fs::write(&path, &text[..newline / 2]).unwrap();
        let held = Held::take(&path).unwrap();
        assert_eq!(held.record, Record::default());
        assert_eq!(held.latest(&b.cidr), None);
    }
}
