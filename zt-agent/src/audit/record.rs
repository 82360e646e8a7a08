//! Audit records: one canonical-JSON envelope per Merkle leaf.
//!
//! # Layout
//! - [`Envelope`]: `v`, `idx`, `origin`, `time`, `boot_id`, `mono_ns`,
//!   `kind`, `payload`; [`Envelope::encode`] gives the leaf bytes.
//! - [`canonical`]: RFC 8785-style JSON: object keys sorted by UTF-16 code
//!   units, no insignificant whitespace, strings escaped by serde_json
//!   (control characters as `\u00xx`, so a record never holds a raw newline
//!   and a SIEM can store the exact bytes on one line).
//! - [`Header`]: what a verifier reads from every record without building
//!   the payload (`payload` is skipped, not allocated).
//! - [`kind`]: the record kinds the log itself writes.
//!
//! Integers are written as integers; the payloads we write hold no floats
//! except anomaly scores, which serde_json writes as the shortest string
//! that reads back to the same double.
use serde::Deserialize;
use serde_json::Value;

/// Envelope version.
pub const VERSION: u64 = 1;

/// Record kinds written by the audit log itself (events from the pipeline
/// keep their own kind: `connect`, `policy`, `agent`, `loss`, ...).
pub mod kind {
    /// A signed checkpoint; its payload holds the note.
    pub const CHECKPOINT: &str = "checkpoint";
    /// A torn tail was cut at start.
    pub const RECOVERY: &str = "recovery";
    /// A new signing key; checkpoints carry both signatures until retirement.
    pub const KEY_ROTATION: &str = "key_rotation";
    /// The old key of a rotation stopped signing.
    pub const KEY_RETIRED: &str = "key_retired";
    /// Segments deleted by retention.
    pub const RETENTION: &str = "retention";
    /// Records the log could not write (a full disk), appended once it can
    /// write again; payload `{"audit_unwritable": {...}}`.
    pub const LOSS: &str = "loss";
}

#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub idx: u64,
    pub origin: String,
    /// RFC 3339 UTC wall-clock time of the append.
    pub time: String,
    /// `/proc/sys/kernel/random/boot_id`: `mono_ns` is comparable within one boot.
    pub boot_id: String,
    /// CLOCK_BOOTTIME in ns.
    pub mono_ns: u64,
    pub kind: String,
    pub payload: Value,
}

impl Envelope {
    /// The canonical bytes of this record (the Merkle leaf): the envelope's
    /// keys written directly in sorted order, the payload canonicalized in
    /// place (no copy of it is made).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1024);
        let s = |out: &mut Vec<u8>, v: &str| serde_json::to_writer(&mut *out, v).expect("writing to a Vec");
        out.extend_from_slice(b"{\"boot_id\":");
        s(&mut out, &self.boot_id);
        out.extend_from_slice(format!(",\"idx\":{},\"kind\":", self.idx).as_bytes());
        s(&mut out, &self.kind);
        out.extend_from_slice(format!(",\"mono_ns\":{},\"origin\":", self.mono_ns).as_bytes());
        s(&mut out, &self.origin);
        out.extend_from_slice(b",\"payload\":");
        canonical(&self.payload, &mut out);
        out.extend_from_slice(b",\"time\":");
        s(&mut out, &self.time);
        out.extend_from_slice(format!(",\"v\":{VERSION}}}").as_bytes());
        out
    }

    /// Parses a whole record (for `audit show`).
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            v: u64,
            idx: u64,
            origin: String,
            time: String,
            boot_id: String,
            mono_ns: u64,
            kind: String,
            payload: Value,
        }
        let f: Full = serde_json::from_slice(bytes).map_err(|e| format!("not an audit record: {e}"))?;
        if f.v != VERSION {
            return Err(format!("record version {} (this zt-agent reads {VERSION})", f.v));
        }
        Ok(Envelope {
            idx: f.idx,
            origin: f.origin,
            time: f.time,
            boot_id: f.boot_id,
            mono_ns: f.mono_ns,
            kind: f.kind,
            payload: f.payload,
        })
    }
}

/// The fields a verifier checks on every record.
#[derive(Debug, Deserialize)]
pub struct Header<'a> {
    pub v: u64,
    pub idx: u64,
    #[serde(borrow)]
    pub origin: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub kind: std::borrow::Cow<'a, str>,
}

impl<'a> Header<'a> {
    /// Reads the envelope fields; the payload is skipped (the Merkle hash
    /// covers it). Records in canonical form take a fast path that only
    /// locates the envelope keys around the payload; anything else goes
    /// through the JSON parser.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, String> {
        if let Some(h) = Self::canonical_fast_path(bytes) {
            return Ok(h);
        }
        let h: Header = serde_json::from_slice(bytes).map_err(|e| format!("not an audit record: {e}"))?;
        if h.v != VERSION {
            return Err(format!("record version {} (this zt-agent reads {VERSION})", h.v));
        }
        Ok(h)
    }
}

