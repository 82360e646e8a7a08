//! RFC 5424 syslog messages, and RFC 5425/6587 octet-counted framing.
//!
//! Written here rather than taken from a crate: the crates that format
//! RFC 5424 either bring their own transports and queues (we deliver from
//! the audit log with a cursor over our own rustls stream) or only parse.
//! The format is small; every rule of it is a test below, and the tests
//! parse our output back with an independent parser (`syslog_rfc5424`).
//!
//! # Layout
//! - [`Severity`], [`Facility`]: the PRI.
//! - [`Message`]: the header fields, structured data and body;
//!   [`Message::write`] renders it, applying the RFC's limits:
//!   header fields are PRINTUSASCII (other bytes become `_`) cut to their
//!   maximum length (HOSTNAME 255, APP-NAME 48, PROCID 128, MSGID 32),
//!   empty ones become the NILVALUE `-`; SD names are cut to 32 and lose
//!   `=`, space, `]` and `"`; SD values escape `"`, `\` and `]`; the body is
//!   UTF-8 after a BOM.
//! - [`frame`]: octet counting (`LEN SP MSG`), for TCP and TLS.
use std::io::Write as _;

use crate::host::WallTime;

/// RFC 5424 severities (the lower, the more severe).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Emergency = 0,
    Alert = 1,
    Critical = 2,
    Error = 3,
    Warning = 4,
    Notice = 5,
    Info = 6,
    Debug = 7,
}

impl std::str::FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        use Severity::*;
        Ok(match s {
            "emergency" | "emerg" => Emergency,
            "alert" => Alert,
            "critical" | "crit" => Critical,
            "error" | "err" => Error,
            "warning" | "warn" => Warning,
            "notice" => Notice,
            "info" => Info,
            "debug" => Debug,
            _ => return Err(format!("unknown severity {s:?} (emergency, alert, critical, error, warning, notice, info, debug)")),
        })
    }
}

/// An RFC 5424 facility code (0-23).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facility(u8);

impl Facility {
    /// `auth` (4): security/authorization messages.
    pub const AUTH: Facility = Facility(4);

    const NAMES: [&'static str; 24] = [
        "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv", "ftp", "ntp", "audit", "alert",
        "clock", "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7",
    ];

    pub fn name(self) -> &'static str {
        Self::NAMES[self.0 as usize]
    }
}

impl std::str::FromStr for Facility {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::NAMES
            .iter()
            .position(|n| *n == s)
            .map(|i| Facility(i as u8))
            .ok_or_else(|| format!("unknown facility {s:?} ({})", Self::NAMES.join(", ")))
    }
}

