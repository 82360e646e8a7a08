//! Where compiled policies go: the double-buffered policy tables, as the
//! policy manager sees them. `bpf::tables` implements [`PolicyTarget`] over
//! the kernel maps; [`mem::MemTarget`] implements it in memory for tests.
//!
//! # Layout
//! - [`PolicyTarget`]: install into the inactive slot, flip, grace.
//! - [`target_slot`]: the slot the next policy is compiled for.
//! - [`TargetError`]: what can fail, with the backend's error as source.
//! - [`Contents`]: a slot's entries as one digest, for continuous
//!   verification: what an install wrote ([`Compiled::contents`]) against
//!   what the tables hold ([`PolicyTarget::contents`]).
//!
//! A reload writes the complete new policy into the slot not in force, then
//! flips the active slot (one array-element update, atomic for readers). The
//! programs read the slot once per decision, so a decision sees the old
//! policy or the new one, never a mixture. The slot just left is cleared only
//! at the next install, and not before [`GRACE`] has passed since the flip,
//! so a decision that read the old slot number just before the flip still
//! finds the old entries.
use std::time::Duration;

use zt_common::policy::ActivePolicy;

use super::Compiled;

/// How long the slot just left stays intact before it may be cleared: a
/// decision that read the old slot number finishes within microseconds.
pub const GRACE: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("policy compiled for slot {slot}, which is in force (generation {generation})")]
    SlotInForce { slot: u32, generation: u32 },
    #[error("policy tables: {op}")]
    Backend {
        op: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The double-buffered policy tables.
pub trait PolicyTarget: Send + Sync {
    /// The slot and generation in force (generation 0: nothing installed).
    fn active(&self) -> Result<ActivePolicy, TargetError>;

    /// Writes `compiled` into its slot, first clearing what an earlier policy
    /// left there. Refuses the slot in force; on error the slot in force is
    /// untouched. Call once [`Self::grace_remaining`] is zero.
    fn install(&mut self, compiled: &Compiled) -> Result<(), TargetError>;

    /// Switches every reader to `slot`; returns what is now in force.
    fn flip(&mut self, slot: u32) -> Result<ActivePolicy, TargetError>;

    /// How long until the slot just left may be cleared.
    fn grace_remaining(&self) -> Duration;

    /// The [`Contents`] digest of what `slot` holds now, read back.
    fn contents(&self, slot: u32) -> Result<blake3::Hash, TargetError>;
}

/// Table names in [`Contents`] entries.
pub mod table {
    pub const NET: &str = "net";
    pub const UNIX: &str = "unix";
    pub const FILES: &str = "files";
    pub const IDENTITIES: &str = "identities";
}

/// The entries of one slot as a digest that does not depend on the order
/// they are listed in: each entry (its table's name, key and value, as
/// their `Hash` writes them) hashed with blake3, those hashes sorted and
/// hashed together. Equal exactly when every table holds the same entries.
#[derive(Default)]
pub struct Contents(Vec<[u8; 32]>);

/// A `std::hash::Hasher` that feeds blake3.
struct Feed(blake3::Hasher);

impl std::hash::Hasher for Feed {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        unreachable!("only the blake3 digest is read")
    }
}

impl Contents {
    pub fn add(&mut self, table: &str, entry: &impl std::hash::Hash) {
        let mut feed = Feed(blake3::Hasher::new());
        std::hash::Hash::hash(table, &mut feed);
        entry.hash(&mut feed);
        self.0.push(*feed.0.finalize().as_bytes());
    }

    pub fn digest(mut self) -> blake3::Hash {
        self.0.sort_unstable();
        let mut h = blake3::Hasher::new();
        for e in &self.0 {
            h.update(e);
        }
        h.finalize()
    }
}

/// The slot the next policy must be compiled for.
pub fn target_slot(active: ActivePolicy) -> u32 {
    if active.generation == 0 { 0 } else { 1 - active.slot }
}

/// In memory, with the kernel target's semantics (slot check, grace, flip).
#[cfg(test)]
pub mod mem {
    use std::time::Instant;

    use super::*;

    #[derive(Default)]
    pub struct MemTarget {
        /// What each slot holds.
        pub slots: [Option<Compiled>; 2],
        pub active: ActivePolicy,
        pub last_flip: Option<Instant>,
        /// Makes the next install fail (after clearing, as a full map would).
        pub fail_next_install: bool,
    }

    impl PolicyTarget for MemTarget {
        fn active(&self) -> Result<ActivePolicy, TargetError> {
            Ok(self.active)
        }
        fn install(&mut self, compiled: &Compiled) -> Result<(), TargetError> {
            if compiled.slot != target_slot(self.active) {
                return Err(TargetError::SlotInForce { slot: compiled.slot, generation: self.active.generation });
            }
            self.slots[compiled.slot as usize] = None;
            if std::mem::take(&mut self.fail_next_install) {
                return Err(TargetError::Backend { op: "insert", source: "map full".into() });
            }
            self.slots[compiled.slot as usize] = Some(compiled.clone());
            Ok(())
        }
        fn flip(&mut self, slot: u32) -> Result<ActivePolicy, TargetError> {
            self.active = ActivePolicy { slot, generation: self.active.generation + 1 };
            self.last_flip = Some(Instant::now());
            Ok(self.active)
        }
        fn grace_remaining(&self) -> Duration {
            self.last_flip.map(|t| GRACE.saturating_sub(t.elapsed())).unwrap_or_default()
        }
        fn contents(&self, slot: u32) -> Result<blake3::Hash, TargetError> {
            Ok(self.slots[slot as usize].as_ref().map_or_else(|| Contents::default().digest(), Compiled::contents))
        }
    }

    impl MemTarget {
        /// The compiled policy readers see now.
        pub fn in_force(&self) -> Option<&Compiled> {
            if self.active.generation == 0 { None } else { self.slots[self.active.slot as usize].as_ref() }
        }
    }
}
