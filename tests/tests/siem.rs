//! Root tests of SIEM delivery against real receivers (rsyslogd started
//! by the test on 127.0.0.1): every audit record arrives, byte-exact, over
//! UDP, TCP and mutual TLS with both of rsyslog's TLS drivers; an outage
//! loses nothing.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use serde_json::Value;
use zt_tests::{siem::*, *};

const TD: &str = "zt.test";

fn deny_all_policy(cg: &TestCgroup) -> String {
    policy(TD, &format!("    - name: siem-agent\n      selectors:\n        - cgroup: {}/**\n", cg.rel))
}

/// The audit records exactly as stored (one line each), by index.
fn log_records(dir: &Path) -> BTreeMap<u64, String> {
    let o = Command::new(agent_bin()).args(["audit", "show", "--json", "--dir"]).arg(dir).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| (serde_json::from_str::<Value>(l).unwrap()["idx"].as_u64().unwrap(), l.to_string()))
        .collect()
}

/// base64 SHA-256 of `0x00 || record`: the RFC 6962 leaf hash.
fn leaf(record: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&[0]);
    ctx.update(record.as_bytes());
    B64.encode(ctx.finish().as_ref())
}

/// Received messages that carry an audit index, by index.
fn by_index(lines: &[String]) -> BTreeMap<u64, Vec<Received>> {
    let mut m: BTreeMap<u64, Vec<Received>> = BTreeMap::new();
    for line in lines {
        let r = Received::parse(line).unwrap_or_else(|| panic!("not an RFC 5424 message: {line:?}"));
        if let Some(i) = r.index() {
            m.entry(i).or_default().push(r);
        }
    }
    m
}

/// Every record of the log arrived once, with its leaf hash, origin and
/// kind; with `json` bodies, the body is the record's payload byte for byte.
fn assert_whole_log(input: &str, lines: &[String], records: &BTreeMap<u64, String>, json: bool) {
    let got = by_index(lines);
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), records.keys().copied().collect::<Vec<_>>(), "{input}: every index");
    for (i, rec) in records {
        let msgs = &got[i];
        assert_eq!(msgs.len(), 1, "{input}: record {i} arrived {} times", msgs.len());
        let m = &msgs[0];
        assert_eq!(m.param("leaf"), Some(leaf(rec).as_str()), "{input}: record {i}'s leaf hash");
        let v: Value = serde_json::from_str(rec).unwrap();
        assert_eq!(m.msgid, v["kind"].as_str().unwrap(), "{input}: msgid of {i}");
        assert_eq!(m.param("origin"), v["origin"].as_str(), "{input}");
        if json {
            assert_eq!(m.body, v["payload"].to_string(), "{input}: body of {i}");
        }
    }
}

