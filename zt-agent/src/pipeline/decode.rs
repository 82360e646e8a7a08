//! Ring buffer records -> typed kernel events.
//!
//! Records are copied out of the ring with `read_unaligned` into properly
//! aligned values (the ring gives no alignment guarantee to a `&[u8]` we do
//! not control), after checking the length against the `zt-common` type.
//! Every `zt-common` event type is plain integers and byte arrays, so any bit
//! pattern is a valid value.
use std::mem::size_of;

use thiserror::Error;
use zt_common::{
    AggEvictEvent, ConnectEvent, EventHeader, ExecEvent, ExitEvent, guard::GuardEvent, kind, path_policy::FileEvent,
    syscalls::SyscallBatch, unix::UnixEvent,
};

#[derive(Debug, Clone)]
pub enum RawEvent {
    Exec(Box<ExecEvent>),
    Exit(ExitEvent),
    Connect(ConnectEvent),
    Guard(GuardEvent),
    Unix(Box<UnixEvent>),
    AggEvict(AggEvictEvent),
    File(Box<FileEvent>),
    Syscalls(Box<SyscallBatch>),
}

impl RawEvent {
    pub fn header(&self) -> &EventHeader {
        match self {
            RawEvent::Exec(e) => &e.header,
            RawEvent::Exit(e) => &e.header,
            RawEvent::Connect(e) => &e.header,
            RawEvent::Guard(e) => &e.header,
            RawEvent::Unix(e) => &e.header,
            RawEvent::AggEvict(e) => &e.header,
            RawEvent::File(e) => &e.header,
            RawEvent::Syscalls(e) => &e.header,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than the {need}-byte header")]
    ShortHeader { len: usize, need: usize },
    #[error("{kind} record of {len} bytes, expected {need}")]
    Short { kind: &'static str, len: usize, need: usize },
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
}

fn read<T: Copy>(bytes: &[u8], kind: &'static str) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short { kind, len: bytes.len(), need });
    }
    // SAFETY: length checked above; T is a zt-common #[repr(C)] type made of
    // integers and byte arrays, valid for any bit pattern; read_unaligned
    // has no alignment requirement.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

pub fn decode(bytes: &[u8]) -> Result<RawEvent, DecodeError> {
    let need = size_of::<EventHeader>();
    if bytes.len() < need {
        return Err(DecodeError::ShortHeader { len: bytes.len(), need });
    }
    let k = u32::from_ne_bytes(bytes[..4].try_into().expect("4 bytes"));
    match k {
        kind::EXEC => Ok(RawEvent::Exec(Box::new(read(bytes, "exec")?))),
        kind::EXIT => Ok(RawEvent::Exit(read(bytes, "exit")?)),
        kind::CONNECT => Ok(RawEvent::Connect(read(bytes, "connect")?)),
        kind::GUARD => Ok(RawEvent::Guard(read(bytes, "guard")?)),
        kind::UNIX => Ok(RawEvent::Unix(Box::new(read(bytes, "unix")?))),
        kind::AGG_EVICT => Ok(RawEvent::AggEvict(read(bytes, "agg_evict")?)),
        kind::FILE => Ok(RawEvent::File(Box::new(read(bytes, "file")?))),
        kind::SYSCALLS => Ok(RawEvent::Syscalls(Box::new(read(bytes, "syscalls")?))),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// The bytes before the first NUL, lossily as UTF-8.
pub fn c_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::compile::bytes_of;

    #[test]
    fn decodes_each_kind() {
        let mut c = ConnectEvent::default();
        c.header.kind = kind::CONNECT;
        c.header.tgid = 42;
        c.port = 443;
        let RawEvent::Connect(d) = decode(&bytes_of(&c)).unwrap() else { panic!() };
        assert_eq!(d, c);

        let mut x = ExitEvent::default();
        x.header.kind = kind::EXIT;
        x.ppid = 7;
        let RawEvent::Exit(d) = decode(&bytes_of(&x)).unwrap() else { panic!() };
        assert_eq!(d.ppid, 7);

        // SAFETY: all-zero is a valid ExecEvent.
        let mut e: ExecEvent = unsafe { std::mem::zeroed() };
        e.header.kind = kind::EXEC;
        e.filename[..7].copy_from_slice(b"/bin/sh");
        let RawEvent::Exec(d) = decode(&bytes_of(&e)).unwrap() else { panic!() };
        assert_eq!(c_str(&d.filename), "/bin/sh");
    }

    #[test]
    fn decodes_from_unaligned_buffer() {
        let mut c = ConnectEvent::default();
        c.header.kind = kind::CONNECT;
        c.header.time_ns = 0x0102030405060708;
        let mut buf = vec![0u8; 1];
        buf.extend(bytes_of(&c));
        let RawEvent::Connect(d) = decode(&buf[1..]).unwrap() else { panic!() };
        assert_eq!(d.header.time_ns, 0x0102030405060708);
    }

    #[test]
    fn malformed_records_are_errors_not_panics() {
        assert_eq!(decode(&[]).unwrap_err(), DecodeError::ShortHeader { len: 0, need: 48 });
        assert_eq!(decode(&[1, 0, 0]).unwrap_err(), DecodeError::ShortHeader { len: 3, need: 48 });
        let mut h = vec![0u8; 48];
        h[0] = kind::EXEC as u8;
        assert_eq!(decode(&h).unwrap_err(), DecodeError::Short { kind: "exec", len: 48, need: size_of::<ExecEvent>() });
        h[0] = 99;
        assert_eq!(decode(&h).unwrap_err(), DecodeError::UnknownKind(99));
        assert_eq!(decode(&h).unwrap_err().to_string(), "unknown event kind 99");
        // Every truncation of a valid record is an error, never a panic.
        let mut c = ConnectEvent::default();
        c.header.kind = kind::CONNECT;
        let b = bytes_of(&c);
        for n in 0..b.len() {
            assert!(decode(&b[..n]).is_err());
        }
    }
}
