//! Tests of the policy language, compilation (byte for byte), explain, diff
//! and lint. Every shipped policy is parsed and compiled here too.
use super::{compile::*, model::*, *};

fn bundle(files: &[(&str, &str)]) -> Bundle {
    Bundle { files: files.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect() }
}

fn parse1(text: &str) -> Result<Policy, PolicyErrors> {
    bundle(&[("p.yaml", text)]).parse()
}

fn errs(text: &str) -> String {
    parse1(text).unwrap_err().to_string()
}

const HEAD: &str = "apiVersion: zt-agent.io/v1alpha1\nkind: HostPolicy\nmetadata:\n  name: t\nspec:\n  trustDomain: zt.test\n";

const CODER: &str = "\
apiVersion: zt-agent.io/v1alpha1
kind: HostPolicy
metadata:
  name: coder
spec:
  trustDomain: zt.test
  identities:
    - name: coder
      selectors:
        - cgroup: /agents/coder/**
        - exe: /usr/bin/agent
          uid: 1000
      defaultAction: deny
    - name: analyst
      mode: audit
      selectors:
        - descendantOf:
            exe: /usr/bin/runner
  rules:
    - name: model-api
      identity: coder
      action: allow
      egress:
        - to: [10.0.0.0/8, \"2001:db8::/32\"]
          ports: [443, \"8000-8080\"]
          protocol: tcp
    - name: no-ssh
      identity: coder
      action: deny
      egress:
        - to: [10.1.0.0/16]
          ports: [22]
    - name: datasets
      identity: coder
      action: allow
      files:
        - paths: [/data/, /etc/hosts]
          access: [read]
      exec:
        - paths: [/usr/bin/git]
    - name: analyst-dns
      identity: analyst
      action: deny
      egress:
        - to: [192.0.2.53]
          ports: [53]
          protocol: udp
";

#[test]
fn parses_identities_rules_defaults_and_modes() {
    let p = parse1(CODER).unwrap();
    assert_eq!(p.trust_domain, "zt.test");
    assert_eq!(p.identities.len(), 2);
    let coder = p.identity("coder").unwrap();
    assert_eq!(coder.spiffe_id, "spiffe://zt.test/coder");
    assert_eq!(coder.defaults, Defaults { egress: Action::Deny, files: Action::Deny, exec: Action::Deny });
    let analyst = p.identity("analyst").unwrap();
    assert_eq!(analyst.mode, Mode::Audit);
    assert_eq!(analyst.defaults, Defaults::default());
    assert_eq!(p.rules.len(), 4);
    assert_eq!(p.rules[0].egress[0].ports, vec![(443, 443), (8000, 8080)]);
    assert_eq!(p.rules[0].egress[0].proto, Proto::Tcp);
    assert_eq!(p.rules[0].pos.to_string(), "p.yaml:21:17");
    assert_eq!(p.rules[2].files[0].access, access::READ);
    assert_eq!(p.rules[2].exec[0].paths, vec!["/usr/bin/git"]);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
}

#[test]
fn composes_files_and_reports_conflicts() {
    let ids = format!("{HEAD}  identities:\n    - name: a\n      selectors:\n        - uid: 1\n");
    let rules = "apiVersion: zt-agent.io/v1alpha1\nkind: HostPolicy\nspec:\n  rules:\n    - identity: a\n      action: allow\n      egress:\n        - to: [10.0.0.0/8]\n";
    let p = bundle(&[("ids.yaml", &ids), ("rules.yaml", rules)]).parse().unwrap();
    assert_eq!(p.rules[0].name, "a/0");
    assert_eq!(&*p.rules[0].pos.file, "rules.yaml");

    let other_td = rules.replace("spec:\n", "spec:\n  trustDomain: other.test\n");
    let e = bundle(&[("ids.yaml", &ids), ("rules.yaml", &other_td)]).parse().unwrap_err().to_string();
    assert_eq!(
        e,
        "rules.yaml:4:16: conflicting trustDomain \"other.test\": ids.yaml:6:16 says \"zt.test\" (hint: every file of a bundle must name the same trust domain (or none))"
    );
    let e = bundle(&[("ids.yaml", &ids), ("more.yaml", &ids)]).parse().unwrap_err().to_string();
    assert_eq!(e, "more.yaml:8:13: duplicate identity name \"a\" (first defined at ids.yaml:8:13)");
}

/// Names that pass the name rules but make an invalid SPIFFE ID (SPIFFE-ID
/// §2.2: no empty, `.` or `..` path segments) are refused at the name, also
/// when the trust domain comes from a later file; valid paths pass.
#[test]
fn derived_spiffe_ids_are_validated() {
    let ident = |name: &str| format!("  identities:\n    - name: {name}\n      selectors:\n        - uid: 1\n");
    let e = errs(&format!("{HEAD}{}", ident("\"..\"")));
    assert_eq!(
        e,
        "p.yaml:8:13: identity name \"..\" gives the invalid SPIFFE ID \"spiffe://zt.test/..\": path segments must be non-empty and not '.' or '..' (hint: rename the identity, or set `spiffeId` explicitly)"
    );
    assert!(errs(&format!("{HEAD}{}", ident("a//b"))).contains("invalid SPIFFE ID \"spiffe://zt.test/a//b\""));
    assert!(errs(&format!("{HEAD}{}", ident("a/"))).contains("invalid SPIFFE ID"));
    // Trust domain in a later file: checked once it is known, at the name.
    let no_td = format!("apiVersion: zt-agent.io/v1alpha1\nkind: HostPolicy\nspec:\n{}", ident("x/./y"));
    let e = bundle(&[("ids.yaml", &no_td), ("td.yaml", HEAD)]).parse().unwrap_err().to_string();
    assert!(e.starts_with("ids.yaml:5:13: identity name \"x/./y\" gives the invalid SPIFFE ID \"spiffe://zt.test/x/./y\""), "{e}");
    let p = parse1(&format!("{HEAD}{}", ident("team/coder.v2"))).unwrap();
    assert_eq!(p.identities[0].spiffe_id, "spiffe://zt.test/team/coder.v2");
}

#[test]
fn every_error_is_reported_with_position() {
    let text = format!(
        "{HEAD}  identities:\n    - name: a\n      selectors:\n        - uid: 1\n  rules:\n    - identity: b\n      action: permit\n      egress:\n        - to: [10.0.0.1/8, 300.1.1.1]\n          ports: [70000, \"90-80\"]\n          protocol: icmp\n"
    );
    let e = errs(&text);
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(
        lines,
        [
            "p.yaml:12:17: rule for unknown identity \"b\" (hint: known identities: a)",
            "p.yaml:13:15: invalid action \"permit\" (hint: use \"allow\" or \"deny\")",
            "p.yaml:15:16: invalid destination \"10.0.0.1/8\": host bits set (did you mean 10.0.0.0/8?) (hint: a CIDR like 10.0.0.0/8 or 2001:db8::/32, a single address, or unix:/path)",
            "p.yaml:15:28: invalid destination \"300.1.1.1\": invalid IP address syntax (hint: a CIDR like 10.0.0.0/8 or 2001:db8::/32, a single address, or unix:/path)",
            "p.yaml:16:19: port 70000 out of range 1-65535 (hint: a port (443) or an inclusive range (\"8000-8080\"))",
            "p.yaml:16:26: port range \"90-80\" is empty (start > end) (hint: a port (443) or an inclusive range (\"8000-8080\"))",
            "p.yaml:17:21: invalid protocol \"icmp\" (hint: use tcp, udp or any)",
        ]
    );
}

#[test]
fn syntax_and_shape_errors() {
    let e = errs("apiVersion: [\n");
    assert!(e.starts_with("p.yaml:"), "{e}");
    let e = errs(&format!("{HEAD}  identities:\n    - name: a\n      selectors:\n        - exec: /bin/sh\n"));
    assert!(e.starts_with("p.yaml:10:"), "{e}");
    assert!(e.contains("exec"), "{e}");
    assert_eq!(
        errs(&format!("{HEAD}  identities:\n    - name: a\n      selectors: []\n")),
        "p.yaml:9:18: identity \"a\" has no selectors (hint: add at least one of cgroup, exe, exeDigest, uid, descendantOf)"
    );
    assert_eq!(errs(&CODER.replace("kind: HostPolicy", "kind: Pod")), "p.yaml:2:7: unsupported kind \"Pod\" (hint: use \"HostPolicy\")");
    assert_eq!(
        errs(&CODER.replace("uid: 1000", "exeDigest: sha256:00")),
        "p.yaml:12:22: invalid exeDigest \"sha256:00\" (hint: write \"blake3:<64 hex digits>\" (`b3sum FILE`))"
    );
    assert_eq!(
        errs(&CODER.replace("        - to: [192.0.2.53]", "        - dns: [api.example.com]")),
        "p.yaml:45:16: egress by DNS name is not supported yet (hint: list the destination CIDRs under `to`; DNS-bound rules come with a later version)"
    );
    let e = errs(&format!(
        "{HEAD}  identities:\n    - name: a\n      selectors:\n        - uid: 1\n  rules:\n    - identity: a\n      action: allow\n      when:\n        timeWindow: {{days: [mon-fri], start: \"25:00\", end: \"18:00\"}}\n        rego: 'input.x == '\n      egress:\n        - to: [10.0.0.0/8]\n"
    ));
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines[0], "p.yaml:15:46: invalid time \"25:00\" (hint: HH:MM, UTC)");
    // At the end of the incomplete expression, inside the quoted value.
    assert_eq!(lines[1], "p.yaml:16:26: invalid Rego condition: expecting expression");
}

#[test]
fn lint_warnings() {
    let text = format!(
        "{HEAD}  identities:\n    - name: a\n      selectors:\n        - uid: 1\n    - name: b\n      selectors:\n        - uid: 1\n  rules:\n    - name: all\n      identity: a\n      action: allow\n      egress:\n        - to: [0.0.0.0/0]\n    - name: web\n      identity: a\n      action: allow\n      egress:\n        - to: [10.0.0.0/8]\n          ports: [443]\n    - name: block\n      identity: a\n      action: deny\n      egress:\n        - to: [10.0.0.0/8]\n"
    );
    let p = parse1(&text).unwrap();
    let w: Vec<String> = p.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        w,
        [
            "p.yaml:19:11: rule \"all\" allows identity \"a\" to reach every destination (hint: zero trust: list the networks this identity needs)",
            "p.yaml:24:11: this egress of allow rule \"web\" can never apply: deny rule \"block\" covers it (deny wins)",
            "p.yaml:11:13: no selector of identity \"b\" can match (hint: every selector repeats one of an earlier identity (the first match wins))",
        ]
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The exact bytes the kernel gets for a small policy.
#[test]
fn compiles_byte_for_byte() {
    let text = format!(
        "{HEAD}  identities:\n    - name: a\n      selectors:\n        - uid: 1\n  rules:\n    - name: web\n      identity: a\n      action: allow\n      egress:\n        - to: [10.0.0.0/8]\n          ports: [443]\n          protocol: tcp\n    - name: nossh\n      identity: a\n      action: deny\n      mode: audit\n      egress:\n        - to: [10.1.0.0/16]\n          ports: [22]\n"
    );
    let p = parse1(&text).unwrap();
    let ids = IdRegistry::for_policy(&p).unwrap();
    let c = compile(&p, &ids, 1, &[true, true]).unwrap();
    assert_eq!(c.identities.len(), 1);
    let (k, v) = &c.identities[0];
    // slot 1, identity 1 | egress deny, files allow, exec allow, enforce,
    // sockets tcp|udp|unix|netlink (0x0f), defined.
    assert_eq!(hex(&bytes_of(k)), "0100000001000000");
    assert_eq!(hex(&bytes_of(v)), "010000000f00000001000000");
    assert_eq!(c.net.len(), 2);
    // 10.0.0.0/8 -> prefix 64 + 96 + 8; key: slot, identity, ::ffff:10.0.0.0.
    let (len, key, list) = &c.net[0];
    assert_eq!(*len, 168);
    assert_eq!(hex(&bytes_of(key)), "010000000100000000000000000000000000ffff0a000000");
    // One rule: ports 443-443, tcp, allow, enforce, rule 0.
    assert_eq!(hex(&bytes_of(list)[..20]), "0100000000000000bb01bb010600000000000000");
    // 10.1.0.0/16 holds its own rule and the covering /8's.
    let (len, key, list) = &c.net[1];
    assert_eq!(*len, 176);
    assert_eq!(hex(&bytes_of(key)), "010000000100000000000000000000000000ffff0a010000");
    assert_eq!(hex(&bytes_of(list)[..32]), concat!("0200000000000000", "bb01bb010600000000000000", "160016000001010001000000"));
    assert!(bytes_of(list)[32..].iter().all(|b| *b == 0), "unused rule slots are zero");
}

/// Quarantine: the identity's egress compiles to no destination and a
/// deny default, enforced even in audit mode; another identity is untouched.
#[test]
fn a_quarantined_identity_compiles_to_deny_all_egress() {
    let text = format!(
        "{HEAD}  identities:\n    - name: a\n      mode: audit\n      defaultAction: allow\n      selectors:\n        - uid: 1\n    - name: b\n      selectors:\n        - uid: 2\n  rules:\n    - name: web\n      identity: a\n      action: allow\n      egress:\n        - to: [10.0.0.0/8]\n    - name: webb\n      identity: b\n      action: allow\n      egress:\n        - to: [10.0.0.0/8]\n"
    );
    let mut p = parse1(&text).unwrap();
    let ids = IdRegistry::for_policy(&p).unwrap();
    let before = compile(&p, &ids, 0, &[true, true]).unwrap();
    super::quarantine(&mut p, &["a".to_string(), "gone".to_string()].into());
    let after = compile(&p, &ids, 0, &[true, true]).unwrap();
    let policy_of = |c: &Compiled, id: u32| c.identities.iter().find(|(k, _)| k.identity == id).unwrap().1;
    let (a, b) = (ids.get("a").unwrap(), ids.get("b").unwrap());
    assert_eq!(policy_of(&before, a).default_egress, zt_common::policy::ALLOW);
    assert_eq!(policy_of(&after, a).default_egress, zt_common::policy::DENY);
    assert_eq!(policy_of(&after, a).mode, zt_common::policy::ENFORCE);
    assert!(after.net.iter().all(|(_, k, _)| k.identity != a), "no destination of a is left");
    assert_eq!(after.net.iter().filter(|(_, k, _)| k.identity == b).count(), 1);
    assert_eq!(hex(&bytes_of(&policy_of(&after, b))), hex(&bytes_of(&policy_of(&before, b))));
}

#[test]
fn covering_prefixes_and_capacity() {
    let mut text = format!("{HEAD}  identities:\n    - name: a\n      selectors:\n        - uid: 1\n  rules:\n");
    for i in 0..17 {
        text.push_str(&format!(
            "    - name: r{i}\n      identity: a\n      action: allow\n      egress:\n        - to: [10.0.0.0/8]\n          ports: [{}]\n",
            1000 + i
        ));
    }
    let p = parse1(&text).unwrap();
    let ids = IdRegistry::for_policy(&p).unwrap();
    let e = compile(&p, &ids, 0, &[true; 17]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "p.yaml:109:17: identity \"a\": destination 10.0.0.0/8 has 17 applicable egress rules (its own and its covering prefixes'), capacity 16; this rule is the first beyond it"
    );
    // A rule made inactive by its condition is not compiled.
    let mut active = vec![true; 17];
    active[3] = false;
    let c = compile(&p, &ids, 0, &active).unwrap();
    assert_eq!(c.net[0].2.count, 16);
    assert!(c.net[0].2.rules.iter().all(|r| r.rule != 3));
}

#[test]
fn explain_uses_the_kernel_decision() {
    let p = parse1(CODER).unwrap();
    let all = vec![true; p.rules.len()];
    let fs = FakeFs(&[("/data/", 1), ("/data", 1), ("/data/x.csv", 2), ("/etc/hosts", 3), ("/etc/hosts2", 4), ("/usr/bin/git", 5)]);
    let ex = |who: &str, q: Query| explain(&p, who, &q, &all, &fs).unwrap();
    let c = |s: &str| Query::parse_connect(s).unwrap();
    let e = ex("coder", c("10.2.3.4:443/tcp"));
    assert_eq!((e.decision.as_str(), e.rule.as_ref().unwrap().name.as_str()), ("allow", "model-api"));
    assert_eq!(e.reason, "rule \"model-api\" (p.yaml:21:17)");
    assert_eq!(ex("coder", c("10.2.3.4:443/udp")).decision, "deny");
    assert_eq!(ex("coder", c("10.1.3.4:22/tcp")).rule.unwrap().name, "no-ssh");
    assert_eq!(ex("coder", c("10.1.3.4:8080/tcp")).rule.unwrap().name, "model-api");
    assert_eq!(ex("coder", c("[2001:db8::7]:8000/tcp")).decision, "allow");
    // IPv4-mapped IPv6 is IPv4.
    assert_eq!(ex("coder", c("[::ffff:10.2.3.4]:443/tcp")).decision, "allow");
    let d = ex("coder", c("8.8.8.8:53/udp"));
    assert_eq!((d.decision.as_str(), d.verdict_action), ("deny", "EPERM"));
    assert!(d.reason.starts_with("default action of identity \"coder\""));
    // Audit identity: would deny, allowed.
    let a = ex("analyst", c("192.0.2.53:53/udp"));
    assert_eq!((a.decision.as_str(), a.verdict_action), ("allow (audit: would deny)", "allowed"));
    // Files and exec.
    assert_eq!(ex("coder", Query::Open { path: "/data/x.csv".into(), write: false }).decision, "allow");
    assert_eq!(ex("coder", Query::Open { path: "/data/x.csv".into(), write: true }).decision, "deny");
    assert_eq!(ex("coder", Query::Open { path: "/etc/hosts2".into(), write: false }).decision, "deny");
    assert_eq!(ex("coder", Query::Exec { path: "/usr/bin/git".into() }).decision, "allow");
    assert_eq!(ex("coder", Query::Exec { path: "/usr/bin/curl".into() }).decision, "deny");
    assert_eq!(ex("analyst", Query::Exec { path: "/usr/bin/curl".into() }).decision, "allow");
    assert!(explain(&p, "nobody", &c("1.2.3.4:1"), &all, &fs).unwrap_err().to_string().starts_with("unknown identity \"nobody\""));
}

/// A rule path is looked up again: a file created, replaced by a new
/// inode, or removed since the policy was compiled is seen (and the
/// manager then compiles the policy again).
#[test]
fn a_rule_path_that_names_another_object_now_is_seen() {
    use super::objects::{Resolution, changed, resolve};
    let p = parse1(CODER).unwrap();
    let ids = IdRegistry::for_policy(&p).unwrap();
    let mut c = compile(&p, &ids, 0, &vec![true; p.rules.len()]).unwrap();
    let fs = FakeFs(&[("/data/", 1), ("/data", 1), ("/usr/bin/git", 5)]);
    resolve(&mut c, &p, &fs).unwrap();
    assert_eq!(c.resolution.get("/etc/hosts"), Some(&None), "{:?}", c.resolution);
    assert_eq!(c.resolution.get("/usr/bin/git"), Some(&Some((1, 5))));
    assert_eq!(changed(&c.resolution, &fs), None, "nothing changed");
    let created = FakeFs(&[("/data/", 1), ("/data", 1), ("/etc/hosts", 3), ("/usr/bin/git", 5)]);
    assert_eq!(changed(&c.resolution, &created), Some(("/etc/hosts".into(), None, Some((1, 3)))));

    let then: Resolution = [("/a".to_string(), Some((1, 5))), ("/b".to_string(), None)].into();
    assert_eq!(changed(&then, &FakeFs(&[("/a", 5)])), None);
    assert_eq!(changed(&then, &FakeFs(&[("/a", 6)])), Some(("/a".into(), Some((1, 5)), Some((1, 6)))), "replaced");
    assert_eq!(changed(&then, &FakeFs(&[])), Some(("/a".into(), Some((1, 5)), None)), "removed");
}

#[test]
fn diff_rules_and_entries() {
    let old = parse1(CODER).unwrap();
    let new = parse1(&CODER.replace("ports: [22]", "ports: [22, 23]").replace("name: analyst-dns", "name: analyst-dns2")).unwrap();
    let d = diff(&old, &new).unwrap();
    assert!(d.iter().any(|l| l.starts_with("~ rule no-ssh")), "{d:#?}");
    assert!(d.iter().any(|l| l.starts_with("- rule analyst-dns (")), "{d:#?}");
    assert!(d.iter().any(|l| l.starts_with("+ rule analyst-dns2 (")), "{d:#?}");
    assert!(
        d.iter().any(|l| l == "~ NET_RULES coder 10.1.0.0/16: allow tcp 443-443 rule=model-api; allow tcp 8000-8080 rule=model-api; deny any 22-22 rule=no-ssh -> allow tcp 443-443 rule=model-api; allow tcp 8000-8080 rule=model-api; deny any 22-22 rule=no-ssh; deny any 23-23 rule=no-ssh"),
        "{d:#?}"
    );
    assert!(diff(&old, &old).unwrap().is_empty());
}

/// Every file in policies/ parses and compiles.
#[test]
fn shipped_policies_parse_and_compile() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|x| x != "yaml") {
            continue;
        }
        let p = Bundle::read(&[&path]).unwrap().parse().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let ids = IdRegistry::for_policy(&p).unwrap();
        compile(&p, &ids, 0, &vec![true; p.rules.len()]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        n += 1;
    }
    assert!(n >= 5, "expected the shipped policies, found {n}");
    Bundle::embedded_default().parse().unwrap();
}

/// Negative fixtures: each file fails with exactly the messages in its
/// `.expected` twin.
#[test]
fn negative_fixtures() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/bad-policies");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|x| x != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let got = bundle(&[(&name, &text)]).parse().map(|_| "valid".to_string()).unwrap_or_else(|e| e.to_string());
        let want = std::fs::read_to_string(path.with_extension("expected")).unwrap();
        assert_eq!(got.trim(), want.trim(), "{name}");
        n += 1;
    }
    assert!(n >= 3);
}

/// No input makes the parser panic: random mutations of valid policies.
#[test]
fn parser_never_panics_on_mutations() {
    let seeds = [CODER, super::DEFAULT_POLICY];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rand = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet = b" \n:-[]{}\"'#&*!|>%@`,./0123456789abcdefxyz\t\\";
    for i in 0..3000 {
        let mut b = seeds[i % seeds.len()].as_bytes().to_vec();
        for _ in 0..(1 + rand() % 8) {
            let pos = (rand() as usize) % (b.len() + 1);
            match rand() % 3 {
                0 if pos < b.len() => {
                    b.remove(pos);
                }
                1 => b.insert(pos.min(b.len()), alphabet[(rand() as usize) % alphabet.len()]),
                _ if pos < b.len() => b[pos] = alphabet[(rand() as usize) % alphabet.len()],
                _ => {}
            }
        }
        let text = String::from_utf8_lossy(&b).into_owned();
        if let Ok(p) = parse1(&text)
            && let Ok(ids) = IdRegistry::for_policy(&p)
        {
            let _ = compile(&p, &ids, 0, &vec![true; p.rules.len()]);
        }
    }
}

/// Only regular files are read, decided before opening (a FIFO would block
/// the agent forever, /dev/zero would grow it without bound), and the size
/// read is capped; each error names the file and the rule or limit.
#[test]
fn policy_paths_are_regular_files_of_bounded_size() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.yaml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let started = std::time::Instant::now();
    let e = Bundle::read(&[&fifo]).unwrap_err().to_string();
    assert_eq!(e, format!("{}: cannot read: a FIFO; policy files must be regular files", fifo.display()));
    let e = Bundle::read(&[std::path::Path::new("/dev/zero")]).unwrap_err().to_string();
    assert_eq!(e, "/dev/zero: cannot read: a character device; policy files must be regular files");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "reading took {:?}", started.elapsed());

    let big = dir.path().join("big.yaml");
    std::fs::File::create(&big).unwrap().set_len(MAX_FILE_BYTES + 1).unwrap();
    let e = Bundle::read(&[&big]).unwrap_err().to_string();
    assert!(e.ends_with("larger than the 4 MiB limit for one policy file"), "{e}");
    let just = dir.path().join("just.yaml");
    std::fs::write(&just, "#".repeat(MAX_FILE_BYTES as usize)).unwrap();
    assert!(Bundle::read(&[&just]).is_ok(), "exactly the limit is accepted");
    let many: Vec<_> = (0..5).map(|_| just.clone()).collect();
    let Err(e) = Bundle::read(&many) else { panic!("a 20 MiB bundle was accepted") };
    let e = e.to_string();
    assert!(e.ends_with("the bundle's files together exceed the 16 MiB limit"), "{e}");
}

/// Nothing silently widens or disables a rule: an empty port list, a window
/// that is never open, port 0 and leading-zero octets are errors; a quoted
/// single port is a port like an unquoted one.
#[test]
fn no_silent_widening() {
    let rule = |egress: &str| {
        format!(
            "{HEAD}  identities:\n    - name: a\n      selectors:\n        - uid: 1\n  rules:\n    - identity: a\n      action: deny\n{egress}"
        )
    };
    let e = errs(&rule("      egress:\n        - to: [10.0.0.0/8]\n          ports: []\n"));
    assert_eq!(e, "p.yaml:16:18: empty `ports` list (hint: omit `ports` to mean every port)");
    let e = errs(&rule("      egress:\n        - to: [10.0.0.0/8]\n          ports: [0]\n"));
    assert!(e.ends_with("port 0 is not a destination port (hint: a port (443) or an inclusive range (\"8000-8080\"))"), "{e}");
    let p = parse1(&rule("      egress:\n        - to: [10.0.0.0/8]\n          ports: [\"443\", \"80-80\"]\n")).unwrap();
    assert_eq!(p.rules[0].egress[0].ports, [(443, 443), (80, 80)]);
    for net in ["010.0.0.0/8", "010.0.0.1", "::ffff:10.01.0.1"] {
        let e = errs(&rule(&format!("      egress:\n        - to: [\"{net}\"]\n")));
        assert!(e.contains("leading zeros") && e.contains("are ambiguous"), "{net}: {e}");
    }
    let e =
        errs(&rule("      when:\n        timeWindow: { start: \"00:00\", end: \"00:00\" }\n      egress:\n        - to: [10.0.0.0/8]\n"));
    assert!(e.contains("timeWindow starts and ends at 00:00: it would never be active"), "{e}");
}

/// A directory is read like its files named one by one: broken and looping
/// symlinks and other non-files are errors that name the entry, `*.YAML`
/// counts, hidden entries do not, and an empty directory names itself.
#[test]
fn policy_directories_are_read_consistently() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let e = Bundle::read(&[d]).unwrap_err().to_string();
    assert_eq!(e, format!("{}: no policy files in this directory (*.yaml or *.yml)", d.display()));
    std::fs::write(d.join("A.YAML"), CODER).unwrap();
    std::fs::write(d.join(".hidden.yaml"), "not: [yaml").unwrap();
    let b = Bundle::read(&[d]).unwrap();
    assert_eq!(b.files.len(), 1, "{:?}", b.files.iter().map(|f| &f.0).collect::<Vec<_>>());
    std::os::unix::fs::symlink(d.join("missing.yaml"), d.join("broken.yaml")).unwrap();
    std::os::unix::fs::symlink(d.join("loop.yaml"), d.join("loop.yaml")).unwrap();
    let e = Bundle::read(&[d]).unwrap_err().to_string();
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines.len(), 2, "{e}");
    assert!(lines[0].starts_with(&format!("{}: cannot read:", d.join("broken.yaml").display())), "{e}");
    assert!(lines[1].starts_with(&format!("{}: cannot read:", d.join("loop.yaml").display())), "{e}");
}

/// Parser messages speak the policy language, never our type names or the
/// parser's options.
#[test]
fn parser_messages_in_policy_terms() {
    let ident = "  identities:\n    - name: a\n      selectors:\n        - uid: 1\n";
    let e = errs(&format!("{HEAD}{ident}      defaultAction: 5\n"));
    assert_eq!(e, "p.yaml:11:22: invalid defaultAction (hint: use \"allow\" or \"deny\", or a map with egress/files/exec)");
    let e = errs(&format!(
        "{HEAD}{ident}  rules:\n    - identity: a\n      action: allow\n      egress:\n        - to: [10.0.0.0/8]\n          ports: [true]\n"
    ));
    assert_eq!(e, "p.yaml:16:19: invalid port (hint: a port (443) or an inclusive range (\"8000-8080\"))");
    let e = errs(&format!("{HEAD}{ident}  trustDomain: u\n"));
    assert_eq!(e, "p.yaml:11:3: duplicate key \"trustDomain\" (hint: each key may appear once in a mapping)");
    for internal in ["RawDefault", "RawPort", "DuplicateKeyPolicy", "budget"] {
        assert!(!e.contains(internal));
    }
}

#[test]
fn socket_kinds_compile_to_the_mask_and_unknown_ones_are_named() {
    let ident =
        |sockets: &str| format!("{HEAD}  identities:\n    - name: a\n      sockets: {sockets}\n      selectors:\n        - uid: 1\n");
    let mask = |sockets: &str| {
        let p = parse1(&ident(sockets)).unwrap();
        let ids = IdRegistry::for_policy(&p).unwrap();
        compile(&p, &ids, 0, &[]).unwrap().identities[0].1.sockets
    };
    use zt_common::guard::sock_kind;
    assert_eq!(mask("[tcp, udp, unix, netlink, icmp]"), sock_kind::DEFAULT | sock_kind::ICMP);
    assert_eq!(mask("[tcp]"), sock_kind::TCP);
    assert_eq!(mask("[]"), 0, "an empty list narrows to no socket at all");
    assert_eq!(
        errs(&ident("[tcp, sctp]")),
        "p.yaml:9:22: unknown socket kind \"sctp\" (hint: one of tcp, udp, unix, netlink, icmp, raw, packet, other)"
    );
}

#[test]
fn rego_messages_are_placed_in_the_policy_file() {
    let rule = |body: &str| {
        format!(
            "{HEAD}  identities:\n    - name: a\n      selectors:\n        - uid: 1\n  rules:\n    - identity: a\n      action: deny\n      when:\n        rego: |\n{body}      egress:\n        - to: [10.0.0.0/8]\n"
        )
    };
    // The body's second line is line 17 of the file, indented by 10.
    let e = errs(&rule("          input.node.name == \"x\"\n          http.send({\"url\": \"http://x\"}).status_code == 200\n"));
    assert!(e.starts_with("p.yaml:17:11: invalid Rego condition: builtin `http.send` is not allowed in a condition"), "{e}");
    let e = errs(&rule("          input.node.name == \"x\"\n          input.node.labels ==\n"));
    assert!(e.starts_with("p.yaml:17:") && !e.contains("condition.rego") && !e.contains("-->"), "{e}");
    // A single-line plain scalar: the column inside the value.
    let text = format!(
        "{HEAD}  identities:\n    - name: a\n      selectors:\n        - uid: 1\n  rules:\n    - identity: a\n      action: deny\n      when:\n        rego: count(input.env) > 0; net.cidr_expand(\"0.0.0.0/0\")\n      egress:\n        - to: [10.0.0.0/8]\n"
    );
    let e = errs(&text);
    assert!(e.starts_with("p.yaml:15:37: invalid Rego condition: builtin `net.cidr_expand` is not allowed"), "{e}");
}

/// Unix-socket destinations: errors with positions, the exact kernel
/// entries, explain through the kernel's decision, diff.
#[test]
fn unix_destinations() {
    let rules = |to: &str, extra: &str| {
        format!(
            "{HEAD}  identities:\n    - name: a\n      selectors:\n        - uid: 1\n  rules:\n    - name: r\n      identity: a\n      action: allow\n      egress:\n        - to: [{to}]\n{extra}"
        )
    };
    let e = errs(&rules("unix:/run/*.sock, \"unix:run/x\"", "          ports: [80]\n"));
    assert!(e.contains("p.yaml:16:16: invalid Unix-socket destination \"unix:/run/*.sock\": only a trailing `/**`"), "{e}");
    assert!(e.contains("p.yaml:16:34: invalid Unix-socket destination \"unix:run/x\": not an absolute path"), "{e}");
    assert!(e.contains("p.yaml:17:18: `ports` does not apply to unix: destinations"), "{e}");

    let text = rules(
        "unix:/run/agent/**, unix:@bus",
        "    - name: d\n      identity: a\n      action: deny\n      egress:\n        - to: [unix:/run/agent/admin.sock]\n",
    );
    let p = parse1(&text).unwrap();
    let ids = IdRegistry::for_policy(&p).unwrap();
    let c = compile(&p, &ids, 1, &[true, true]).unwrap();
    let keys: Vec<(u32, String)> = c.unix.iter().map(|(l, k, _)| (*l, crate::policy::unix::key_text(&k.name, *l))).collect();
    assert_eq!(
        keys,
        [
            (64 + 8 * 12, "unix:/run/agent/**".to_string()),
            (64 + 8 * 23, "unix:/run/agent/admin.sock".into()),
            (64 + 8 * 5, "unix:@bus".into())
        ]
    );
    // Key: slot 1, identity 1, kind 1 (path), the bytes, NUL padding.
    let (_, key, list) = &c.unix[1];
    assert_eq!(hex(&bytes_of(key)[..32]), format!("0100000001000000{}{}0000", "01", hex(b"/run/agent/admin.sock")));
    assert!(bytes_of(key)[31..].iter().all(|b| *b == 0));
    // Its own deny (rule 1) and the covering directory's allow (rule 0):
    // every port, any protocol.
    assert_eq!(hex(&bytes_of(list)[..32]), concat!("0200000000000000", "0000ffff0000000000000000", "0000ffff0001000001000000"));
    let (_, key, _) = &c.unix[2];
    assert_eq!(hex(&bytes_of(key)[8..14]), "020362757300", "abstract: kind 2, length, name");

    let all = [true, true];
    let ex = |q: &str| explain(&p, "a", &Query::parse_connect(q).unwrap(), &all, &FakeFs(&[])).unwrap();
    assert_eq!(ex("unix:/run/agent/api.sock").decision, "allow");
    assert_eq!(ex("unix:/run/agent/admin.sock").rule.unwrap().name, "d");
    assert_eq!(ex("unix:/run/agent/../docker.sock").decision, "deny", "`..` matches no allow rule");
    assert_eq!(ex("unix:/run/docker.sock").reason, "default action of identity \"a\" (p.yaml:8:13)");
    assert_eq!(ex("unix:@bus").decision, "allow");
    assert_eq!(ex("unix:@bus2").decision, "deny");
    assert!(Query::parse_connect("unix:").is_err());

    // Lint: a Unix deny covers an allow below it; an IP-only deny does not.
    let deny = |to: &str| format!("    - name: d\n      identity: a\n      action: deny\n      egress:\n        - to: [{to}]\n");
    let w = parse1(&rules("unix:/run/agent/x.sock", &deny("unix:/run/**"))).unwrap().warnings;
    assert!(w.iter().any(|w| w.message.contains("can never apply: deny rule \"d\"")), "{w:?}");
    assert!(parse1(&rules("unix:/run/agent/x.sock", &deny("0.0.0.0/0"))).unwrap().warnings.is_empty());
    let w = parse1(&rules("unix:/tmp/agent.sock", "")).unwrap().warnings;
    assert!(w.iter().any(|w| w.message.contains("unix:/tmp/agent.sock, in a directory every user can write")), "{w:?}");

    let d = diff(&p, &parse1(&text.replace("unix:@bus", "unix:@*")).unwrap()).unwrap();
    assert!(d.iter().any(|l| l == "- UNIX_RULES a unix:@bus: allow any 0-65535 rule=r"), "{d:#?}");
    assert!(d.iter().any(|l| l == "+ UNIX_RULES a unix:@*: allow any 0-65535 rule=r"), "{d:#?}");
}

/// A file system of `(path, inode)` entries on device 1 (a directory
/// listed with and without its trailing '/').
pub(super) struct FakeFs(pub &'static [(&'static str, u64)]);

impl super::objects::Lookup for FakeFs {
    fn object(&self, path: &str) -> std::io::Result<(u32, u64)> {
        self.0.iter().find(|(p, _)| *p == path).map(|(_, ino)| (1, *ino)).ok_or_else(|| std::io::ErrorKind::NotFound.into())
    }
}

#[test]
fn anomaly_blocks_parse_with_defaults_and_errors_at_their_value() {
    let id = |block: &str| format!("{HEAD}  identities:\n    - name: a\n      selectors:\n        - cgroup: /a/**\n{block}");
    let p = parse1(&id("")).unwrap();
    assert_eq!(p.identity("a").unwrap().anomaly, None, "off unless asked for");
    let p = parse1(&id("      anomaly: {}\n")).unwrap();
    let a = p.identity("a").unwrap().anomaly.unwrap();
    assert_eq!(a, Anomaly { mode: AnomalyMode::Learn, response: AnomalyResponse::Alert, false_positive_rate: 0.005, learn_calls: 200_000 });
    assert_eq!(a.to_string(), "learn, response alert, false-positive target 0.5%, baseline after 200000 calls");
    let p = parse1(&id(
        "      anomaly:\n        mode: detect\n        response: quarantine\n        falsePositiveRate: 0.01\n        learnCalls: 5000\n",
    ))
    .unwrap();
    let a = p.identity("a").unwrap().anomaly.unwrap();
    assert_eq!((a.mode, a.response, a.false_positive_rate, a.learn_calls), (AnomalyMode::Detect, AnomalyResponse::Quarantine, 0.01, 5000));
    assert_eq!(
        errs(&id("      anomaly:\n        learnCalls: 10\n")),
        "p.yaml:12:21: learnCalls 10 is out of range (hint: from 1000 to 5000000 calls)"
    );
    assert_eq!(
        errs(&id("      anomaly:\n        mode: watch\n")),
        "p.yaml:12:15: invalid anomaly mode \"watch\" (hint: use \"learn\" or \"detect\")"
    );
    assert_eq!(
        errs(&id("      anomaly:\n        falsePositiveRate: 2\n")),
        "p.yaml:12:28: falsePositiveRate 2 is out of range (hint: a share above 0 and at most 0.5, e.g. 0.005 for 0.5%)"
    );
    assert!(errs(&id("      anomaly:\n        respond: kill\n")).contains("respond"), "unknown keys are refused");
}
