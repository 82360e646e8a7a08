//! C2SP `tlog-checkpoint` bodies (<https://c2sp.org/tlog-checkpoint>):
//! origin, tree size and base64 root hash, one per line, signed as a note.
use base64::{Engine as _, engine::general_purpose::STANDARD as B64};

use super::{
    merkle::Hash,
    note::{self, NoteError, Signer, VerifierKey},
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Note(#[from] NoteError),
    #[error("checkpoint body: {0}")]
    Body(&'static str),
    #[error("checkpoint origin {got:?}, expected {want:?}")]
    Origin { got: String, want: String },
}

impl Checkpoint {
    /// The note text: `origin\nsize\nbase64(root)\n`.
    pub fn body(&self) -> String {
        format!("{}\n{}\n{}\n", self.origin, self.size, B64.encode(self.root))
    }

    /// A signed note of this checkpoint.
    pub fn sign(&self, signers: &[&Signer]) -> String {
        note::sign(&self.body(), signers)
    }

    /// Parses a body (extension lines after the root are allowed and ignored).
    pub fn parse_body(text: &str) -> Result<Self, CheckpointError> {
        let mut lines = text.split('\n');
        let origin = lines.next().filter(|l| !l.is_empty()).ok_or(CheckpointError::Body("missing origin"))?;
        let size_line = lines.next().ok_or(CheckpointError::Body("missing tree size"))?;
        if size_line.is_empty() || !size_line.bytes().all(|b| b.is_ascii_digit()) || (size_line.len() > 1 && size_line.starts_with('0')) {
            return Err(CheckpointError::Body("tree size is not a decimal number without leading zeros"));
        }
        let size = size_line.parse().map_err(|_| CheckpointError::Body("tree size out of range"))?;
        let root_line = lines.next().ok_or(CheckpointError::Body("missing root hash"))?;
        let root: Hash = B64
            .decode(root_line)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or(CheckpointError::Body("root hash is not base64 of 32 bytes"))?;
        Ok(Checkpoint { origin: origin.to_string(), size, root })
    }

    /// The checkpoint in a signed note, its signatures not checked (to learn
    /// the origin and size before the keys are known).
    pub fn parse_unverified(note: &str) -> Result<Self, CheckpointError> {
        let body = note.split("\n\n").next().unwrap_or_default();
        Self::parse_body(&format!("{body}\n"))
    }

    /// Verifies a signed checkpoint for `origin` against `keys`.
    pub fn verify(signed: &str, origin: &str, keys: &[VerifierKey]) -> Result<(Self, Vec<String>), CheckpointError> {
        let v = note::verify(signed, keys)?;
        let cp = Self::parse_body(&v.text)?;
        if cp.origin != origin {
            return Err(CheckpointError::Origin { got: cp.origin, want: origin.to_string() });
        }
        Ok((cp, v.signed_by))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::merkle::{EMPTY_ROOT, Tree};

    #[test]
    fn documented_example_parses() {
        let key = VerifierKey::parse("agent.example/host-1234/audit+e6a36c3f+AapdVdJJucf5jCWMeBeooA2D7k8iHv1NyXV8dOAtY4xP").unwrap();
        let signed = "agent.example/host-1234/audit\n1000\nwfR+nPkicys8YSEuJD7dqm98GmJhYNy2OsaauODMdus=\n\n\u{2014} agent.example/host-1234/audit 5qNsP1Hklhe84TrRZPp8R/7DA2Z3UHNVuu7/H3ZSwy0ig9fyLjejweQ9IWqcnBAn/YufGgxpx6xkzzlmDtSnyABQkgY=\n";
        let (cp, by) = Checkpoint::verify(signed, "agent.example/host-1234/audit", std::slice::from_ref(&key)).unwrap();
        assert_eq!(cp.size, 1000);
        assert_eq!(by, vec!["agent.example/host-1234/audit"]);
        assert_eq!(
            Checkpoint::verify(signed, "other/origin", &[key]),
            Err(CheckpointError::Origin { got: "agent.example/host-1234/audit".into(), want: "other/origin".into() })
        );
    }

    #[test]
    fn round_trip_and_body_errors() {
        let signer = Signer::from_pkcs8("zt-agent/node-1", &Signer::generate_pkcs8().unwrap()).unwrap();
        let mut t = Tree::new();
        for i in 0..10 {
            t.push(format!("r{i}").as_bytes());
        }
        let cp = Checkpoint { origin: "zt-agent/node-1".into(), size: t.size(), root: t.root() };
        let signed = cp.sign(&[&signer]);
        assert_eq!(Checkpoint::verify(&signed, "zt-agent/node-1", &[signer.verifier_key()]).unwrap().0, cp);
        let empty = Checkpoint { origin: "o".into(), size: 0, root: EMPTY_ROOT };
        assert_eq!(empty.body(), "o\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n");
        assert_eq!(Checkpoint::parse_body(&empty.body()).unwrap(), empty);
        assert!(Checkpoint::parse_body("o\n01\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n").is_err());
        assert!(Checkpoint::parse_body("o\n-1\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n").is_err());
        assert!(Checkpoint::parse_body("o\n1\nAAAA\n").is_err());
        assert!(Checkpoint::parse_body("\n1\n").is_err());
    }
}
