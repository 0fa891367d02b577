//! Processes we start (agents, daemons): stopped on drop, SIGTERM first so they can clean up
//! what they started, SIGKILL if they linger. A lab that stays up keeps their PIDs and stops
//! them later with [`terminate`], after checking the PID is still the program it started.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// How long a process gets between SIGTERM and SIGKILL.
pub const GRACE: Duration = Duration::from_secs(5);

/// A running child process, stopped on drop.
#[derive(Debug)]
pub struct Process(pub Child);

impl Process {
    /// Its PID.
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Whether it has not exited yet.
    pub fn running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }

    /// Disarms the guard: the process outlives this value. Returns its PID.
    pub fn keep(self) -> u32 {
        std::mem::ManuallyDrop::new(self).0.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.running() {
            signal("-TERM", self.0.id());
            let deadline = Instant::now() + GRACE;
            while self.running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(signal: &str, pid: u32) {
    let _ = Command::new("kill").args([signal, &pid.to_string()]).stderr(std::process::Stdio::null()).status();
}

/// Whether process `pid` exists and has not exited (a zombie has).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()))
        .is_some_and(|state| !matches!(state, 'Z' | 'X'))
}

/// Whether process `pid` exists and runs `program` (the file name of its executable).
pub fn is_running(pid: u32, program: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .and_then(|cmdline| cmdline.split(|&b| b == 0).next().map(|argv0| argv0.to_vec()))
        .is_some_and(|argv0| String::from_utf8_lossy(&argv0).rsplit('/').next() == Some(program))
}

/// Stops process `pid` if it still runs `program` (a PID can be reused by then): SIGTERM,
/// then SIGKILL after [`GRACE`]. Returns whether it was running.
pub fn terminate(pid: u32, program: &str) -> bool {
    if !is_running(pid, program) {
        return false;
    }
    signal("-TERM", pid);
    let deadline = Instant::now() + GRACE;
    while is_running(pid, program) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if is_running(pid, program) {
        signal("-KILL", pid);
        while is_running(pid, program) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminate_stops_only_the_program_named() {
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let guard = Process(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !is_running(pid, "sleep") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5)); // until the child has exec'd
        }
        assert!(is_running(pid, "sleep"));
        assert!(!terminate(pid, "brindle-node"), "a PID running another program is left alone");
        assert!(is_running(pid, "sleep"));
        assert!(alive(pid));
        drop(guard);
        assert!(!is_running(pid, "sleep") && !alive(pid));
    }
}
