//! Rule names by policy generation: kernel events carry the generation and
//! rule index that decided them; the rule book turns those into names.
use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
};

use super::RuleInfo;

/// Generations kept (events are enriched within seconds of their decision).
const KEEP: usize = 64;

/// Written by the policy manager before each flip, read by the enricher.
/// Names are shared with the events that carry them, and a generation
/// with the same rules as the one before (a recompile for conditions, a
/// quarantine, rule paths) shares its list: 64 generations of a
/// 10,000-rule bundle hold one list, not 64.
#[derive(Default, Debug)]
pub struct RuleBook(RwLock<BTreeMap<u32, Arc<[Arc<str>]>>>);

impl RuleBook {
    pub fn insert(&self, generation: u32, rules: &[RuleInfo]) {
        let mut m = self.0.write().expect("poisoned");
        let names = match m.values().next_back() {
            Some(last) if last.len() == rules.len() && last.iter().zip(rules).all(|(n, r)| **n == *r.name) => last.clone(),
            _ => rules.iter().map(|r| Arc::from(r.name.as_str())).collect(),
        };
        m.insert(generation, names);
        while m.len() > KEEP {
            m.pop_first();
        }
    }

    pub fn name(&self, generation: u32, rule: u32) -> Option<Arc<str>> {
        self.0.read().expect("poisoned").get(&generation).and_then(|r| r.get(rule as usize)).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_generations() {
        let book = RuleBook::default();
        let rule = |n: &str| RuleInfo { name: n.into(), identity: "i".into(), pos: "f:1:1".into() };
        for g in 1..=(KEEP as u32 + 1) {
            book.insert(g, &[rule(&format!("r{g}"))]);
        }
        assert_eq!(book.name(1, 0), None, "the oldest generation was dropped");
        assert_eq!(book.name(2, 0).as_deref(), Some("r2"));
        assert_eq!(book.name(2, 1), None);
    }

    #[test]
    fn the_same_rules_share_one_list() {
        let book = RuleBook::default();
        let rules = |names: &[&str]| {
            names.iter().map(|n| RuleInfo { name: n.to_string(), identity: "i".into(), pos: "f:1:1".into() }).collect::<Vec<_>>()
        };
        book.insert(1, &rules(&["a", "b"]));
        book.insert(2, &rules(&["a", "b"]));
        book.insert(3, &rules(&["a", "c"]));
        let m = book.0.read().unwrap();
        assert!(Arc::ptr_eq(&m[&1], &m[&2]));
        assert!(!Arc::ptr_eq(&m[&2], &m[&3]));
        drop(m);
        assert_eq!(book.name(3, 1).as_deref(), Some("c"));
        assert_eq!(book.name(2, 1).as_deref(), Some("b"));
    }
}
