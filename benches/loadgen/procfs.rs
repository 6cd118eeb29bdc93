//! Readings from `/proc`: a process's resident memory and CPU time, and our own fd limit.
//! Linux only; every reading is optional so a run on another system still reports throughput.

use std::time::Instant;

/// Resident set size of `pid` in bytes (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// User + system CPU time of `pid` (all its threads) in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it are plain numbers.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5), i.e. 11 and 12 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks_per_second() as f64)
}

/// `sysconf(_SC_CLK_TCK)` without libc: the `AT_CLKTCK` entry of our auxiliary vector.
fn clock_ticks_per_second() -> u64 {
    const AT_CLKTCK: u64 = 17;
    let Ok(auxv) = std::fs::read("/proc/self/auxv") else {
        return 100;
    };
    auxv.chunks_exact(16)
        .map(|pair| {
            let word = |b: &[u8]| u64::from_ne_bytes(b.try_into().expect("8 bytes"));
            (word(&pair[..8]), word(&pair[8..]))
        })
        .find(|(key, _)| *key == AT_CLKTCK)
        .map_or(100, |(_, value)| value)
}

/// The soft limit on open files of this process.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// CPU time used by all processes of the machine in seconds (`/proc/stat`, busy columns).
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
    // user nice system idle iowait irq softirq steal: everything but idle and iowait.
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| ticks.get(i)).sum();
    Some(busy as f64 / clock_ticks_per_second() as f64)
}

/// CPU time of this process, the server and the whole machine at one instant.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    at: Instant,
    client: Option<f64>,
    server: Option<f64>,
    machine: Option<f64>,
}

/// Shares of one core used over an interval.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CpuUsage {
    pub client: Option<f64>,
    pub server: Option<f64>,
    /// Every other process of the machine: load that competed with the benchmark.
    pub others: Option<f64>,
}

impl CpuSample {
    pub fn take(server_pid: Option<u32>) -> Self {
        Self {
            at: Instant::now(),
            client: cpu_seconds(std::process::id()),
            server: server_pid.and_then(cpu_seconds),
            machine: machine_busy_seconds(),
        }
    }

    pub fn usage_since(&self, earlier: &CpuSample) -> CpuUsage {
        let elapsed = self.at.duration_since(earlier.at).as_secs_f64().max(1e-9);
        let share = |now: Option<f64>, then: Option<f64>| Some((now? - then?) / elapsed);
        let client = share(self.client, earlier.client);
        let server = share(self.server, earlier.server);
        let machine = share(self.machine, earlier.machine);
        let others = machine.map(|m| (m - client.unwrap_or(0.0) - server.unwrap_or(0.0)).max(0.0));
        CpuUsage { client, server, others }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_of_our_own_process() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).unwrap() > 0);
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
        assert!(open_files_limit().unwrap() > 0);
        assert!(machine_busy_seconds().unwrap() > 0.0);
        assert!((1..=10_000).contains(&clock_ticks_per_second()));
    }
}
