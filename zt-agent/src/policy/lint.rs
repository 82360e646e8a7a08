//! Warnings for valid but suspicious policies: shadowed or redundant rules,
//! overly broad egress, identities no selector can match.
use super::model::{Action, Diagnostic, Egress, Policy, Pos, Proto, Rule, UnixName};

const ALL_PORTS: &[(u16, u16)] = &[(0, u16::MAX)];

fn ports(e: &Egress) -> &[(u16, u16)] {
    if e.ports.is_empty() { ALL_PORTS } else { &e.ports }
}

fn covers(outer: &Egress, inner: &Egress) -> bool {
    (outer.proto == Proto::Any || outer.proto == inner.proto)
        && ports(inner).iter().all(|(lo, hi)| ports(outer).iter().any(|(a, b)| a <= lo && hi <= b))
        && inner.to.iter().all(|n| outer.to.iter().any(|o| o.contains(n)))
        && inner.unix.iter().all(|n| outer.unix.iter().any(|o| o.covers(n)))
}

/// Directories every user may create entries in (sticky or not, a name
/// not yet taken is anyone's).
const SHARED_DIRS: [&str; 5] = ["/tmp/", "/var/tmp/", "/dev/shm/", "/run/lock/", "/var/lock/"];

fn in_shared_directory(n: &UnixName) -> bool {
    match n {
        UnixName::Path(p) | UnixName::Under(p) => SHARED_DIRS.iter().any(|d| p.starts_with(d)),
        UnixName::Abstract(_) | UnixName::AnyAbstract => false,
    }
}

pub fn lint(policy: &mut Policy) {
    let mut warnings = Vec::new();
    let warn = |pos: &Pos, message: String, hint: Option<&str>| Diagnostic { pos: pos.clone(), message, hint: hint.map(str::to_string) };

    // Rules by identity, so the pairwise checks stay within one identity.
    let mut by_identity: std::collections::HashMap<&str, Vec<usize>> = Default::default();
    for (i, r) in policy.rules.iter().enumerate() {
        by_identity.entry(&*r.identity).or_default().push(i);
    }
    for (i, rule) in policy.rules.iter().enumerate() {
        let siblings = &by_identity[&*rule.identity];
        for e in &rule.egress {
            if rule.action == Action::Allow && e.to.iter().any(|n| n.prefix_len() == 0) {
                warnings.push(warn(
                    &e.pos,
                    format!("rule {:?} allows identity {:?} to reach every destination", rule.name, rule.identity),
                    Some("zero trust: list the networks this identity needs"),
                ));
            }
            if rule.action == Action::Allow && e.unix.iter().any(|n| matches!(n, UnixName::Under(d) if d == "/")) {
                warnings.push(warn(
                    &e.pos,
                    format!("rule {:?} allows identity {:?} to reach every Unix socket by path", rule.name, rule.identity),
                    Some("zero trust: list the sockets this identity needs (a local service acting on request is a way around every other rule)"),
                ));
            }
            // The rules match the path as written: in a directory anyone can
            // write, a symlink placed at an allowed name reaches any socket.
            if rule.action == Action::Allow
                && let Some(n) = e.unix.iter().find(|n| in_shared_directory(n))
            {
                warnings.push(warn(
                    &e.pos,
                    format!(
                        "rule {:?} allows {n}, in a directory every user can write: a symlink placed there reaches any socket",
                        rule.name
                    ),
                    Some("allow sockets in directories the identity cannot write (see policies/README.md, Unix-socket destinations)"),
                ));
            }
            // Shadowed: an unconditional deny of the same identity covers it
            // (deny wins); else redundant: an earlier unconditional rule with
            // the same action already covers it.
            let covering = |j: usize, other: &Rule| i != j && other.when.is_none() && other.egress.iter().any(|o| covers(o, e));
            let rules = || siblings.iter().map(|&j| (j, &policy.rules[j]));
            let deny = rules().find(|(j, o)| o.action == Action::Deny && covering(*j, o));
            let same = rules().find(|(j, o)| *j < i && o.action == rule.action && covering(*j, o));
            if rule.action == Action::Allow
                && let Some((_, d)) = deny
            {
                warnings.push(warn(
                    &e.pos,
                    format!("this egress of allow rule {:?} can never apply: deny rule {:?} covers it (deny wins)", rule.name, d.name),
                    None,
                ));
            } else if let Some((_, o)) = same
                && rule.when.is_none()
            {
                warnings.push(warn(
                    &e.pos,
                    format!("this egress of rule {:?} is redundant: rule {:?} already covers it", rule.name, o.name),
                    None,
                ));
            }
        }
    }

    for (i, ident) in policy.identities.iter().enumerate() {
        let earlier: Vec<String> = policy.identities[..i].iter().flat_map(|p| p.selectors.iter().map(|s| s.canonical())).collect();
        let reachable = ident.selectors.iter().any(|s| !earlier.contains(&s.canonical()));
        if !reachable {
            warnings.push(warn(
                &ident.pos,
                format!("no selector of identity {:?} can match", ident.name),
                Some("every selector repeats one of an earlier identity (the first match wins)"),
            ));
        }
    }
    policy.warnings.extend(warnings);
}