/// An agent sending to `urls`, its audit log in `dir` (it outlives the
/// agent: records are checked after the stop); returns the log's directory.
fn start_agent(name: &str, dir: &Path, cg: &TestCgroup, urls: &[String]) -> (Agent, PathBuf) {
    let (audit_dir, key) = (dir.join("audit"), dir.join("audit.key"));
    let mut args = vec!["--audit-dir", audit_dir.to_str().unwrap(), "--audit-key", key.to_str().unwrap()];
    for u in urls {
        args.extend(["--syslog", u.as_str()]);
    }
    (Agent::start(name, &deny_all_policy(cg), &args).unwrap(), audit_dir)
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "needs root: loads eBPF programs and starts rsyslogd"]
fn every_audit_record_reaches_rsyslog_byte_exact_over_udp_tcp_and_mutual_tls() {
    if !require_root("every_audit_record_reaches_rsyslog_byte_exact_over_udp_tcp_and_mutual_tls") {
        return;
    }
    assert!(Rsyslog::available(), "rsyslogd is missing: `cargo xtask setup` installs it");
    let dir = tempdir("siem").unwrap();
    let certs = Certs::new(dir.path()).unwrap();
    let rs = Rsyslog::start(dir.path(), &certs).unwrap();
    let cg = TestCgroup::new(&format!("/{}/agent", unique("siem"))).unwrap();
    let urls = [
        format!("udp://127.0.0.1:{}?name=udp&format=json", rs.udp),
        format!("tcp://127.0.0.1:{}?name=tcp&format=json&telemetry=true", rs.tcp),
        certs.tls_url("localhost", rs.gtls, "name=gtls&format=json"),
        certs.tls_url("127.0.0.1", rs.ossl, "name=ossl&format=ocsf"),
    ];
    let (agent, audit_dir) = start_agent("siem", dir.path(), &cg, &urls);

    // 20 denied UDP connects (distinct destinations: 20 records), and an
    // exec whose argv holds what syslog and JSON must escape.
    let st = cg.command(helper_bin()).args(["udp-connects-spread", "20", "127.0.0.1", "40100"]).status().unwrap();
    assert!(st.success());
    let nasty = "nasty\n]\"\\=|end";
    let _ = cg.command(helper_bin()).args([nasty, "x"]).output().unwrap();
    wait_until("20 denials in the audit log", Duration::from_secs(20), || {
        log_records(&audit_dir).values().filter(|r| r.contains("\"action\":\"denied\"")).count() >= 20
    });
    let status = agent.wait_status("every destination caught up", |s| {
        let size = s["audit"]["records"].as_u64().unwrap_or(0);
        s["siem"].as_array().is_some_and(|d| d.len() == 4 && d.iter().all(|d| d["delivered_below"].as_u64() >= Some(size.min(25))))
    });
    for d in status["siem"].as_array().unwrap() {
        assert_eq!(d["connected"], true, "{d}");
        assert_eq!(d["last_error"], Value::Null, "{d}");
    }
    let events = agent.stop().unwrap();

    // After the stop: every record of the log (the final checkpoint too)
    // reached each TCP and TLS receiver once, byte-exact.
    let records = log_records(&audit_dir);
    for input in ["tcp", "gtls", "ossl"] {
        wait_until(&format!("{input}: the whole log"), Duration::from_secs(10), || by_index(&rs.received(input)).len() == records.len());
        assert_whole_log(input, &rs.received(input), &records, input != "ossl");
        if input == "ossl" {
            for (i, m) in by_index(&rs.received(input)) {
                let v: Value = serde_json::from_str(&records[&i]).unwrap();
                let o: Value = serde_json::from_str(&m[0].body).unwrap_or_else(|e| panic!("ossl: OCSF body of {i}: {e}: {}", m[0].body));
                assert_eq!(o["metadata"]["sequence"].as_u64(), Some(i));
                assert_eq!(o["metadata"]["log_name"], v["origin"]);
            }
        }
    }
    let denials: Vec<u64> = records.iter().filter(|(_, r)| r.contains("\"action\":\"denied\"")).map(|(i, _)| *i).collect();
    assert!(denials.len() >= 20);
    for i in &denials {
        let m = &by_index(&rs.received("tcp"))[i][0];
        assert_eq!(m.pri, 4 * 8 + 4, "auth.warning");
        let o = &by_index(&rs.received("ossl"))[i][0];
        let ocsf: Value = serde_json::from_str(&o.body).unwrap();
        assert_eq!((ocsf["class_uid"].as_u64(), ocsf["action_id"].as_u64()), (Some(2004), Some(2)), "{ocsf}");
        assert_eq!(ocsf["ai_agent"]["uid"], format!("spiffe://{TD}/siem-agent"));
    }
    // UDP: every denial (UDP has no delivery guarantee, but on loopback none is lost).
    let udp = by_index(&rs.received("udp"));
    for i in &denials {
        assert!(udp.contains_key(i), "udp: denial {i} missing");
    }

    // Telemetry (tcp asked for it): the exec with the nasty argv arrived
    // parseable and intact.
    let exec = events.iter().find(|e| e["kind"] == "exec" && e["exec"]["argv"][1] == nasty).expect("the nasty exec event");
    let telemetry: Vec<Value> = rs
        .received("tcp")
        .iter()
        .filter_map(|l| Received::parse(l))
        .filter(|m| m.param("telemetry") == Some("true") && m.msgid == "exec")
        .map(|m| serde_json::from_str(&m.body).unwrap_or_else(|e| panic!("telemetry body: {e}: {}", m.body)))
        .collect();
    assert!(telemetry.iter().any(|t| t["exec"]["argv"] == exec["exec"]["argv"]), "the nasty argv did not arrive intact");
}

