//! With `FsyncPolicy::Never`, a thread that starts the kernel's write-back of the store file
//! every [`EVERY`], so that the once-a-second durable commit finds the file's pages mostly
//! written already.
//!
//! Why: commits that are not durable leave their pages dirty in the page cache, and the
//! durable commit's `fdatasync` then writes a whole second of them on the writer thread while
//! every publisher waits (measured: 160 to 270 ms of max request latency in every run).
//! `sync_file_range(SYNC_FILE_RANGE_WRITE)` starts writing them out without waiting for the
//! disk and without a flush of its cache: it makes nothing durable, it only moves the work
//! off the writer's critical path (docs/performance.md, finding 14).
//!
//! Must never: block a commit (it runs on its own thread, on its own descriptor of the file),
//! or outlive the store (it ends when the store's handle to it is dropped).

use std::path::Path;
use std::sync::mpsc::Sender;
use std::time::Duration;

/// How often write-back is started.
pub const EVERY: Duration = Duration::from_millis(100);

/// The running thread; dropping this ends it.
pub struct WriteBack {
    _stop: Sender<()>,
}

impl WriteBack {
    /// Starts the thread for the file at `path` (None where the system has no
    /// `sync_file_range`, or if the file cannot be opened: the store works without it).
    pub fn start(path: &Path) -> Option<WriteBack> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            use std::sync::mpsc::{channel, RecvTimeoutError};
            let file = match std::fs::File::open(path) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "no background write-back of the store file");
                    return None;
                }
            };
            let (stop, rx) = channel::<()>();
            let spawned = std::thread::Builder::new().name("syncgate-writeback".into()).spawn(move || loop {
                match rx.recv_timeout(EVERY) {
                    Err(RecvTimeoutError::Timeout) => {
                        // SAFETY: a valid descriptor owned by `file`, which lives as long as
                        // this loop; the call reads no memory of ours.
                        let r = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
                        if r != 0 {
                            let e = std::io::Error::last_os_error();
                            tracing::warn!(error = %e, "background write-back of the store file stopped");
                            return;
                        }
                    }
                    _ => return, // the store is gone
                }
            });
            spawned.ok().map(|_| WriteBack { _stop: stop })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = path;
            None
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::Write;

    /// Dirty page cache of the whole system, bytes (`Dirty:` in /proc/meminfo).
    fn dirty() -> u64 {
        let m = std::fs::read_to_string("/proc/meminfo").unwrap();
        let kb = m.lines().find_map(|l| l.strip_prefix("Dirty:")).unwrap();
        kb.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap() * 1024
    }

    fn threads() -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter(|t| {
                let comm = t.as_ref().unwrap().path().join("comm");
                std::fs::read_to_string(comm).is_ok_and(|c| c.trim() == "syncgate-writeb")
            })
            .count()
    }

    #[test]
    fn dirty_pages_are_written_back_without_an_fsync_and_the_thread_ends_with_its_handle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = std::fs::File::create(&path).unwrap();
        const SIZE: u64 = 64 << 20;
        f.write_all(&vec![7u8; SIZE as usize]).unwrap(); // 64 MiB of dirty pages, not synced
        let after_write = dirty();
        let wb = WriteBack::start(&path).expect("started");
        std::thread::sleep(EVERY * 3);
        assert_eq!(threads(), 1);
        // The kernel's own write-back leaves pages this young alone for 30 s (and 64 MiB is far
        // below its background threshold), so dirty pages that go away now were this thread's
        // doing. On tmpfs nothing is ever written back.
        let fs = std::process::Command::new("stat").args(["-f", "-c", "%T"]).arg(dir.path()).output();
        if !fs.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "tmpfs") {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while after_write.saturating_sub(dirty()) < SIZE / 2 {
                assert!(std::time::Instant::now() < deadline, "dirty {} bytes, {after_write} after the write", dirty());
                std::thread::sleep(EVERY);
            }
        }
        drop(wb);
        std::thread::sleep(EVERY * 3);
        assert_eq!(threads(), 0);
        assert!(WriteBack::start(&dir.path().join("missing")).is_none());
    }
}
