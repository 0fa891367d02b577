//! Network namespaces with unique names, removed when their guard drops, and the commands
//! that work in them.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A short tag unique to this process and call (interface names have 15 characters).
pub fn unique() -> String {
    format!("{:x}{:x}", std::process::id() % 0xfff, NEXT.fetch_add(1, Ordering::SeqCst))
}

/// Runs a command; its stdout, or an error with its stderr.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command; whether it succeeded and its stdout and stderr together.
pub fn output(cmd: &mut Command) -> (bool, String) {
    match cmd.output() {
        Ok(out) => (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        ),
        Err(e) => (false, format!("{cmd:?}: {e}")),
    }
}

/// Moves the calling thread into the namespace at `path`; threads and processes it starts
/// afterwards are inside it too.
pub fn enter(path: &Path) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering {}", path.display()))
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    /// Its name under /var/run/netns.
    pub name: String,
}

impl Netns {
    /// Makes `<prefix>-<unique>-<tag>` with its loopback up.
    pub fn new(prefix: &str, tag: &str) -> anyhow::Result<Netns> {
        let name = format!("{prefix}-{}-{tag}", unique());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let netns = Netns { name };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// Its path, as runtimes pass it in CNI_NETNS.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    /// A command that runs inside it.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// `ip <args>` inside it.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Joins two namespaces with a veth pair named `<a_end>`/`<b_end>`.
pub fn veth(a: &Netns, a_end: &str, b: &Netns, b_end: &str) -> anyhow::Result<()> {
    run(Command::new("ip")
        .args(["link", "add", a_end, "netns", &a.name, "type", "veth", "peer", "name", b_end, "netns", &b.name]))?;
    Ok(())
}
