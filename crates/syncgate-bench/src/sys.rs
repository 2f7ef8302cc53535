//! What the suite reads from the operating system: a process's CPU time and resident memory
//! (from /proc, Linux only), and the open-file limit the generator raises for itself and its
//! children.

use std::time::Instant;

use anyhow::{Context, Result};

/// User and system CPU time of process `pid` (all threads), in microseconds.
///
/// Read from fields 14 and 15 of `/proc/PID/stat` (clock ticks, usually 10 ms each), so it is
/// precise to 10 ms: measure windows that cost the process at least a few hundred ms.
pub fn cpu_split_us(pid: u32) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may contain spaces: split after it.
    let rest = text.rsplit_once(')').map(|(_, r)| r).context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field N is fields[N - 3].
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok((utime * 1_000_000 / clock_ticks(), stime * 1_000_000 / clock_ticks()))
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Resident set size (VmRSS) of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("/proc/{pid}/status"))?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS in /proc/PID/status")?;
    let kb: u64 = line.split_whitespace().nth(1).context("malformed VmRSS")?.parse()?;
    Ok(kb * 1024)
}

/// Threads of process `pid` (`Threads:` of /proc/PID/status); 0 if unreadable.
pub fn threads(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// The 1-minute load average (first field of /proc/loadavg); 0 if unreadable.
pub fn load_average() -> f64 {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

/// Open file descriptors of process `pid`.
pub fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0)
}

/// CPU use of a set of processes between two points in time.
#[derive(Debug, Clone)]
pub struct CpuMeter {
    pids: Vec<u32>,
    start: (u64, u64),
    started: Instant,
}

/// What a [`CpuMeter`] measured.
#[derive(Debug, Clone, Copy)]
pub struct CpuUse {
    /// CPU time used, microseconds.
    pub cpu_us: u64,
    /// The user-space part of it.
    pub user_us: u64,
    /// Wall time of the window, seconds.
    pub wall_s: f64,
}

impl CpuUse {
    /// Average share of one core (1.0 = one core busy all the time).
    pub fn cores(&self) -> f64 {
        if self.wall_s > 0.0 {
            self.cpu_us as f64 / 1e6 / self.wall_s
        } else {
            0.0
        }
    }
}

impl CpuMeter {
    pub fn start(pids: &[u32]) -> Result<Self> {
        Ok(CpuMeter { pids: pids.to_vec(), start: split_sum(pids)?, started: Instant::now() })
    }

    pub fn stop(&self) -> Result<CpuUse> {
        let (u, s) = split_sum(&self.pids)?;
        let user_us = u.saturating_sub(self.start.0);
        Ok(CpuUse {
            cpu_us: user_us + s.saturating_sub(self.start.1),
            user_us,
            wall_s: self.started.elapsed().as_secs_f64(),
        })
    }
}

fn split_sum(pids: &[u32]) -> Result<(u64, u64)> {
    pids.iter().try_fold((0, 0), |(u, s), p| cpu_split_us(*p).map(|(pu, ps)| (u + pu, s + ps)))
}

/// During a pinned run: the CPU the server runs on, the CPU the load generator's workers run
/// on (set by [`Pinning::enter`], read when they are started).
static PINNED: std::sync::Mutex<Option<(usize, usize)>> = std::sync::Mutex::new(None);

/// A pinned run: the server on CPU 0, the generator's workers on CPU 1, so that they do not
/// share a core and the server's CPU time and latency are its own. Needs two CPUs; on a
/// machine with one nothing is pinned.
pub struct Pinning(bool);

impl Pinning {
    pub fn enter(pinned: bool) -> Pinning {
        let on = pinned && std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2;
        *PINNED.lock().unwrap_or_else(|p| p.into_inner()) = on.then_some((0, 1));
        Pinning(on)
    }

    /// Whether the run is pinned.
    pub fn on(&self) -> bool {
        self.0
    }
}

impl Drop for Pinning {
    fn drop(&mut self) {
        *PINNED.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Which side of a pinned run a child process is.
#[derive(Debug, Clone, Copy)]
pub enum Side {
    Server,
    Generator,
}

/// The CPU a child of `side` must run on, if the current run is pinned.
pub fn pinned_cpu(side: Side) -> Option<usize> {
    PINNED.lock().unwrap_or_else(|p| p.into_inner()).map(|(s, g)| match side {
        Side::Server => s,
        Side::Generator => g,
    })
}

/// Restricts the calling process to `cpu` (used between fork and exec of a child).
pub fn pin_self(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it; the call
    // only reads the set. Async-signal-safe (no allocation), so usable in `pre_exec`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Raises this process's soft open-file limit to its hard limit (children inherit it).
/// Returns the new soft limit.
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
pub fn raise_nofile_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur as u64;
            }
        }
        lim.rlim_cur as u64
    }
}

/// Sends SIGTERM to `pid`.
pub fn terminate(pid: u32) {
    // SAFETY: kill(2) with a pid we started.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
}

/// Unix time in nanoseconds (the clock publish timestamps and receive times are read from).
pub fn unix_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(rss_bytes(me).unwrap() > 0);
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        cpu_split_us(me).unwrap();
        assert!(open_fds(me) > 0);
        assert!(threads(me) >= 1);
    }
}
