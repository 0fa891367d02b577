//! A BIRD 2 daemon in a namespace, stopped on drop: the external router of end-to-end tests.
//! (The BGP speaker's own tests keep their own harness: that crate uses nothing of ours.)

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::netns::Netns;

/// A running BIRD.
#[derive(Debug)]
pub struct Bird {
    child: Child,
    socket: PathBuf,
}

impl Bird {
    /// Checks `config` with `bird -p`, then runs BIRD with it inside `netns`.
    pub fn start(netns: &Netns, dir: &Path, config: &str) -> anyhow::Result<Bird> {
        let path = dir.join("bird.conf");
        let socket = dir.join("bird.ctl");
        std::fs::write(&path, config)?;
        let check = Command::new("bird").args(["-p", "-c"]).arg(&path).output().context("running bird -p")?;
        if !check.status.success() {
            bail!("BIRD rejects its config: {}", String::from_utf8_lossy(&check.stderr));
        }
        let child = netns
            .command("bird")
            .arg("-f")
            .arg("-c")
            .arg(&path)
            .arg("-s")
            .arg(&socket)
            .arg("-P")
            .arg(dir.join("bird.pid"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("bird.log"))?)
            .spawn()
            .context("starting bird")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if Instant::now() > deadline {
                bail!("BIRD did not open its control socket");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Bird { child, socket })
    }

    /// A `birdc` command's output.
    pub fn cli(&self, command: &str) -> String {
        Command::new("birdc")
            .arg("-s")
            .arg(&self.socket)
            .arg(command)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
