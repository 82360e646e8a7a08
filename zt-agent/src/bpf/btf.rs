//! Struct member offsets from kernel BTF (`/sys/kernel/btf/vmlinux`).
//!
//! aya-ebpf has no CO-RE relocations for Rust programs, so the few kernel
//! struct fields the programs read (`task_struct.mm`, `mm_struct.arg_start`,
//! `mm_struct.arg_end`) get their offsets here and are set as load-time
//! globals. Hand-written on purpose, and small: aya-obj keeps its BTF type
//! lookups crate-private, and the btf-rs crate is LGPL, which does not fit
//! statically linking into an Apache-2.0 binary.
//!
//! Format: <https://docs.kernel.org/bpf/btf.html> (header, type section of
//! `btf_type` records with kind-specific trailers, string section).
use std::collections::HashMap;

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("BTF: {0}")]
    Malformed(&'static str),
    #[error("BTF: unknown type kind {0}")]
    UnknownKind(u32),
    #[error("BTF: struct {0} not found")]
    NoStruct(String),
    #[error("BTF: function {0} not found")]
    NoFunc(String),
    #[error("BTF: struct {0} has no member {1}")]
    NoMember(String, String),
    #[error("BTF: anonymous members of struct {0} nest deeper than {MAX_NESTING} levels (a cycle?)")]
    TooDeep(String),
    #[error("BTF: the offset of {1} in struct {0} overflows")]
    OffsetOverflow(String, String),
}

/// Anonymous struct/union members looked through at most (real kernels nest
/// a few levels; a malformed blob could loop).
const MAX_NESTING: u32 = 32;

/// Why a member search stopped early.
enum Stop {
    Btf(BtfError),
    TooDeep,
    Overflow,
}

impl From<BtfError> for Stop {
    fn from(e: BtfError) -> Self {
        Stop::Btf(e)
    }
}

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

struct Ty {
    kind: u32,
    vlen: u32,
    kind_flag: bool,
    /// Offset of the kind-specific trailer in the type section.
    trailer: usize,
}

pub struct Btf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    /// Type id - 1 -> record.
    tys: Vec<Ty>,
    structs: HashMap<&'a str, u32>,
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    b.get(off..off + 4).map(|s| u32::from_le_bytes(s.try_into().unwrap())).ok_or(BtfError::Malformed("truncated"))
}