impl<'a> Header<'a> {
    /// `{"boot_id":"…","idx":N,"kind":"…","mono_ns":N,"origin":"…","payload":…,"time":"…","v":1}`.
    /// Inside a JSON string every `"` is escaped, so a pattern beginning with
    /// an unescaped `"` (or `,` after a value) can only be structural; the
    /// `time` key is found from the end, after the payload.
    fn canonical_fast_path(bytes: &'a [u8]) -> Option<Self> {
        let s = std::str::from_utf8(bytes).ok()?;
        let rest = s.strip_prefix("{\"boot_id\":\"")?;
        let (_, rest) = rest.split_once("\",\"idx\":")?;
        let (idx, rest) = rest.split_once(",\"kind\":\"")?;
        let (kind, rest) = rest.split_once("\",\"mono_ns\":")?;
        let (mono, rest) = rest.split_once(",\"origin\":\"")?;
        let (origin, rest) = rest.split_once("\",\"payload\":")?;
        let time = &rest[rest.rfind(",\"time\":\"")? + 9..];
        let time = time.strip_suffix(&format!("\",\"v\":{VERSION}}}"))?;
        let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
        let plain = |t: &str| !t.contains(['\\', '"']);
        if !(digits(idx) && digits(mono) && plain(kind) && plain(origin) && plain(time)) {
            return None;
        }
        Some(Header { v: VERSION, idx: idx.parse().ok()?, origin: origin.into(), kind: kind.into() })
    }
}

/// Writes `v` as canonical JSON.
pub fn canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(m) => {
            let utf16 = |a: &String, b: &String| a.encode_utf16().cmp(b.encode_utf16());
            // serde_json's map iterates in byte order, which is UTF-16 order
            // for the ASCII keys we write; sort only when it is not.
            let mut keys: Vec<&String> = m.keys().collect();
            if !keys.is_sorted_by(|a, b| utf16(a, b).is_le()) {
                keys.sort_by(|a, b| utf16(a, b));
            }
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, k).expect("writing to a Vec");
                out.push(b':');
                canonical(&m[k], out);
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(x, out);
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar).expect("writing to a Vec"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canon(v: Value) -> String {
        let mut out = Vec::new();
        canonical(&v, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn canonical_form() {
        assert_eq!(
            canon(json!({"b": 1, "a": [true, null, "x"], "c": {"z": 0, "y": -5}})),
            r#"{"a":[true,null,"x"],"b":1,"c":{"y":-5,"z":0}}"#
        );
        // Control characters are escaped; nothing raw below U+0020 remains.
        assert_eq!(canon(json!("a\nb\u{1}\t\"\\")), r#""a\nb\u0001\t\"\\""#);
        // Keys sort by UTF-16 code units (U+FB01 sorts after U+1F600's surrogates
        // in UTF-16 although it comes first in UTF-8), as RFC 8785 says.
        assert_eq!(canon(json!({"\u{fb01}": 1, "\u{1f600}": 2})), "{\"\u{1f600}\":2,\"\u{fb01}\":1}");
        assert_eq!(canon(json!(1.5)), "1.5");
    }

    #[test]
    fn envelope_round_trip() {
        let e = Envelope {
            idx: 7,
            origin: "zt-agent/node-1".into(),
            time: "2026-11-22T10:00:00.000000001Z".into(),
            boot_id: "b".into(),
            mono_ns: 42,
            kind: "policy".into(),
            payload: json!({"action": "applied", "text": "line1\nline2"}),
        };
        let bytes = e.encode();
        let s = std::str::from_utf8(&bytes).unwrap();
        assert_eq!(
            s,
            r#"{"boot_id":"b","idx":7,"kind":"policy","mono_ns":42,"origin":"zt-agent/node-1","payload":{"action":"applied","text":"line1\nline2"},"time":"2026-11-22T10:00:00.000000001Z","v":1}"#
        );
        assert!(!bytes.iter().any(|b| *b < 0x20));
        assert_eq!(Envelope::decode(&bytes).unwrap(), e);
        // The direct writer agrees with canonicalizing the whole envelope.
        let whole = json!({"v": 1, "idx": 7, "origin": e.origin, "time": e.time, "boot_id": "b", "mono_ns": 42, "kind": "policy", "payload": e.payload});
        assert_eq!(canon(whole).into_bytes(), bytes);
        let h = Header::parse(&bytes).unwrap();
        assert_eq!((h.idx, &*h.origin, &*h.kind), (7, "zt-agent/node-1", "policy"));
        assert!(Header::canonical_fast_path(&bytes).is_some());
        // Not canonical (whitespace, other key order): the JSON parser reads it the same.
        let loose = br#"{ "v": 1, "idx": 7, "kind": "policy", "origin": "zt-agent/node-1", "payload": {"time": "x"}, "time": "t", "boot_id": "b", "mono_ns": 1 }"#;
        assert!(Header::canonical_fast_path(loose).is_none());
        let h = Header::parse(loose).unwrap();
        assert_eq!((h.idx, &*h.origin, &*h.kind), (7, "zt-agent/node-1", "policy"));
        // A payload holding the envelope's key patterns inside strings and a nested "time".
        let tricky =
            Envelope { payload: json!({"a": "\",\"idx\":9,\"kind\":\"x", "time": "\",\"time\":\"", "n": {"time": 1}}), ..e.clone() };
        let tb = tricky.encode();
        let h = Header::canonical_fast_path(&tb).unwrap();
        assert_eq!((h.idx, &*h.kind, &*h.origin), (7, "policy", "zt-agent/node-1"));
        assert!(Header::parse(b"{\"v\":2,\"idx\":0,\"origin\":\"o\",\"kind\":\"k\"}").unwrap_err().contains("version 2"));
        assert!(Header::parse(b"[1]").is_err());
    }
}
