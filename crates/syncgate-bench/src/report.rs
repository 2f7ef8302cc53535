//! The suite's output: one JSON file with every figure and the conditions they were
//! measured in, and a markdown table (syncgate beside the Node `ws` baseline, with the
//! targets).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::proto::TargetKind;
use crate::scenarios::RunResult;
use crate::suite::{Check, Size};

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub cpu_model: String,
    pub open_files_limit: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SuiteReport {
    /// UTC, `YYYY-MM-DDTHH:MM:SSZ`.
    pub date: String,
    /// The command line that produced this report.
    pub command: String,
    pub size: Size,
    pub git_commit: Option<String>,
    pub syncgate_binary: String,
    pub syncgate_version: Option<String>,
    pub node_version: Option<String>,
    pub machine: Machine,
    pub runs: Vec<RunResult>,
    pub targets: Vec<Check>,
}

/// (year, month, day, hour, minute, second) in UTC of a unix time.
pub fn civil(unix_s: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (unix_s / 86_400) as i64;
    let rem = unix_s % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, (rem / 3600) as u32, ((rem % 3600) / 60) as u32, (rem % 60) as u32)
}

pub fn now_stamp() -> String {
    let (y, mo, d, h, mi, s) = civil(crate::sys::unix_ns() / 1_000_000_000);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

fn first_line(cmd: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(cmd).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").trim().to_string())
}

pub fn machine() -> Machine {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb: f64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    Machine {
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        memory_gib: mem_kb / 1024.0 / 1024.0,
        kernel: first_line("uname", &["-r"]).unwrap_or_default(),
        cpu_model,
        open_files_limit: crate::sys::raise_nofile_limit(),
    }
}

/// HEAD, and whether the server's sources differ from it (what matters for the figures).
pub fn git_commit() -> Option<String> {
    let c = first_line("git", &["rev-parse", "--short=12", "HEAD"])?;
    let dirty = std::process::Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no", "--", "crates/syncgate", "Cargo.lock"])
        .output()
        .ok()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    Some(if dirty { format!("{c} (crates/syncgate with uncommitted changes)") } else { c })
}

/// `syncgate --version` without the program name (`0.1.0`).
pub fn version_of(bin: &Path, arg: &str) -> Option<String> {
    let v = first_line(&bin.display().to_string(), &[arg])?;
    Some(v.strip_prefix("syncgate ").map(str::to_string).unwrap_or(v))
}

pub fn node_version() -> Option<String> {
    first_line("node", &["--version"])
}

fn cell(r: Option<&RunResult>, label: &str) -> String {
    match r {
        None => "—".into(),
        Some(r) if r.error.is_some() => "failed".into(),
        Some(r) => r.display.iter().find(|(l, _)| l == label).map(|(_, v)| v.clone()).unwrap_or_else(|| "—".into()),
    }
}

/// The markdown table: one block of rows per run id, syncgate and Node side by side.
pub fn markdown(rep: &SuiteReport) -> String {
    let mut s = String::new();
    let m = &rep.machine;
    let _ = writeln!(s, "## syncgate benchmark, {}", rep.date);
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "Machine: {} cores ({}), {:.0} GiB, Linux {}, open files {}. syncgate {} at {}; Node {}. \
         Suite size: {:?}. Server CPU is utime+stime of the server process from /proc (the load \
         generator runs on the same cores); memory is its VmRSS.",
        m.cores,
        m.cpu_model,
        m.memory_gib,
        m.kernel,
        m.open_files_limit,
        rep.syncgate_version.as_deref().unwrap_or("?"),
        rep.git_commit.as_deref().unwrap_or("?"),
        rep.node_version.as_deref().unwrap_or("not run"),
        rep.size,
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "Command: `{}`", rep.command);
    let _ = writeln!(s);
    let _ = writeln!(s, "| run | figure | syncgate | Node `ws` | target |");
    let _ = writeln!(s, "|---|---|---:|---:|---|");
    let mut ids: Vec<&str> = Vec::new();
    for r in &rep.runs {
        if !ids.contains(&r.id.as_str()) {
            ids.push(&r.id);
        }
    }
    for id in ids {
        let sg = rep.runs.iter().find(|r| r.id == id && r.target == TargetKind::Syncgate);
        let nd = rep.runs.iter().find(|r| r.id == id && r.target == TargetKind::NodeWs);
        let title = sg.or(nd).map(|r| r.title.clone()).unwrap_or_default();
        let mut labels: Vec<String> = Vec::new();
        for r in [sg, nd].into_iter().flatten() {
            for (l, _) in &r.display {
                if !labels.contains(l) {
                    labels.push(l.clone());
                }
            }
        }
        if labels.is_empty() {
            labels.push("(no figures)".into());
        }
        for (i, label) in labels.iter().enumerate() {
            let targets: Vec<String> = rep
                .targets
                .iter()
                .filter(|c| c.run == id && &c.row == label)
                .map(|c| {
                    let verdict = match c.met {
                        Some(true) => "**met**",
                        Some(false) => "**not met**",
                        None => "not measured",
                    };
                    format!("{}: {verdict}", c.target)
                })
                .collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                if i == 0 { format!("**{id}**: {title}") } else { String::new() },
                label,
                cell(sg, label),
                cell(nd, label),
                targets.join("; ")
            );
        }
    }
    let problems: Vec<String> = rep
        .runs
        .iter()
        .filter(|r| !r.ok)
        .map(|r| {
            format!(
                "- {} on {}: {}{}",
                r.id,
                r.target.label(),
                r.error.as_deref().map(|e| e.lines().next().unwrap_or("").to_string()).unwrap_or_default(),
                r.notes.join("; ")
            )
        })
        .collect();
    if !problems.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(s, "Runs that did not deliver everything or failed:");
        let _ = writeln!(s);
        for p in problems {
            let _ = writeln!(s, "{p}");
        }
    }
    s
}

/// Writes `<dir>/<date>.json` and `<dir>/<date>.md`; returns their paths.
pub fn write(rep: &SuiteReport, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = dir.join(format!("{name}.json"));
    let md = dir.join(format!("{name}.md"));
    std::fs::write(&json, serde_json::to_string_pretty(rep)? + "\n")?;
    std::fs::write(&md, markdown(rep))?;
    Ok((json, md))
}

/// Figures of a run for quick printing.
pub fn brief(r: &RunResult) -> BTreeMap<String, String> {
    r.display.iter().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(civil(1_763_784_000), (2025, 11, 22, 4, 0, 0));
    }
}