impl<'a> Btf<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self, BtfError> {
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != 0xeb9f {
            return Err(BtfError::Malformed("bad magic (only little-endian BTF is supported)"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let section =
            |off: usize, len: usize| data.get(hdr_len + off..hdr_len + off + len).ok_or(BtfError::Malformed("section out of bounds"));
        let types = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?;
        let mut btf = Btf { types, strings, tys: Vec::new(), structs: HashMap::new() };
        let mut pos = 0;
        while pos < types.len() {
            let name_off = u32_at(types, pos)?;
            let info = u32_at(types, pos + 4)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = info & 0xffff;
            let trailer = pos + 12;
            let trailer_len = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_FUNC | KIND_FLOAT
                | KIND_TYPE_TAG => 0,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen as usize,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen as usize,
                other => return Err(BtfError::UnknownKind(other)),
            };
            if kind == KIND_STRUCT
                && let Ok(name) = btf.name(name_off)
                && !name.is_empty()
            {
                btf.structs.entry(name).or_insert(btf.tys.len() as u32 + 1);
            }
            btf.tys.push(Ty { kind, vlen, kind_flag: info >> 31 == 1, trailer });
            pos = trailer + trailer_len;
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> Result<&'a str, BtfError> {
        let s = self.strings.get(off as usize..).ok_or(BtfError::Malformed("string offset"))?;
        let end = s.iter().position(|b| *b == 0).ok_or(BtfError::Malformed("unterminated string"))?;
        std::str::from_utf8(&s[..end]).map_err(|_| BtfError::Malformed("string not UTF-8"))
    }

    fn ty(&self, id: u32) -> Option<&Ty> {
        id.checked_sub(1).and_then(|i| self.tys.get(i as usize))
    }

    /// Byte offset of `member` in `struct name`, looking through anonymous
    /// struct/union members (e.g. `mm_struct` wraps its fields in one).
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self.structs.get(name).ok_or_else(|| BtfError::NoStruct(name.into()))?;
        match self.find(id, member, 0, 0) {
            Ok(Some(bits)) => Ok(bits / 8),
            Ok(None) => Err(BtfError::NoMember(name.into(), member.into())),
            Err(Stop::Btf(e)) => Err(e),
            Err(Stop::TooDeep) => Err(BtfError::TooDeep(name.into())),
            Err(Stop::Overflow) => Err(BtfError::OffsetOverflow(name.into(), member.into())),
        }
    }

    /// How many parameters function `name` takes (its prototype's).
    pub fn func_params(&self, name: &str) -> Result<u32, BtfError> {
        for t in self.tys.iter().filter(|t| t.kind == KIND_FUNC) {
            // A record is name, info, then size-or-type; the trailer follows.
            let (name_off, proto) = (u32_at(self.types, t.trailer - 12)?, u32_at(self.types, t.trailer - 4)?);
            if self.name(name_off)? == name {
                return match self.ty(proto) {
                    Some(p) if p.kind == KIND_FUNC_PROTO => Ok(p.vlen),
                    _ => Err(BtfError::Malformed("a function whose type is not a prototype")),
                };
            }
        }
        Err(BtfError::NoFunc(name.into()))
    }

    /// The bit offset of `member` in type `id` (plus `base_bits`), looking
    /// through anonymous members at most [`MAX_NESTING`] levels deep.
    fn find(&self, id: u32, member: &str, base_bits: u32, depth: u32) -> Result<Option<u32>, Stop> {
        if depth > MAX_NESTING {
            return Err(Stop::TooDeep);
        }
        let Some(t) = self.ty(id) else { return Ok(None) };
        if t.kind != KIND_STRUCT && t.kind != KIND_UNION {
            return Ok(None);
        }
        for i in 0..t.vlen as usize {
            let m = t.trailer + 12 * i;
            let (name_off, ty, off) = (u32_at(self.types, m)?, u32_at(self.types, m + 4)?, u32_at(self.types, m + 8)?);
            let bits = if t.kind_flag { off & 0x00ff_ffff } else { off };
            let at = base_bits.checked_add(bits).ok_or(Stop::Overflow)?;
            if name_off == 0 {
                if let Some(found) = self.find(ty, member, at, depth + 1)? {
                    return Ok(Some(found));
                }
            } else if self.name(name_off)? == member {
                return Ok(Some(at));
            }
        }
        Ok(None)
    }
}

/// The kernel-struct offsets the exec program needs to read argv from the
/// new image (`current->mm->arg_start..arg_end`).
pub fn argv_offsets(btf: &Btf<'_>) -> Result<[(&'static str, u32); 3], BtfError> {
    Ok([
        (zt_common::globals::TASK_MM, btf.member_offset("task_struct", "mm")?),
        (zt_common::globals::MM_ARG_START, btf.member_offset("mm_struct", "arg_start")?),
        (zt_common::globals::MM_ARG_END, btf.member_offset("mm_struct", "arg_end")?),
    ])
}

/// The kernel-struct offsets the exec program needs to name the file just
/// exec'd (`current->mm->exe_file->f_inode`: `i_ino`, `i_sb->s_dev`) and
/// walk up its directories (`f_path.dentry->d_parent`, `d_inode`).
/// Also `task_struct.children`, for the exit program (see lineage.rs).
pub fn exe_offsets(btf: &Btf<'_>) -> Result<[(&'static str, u32); 10], BtfError> {
    use zt_common::globals as g;
    Ok([
        (g::SEL_TASK_MM, btf.member_offset("task_struct", "mm")?),
        (g::MM_EXE_FILE, btf.member_offset("mm_struct", "exe_file")?),
        (g::FILE_INODE, btf.member_offset("file", "f_inode")?),
        (g::INODE_INO, btf.member_offset("inode", "i_ino")?),
        (g::INODE_SB, btf.member_offset("inode", "i_sb")?),
        (g::SB_DEV, btf.member_offset("super_block", "s_dev")?),
        (g::FILE_DENTRY, btf.member_offset("file", "f_path")? + btf.member_offset("path", "dentry")?),
        (g::DENTRY_PARENT, btf.member_offset("dentry", "d_parent")?),
        (g::DENTRY_INODE, btf.member_offset("dentry", "d_inode")?),
        (g::TASK_CHILDREN, btf.member_offset("task_struct", "children")?),
    ])
}

/// Offsets of the inode's change time (`exeDigest` verdicts are keyed by
/// it; see `zt_common::DigestKey`).
pub fn ctime_offsets(btf: &Btf<'_>) -> Result<[(&'static str, u32); 2], BtfError> {
    use zt_common::globals as g;
    Ok([
        (g::INODE_CTIME_SEC, btf.member_offset("inode", "i_ctime_sec")?),
        (g::INODE_CTIME_NSEC, btf.member_offset("inode", "i_ctime_nsec")?),
    ])
}