/// The receiver goes away, denials happen, it comes back: every record
/// arrives, over every transport; a record arrives twice only if it was
/// sent while the receiver was going away (the replay window).
#[test]
#[ignore = "needs root: loads eBPF programs and starts rsyslogd"]
fn a_receiver_outage_delays_records_and_loses_none() {
    if !require_root("a_receiver_outage_delays_records_and_loses_none") {
        return;
    }
    assert!(Rsyslog::available(), "rsyslogd is missing: `cargo xtask setup` installs it");
    let dir = tempdir("siem-outage").unwrap();
    let certs = Certs::new(dir.path()).unwrap();
    let mut rs = Rsyslog::start(dir.path(), &certs).unwrap();
    let cg = TestCgroup::new(&format!("/{}/agent", unique("siem-outage"))).unwrap();
    let urls = [
        format!("udp://127.0.0.1:{}?name=udp", rs.udp),
        format!("tcp://127.0.0.1:{}?name=tcp", rs.tcp),
        certs.tls_url("localhost", rs.gtls, "name=gtls"),
        certs.tls_url("localhost", rs.ossl, "name=ossl"),
    ];
    let (agent, audit_dir) = start_agent("siem-outage", dir.path(), &cg, &urls);
    let caught_up = |what: &str| {
        agent.wait_status(what, |s| {
            let size = s["audit"]["records"].as_u64().unwrap_or(0);
            s["siem"].as_array().is_some_and(|d| d.iter().all(|d| d["delivered_below"].as_u64() == Some(size) && d["connected"] == true))
        })
    };
    caught_up("delivery before the outage");
    let before = log_records(&audit_dir).len() as u64;

    rs.stop();
    let st = cg.command(helper_bin()).args(["udp-connects-spread", "30", "127.0.0.1", "40200"]).status().unwrap();
    assert!(st.success());
    wait_until("30 denials in the log", Duration::from_secs(20), || {
        log_records(&audit_dir).values().filter(|r| r.contains("\"port\":402")).count() >= 30
    });
    // The destinations notice (an error each) and hold the records back.
    let down = agent.wait_status("every destination noticing the outage", |s| {
        s["siem"].as_array().is_some_and(|d| d.iter().all(|d| d["last_error"].is_string()))
    });
    for d in down["siem"].as_array().unwrap() {
        assert!(d["delivered_below"].as_u64().unwrap() < log_records(&audit_dir).len() as u64, "{d}");
    }
    std::thread::sleep(Duration::from_secs(2));
    rs.restart(&certs).unwrap();
    let up = caught_up("delivery after the outage (the backoff is at most 30 s)");
    let records = log_records(&audit_dir);
    for input in ["udp", "tcp", "gtls", "ossl"] {
        let got = by_index(&rs.received(input));
        let missing: Vec<u64> = records.keys().filter(|i| !got.contains_key(i)).copied().collect();
        assert!(missing.is_empty(), "{input}: records {missing:?} never arrived; status {}", up["siem"]);
        let twice: Vec<u64> = got.iter().filter(|(_, m)| m.len() > 1).map(|(i, _)| *i).collect();
        assert!(twice.iter().all(|i| *i >= before), "{input}: duplicates {twice:?} outside the outage window (from {before})");
    }
    for d in up["siem"].as_array().unwrap() {
        assert!(d["reconnects"].as_u64() >= Some(1), "{d}");
    }
    agent.stop().unwrap();
}

