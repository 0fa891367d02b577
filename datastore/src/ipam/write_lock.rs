//! One host's lock on its writes of IPAM blocks.
//!
//! Every write of a block is a compare-and-swap, so no lock is needed for correctness. But the
//! processes of one node (CNI calls for pods started together) all write the node's one open
//! block, and without a lock most of their writes lose a race to each other: eight processes
//! made four writes and three reads per allocation on the Kubernetes API (a refusal there
//! carries no object, so each loser reads the block again). Held around the read-modify-write
//! of one block, this lock (an advisory `flock` on a file) lets one process of the host write
//! at a time, and the file records the revision at which each block was last written, so a
//! process whose copy of a block is older reads it first instead of losing a race with it.
//! The lock covers only that write: processes connect, read pools and settings and list their
//! node's blocks in parallel. A write that waits longer than [`WAIT`] goes ahead without it.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnetwork::IpNetwork;

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

/// The lock, held until dropped, and the revisions at which the host last wrote blocks.
pub(super) struct Held {
    file: File,
    /// Each block's revision, with a sequence number of the write (to keep the newest).
    written: BTreeMap<IpNetwork, (Revision, u64)>,
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

    fn read(mut file: File) -> std::io::Result<Held> {
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(Held { written: parse(&String::from_utf8_lossy(&bytes)), file })
    }

    /// Whether a copy of block `cidr` at `revision` may be older than the host's last write of
    /// it (then it is read again before it is written).
    pub(super) fn outdates(&self, cidr: &IpNetwork, revision: Revision) -> bool {
        self.written.get(cidr).is_some_and(|(written, _)| *written > revision)
    }

    /// Records that block `cidr` was written at `revision` (`None`: deleted). A record that
    /// cannot be saved is only logged: the next writer then loses a race instead.
    pub(super) fn wrote(&mut self, cidr: IpNetwork, revision: Option<Revision>) {
        match revision {
            Some(revision) => {
                let sequence = self.written.values().map(|(_, s)| s + 1).max().unwrap_or(0);
                self.written.insert(cidr, (revision, sequence));
                while self.written.len() > REMEMBERED {
                    let oldest = self.written.iter().min_by_key(|(_, (_, s))| *s).map(|(c, _)| *c);
                    oldest.map(|c| self.written.remove(&c));
                }
            }
            None => drop(self.written.remove(&cidr)),
        }
        if let Err(e) = self.save() {
            tracing::debug!(error = %e, "IPAM write lock: cannot record a block's revision");
        }
    }

    fn save(&mut self) -> std::io::Result<()> {
        let text: String =
            self.written.iter().map(|(cidr, (revision, sequence))| format!("{cidr} {revision} {sequence}\n")).collect();
        // Written over the old text, then cut to length: ext4 writes out a file truncated to
        // zero and written again when it is closed (its `auto_da_alloc`), 20 times the cost.
        self.file.rewind()?;
        self.file.write_all(text.as_bytes())?;
        self.file.set_len(text.len() as u64)
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

/// The file's lines `<cidr> <revision> <sequence>`. A writer that died mid-write can leave
/// lines that do not read so (skipped) or old ones: at worst a write then loses a race.
fn parse(text: &str) -> BTreeMap<IpNetwork, (Revision, u64)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let cidr = fields.next()?.parse().ok()?;
            let revision = fields.next()?.parse().ok()?;
            let sequence = fields.next()?.parse().ok()?;
            fields.next().is_none().then_some((cidr, (revision, sequence)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> IpNetwork {
        text.parse().unwrap()
    }

    #[tokio::test]
    async fn the_next_holder_sees_the_revisions_written_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let lock = WriteLock::new(dir.path().join("locks/ipam.lock"));
        let mut held = lock.take().await.unwrap();
        assert!(!held.outdates(&cidr("10.0.0.0/26"), 5), "nothing written yet");
        held.wrote(cidr("10.0.0.0/26"), Some(7));
        held.wrote(cidr("10.0.0.64/26"), Some(9));
        held.wrote(cidr("10.0.0.64/26"), None);
        drop(held);

        let held = lock.take().await.unwrap();
        assert!(held.outdates(&cidr("10.0.0.0/26"), 6));
        assert!(!held.outdates(&cidr("10.0.0.0/26"), 7), "the copy is the one written");
        assert!(!held.outdates(&cidr("10.0.0.0/26"), 8), "a newer copy (another host wrote it)");
        assert!(!held.outdates(&cidr("10.0.0.64/26"), 1), "deleted");
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
        held.wrote(cidr("10.0.0.0/26"), Some(2));
        drop(held);
        assert_eq!(second.await.unwrap(), Some(true), "saw the first holder's write");
    }

    #[test]
    fn only_the_most_recently_written_blocks_are_kept_and_bad_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut held = Held::take(&dir.path().join("ipam.lock")).unwrap();
        for i in 0..=REMEMBERED as u8 {
            held.wrote(cidr(&format!("10.{i}.0.0/26")), Some(i.into()));
        }
        drop(held);
        let text = std::fs::read_to_string(dir.path().join("ipam.lock")).unwrap();
        let written = parse(&format!("{text}10.200.0.0/26 12\nnot a line at all\n10.201.0.0/26 x 1\n"));
        assert_eq!(written.len(), REMEMBERED);
        assert!(!written.contains_key(&cidr("10.0.0.0/26")), "the oldest went");
        assert_eq!(written.get(&cidr(&format!("10.{REMEMBERED}.0.0/26"))).map(|w| w.0), Some(REMEMBERED as i64));
    }
}
