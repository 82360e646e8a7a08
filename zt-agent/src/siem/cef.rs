//! Records as ArcSight CEF (`CEF:0|Vendor|Product|Version|SignatureID|Name|Severity|Extension`).
//!
//! Escaping (CEF spec, "Character encoding"): in header fields `\` and `|`
//! are escaped with a backslash and line breaks become spaces (a header is
//! one line); in extension values `\` and `=` are escaped and CR/LF are
//! written as `\r` / `\n`. Extension keys are fixed names from the CEF
//! dictionary, plus labelled custom strings (`cs1`..`cs6` with `csNLabel`).
use std::fmt::Write as _;

use serde_json::Value;

use super::{
    ocsf::{epoch_ms, summary},
    record::Record,
    rfc5424::Severity,
};

/// CEF severity (0-10) of a syslog severity.
fn severity(s: Severity) -> u8 {
    match s {
        Severity::Debug => 1,
        Severity::Info => 3,
        Severity::Notice => 4,
        Severity::Warning => 6,
        Severity::Error => 8,
        Severity::Critical => 9,
        Severity::Alert | Severity::Emergency => 10,
    }
}

pub fn escape_header(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
}

pub fn escape_value(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

/// The CEF line for `r`.
pub fn event(r: &Record, product_version: &str) -> String {
    let p = &r.payload;
    let k = &p[r.kind.as_str()];
    let mut out = String::from("CEF:0|");
    for h in ["zt-agent", "zt-agent", product_version, &r.kind, &summary(r)] {
        escape_header(h, &mut out);
        out.push('|');
    }
    write!(out, "{}|", severity(r.severity())).expect("writing to a String");
    let text = |v: &Value| v.as_str().map(str::to_string).or_else(|| (!v.is_null()).then(|| v.to_string()));
    let mut ext: Vec<(&str, Option<String>)> = vec![
        ("rt", Some(epoch_ms(&r.time).to_string())),
        ("dvchost", text(&p["node"])),
        ("act", text(&k["action"])),
        ("spid", text(&p["process"]["pid"])),
        ("sproc", text(&p["process"]["comm"])),
        ("filePath", text(&p["process"]["exe"])),
        ("suid", text(&p["process"]["uid"])),
        ("dst", text(&k["address"]).filter(|_| r.kind != "unix_connect")),
        ("dpt", text(&k["port"])),
        ("proto", text(&k["protocol"])),
        ("cnt", text(&k["repeats"])),
    ];
    let identity = r.identity();
    let custom = [
        ("identity", identity.map(|(n, _)| n.to_string())),
        ("spiffeId", identity.map(|(_, s)| s.to_string())),
        ("rule", text(&k["rule"])),
        ("logOrigin", r.place.as_ref().map(|pl| pl.origin.clone())),
        ("leafHash", r.place.as_ref().map(|pl| pl.leaf.clone())),
        ("unixAddress", text(&k["address"]).filter(|_| r.kind == "unix_connect")),
    ];
    let labels = ["cs1", "cs2", "cs3", "cs4", "cs5", "cs6"];
    let label_keys = ["cs1Label", "cs2Label", "cs3Label", "cs4Label", "cs5Label", "cs6Label"];
    for (i, (label, value)) in custom.into_iter().enumerate() {
        if value.is_some() {
            ext.push((label_keys[i], Some(label.to_string())));
            ext.push((labels[i], value));
        }
    }
    if let Some(pl) = &r.place {
        ext.push(("cn1Label", Some("recordIndex".into())));
        ext.push(("cn1", Some(pl.index.to_string())));
    }
    let mut first = true;
    for (key, value) in ext {
        let Some(v) = value else { continue };
        if !first {
            out.push(' ');
        }
        first = false;
        out.push_str(key);
        out.push('=');
        escape_value(&v, &mut out);
    }
    out
}

/// A CEF line's 7 header fields and its extension pairs, unescaped.
pub type Parsed = (Vec<String>, Vec<(String, String)>);

/// Splits a CEF line back into its 7 header fields and extension pairs,
/// undoing the escapes (for tests and fuzzing: our output must read back
/// to what went in).
pub fn parse(line: &str) -> Option<Parsed> {
    let rest = line.strip_prefix("CEF:")?;
    let mut header = Vec::new();
    let mut cur = String::new();
    let mut chars = rest.chars();
    while header.len() < 7 {
        match chars.next()? {
            '\\' => cur.push(chars.next()?),
            '|' => header.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    let ext_text: String = chars.collect();
    // Keys are `[A-Za-z0-9]+` followed by an unescaped `=`; a value runs to
    // the space before the next key.
    let mut pairs: Vec<(String, String)> = Vec::new();
    let bytes: Vec<char> = ext_text.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphanumeric() {
            i += 1;
        }
        if i >= bytes.len() || bytes[i] != '=' || i == start {
            return None;
        }
        let key: String = bytes[start..i].iter().collect();
        i += 1;
        let mut value = String::new();
        while i < bytes.len() {
            match bytes[i] {
                '\\' if i + 1 < bytes.len() => {
                    value.push(match bytes[i + 1] {
                        'n' => '\n',
                        'r' => '\r',
                        c => c,
                    });
                    i += 2;
                }
                ' ' if next_is_key(&bytes[i + 1..]) => {
                    i += 1;
                    break;
                }
                c => {
                    value.push(c);
                    i += 1;
                }
            }
        }
        pairs.push((key, value));
    }
    Some((header, pairs))
}

fn next_is_key(rest: &[char]) -> bool {
    let n = rest.iter().take_while(|c| c.is_ascii_alphanumeric()).count();
    n > 0 && rest.get(n) == Some(&'=')
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::siem::record::Place;

    fn record(argv_like: &str) -> Record {
        Record {
            place: Some(Place { origin: "zt-agent/n1".into(), index: 3, leaf: "bGVhZg==".into() }),
            kind: "unix_connect".into(),
            time: "2026-12-02T10:00:00Z".into(),
            payload: json!({
                "node": "n1",
                "process": {"pid": 7, "comm": "a|b", "exe": argv_like, "uid": 0},
                "identity": {"name": "coder", "spiffe_id": "spiffe://t/coder"},
                "unix_connect": {"address": argv_like, "action": "denied", "rule": "r=1"}
            }),
        }
    }

    /// Many generated strings of the characters CEF must escape, and more:
    /// each reads back exactly (header fields: with line breaks as spaces).
    #[test]
    fn any_text_reads_back() {
        const ALPHABET: [&str; 14] = ["\\", "=", "|", "\n", "\r", " ", "a", "é", "]", "\"", "k=", " x=", "\u{0}", "\\n"];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2000 {
            let len = (next() % 12) as usize;
            let text: String = (0..len).map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize]).collect();
            let mut r = record(&text);
            r.payload["process"]["comm"] = json!(text);
            r.payload["unix_connect"]["rule"] = json!(text);
            let line = event(&r, &text);
            assert!(!line.contains(['\n', '\r']), "one line: {line:?}");
            let (header, ext) = parse(&line).unwrap_or_else(|| panic!("unparseable: {line:?}"));
            let get = |k: &str| ext.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
            assert_eq!(
                (get("filePath"), get("sproc"), get("cs3")),
                (Some(text.as_str()), Some(text.as_str()), Some(text.as_str())),
                "{line:?}"
            );
            assert_eq!(header[3], text.replace(['\n', '\r'], " "), "the version field: {line:?}");
        }
    }

    #[test]
    fn escapes_round_trip() {
        let nasty = "/tmp/a b=c\\d|e\nf]g\"h \u{fffd} x=";
        let line = event(&record(nasty), "0.1.0");
        assert!(!line.contains('\n'), "one line: {line}");
        let (header, ext) = parse(&line).expect("parses");
        assert_eq!(header[0], "0");
        assert_eq!(&header[1..4], ["zt-agent", "zt-agent", "0.1.0"]);
        assert_eq!(header[4], "unix_connect");
        assert!(header[5].contains("/tmp/a b=c\\d|e f]g"), "{}", header[5]);
        assert_eq!(header[6], "6");
        let get = |k: &str| ext.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        assert_eq!(get("filePath"), Some(nasty));
        assert_eq!(get("sproc"), Some("a|b"));
        assert_eq!(get("cs3"), Some("r=1"));
        assert_eq!(get("cs6"), Some(nasty));
        assert_eq!((get("cs2Label"), get("cs2")), (Some("spiffeId"), Some("spiffe://t/coder")));
        assert_eq!((get("cn1Label"), get("cn1")), (Some("recordIndex"), Some("3")));
        assert_eq!(get("rt"), Some("1796205600000"));
        assert_eq!(get("dst"), None, "a unix address is not an IP");
    }
}
