//! Entering a container's network namespace: work that must happen inside it runs on a
//! short-lived thread that joins the namespace, so the plugin's own thread never leaves the
//! host's.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

use crate::error::{Error, Result};

/// An open network namespace.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    /// Opens the namespace at `path` (a bind mount such as `/var/run/netns/x` or
    /// `/proc/<pid>/ns/net`).
    pub fn open(path: &Path) -> Result<Netns> {
        let file = File::open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::UnknownContainer(format!("network namespace {} does not exist", path.display()))
            } else {
                Error::Io(format!("opening network namespace {}: {e}", path.display()))
            }
        })?;
        // The kernel says whether it is a network namespace: joining it as one fails for a
        // regular file, a directory or another kind of namespace. A thread of its own joins
        // it and ends, so nothing else is done before the check.
        let joined = std::thread::scope(|scope| scope.spawn(|| setns(&file, CloneFlags::CLONE_NEWNET)).join());
        match joined {
            Ok(Ok(())) => Ok(Netns { file, path: path.to_owned() }),
            Ok(Err(e)) => Err(Error::InvalidEnv {
                var: "CNI_NETNS",
                why: format!("{} is not a network namespace: {e}", path.display()),
            }),
            Err(_) => Err(Error::Internal("the thread checking the network namespace panicked".into())),
        }
    }

    /// The namespace's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open namespace file (for `IFLA_NET_NS_FD`).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Runs `work` on a thread inside the namespace, with its own one-thread runtime so it can
    /// use netlink there (sockets belong to the namespace they were opened in).
    pub fn run<T: Send>(&self, work: impl AsyncFnOnce() -> Result<T> + Send) -> Result<T> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(|e| {
                        Error::UnknownContainer(format!("{} is not a network namespace: {e}", self.path.display()))
                    })?;
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| Error::Internal(format!("starting a runtime in the container: {e}")))?;
                    runtime.block_on(work())
                })
                .join()
                .unwrap_or_else(|_| Err(Error::Internal("the thread working in the container panicked".into())))
        })
    }
}
