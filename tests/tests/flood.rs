//! A flood by one identity never costs another its security records: the
//! attack of the flood issue as a root test ([`zt_tests::flood`]). Every
//! one of the quiet identity's denials must be in the event stream and in
//! the audit log, every one of its exec events in the stream (the flood
//! spends its own event budget, not the others'), none may reach the
//! listener (each connect is checked EPERM), and the flooder's connect
//! events, summaries and folded counts must add up to every attempt.
use zt_tests::*;

#[test]
#[ignore = "needs root (loads eBPF programs, creates cgroups): cargo xtask test runs it"]
fn a_flood_never_costs_another_identity_its_denials() {
    if !require_root("a_flood_never_costs_another_identity_its_denials") {
        return;
    }
    let base = unique("flood");
    let (a, b) = (TestCgroup::new(&format!("/{base}/a")).unwrap(), TestCgroup::new(&format!("/{base}/b")).unwrap());
    let agent = Agent::start("flood", &flood::policy(&a, &b), &[]).unwrap();
    let r = flood::run(&agent, &a, &b, &helper_bin(), 6.0, None).unwrap();
    eprintln!(
        "flood: {} distinct attempts in {} s ({:.0}/s): {} in connect events, {} in summaries, {} folded; the quiet identity's {} \
         denials: {} in the stream, {} in the audit log; its exec events: {}; agent peak RSS {:?} kB; counters: {}",
        r.attempts,
        r.secs,
        r.attempts as f64 / r.secs,
        r.evented,
        r.summarized,
        r.folded,
        r.quiet,
        r.in_stream,
        r.in_log,
        r.quiet_execs,
        r.peak_rss_kb,
        r.counters
    );
    assert_eq!(r.flooder_denied, 0, "the flooder's allowed destinations were denied");
    assert_eq!(r.in_stream, r.quiet, "denials missing from the event stream");
    assert_eq!(r.in_log, r.quiet, "denials missing from the audit log");
    assert_eq!(r.quiet_execs, r.quiet, "the quiet identity's exec events were crowded out");
    assert_eq!(r.evented + r.summarized + r.folded, r.attempts, "the flooder's attempts do not add up");
    agent.stop().unwrap();
}

/// The same attack while the policy is reloaded every 300 ms: every reload
/// is applied, and nothing of the above is lost across the switches.
#[test]
#[ignore = "needs root (loads eBPF programs, creates cgroups): cargo xtask test runs it"]
fn a_flood_during_policy_reloads_loses_nothing() {
    if !require_root("a_flood_during_policy_reloads_loses_nothing") {
        return;
    }
    let base = unique("flood-reload");
    let (a, b) = (TestCgroup::new(&format!("/{base}/a")).unwrap(), TestCgroup::new(&format!("/{base}/b")).unwrap());
    let agent = Agent::start("flood-reload", &flood::policy(&a, &b), &[]).unwrap();
    let r = flood::run(&agent, &a, &b, &helper_bin(), 4.0, Some(std::time::Duration::from_millis(300))).unwrap();
    eprintln!(
        "flood with reloads: {} reloads applied; quiet denials {} / {} / {} of {}; flooder {} + {} + {} of {}",
        r.reloads_applied, r.in_stream, r.in_log, r.quiet_execs, r.quiet, r.evented, r.summarized, r.folded, r.attempts
    );
    assert!(r.reloads_applied >= 5, "reloads applied during the flood: {}", r.reloads_applied);
    assert_eq!(r.flooder_denied, 0, "a switch denied the flooder's allowed destinations; counters {}", r.counters);
    assert_eq!(
        (r.in_stream, r.in_log, r.quiet_execs),
        (r.quiet, r.quiet, r.quiet),
        "quiet identity's records lost; its execs with another identity: {:?}; counters {}",
        r.quiet_exec_identities,
        r.counters
    );
    assert_eq!(r.evented + r.summarized + r.folded, r.attempts, "the flooder's attempts do not add up");
    agent.stop().unwrap();
}
