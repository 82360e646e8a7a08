//! Reading process facts from `/proc` (start-up seeding and enrichment).
//!
//! Every reader takes the proc root as a parameter so tests can point it at
//! a fixture directory.
use std::{fs, io, path::Path};

/// Clock ticks per second for `/proc/<pid>/stat` times (`sysconf(_SC_CLK_TCK)`).
fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// Fields of `/proc/<pid>/stat` we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub comm: String,
    pub ppid: u32,
    /// Start time in ns since boot.
    pub start_ns: u64,
}

/// Parses `/proc/<pid>/stat` text. The comm field is in parentheses and may
/// itself contain spaces and ')', so split at the last ')'.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); ppid is field 4, starttime field 22.
    let ppid = rest.get(1)?.parse().ok()?;
    let start_ticks: u64 = rest.get(19)?.parse().ok()?;
    Some(Stat { comm, ppid, start_ns: start_ticks * (1_000_000_000 / clk_tck()) })
}

pub fn stat(proc_root: &Path, pid: u32) -> io::Result<Stat> {
    let text = fs::read_to_string(proc_root.join(pid.to_string()).join("stat"))?;
    parse_stat(&text).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed stat"))
}

/// The cgroup v2 path of a process (the `0::` line of `/proc/<pid>/cgroup`).
pub fn parse_cgroup_v2(text: &str) -> Option<String> {
    text.lines().find_map(|l| l.strip_prefix("0::")).map(|p| p.trim_end().to_string())
}

pub fn cgroup_v2(proc_root: &Path, pid: u32) -> Option<String> {
    parse_cgroup_v2(&fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")).ok()?)
}

/// The executable path, without the " (deleted)" suffix the kernel appends
/// for unlinked files.
pub fn exe(proc_root: &Path, pid: u32) -> Option<String> {
    let p = fs::read_link(proc_root.join(pid.to_string()).join("exe")).ok()?;
    let s = p.to_string_lossy();
    Some(s.strip_suffix(" (deleted)").unwrap_or(&s).to_string())
}

/// Real uid (first field of `Uid:` in `/proc/<pid>/status`).
pub fn uid(proc_root: &Path, pid: u32) -> Option<u32> {
    let text = fs::read_to_string(proc_root.join(pid.to_string()).join("status")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// argv from `/proc/<pid>/cmdline` (NUL-separated).
pub fn cmdline(proc_root: &Path, pid: u32) -> Option<Vec<String>> {
    let bytes = fs::read(proc_root.join(pid.to_string()).join("cmdline")).ok()?;
    Some(split_nul(&bytes))
}

/// Splits NUL-separated strings (argv), dropping the trailing empty one.
pub fn split_nul(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes.split(|b| *b == 0).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
}

/// Children of every thread of `pid` (`/proc/<pid>/task/*/children`), or
/// `None` when no thread's file could be read (the kernel lacks them,
/// `CONFIG_PROC_CHILDREN` off, or the process is gone). A thread that exits
/// during the walk is skipped, not taken for the whole process.
pub fn children(proc_root: &Path, pid: u32) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    let mut read_any = false;
    for task in fs::read_dir(proc_root.join(pid.to_string()).join("task")).ok()?.flatten() {
        let Ok(text) = fs::read_to_string(task.path().join("children")) else { continue };
        read_any = true;
        out.extend(text.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
    }
    read_any.then_some(out)
}

/// Numeric entries of the proc root (thread group ids).
pub fn pids(proc_root: &Path) -> io::Result<Vec<u32>> {
    let mut v: Vec<u32> = fs::read_dir(proc_root)?.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    v.sort_unstable();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_tricky_comm() {
        let text = "1234 (a) b) c) S 77 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 500 1000 200 18446744073709551615";
        let s = parse_stat(text).unwrap();
        assert_eq!(s.comm, "a) b) c");
        assert_eq!(s.ppid, 77);
        assert_eq!(s.start_ns, 500 * (1_000_000_000 / clk_tck()));
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("1 (x) S").is_none());
    }

    #[test]
    fn cgroup_line() {
        let text = "12:pids:/user.slice\n1:name=systemd:/x\n0::/zt-agents/demo\n";
        assert_eq!(parse_cgroup_v2(text).as_deref(), Some("/zt-agents/demo"));
        assert_eq!(parse_cgroup_v2("1:cpu:/\n"), None);
    }

    #[test]
    fn nul_split() {
        assert_eq!(split_nul(b"sh\0-c\0echo hi\0"), vec!["sh", "-c", "echo hi"]);
        assert!(split_nul(b"").is_empty());
        assert_eq!(split_nul(b"x"), vec!["x"]);
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        let root = Path::new("/proc");
        let s = stat(root, me).unwrap();
        assert_eq!(s.ppid, nix::unistd::getppid().as_raw() as u32);
        assert!(exe(root, me).unwrap().starts_with('/'));
        assert_eq!(uid(root, me), Some(nix::unistd::getuid().as_raw()));
        assert!(pids(root).unwrap().contains(&me));
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let kids = children(root, me);
        child.kill().unwrap();
        child.wait().unwrap();
        if let Some(kids) = kids {
            assert!(kids.contains(&child.id()), "{kids:?}");
        }
    }
}
