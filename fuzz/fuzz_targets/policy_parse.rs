//! The policy parser, validator and compiler must never panic, whatever the
//! bytes: they read operator-supplied files in a privileged daemon.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zt_agent::policy::{Bundle, IdRegistry, compile::compile};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Two files: the input alone, and the input composed with a valid file.
    let valid = zt_agent::policy::DEFAULT_POLICY;
    for files in [vec![("f.yaml", text)], vec![("a.yaml", valid), ("b.yaml", text)]] {
        let bundle = Bundle { files: files.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect() };
        if let Ok(policy) = bundle.parse()
            && let Ok(ids) = IdRegistry::for_policy(&policy)
        {
            let _ = compile(&policy, &ids, 0, &vec![true; policy.rules.len()]);
        }
    }
});