/// Offsets of `domain`, `type` and `protocol` of an io_uring socket
/// request, from the start of its `io_kiocb` (whose command data it is).
pub fn io_socket_offsets(btf: &Btf<'_>) -> Result<[(&'static str, u32); 3], BtfError> {
    use zt_common::globals as g;
    let cmd = btf.member_offset("io_kiocb", "cmd")?;
    Ok([
        (g::IO_SOCKET_DOMAIN, cmd + btf.member_offset("io_socket", "domain")?),
        (g::IO_SOCKET_TYPE, cmd + btf.member_offset("io_socket", "type")?),
        (g::IO_SOCKET_PROTOCOL, cmd + btf.member_offset("io_socket", "protocol")?),
    ])
}

/// The offsets the file and exec programs read (see
/// `zt_common::globals::FILE_MNT`): the mount and mode of a file, the two
/// halves of a `struct path`, the mount tree (`struct mount` around each
/// `vfsmount`), a dentry's name, and the file an exec runs.
pub fn file_offsets(btf: &Btf<'_>) -> Result<[(&'static str, u32); 12], BtfError> {
    use zt_common::globals as g;
    let f_path = btf.member_offset("file", "f_path")?;
    let d_name = btf.member_offset("dentry", "d_name")?;
    Ok([
        (g::FILE_MNT, f_path + btf.member_offset("path", "mnt")?),
        (g::FILE_MODE, btf.member_offset("file", "f_mode")?),
        (g::PATH_MNT, btf.member_offset("path", "mnt")?),
        (g::PATH_DENTRY, btf.member_offset("path", "dentry")?),
        (g::MOUNT_MNT, btf.member_offset("mount", "mnt")?),
        (g::MOUNT_PARENT, btf.member_offset("mount", "mnt_parent")?),
        (g::MOUNT_MOUNTPOINT, btf.member_offset("mount", "mnt_mountpoint")?),
        (g::VFSMOUNT_ROOT, btf.member_offset("vfsmount", "mnt_root")?),
        (g::DENTRY_NAME, d_name + btf.member_offset("qstr", "name")?),
        (g::DENTRY_NAME_LEN, d_name + btf.member_offset("qstr", "len")?),
        (g::BPRM_FILE, btf.member_offset("linux_binprm", "file")?),
        (g::FILE_FLAGS, btf.member_offset("file", "f_flags")?),
    ])
}

/// The descriptor table (see `zt_common::globals::TASK_FILES`).
pub fn fd_offsets(btf: &Btf<'_>) -> Result<[(&'static str, u32); 4], BtfError> {
    use zt_common::globals as g;
    Ok([
        (g::TASK_FILES, btf.member_offset("task_struct", "files")?),
        (g::FILES_FDT, btf.member_offset("files_struct", "fdt")?),
        (g::FDTABLE_FD, btf.member_offset("fdtable", "fd")?),
        (g::FDTABLE_MAX_FDS, btf.member_offset("fdtable", "max_fds")?),
    ])
}

/// What the BPF LSM guards read (see `zt_common::globals::TASK_TGID`):
/// `task_struct.tgid`, and the index of the LSM `bpf` hook's verdict
/// argument (after the hook's own parameters).
pub fn lsm_guard_globals(btf: &Btf<'_>) -> Result<[(&'static str, u32); 2], BtfError> {
    use zt_common::globals as g;
    Ok([(g::TASK_TGID, btf.member_offset("task_struct", "tgid")?), (g::LSM_BPF_RET_ARG, btf.func_params("bpf_lsm_bpf")?)])
}

