//! What a process has cost: its CPU time and memory, from `/proc`.

use anyhow::Context;

/// The kernel's unit of CPU time in `/proc/<pid>/stat` (USER_HZ, 100 on every Linux ABI).
const TICKS_PER_SECOND: f64 = 100.0;

/// The fields of `/proc/<pid>/stat` after the command name (which is in parentheses and may
/// hold spaces): index 0 is the state, field 3 of the whole line.
fn stat_fields(pid: &str) -> anyhow::Result<Vec<f64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("process {pid}"))?;
    let after_name = stat.rsplit_once(')').context("malformed stat")?.1;
    Ok(after_name.split_whitespace().map(|f| f.parse().unwrap_or(0.0)).collect())
}

/// Seconds of CPU (user + system) process `pid` has used.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let fields = stat_fields(&pid.to_string())?;
    // utime and stime are fields 14 and 15 of stat.
    Ok((fields[11] + fields[12]) / TICKS_PER_SECOND)
}

/// Seconds of CPU (user + system) this process's children have used, of those it has waited
/// for.
pub fn children_cpu_seconds() -> anyhow::Result<f64> {
    let fields = stat_fields("self")?;
    // cutime and cstime are fields 16 and 17 of stat.
    Ok((fields[13] + fields[14]) / TICKS_PER_SECOND)
}

/// Resident and peak resident memory of process `pid` (VmRSS, VmHWM), KiB.
pub fn memory_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("process {pid}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {name} for process {pid}"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}
