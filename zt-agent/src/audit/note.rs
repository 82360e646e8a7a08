//! C2SP signed notes with Ed25519 (ring): signing, verifier keys, and a
//! strict parser (<https://c2sp.org/signed-note>).
//!
//! # Layout
//! - [`key_id`]: first 4 bytes of SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key).
//! - [`VerifierKey`]: `name+hex(key id)+base64(0x01 ‖ public key)`.
//! - [`Signer`]: an Ed25519 key pair with its name; [`Signer::sign`].
//! - [`verify`]: text -> the body and the names of the keys that signed it.
//!
//! A note is the body (non-empty lines, each ending in '\n'), one empty line,
//! then signature lines `— <name> <base64(key id ‖ signature)>`. A verifier
//! matches a signature to a key by name AND key id; signatures by unknown
//! keys are ignored, as the spec says, but at least one known key must sign.
use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use ring::{
    digest::{SHA256, digest},
    signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey},
};

/// The algorithm byte of Ed25519 keys in C2SP signed notes.
const ALG_ED25519: u8 = 0x01;
/// U+2014 EM DASH, then a space: the start of every signature line.
const SIG_PREFIX: &str = "\u{2014} ";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("note contains a carriage return (CRLF line endings are not allowed)")]
    CarriageReturn,
    #[error("note does not end with a newline")]
    MissingFinalNewline,
    #[error("note has no empty line separating the text from the signatures")]
    NoSeparator,
    #[error("note text is empty or contains an empty line")]
    BadText,
    #[error("line {line}: not a signature line (expected \"\u{2014} <name> <base64>\")")]
    BadSignatureLine { line: usize },
    #[error("line {line}: invalid base64 in signature")]
    BadBase64 { line: usize },
    #[error("line {line}: signature of {len} bytes; Ed25519 needs 4 + 64")]
    BadSignatureLength { line: usize, len: usize },
    #[error("line {line}: duplicate signature by key {name:?}")]
    DuplicateSignature { line: usize, name: String },
    #[error("line {line}: signature by key {name:?} does not verify")]
    InvalidSignature { line: usize, name: String },
    #[error("no signature by a trusted key (signed by: {})", if signers.is_empty() { "nobody".to_string() } else { signers.join(", ") })]
    NoKnownSignature { signers: Vec<String> },
    #[error("invalid verifier key {key:?}: {why}")]
    BadVerifierKey { key: String, why: &'static str },
}

/// Key id: the first 4 bytes of SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key).
pub fn key_id(name: &str, public_key: &[u8]) -> [u8; 4] {
    let mut buf = Vec::with_capacity(name.len() + 2 + public_key.len());
    buf.extend_from_slice(name.as_bytes());
    buf.push(b'\n');
    buf.push(ALG_ED25519);
    buf.extend_from_slice(public_key);
    let d = digest(&SHA256, &buf);
    d.as_ref()[..4].try_into().expect("4 bytes")
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('+') && name.chars().all(|c| !c.is_whitespace() && !c.is_control())
}

/// A verifier key: `name+hex(key id)+base64(0x01 ‖ Ed25519 public key)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierKey {
    pub name: String,
    pub id: [u8; 4],
    pub public_key: [u8; 32],
}

impl VerifierKey {
    pub fn parse(s: &str) -> Result<Self, NoteError> {
        let bad = |why| NoteError::BadVerifierKey { key: s.to_string(), why };
        // base64 may contain '+'; names and key ids do not.
        let mut parts = s.trim_end_matches('\n').splitn(3, '+');
        let (Some(name), Some(id_hex), Some(b64), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected name+keyid+key"));
        };
        if !valid_name(name) {
            return Err(bad("invalid name"));
        }
        if id_hex.len() != 8 {
            return Err(bad("key id must be 8 hex digits"));
        }
        let id_val = u32::from_str_radix(id_hex, 16).map_err(|_| bad("key id must be 8 hex digits"))?;
        let raw = B64.decode(b64).map_err(|_| bad("invalid base64"))?;
        if raw.len() != 33 || raw[0] != ALG_ED25519 {
            return Err(bad("only Ed25519 keys (0x01 + 32 bytes) are supported"));
        }
        let public_key: [u8; 32] = raw[1..].try_into().expect("32 bytes");
        let id = id_val.to_be_bytes();
        if key_id(name, &public_key) != id {
            return Err(bad("key id does not match the name and key"));
        }
        Ok(VerifierKey { name: name.to_string(), id, public_key })
    }
}

impl std::fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut raw = vec![ALG_ED25519];
        raw.extend_from_slice(&self.public_key);
        write!(f, "{}+{}+{}", self.name, hex(&self.id), B64.encode(raw))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An Ed25519 signing key with its note name.
pub struct Signer {
    pub name: String,
    key: Ed25519KeyPair,
}

