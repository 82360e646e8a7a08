//! The access an open asks for. A fanotify permission event does not say
//! how the file is being opened, so the responder reads the opening
//! thread's syscall in flight (`/proc/<tid>/syscall`: number and
//! arguments, readable while the thread waits for the answer) and takes
//! the flags from its arguments (`openat2`: from the `open_how` the
//! argument points to, read from the thread's memory). Pure but for the
//! memory read, which is passed in.
use zt_common::path_policy::{READ, WRITE};

/// What the thread asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    /// An open with these access bits.
    Open(u8),
    /// The kernel opens the file to execute it (`execve` and the ELF
    /// interpreter it loads): exec rules decide that, as `file_open` skips
    /// `FMODE_EXEC` on the BPF LSM path.
    Exec,
    /// Not an open the table knows (io_uring, a kernel-internal open, a
    /// thread that is not waiting in a syscall): decided as a read and a
    /// write, the most an open can ask (fail closed).
    Unknown,
}

/// Syscall numbers of the opens, by architecture.
#[cfg(target_arch = "x86_64")]
mod nr {
    pub const OPEN: Option<u64> = Some(2);
    pub const CREAT: Option<u64> = Some(85);
    pub const OPENAT: u64 = 257;
    pub const OPENAT2: u64 = 437;
    pub const OPEN_BY_HANDLE_AT: u64 = 304;
    pub const EXECVE: u64 = 59;
    pub const EXECVEAT: u64 = 322;
}
#[cfg(target_arch = "aarch64")]
mod nr {
    pub const OPEN: Option<u64> = None;
    pub const CREAT: Option<u64> = None;
    pub const OPENAT: u64 = 56;
    pub const OPENAT2: u64 = 437;
    pub const OPEN_BY_HANDLE_AT: u64 = 265;
    pub const EXECVE: u64 = 221;
    pub const EXECVEAT: u64 = 281;
}

/// The access bits of open flags: the access mode, and `O_TRUNC` writes.
/// (`O_CREAT` is not counted: whether this open made the file is not
/// known here; an open that creates is decided by its read and write.)
pub fn access_of_flags(flags: u64) -> u8 {
    let flags = flags as i32;
    let mut a = match flags & libc::O_ACCMODE {
        libc::O_RDONLY => READ,
        libc::O_WRONLY => WRITE,
        _ => READ | WRITE,
    };
    if flags & libc::O_TRUNC != 0 {
        a |= WRITE;
    }
    a as u8
}

/// Parses a `/proc/<tid>/syscall` line (`NR ARG0 .. ARG5 SP PC`, hex
/// arguments; `running` or `-1 ...` when not in a syscall).
/// `read_u64(addr)` reads the thread's memory (for `openat2`).
pub fn requested(line: &str, read_u64: impl Fn(u64) -> Option<u64>) -> Requested {
    let mut f = line.split_ascii_whitespace();
    let Some(Ok(n)) = f.next().map(str::parse::<u64>) else { return Requested::Unknown };
    let args: Vec<u64> = f.take(6).filter_map(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok()).collect();
    let arg = |i: usize| args.get(i).copied();
    let flags = match n {
        nr::EXECVE | nr::EXECVEAT => return Requested::Exec,
        nr::OPENAT | nr::OPEN_BY_HANDLE_AT => arg(2),
        nr::OPENAT2 => arg(2).and_then(read_u64),
        n if Some(n) == nr::OPEN => arg(1),
        n if Some(n) == nr::CREAT => Some((libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC) as u64),
        _ => None,
    };
    flags.map_or(Requested::Unknown, |f| Requested::Open(access_of_flags(f)))
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    const R: u8 = READ as u8;
    const W: u8 = WRITE as u8;

    #[test]
    fn opens_are_read_from_the_syscall_in_flight() {
        let none = |_| None;
        // openat(AT_FDCWD, path, O_RDONLY|O_CLOEXEC)
        assert_eq!(requested("257 0xffffff9c 0x7ffd6c3b2f40 0x80000 0x0 0x0 0x0 0x7ffd6c3b2e08 0x7f1b0c8e5f2d", none), Requested::Open(R));
        assert_eq!(
            requested("257 0xffffff9c 0x7ffd 0x241 0x1b6 0x0 0x0 0x7ffd 0x7f1b", none),
            Requested::Open(W),
            "O_WRONLY|O_CREAT|O_TRUNC"
        );
        assert_eq!(requested("257 0xffffff9c 0x7ffd 0x2 0x0 0x0 0x0 0x7ffd 0x7f1b", none), Requested::Open(R | W));
        assert_eq!(requested("257 0xffffff9c 0x7ffd 0x200 0x0 0x0 0x0 0x7ffd 0x7f1b", none), Requested::Open(R | W), "O_RDONLY|O_TRUNC");
        assert_eq!(requested("2 0x7ffd 0x1 0x0 0x0 0x0 0x0 0x7ffd 0x7f1b", none), Requested::Open(W), "open(2)");
        assert_eq!(requested("85 0x7ffd 0x1a4 0x0 0x0 0x0 0x0 0x7ffd 0x7f1b", none), Requested::Open(W), "creat");
        assert_eq!(requested("304 0x3 0x7ffd 0x0 0x0 0x0 0x0 0x7ffd 0x7f1b", none), Requested::Open(R), "open_by_handle_at");
        // openat2: the flags are the first field of the open_how it points to.
        let how = |addr| (addr == 0x7ffd1000).then_some(0x1u64);
        assert_eq!(requested("437 0xffffff9c 0x7ffd 0x7ffd1000 0x18 0x0 0x0 0x7ffd 0x7f1b", how), Requested::Open(W));
        assert_eq!(requested("437 0xffffff9c 0x7ffd 0x7ffd2000 0x18 0x0 0x0 0x7ffd 0x7f1b", how), Requested::Unknown, "unreadable how");
        assert_eq!(requested("59 0x5581 0x7ffd 0x7ffd 0x0 0x0 0x0 0x7ffd 0x7f1b", none), Requested::Exec);
        // io_uring_enter, a thread not in a syscall, garbage: fail closed.
        for line in ["426 0x3 0x1 0x0 0x0 0x0 0x0 0x7ffd 0x7f1b", "running", "-1 0x7ffd 0x7f1b", "", "257"] {
            assert_eq!(requested(line, none), Requested::Unknown, "{line:?}");
        }
    }
}
