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
/// Names are shared with the events that carry them.
#[derive(Default, Debug)]
pub struct RuleBook(RwLock<BTreeMap<u32, Vec<Arc<str>>>>);

impl RuleBook {
    pub fn insert(&self, generation: u32, rules: &[RuleInfo]) {
        let names = rules.iter().map(|r| Arc::from(r.name.as_str())).collect();
        let mut m = self.0.write().expect("poisoned");
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
}