impl Signer {
    /// From a PKCS#8 v2 document (as `ring` generates).
    pub fn from_pkcs8(name: &str, pkcs8: &[u8]) -> Result<Self, String> {
        if !valid_name(name) {
            return Err(format!("invalid key name {name:?}"));
        }
        let key = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|e| format!("invalid Ed25519 PKCS#8 key: {e}"))?;
        Ok(Signer { name: name.to_string(), key })
    }

    /// A new random key, as PKCS#8 bytes (to store with mode 0400).
    pub fn generate_pkcs8() -> Result<Vec<u8>, String> {
        let rng = ring::rand::SystemRandom::new();
        Ed25519KeyPair::generate_pkcs8(&rng).map(|d| d.as_ref().to_vec()).map_err(|e| format!("generating an Ed25519 key: {e}"))
    }

    pub fn verifier_key(&self) -> VerifierKey {
        let public_key: [u8; 32] = self.key.public_key().as_ref().try_into().expect("32 bytes");
        VerifierKey { name: self.name.clone(), id: key_id(&self.name, &public_key), public_key }
    }

    /// The signature line for `text` (without the trailing newline).
    pub fn signature_line(&self, text: &str) -> String {
        let sig = self.key.sign(text.as_bytes());
        let mut raw = self.verifier_key().id.to_vec();
        raw.extend_from_slice(sig.as_ref());
        format!("{SIG_PREFIX}{} {}", self.name, B64.encode(raw))
    }
}

/// Signs `text` (which must end in '\n') with every signer: a complete note.
pub fn sign(text: &str, signers: &[&Signer]) -> String {
    let mut note = format!("{text}\n");
    for s in signers {
        note.push_str(&s.signature_line(text));
        note.push('\n');
    }
    note
}

/// A verified note: its text and the names of the known keys that signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub text: String,
    pub signed_by: Vec<String>,
}

