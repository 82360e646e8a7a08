//! Warnings for valid but suspicious policies: shadowed or redundant rules,
//! overly broad egress, identities no selector can match.
use super::document::{Action, Diagnostic, Egress, Policy, Proto};

fn covers(outer: &Egress, inner: &Egress) -> bool {
    let proto = outer.proto == Proto::Any || outer.proto == inner.proto;
    let all_ports = |e: &Egress| if e.ports.is_empty() { vec![(0, u16::MAX)] } else { e.ports.clone() };
    let ports = all_ports(inner).iter().all(|(lo, hi)| all_ports(outer).iter().any(|(a, b)| a <= lo && hi <= b));
    let nets = inner.to.iter().all(|n| outer.to.iter().any(|o| o.contains(n)));
    proto && ports && nets
}

pub fn lint(policy: &mut Policy) {
    let mut warnings = Vec::new();
    let warn = |pos: &super::document::Pos, message: String, hint: Option<&str>| Diagnostic {
        pos: pos.clone(),
        message,
        hint: hint.map(str::to_string),
    };

    for (i, rule) in policy.rules.iter().enumerate() {
        for e in &rule.egress {
            if rule.action == Action::Allow && e.to.iter().any(|n| n.prefix_len() == 0) {
                warnings.push(warn(
                    &e.pos,
                    format!("rule {:?} allows identity {:?} to reach every destination", rule.name, rule.identity),
                    Some("zero trust: list the networks this identity needs"),
                ));
            }
            // Shadowed: an unconditional deny of the same identity covers it
            // (deny wins); else redundant: an earlier unconditional rule with
            // the same action already covers it.
            let covering = |j: usize, other: &super::document::Rule| {
                i != j && other.identity == rule.identity && other.when.is_none() && other.egress.iter().any(|o| covers(o, e))
            };
            let deny = policy.rules.iter().enumerate().find(|(j, o)| o.action == Action::Deny && covering(*j, o));
            let same = policy.rules.iter().enumerate().find(|(j, o)| *j < i && o.action == rule.action && covering(*j, o));
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
                warnings.push(warn(&e.pos, format!("this egress of rule {:?} is redundant: rule {:?} already covers it", rule.name, o.name), None));
            }
        }
    }

    for (i, ident) in policy.identities.iter().enumerate() {
        let earlier: Vec<String> = policy.identities[..i].iter().flat_map(|p| p.selectors.iter().map(|s| s.canonical())).collect();
        let reachable = ident.selectors.iter().any(|s| !s.k8s && !earlier.contains(&s.canonical()));
        if !reachable {
            warnings.push(warn(
                &ident.pos,
                format!("no selector of identity {:?} can match", ident.name),
                Some("every selector is a k8s selector (not resolved yet) or repeats one of an earlier identity (the first match wins)"),
            ));
        }
    }
    policy.warnings.extend(warnings);
}
