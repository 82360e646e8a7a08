//! File rules where BPF LSM does not load: fanotify permission events
//! (`FAN_OPEN_PERM`) on the objects deny rules name, answered by a thread of
//! the daemon from the same compiled policy the kernel maps hold.
//!
//! # Layout
//! - [`policy`]: [`policy::FilePolicy`], one generation's file rules as the
//!   responder looks them up, and the objects to watch (pure).
//! - [`syscall`]: the access an open asks for, from the opening thread's
//!   syscall in flight (pure).
//! - [`fanotify`]: the group, its marks (inode marks on the watched objects,
//!   every directory below a directory rule), the responder thread and the
//!   mark keeper thread.
//! - [`Fallback`]: starts both threads; [`Fallback::target`] wraps the
//!   kernel's policy target so each policy switch also switches the
//!   responder's policy and its marks (marks added before the switch,
//!   stale ones removed after).
//!
//! # What this path enforces, and what it does not
//! - Opens (read, write; `O_TRUNC` writes) of watched objects by an agent
//!   identity: refused with EPERM before the open returns. The decision
//!   walks the object's directories like the kernel's (device and inode of
//!   each, from the path the daemon sees the opened file at), plus the
//!   directory rules' objects a walk found it below (so a file moved or
//!   hard-linked out of a denied directory stays denied).
//! - Not: unlink, rename, link, mkdir, truncate(2), and creation as such
//!   (an open that creates a file in a denied directory makes the file,
//!   then the open is refused). Objects made or moved below a directory
//!   rule are watched at the next walk (at most [`fanotify::REWALK_EVERY`]
//!   later). Objects only an allow rule names are not watched: identities
//!   whose files default to deny are held by the kernel's `open_exit`
//!   program instead.
//! - Processes without an identity pay nothing on objects no deny rule
//!   names; on a watched object, one round trip to the daemon.
//! - The marks belong to the daemon's fanotify group: they go when the
//!   daemon stops (unlike the pinned programs), and an open waiting for an
//!   answer then proceeds.
pub mod fanotify;
pub mod policy;
pub mod syscall;

pub use fanotify::{Counters, Fallback, Processes, Snapshot};