/// Offsets of `uaddr` and `uaddrlen` in `struct bpf_sock_addr_kern`, the
/// struct a sock_addr program's context points to (read by the
/// Unix-socket programs, see `zt-ebpf/src/unix.rs`).
pub fn sock_addr_offsets(btf: &Btf<'_>) -> Result<[(&'static str, u32); 2], BtfError> {
    use zt_common::globals as g;
    Ok([
        (g::SOCK_ADDR_UADDR, btf.member_offset("bpf_sock_addr_kern", "uaddr")?),
        (g::SOCK_ADDR_UADDRLEN, btf.member_offset("bpf_sock_addr_kern", "uaddrlen")?),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob: int, then `struct outer { int a; struct { int x; int arg_start; }; }`.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0x\0arg_start\0";
        let s = |name: &str| {
            strings.windows(name.len() + 1).position(|w| &w[..name.len()] == name.as_bytes() && w[name.len()] == 0).unwrap() as u32
        };
        let mut t = Vec::new();
        let mut push = |v: &[u32]| v.iter().for_each(|x| t.extend_from_slice(&x.to_le_bytes()));
        push(&[s("int"), KIND_INT << 24, 4, 32]); // id 1
        push(&[s("outer"), KIND_STRUCT << 24 | 2, 12, s("a"), 1, 0, 0, 3, 32]); // id 2: a@0, anon@32 bits
        push(&[0, KIND_STRUCT << 24 | 2, 8, s("x"), 1, 0, s("arg_start"), 1, 32]); // id 3
        let mut b = Vec::new();
        for v in [0xeb9f_u16 as u32 | 1 << 16, 24, 0, t.len() as u32, t.len() as u32, strings.len() as u32] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&t);
        b.extend_from_slice(strings);
        b
    }

    #[test]
    fn finds_members_through_anonymous_structs() {
        let b = blob();
        let btf = Btf::parse(&b).unwrap();
        assert_eq!(btf.member_offset("outer", "a"), Ok(0));
        assert_eq!(btf.member_offset("outer", "arg_start"), Ok(8));
        assert_eq!(btf.member_offset("outer", "nope"), Err(BtfError::NoMember("outer".into(), "nope".into())));
        assert_eq!(btf.member_offset("task_struct", "mm").unwrap_err(), BtfError::NoStruct("task_struct".into()));
    }

    /// `struct loop { struct loop; }` (anonymous member of its own type) and
    /// offsets that overflow: errors, not a stack overflow or a wrapped offset.
    #[test]
    fn cycles_and_overflowing_offsets_are_errors() {
        let strings = b"\0loop\0far\0x\0";
        let mut t = Vec::new();
        let mut push = |v: &[u32]| v.iter().for_each(|x| t.extend_from_slice(&x.to_le_bytes()));
        push(&[1, KIND_STRUCT << 24 | 1, 8, 0, 1, 0]); // id 1: loop { <anon loop> @0 }
        push(&[6, KIND_STRUCT << 24 | 1, 8, 0, 3, u32::MAX - 7]); // id 2: far { <anon id 3> @ 2^32-8 bits }
        push(&[0, KIND_STRUCT << 24 | 1, 8, 10, 1, 64]); // id 3: { x @64 }
        let mut b = Vec::new();
        for v in [0xeb9f_u16 as u32 | 1 << 16, 24, 0, t.len() as u32, t.len() as u32, strings.len() as u32] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&t);
        b.extend_from_slice(strings);
        let btf = Btf::parse(&b).unwrap();
        assert_eq!(btf.member_offset("loop", "x"), Err(BtfError::TooDeep("loop".into())));
        assert_eq!(btf.member_offset("far", "x"), Err(BtfError::OffsetOverflow("far".into(), "x".into())));
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"nope").is_err());
        let mut b = blob();
        b.truncate(40);
        assert!(Btf::parse(&b).is_err());
    }

    #[test]
    fn this_kernel_has_the_argv_fields() {
        let Ok(data) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            // Uncaptured, so the skip shows under plain `cargo test` too.
            let _ = std::io::Write::write_all(
                &mut std::io::stderr().lock(),
                b"SKIPPED this_kernel_has_the_argv_fields: no /sys/kernel/btf/vmlinux\n",
            );
            return;
        };
        let btf = Btf::parse(&data).unwrap();
        let [(_, mm), (_, start), (_, end)] = argv_offsets(&btf).unwrap();
        let file = file_offsets(&btf).unwrap();
        // `len` is the second u32 of `d_name` (after `hash`), `name` follows.
        assert_eq!(file[9].1 + 4, file[8].1, "{file:?}");
        assert!(mm > 0 && start > 0);
        assert_eq!(end, start + 8, "arg_end follows arg_start in mm_struct");
        // The LSM `bpf` hook: (cmd, attr, size), plus `kernel` since 6.14.
        match btf.func_params("bpf_lsm_bpf") {
            Ok(n) => assert!(n == 3 || n == 4, "bpf_lsm_bpf has {n} parameters"),
            Err(e) => assert_eq!(e, BtfError::NoFunc("bpf_lsm_bpf".into()), "a kernel without CONFIG_BPF_LSM"),
        }
        assert_eq!(btf.func_params("no_such_function"), Err(BtfError::NoFunc("no_such_function".into())));
    }
}