/// Parses and verifies a note against `keys`.
pub fn verify(note: &str, keys: &[VerifierKey]) -> Result<Verified, NoteError> {
    if note.contains('\r') {
        return Err(NoteError::CarriageReturn);
    }
    if !note.ends_with('\n') {
        return Err(NoteError::MissingFinalNewline);
    }
    let split = note.rfind("\n\n").ok_or(NoteError::NoSeparator)?;
    let text = &note[..split + 1];
    let sigs = &note[split + 2..];
    if text.len() <= 1 || text[..text.len() - 1].split('\n').any(str::is_empty) {
        return Err(NoteError::BadText);
    }
    let text_lines = text.matches('\n').count() + 1;
    let mut signed_by: Vec<String> = Vec::new();
    let mut seen: Vec<(String, [u8; 4])> = Vec::new();
    for (i, line) in sigs.trim_end_matches('\n').split('\n').enumerate() {
        let lineno = text_lines + 1 + i;
        let rest = line.strip_prefix(SIG_PREFIX).ok_or(NoteError::BadSignatureLine { line: lineno })?;
        let (name, b64) = rest.split_once(' ').ok_or(NoteError::BadSignatureLine { line: lineno })?;
        if !valid_name(name) || b64.contains(' ') {
            return Err(NoteError::BadSignatureLine { line: lineno });
        }
        let raw = B64.decode(b64).map_err(|_| NoteError::BadBase64 { line: lineno })?;
        if raw.len() < 4 {
            return Err(NoteError::BadSignatureLength { line: lineno, len: raw.len() });
        }
        let id: [u8; 4] = raw[..4].try_into().expect("4 bytes");
        if seen.iter().any(|(n, i)| n == name && *i == id) {
            return Err(NoteError::DuplicateSignature { line: lineno, name: name.to_string() });
        }
        seen.push((name.to_string(), id));
        let Some(key) = keys.iter().find(|k| k.name == name && k.id == id) else { continue };
        if raw.len() != 4 + 64 {
            return Err(NoteError::BadSignatureLength { line: lineno, len: raw.len() });
        }
        UnparsedPublicKey::new(&ED25519, &key.public_key)
            .verify(text.as_bytes(), &raw[4..])
            .map_err(|_| NoteError::InvalidSignature { line: lineno, name: name.to_string() })?;
        signed_by.push(name.to_string());
    }
    if signed_by.is_empty() {
        return Err(NoteError::NoKnownSignature { signers: seen.iter().map(|(n, id)| format!("{n}+{}", hex(id))).collect() });
    }
    Ok(Verified { text: text.to_string(), signed_by })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example checkpoint in shared/docs/audit-log.md, signed with ring
    /// and verified there by the `signed_note` crate: a fixed vector.
    const DOC_NOTE: &str = "agent.example/host-1234/audit\n1000\nwfR+nPkicys8YSEuJD7dqm98GmJhYNy2OsaauODMdus=\n\n\u{2014} agent.example/host-1234/audit 5qNsP1Hklhe84TrRZPp8R/7DA2Z3UHNVuu7/H3ZSwy0ig9fyLjejweQ9IWqcnBAn/YufGgxpx6xkzzlmDtSnyABQkgY=\n";
    const DOC_VKEY: &str = "agent.example/host-1234/audit+e6a36c3f+AapdVdJJucf5jCWMeBeooA2D7k8iHv1NyXV8dOAtY4xP";

    #[test]
    fn verifies_the_documented_example() {
        let key = VerifierKey::parse(DOC_VKEY).unwrap();
        assert_eq!(key.to_string(), DOC_VKEY);
        let v = verify(DOC_NOTE, std::slice::from_ref(&key)).unwrap();
        assert_eq!(v.signed_by, vec!["agent.example/host-1234/audit"]);
        assert!(v.text.starts_with("agent.example/host-1234/audit\n1000\n"));
        // One flipped byte of the text.
        let tampered = DOC_NOTE.replace("1000", "1001");
        assert_eq!(verify(&tampered, &[key]), Err(NoteError::InvalidSignature { line: 5, name: "agent.example/host-1234/audit".into() }));
    }

    /// The example of the C2SP signed-note spec (and Go's
    /// golang.org/x/mod/sumdb/note documentation).
    #[test]
    fn verifies_the_spec_example() {
        let key = VerifierKey::parse("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW").unwrap();
        let note = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        assert_eq!(verify(note, &[key]).unwrap().signed_by, vec!["PeterNeumann"]);
    }

    #[test]
    fn sign_and_verify_round_trip_with_rotation_overlap() {
        let a = Signer::from_pkcs8("log.example/a", &Signer::generate_pkcs8().unwrap()).unwrap();
        let b = Signer::from_pkcs8("log.example/b", &Signer::generate_pkcs8().unwrap()).unwrap();
        let note = sign("origin\n5\nAAAA\n", &[&a, &b]);
        assert_eq!(verify(&note, &[a.verifier_key()]).unwrap().signed_by, vec!["log.example/a"]);
        assert_eq!(verify(&note, &[a.verifier_key(), b.verifier_key()]).unwrap().signed_by.len(), 2);
        // Same name, different key bytes: the key id differs, so the signature is not "known".
        let impostor = Signer::from_pkcs8("log.example/a", &Signer::generate_pkcs8().unwrap()).unwrap();
        let e = verify(&sign("origin\n5\nAAAA\n", &[&impostor]), &[a.verifier_key()]).unwrap_err();
        assert_eq!(e, NoteError::NoKnownSignature { signers: vec![format!("log.example/a+{}", hex(&impostor.verifier_key().id))] });
        assert!(e.to_string().starts_with("no signature by a trusted key (signed by: log.example/a+"), "{e}");
        // A key whose id was forged to match: the signature itself fails.
        let mut forged = impostor.verifier_key();
        forged.id = a.verifier_key().id;
        let note_a = sign("origin\n5\nAAAA\n", &[&a]);
        assert!(matches!(verify(&note_a, &[forged]), Err(NoteError::InvalidSignature { .. })));
    }

    #[test]
    fn parser_edge_cases() {
        let a = Signer::from_pkcs8("k", &Signer::generate_pkcs8().unwrap()).unwrap();
        let keys = [a.verifier_key()];
        let good = sign("o\n1\nAA==\n", &[&a]);
        assert!(verify(&good, &keys).is_ok());
        assert_eq!(verify(&good.replace('\n', "\r\n"), &keys), Err(NoteError::CarriageReturn));
        assert_eq!(verify(good.trim_end_matches('\n'), &keys), Err(NoteError::MissingFinalNewline));
        assert_eq!(verify("o\n1\n", &keys), Err(NoteError::NoSeparator));
        let line = a.signature_line("o\n1\nAA==\n");
        assert_eq!(verify(&format!("{good}{line}\n"), &keys), Err(NoteError::DuplicateSignature { line: 6, name: "k".into() }));
        let bad64 = "o\n1\nAA==\n\n\u{2014} k !!!notbase64\n";
        assert_eq!(verify(bad64, &keys), Err(NoteError::BadBase64 { line: 5 }));
        assert_eq!(verify("o\n1\nAA==\n\n- k AAAA\n", &keys), Err(NoteError::BadSignatureLine { line: 5 }));
        assert_eq!(verify("o\n\n1\n\n\u{2014} k AAAAAA==\n", &keys), Err(NoteError::BadText));
        assert!(VerifierKey::parse("k+00000000+AQ==").is_err());
        assert!(VerifierKey::parse(&a.verifier_key().to_string().replace("k+", "j+")).is_err(), "key id bound to the name");
    }
}