/// Each way a TLS destination can be wrong is a clear error of that
/// destination, nothing counts as delivered, and nothing goes out in
/// plaintext; the others are unaffected.
#[test]
#[ignore = "needs root: loads eBPF programs and starts rsyslogd"]
fn a_misconfigured_tls_destination_says_why_and_sends_nothing() {
    if !require_root("a_misconfigured_tls_destination_says_why_and_sends_nothing") {
        return;
    }
    assert!(Rsyslog::available(), "rsyslogd is missing: `cargo xtask setup` installs it");
    let dir = tempdir("siem-bad").unwrap();
    let certs = Certs::new(dir.path()).unwrap();
    let rs = Rsyslog::start(dir.path(), &certs).unwrap();
    let (expired_cert, expired_key) = certs.expired_server();
    let expired_out = dir.path().join("expired-received");
    let expired = TlsServer::start(&expired_cert, &expired_key, &expired_out).unwrap();
    let cg = TestCgroup::new(&format!("/{}/agent", unique("siem-bad"))).unwrap();
    let (ca, (cert, key)) = (certs.ca(), certs.client());
    let client = format!("&cert={}&key={}", cert.display(), key.display());
    // (name, url, what the error must say)
    let bad = [
        ("wrong_ca", format!("tls://localhost:{}?name=wrong_ca&ca={}{client}", rs.gtls, certs.other_ca().display()), "UnknownIssuer"),
        (
            "wrong_name",
            format!("tls://127.0.0.1:{}?name=wrong_name&server_name=siem.example&ca={}{client}", rs.gtls, ca.display()),
            "not valid for name",
        ),
        ("expired", format!("tls://localhost:{}?name=expired&ca={}{client}", expired.port, ca.display()), "Expired"),
        ("no_cert_ossl", format!("tls://localhost:{}?name=no_cert_ossl&ca={}", rs.ossl, ca.display()), "CertificateRequired"),
        ("no_cert_gtls", format!("tls://localhost:{}?name=no_cert_gtls&ca={}", rs.gtls, ca.display()), "refuse our client certificate"),
        (
            "plain_receiver",
            format!("tls://localhost:{}?name=plain_receiver&ca={}{client}", rs.tcp, ca.display()),
            "no answer to the TLS handshake",
        ),
    ];
    let mut urls = vec![certs.tls_url("localhost", rs.ossl, "name=good")];
    urls.extend(bad.iter().map(|(_, u, _)| u.clone()));
    let (agent, audit_dir) = start_agent("siem-bad", dir.path(), &cg, &urls);
    let st = cg.command(helper_bin()).args(["udp-connects-spread", "5", "127.0.0.1", "40300"]).status().unwrap();
    assert!(st.success());
    let status = agent.wait_status("an error on every bad destination and the good one caught up", |s| {
        let size = s["audit"]["records"].as_u64().unwrap_or(0);
        let d = s["siem"].as_array().cloned().unwrap_or_default();
        let good_done = d.iter().any(|d| d["name"] == "good" && d["delivered_below"].as_u64() == Some(size) && size > 5);
        good_done && d.iter().filter(|d| d["name"] != "good").all(|d| d["last_error"].is_string())
    });
    for (name, _, _) in &bad {
        let d = status["siem"].as_array().unwrap().iter().find(|d| d["name"] == *name).unwrap();
        eprintln!("{name}: {}", d["last_error"]);
    }
    for (name, _, why) in &bad {
        let d = status["siem"].as_array().unwrap().iter().find(|d| d["name"] == *name).unwrap();
        let err = d["last_error"].as_str().unwrap();
        assert!(err.contains(why), "{name}: {err:?} does not say {why:?}");
        assert_eq!((d["connected"].as_bool(), d["delivered_below"].as_u64()), (Some(false), Some(0)), "{name}: {d}");
    }
    agent.stop().unwrap();
    // Nothing readable reached the receivers of the bad destinations.
    let log = log_records(&audit_dir);
    let denial = log.values().find(|r| r.contains("\"action\":\"denied\"")).unwrap();
    let origin = serde_json::from_str::<Value>(denial).unwrap()["origin"].as_str().unwrap().to_string();
    for (what, text) in [
        ("the plaintext port", rs.received("tcp").join("\n")),
        ("the gtls port", rs.received("gtls").join("\n")),
        ("the expired receiver", String::from_utf8_lossy(&std::fs::read(&expired_out).unwrap_or_default()).into_owned()),
    ] {
        assert!(!text.contains(&origin) && !text.contains("denied"), "{what} received a record: {text}");
    }
    assert!(by_index(&rs.received("ossl")).len() >= log.len() - 1, "the good destination delivered the log");
}

/// The same over syslog-ng (TCP and mutual TLS): every record once,
/// byte-exact, its leaf hash checked.
#[test]
#[ignore = "needs root: loads eBPF programs and starts syslog-ng"]
fn every_audit_record_reaches_syslog_ng_over_tcp_and_mutual_tls() {
    if !require_root("every_audit_record_reaches_syslog_ng_over_tcp_and_mutual_tls") {
        return;
    }
    assert!(SyslogNg::available(), "syslog-ng is missing: `cargo xtask setup` unpacks it under target/syslog-ng");
    let dir = tempdir("siem-ng").unwrap();
    let certs = Certs::new(dir.path()).unwrap();
    let ng = SyslogNg::start(dir.path(), &certs).unwrap();
    let cg = TestCgroup::new(&format!("/{}/agent", unique("siem-ng"))).unwrap();
    let urls = [format!("tcp://127.0.0.1:{}?name=tcp&format=json", ng.tcp), certs.tls_url("localhost", ng.tls, "name=tls&format=json")];
    let (agent, audit_dir) = start_agent("siem-ng", dir.path(), &cg, &urls);
    let st = cg.command(helper_bin()).args(["udp-connects-spread", "10", "127.0.0.1", "40400"]).status().unwrap();
    assert!(st.success());
    wait_until("10 denials in the audit log", Duration::from_secs(20), || {
        log_records(&audit_dir).values().filter(|r| r.contains("\"action\":\"denied\"")).count() >= 10
    });
    agent.stop().unwrap();
    let records = log_records(&audit_dir);
    for source in ["tcp", "tls"] {
        wait_until(&format!("syslog-ng {source}: the whole log"), Duration::from_secs(10), || {
            by_index(&ng.received(source)).len() == records.len()
        });
        assert_whole_log(&format!("syslog-ng {source}"), &ng.received(source), &records, true);
    }
}