pub const MAX_HOSTNAME: usize = 255;
pub const MAX_APP_NAME: usize = 48;
pub const MAX_PROCID: usize = 128;
pub const MAX_MSGID: usize = 32;
pub const MAX_SD_NAME: usize = 32;
/// The UTF-8 byte order mark that starts an RFC 5424 UTF-8 body.
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One SD-ELEMENT: `[ID name="value" ...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdElement {
    pub id: String,
    pub params: Vec<(&'static str, String)>,
}

#[derive(Debug, Clone)]
pub struct Message<'a> {
    pub facility: Facility,
    pub severity: Severity,
    pub time: WallTime,
    pub hostname: &'a str,
    pub app_name: &'a str,
    pub procid: &'a str,
    pub msgid: &'a str,
    pub structured_data: &'a [SdElement],
    pub body: &'a str,
}

impl Message<'_> {
    /// Renders the message (without framing) onto `out`. At most `max`
    /// bytes: a longer body is cut at a character boundary and the return
    /// value says so (the SD, which names the record, is never cut).
    pub fn write(&self, out: &mut Vec<u8>, max: usize) -> bool {
        let start = out.len();
        let pri = self.facility.0 as u32 * 8 + self.severity as u32;
        write!(out, "<{pri}>1 {} ", self.time).expect("writing to a Vec");
        header_field(out, self.hostname, MAX_HOSTNAME);
        out.push(b' ');
        header_field(out, self.app_name, MAX_APP_NAME);
        out.push(b' ');
        header_field(out, self.procid, MAX_PROCID);
        out.push(b' ');
        header_field(out, self.msgid, MAX_MSGID);
        out.push(b' ');
        if self.structured_data.is_empty() {
            out.push(b'-');
        }
        for e in self.structured_data {
            out.push(b'[');
            sd_name(out, &e.id);
            for (name, value) in &e.params {
                out.push(b' ');
                sd_name(out, name);
                out.extend_from_slice(b"=\"");
                for b in value.bytes() {
                    if matches!(b, b'"' | b'\\' | b']') {
                        out.push(b'\\');
                    }
                    out.push(b);
                }
                out.push(b'"');
            }
            out.push(b']');
        }
        if self.body.is_empty() {
            return false;
        }
        out.push(b' ');
        out.extend_from_slice(BOM);
        let room = max.saturating_sub(out.len() - start);
        let body = cut(self.body, room);
        out.extend_from_slice(body.as_bytes());
        body.len() < self.body.len()
    }
}

/// `s` cut to at most `max` bytes at a character boundary.
pub fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn header_field(out: &mut Vec<u8>, s: &str, max: usize) {
    if s.is_empty() {
        out.push(b'-');
        return;
    }
    out.extend(s.bytes().take(max).map(|b| if (33..=126).contains(&b) { b } else { b'_' }));
}

fn sd_name(out: &mut Vec<u8>, s: &str) {
    let name = s.bytes().filter(|b| (33..=126).contains(b) && !matches!(b, b'=' | b']' | b'"')).take(MAX_SD_NAME);
    let before = out.len();
    out.extend(name);
    if out.len() == before {
        out.push(b'_');
    }
}

/// Octet-counted framing (RFC 5425 section 4.3): `MSG-LEN SP SYSLOG-MSG`.
pub fn frame(message: &[u8], out: &mut Vec<u8>) {
    write!(out, "{} ", message.len()).expect("writing to a Vec");
    out.extend_from_slice(message);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time() -> WallTime {
        WallTime(std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_764_685_659_123_456))
    }

    fn render(m: &Message, max: usize) -> (String, bool) {
        let mut out = Vec::new();
        let cut = m.write(&mut out, max);
        (String::from_utf8(out).unwrap(), cut)
    }

    fn message<'a>(sd: &'a [SdElement], body: &'a str) -> Message<'a> {
        Message {
            facility: Facility::AUTH,
            severity: Severity::Warning,
            time: time(),
            hostname: "node-1",
            app_name: "zt-agent",
            procid: "42",
            msgid: "connect",
            structured_data: sd,
            body,
        }
    }

    #[test]
    fn renders_byte_for_byte() {
        let sd = [SdElement { id: "zt@32473".into(), params: vec![("origin", "zt-agent/node-1".into()), ("index", "7".into())] }];
        let (text, cut) = render(&message(&sd, "{\"a\":1}"), 8192);
        assert_eq!(
            text,
            "<36>1 2025-12-02T14:27:39.123456Z node-1 zt-agent 42 connect [zt@32473 origin=\"zt-agent/node-1\" index=\"7\"] \u{feff}{\"a\":1}"
        );
        assert!(!cut);
        let (text, _) = render(&message(&[], ""), 8192);
        assert_eq!(text, "<36>1 2025-12-02T14:27:39.123456Z node-1 zt-agent 42 connect -");
    }

    #[test]
    fn header_fields_keep_to_the_rfc() {
        let long = "h".repeat(300);
        let mut m = message(&[], "x");
        m.hostname = &long;
        m.app_name = "zt agent\n";
        m.procid = "";
        m.msgid = "ünïcode-and-a-very-long-message-id-beyond-32";
        let (text, _) = render(&m, 8192);
        let fields: Vec<&str> = text.split(' ').collect();
        assert_eq!(fields[2].len(), MAX_HOSTNAME);
        assert_eq!((fields[3], fields[4]), ("zt_agent_", "-"), "spaces and controls are replaced; an empty PROCID is the NILVALUE");
        assert_eq!(fields[5].len(), MAX_MSGID);
        assert!(fields[5].bytes().all(|b| (33..=126).contains(&b)), "{}", fields[5]);
    }

    #[test]
    fn sd_values_are_escaped_and_names_cleaned() {
        let sd = [SdElement { id: "zt@32473".into(), params: vec![("pa th", "a\"b\\c]d=e\nf".into())] }];
        let (text, _) = render(&message(&sd, ""), 8192);
        assert!(text.ends_with(&(r#"[zt@32473 path="a\"b\\c\]d=e"#.to_owned() + "\nf\"]")), "{text}");
    }

    #[test]
    fn a_long_body_is_cut_at_a_character_boundary() {
        let body = "é".repeat(100);
        let (full, _) = render(&message(&[], &body), 100_000);
        let (text, cut) = render(&message(&[], &body), full.len() - 3);
        assert!(cut);
        assert!(text.len() <= full.len() - 3 && text.len() >= full.len() - 4, "{} vs {}", text.len(), full.len());
        assert!(text.ends_with('é'));
    }

    #[test]
    fn an_independent_parser_reads_it_back() {
        let sd = [SdElement { id: "zt@32473".into(), params: vec![("index", "7".into()), ("tricky", "]\"\\".into())] }];
        let (text, _) = render(&message(&sd, "body ] \" \\ \n end"), 8192);
        let parsed = syslog_rfc5424::parse_message(&text).expect("parses");
        assert_eq!(parsed.severity, syslog_rfc5424::SyslogSeverity::SEV_WARNING);
        assert_eq!(parsed.facility, syslog_rfc5424::SyslogFacility::LOG_AUTH);
        assert_eq!(parsed.hostname.as_deref(), Some("node-1"));
        assert_eq!(parsed.msgid.as_deref(), Some("connect"));
        assert_eq!(parsed.sd.find_tuple("zt@32473", "tricky").map(String::as_str), Some("]\"\\"));
        assert_eq!(parsed.msg.trim_start_matches('\u{feff}'), "body ] \" \\ \n end");
    }

    #[test]
    fn octet_counting() {
        let mut out = Vec::new();
        frame("<36>1 - - - - - -".as_bytes(), &mut out);
        assert_eq!(out, b"17 <36>1 - - - - - -");
    }

    #[test]
    fn names_parse() {
        assert_eq!("local3".parse::<Facility>().unwrap().name(), "local3");
        assert!("local9".parse::<Facility>().is_err());
        assert_eq!("warn".parse::<Severity>(), Ok(Severity::Warning));
        assert!(Severity::Error < Severity::Warning, "more severe is lower");
    }
}
