//! BIRD 2 run by the agent (the `bird` BGP backend): its configuration rendered from the plan
//! and checked, the daemon started once and told to reload when the configuration changes,
//! and stopped with the agent.

use std::path::PathBuf;

use anyhow::Context;

use crate::calc::bgp::Plan;
use crate::calc::{Cluster, Me};

/// BIRD run by the agent; stopped (SIGTERM, its kernel routes persist) with the agent.
pub struct BirdProcess {
    child: std::process::Child,
    socket: PathBuf,
}

impl Drop for BirdProcess {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

/// Renders BIRD's configuration from the plan (checked with `bird -p`), starts BIRD the
/// first time, and has it reload when the configuration changed.
pub fn render_and_run(
    me: &Me,
    cluster: &Cluster,
    plan: &Plan,
    state_dir: &std::path::Path,
    bird: &mut Option<BirdProcess>,
) -> anyhow::Result<()> {
    let dir = state_dir.join("bird");
    let socket = dir.join("bird.ctl");
    let resource = brindle_render::TemplateResource {
        src: "bird.conf.j2".into(),
        dest: dir.join("bird.conf"),
        keys: Vec::new(),
        mode: 0o640,
        check_cmd: Some("bird -p -c {src}".into()),
        reload_cmd: bird.as_ref().map(|b| format!("birdc -s {} configure", b.socket.display())),
    };
    let context = crate::bird::context(me, cluster, plan)?;
    brindle_render::render(&resource, crate::bird::TEMPLATE, &context)?;
    if bird.as_mut().is_none_or(|b| b.child.try_wait().ok().flatten().is_some()) {
        let child = std::process::Command::new("bird")
            .arg("-f")
            .arg("-c")
            .arg(&resource.dest)
            .arg("-s")
            .arg(&socket)
            .arg("-P")
            .arg(dir.join("bird.pid"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("starting bird (Debian package bird2)")?;
        tracing::warn!(pid = child.id(), "BIRD started");
        *bird = Some(BirdProcess { child, socket });
    }
    Ok(())
}
