//! SIEM messages must carry any text intact: CEF values read back exactly
//! (header fields with line breaks as spaces), and an RFC 5424 message
//! never exceeds its limit nor panics, whatever the record holds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zt_agent::siem::{
    cef,
    record::{Place, Record},
    rfc5424::{Facility, Message, SdElement, Severity},
};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    let r = Record {
        place: Some(Place { origin: text.clone(), index: data.len() as u64, leaf: "bGVhZg==".into() }),
        kind: "unix_connect".into(),
        time: "2026-12-02T10:00:00Z".into(),
        payload: serde_json::json!({
            "process": {"pid": 1, "comm": text, "exe": text},
            "identity": {"name": text, "spiffe_id": text},
            "unix_connect": {"address": text, "action": "denied", "rule": text}
        }),
    };
    let line = cef::event(&r, &text);
    assert!(!line.contains(['\n', '\r']));
    let (header, ext) = cef::parse(&line).expect("our CEF parses");
    assert_eq!(header[3], text.replace(['\n', '\r'], " "));
    let get = |k: &str| ext.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    assert_eq!(get("filePath"), Some(text.as_str()));
    assert_eq!(get("cs1"), Some(text.as_str()));

    let sd = [SdElement { id: text.clone(), params: vec![("origin", text.clone())] }];
    let m = Message {
        facility: Facility::AUTH,
        severity: Severity::Warning,
        time: zt_agent::host::wall_time(0),
        hostname: &text,
        app_name: &text,
        procid: &text,
        msgid: &text,
        structured_data: &sd,
        body: &text,
    };
    // Only the body is cut: the limit holds unless header and SD alone exceed it.
    let mut head = Vec::new();
    Message { body: "", ..m.clone() }.write(&mut head, usize::MAX);
    let mut out = Vec::new();
    m.write(&mut out, 2048);
    assert!(out.len() <= 2048.max(head.len() + 4), "over the limit: {} (head {})", out.len(), head.len());
});
