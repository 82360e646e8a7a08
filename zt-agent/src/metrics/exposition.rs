//! [`render`]: one scrape's [`Scrape`] -> the Prometheus text exposition
//! (format 0.0.4). Plain Rust: every value comes from the same snapshot
//! `status` shows, so the two never disagree. Each scrape fills a fresh
//! registry with the totals read now (counters are the agent's own
//! running totals, not incremented here).
use std::time::SystemTime;

use prometheus::{CounterVec, Encoder, GaugeVec, IntCounterVec, Opts, Registry, TextEncoder};

use super::tally::TallySnapshot;
use crate::{control::protocol::StatusDoc, pipeline::source::LossArray};

/// Run time and count of one of the agent's eBPF programs (kernel BPF
/// statistics, `kernel.bpf_stats_enabled`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramStats {
    pub program: String,
    pub run_time_ns: u64,
    pub run_count: u64,
}

/// Everything one scrape shows.
pub struct Scrape<'a> {
    pub status: &'a StatusDoc,
    /// The kernel's loss counters, per CPU.
    pub kernel_loss: &'a [LossArray],
    pub tally: &'a TallySnapshot,
    /// None: BPF statistics are off (`--bpf-stats`).
    pub programs: Option<&'a [ProgramStats]>,
    pub now: SystemTime,
}

/// A registry filled family by family.
struct Families(Registry);

type Rows<T> = Vec<(Vec<String>, T)>;

impl Families {
    fn counter(&self, name: &str, help: &str, labels: &[&str], rows: Rows<u64>) -> prometheus::Result<()> {
        let v = IntCounterVec::new(Opts::new(name, help), labels)?;
        for (values, n) in rows {
            v.with_label_values(&values).inc_by(n);
        }
        self.0.register(Box::new(v))
    }

    fn seconds(&self, name: &str, help: &str, labels: &[&str], rows: Rows<f64>) -> prometheus::Result<()> {
        let v = CounterVec::new(Opts::new(name, help), labels)?;
        for (values, n) in rows {
            v.with_label_values(&values).inc_by(n);
        }
        self.0.register(Box::new(v))
    }

    fn gauge(&self, name: &str, help: &str, labels: &[&str], rows: Rows<f64>) -> prometheus::Result<()> {
        let v = GaugeVec::new(Opts::new(name, help), labels)?;
        for (values, n) in rows {
            v.with_label_values(&values).set(n);
        }
        self.0.register(Box::new(v))
    }
}

fn one<T>(v: T) -> Rows<T> {
    vec![(vec![], v)]
}

fn labels<const N: usize>(values: [&str; N]) -> Vec<String> {
    values.iter().map(|s| s.to_string()).collect()
}

/// The exposition of `s`, with the agent's own process metrics
/// (`process_*`) when `process` is true.
pub fn render(s: &Scrape<'_>, process: bool) -> prometheus::Result<String> {
    let f = Families(Registry::new());
    let st = s.status;
    f.gauge(
        "zt_agent_info",
        "The running agent: version, eBPF object and policy in force (always 1).",
        &["version", "object_blake3", "policy_digest"],
        vec![(labels([&st.info.version, &st.info.object_blake3, &st.policy.digest]), 1.0)],
    )?;

    // The pipeline.
    let c = &st.counters;
    f.counter("zt_agent_ring_records_total", "Records read from the kernel's ring buffers.", &[], one(c.records))?;
    f.counter("zt_agent_events_enriched_total", "Kernel records turned into events.", &[], one(c.enriched))?;
    f.counter("zt_agent_events_written_total", "Events written by the JSON-lines output.", &[], one(c.written))?;
    f.counter(
        "zt_agent_events_total",
        "Events the pipeline produced, by kind (every output sees these).",
        &["kind"],
        s.tally.events.iter().map(|(k, n)| (labels([k]), *n)).collect(),
    )?;
    let mut kernel = Vec::new();
    for (cpu, counts) in s.kernel_loss.iter().enumerate() {
        for (reason, n) in zt_common::loss::NAMES.iter().zip(counts) {
            kernel.push((labels([reason, &cpu.to_string()]), *n));
        }
    }
    f.counter("zt_agent_kernel_dropped_total", "Records the kernel could not deliver, by reason and CPU.", &["reason", "cpu"], kernel)?;
    let mut user = vec![
        (labels(["decode_errors"]), c.decode_errors),
        (labels(["queue_overflow"]), c.queue_overflow),
        (labels(["output_errors"]), c.output_errors),
    ];
    user.extend(c.outputs.iter().map(|(k, n)| (labels([k]), *n)));
    f.counter("zt_agent_dropped_total", "Events user space dropped, by reason (each output's full or closed queue).", &["reason"], user)?;
    f.gauge("zt_agent_proc_table_entries", "Entries of the kernel's process table.", &[], one(c.proc_table_entries as f64))?;
    f.gauge(
        "zt_agent_heartbeat_age_seconds",
        "Seconds since the event pipeline's enrich task last went round its loop.",
        &[],
        one(c.heartbeat_age_ms as f64 / 1e3),
    )?;

    // Decisions.
    f.counter(
        "zt_agent_egress_decisions_total",
        "Egress decisions per identity, exact (the kernel's per-CPU counters).",
        &["identity", "action"],
        st.decisions
            .iter()
            .flat_map(|d| {
                [("allowed", d.allowed), ("denied", d.denied), ("audited", d.audited)].map(|(a, n)| (labels([&d.identity, a]), n))
            })
            .collect(),
    )?;
    f.counter(
        "zt_agent_decision_events_total",
        "Decision events per identity, hook, rule and action (file events count their folded repeats; \
         connects of a burst to one destination are one event and a summary, exact totals in zt_agent_egress_decisions_total).",
        &["identity", "hook", "rule", "action"],
        s.tally.decisions.iter().map(|(k, n)| (labels([&k.identity, k.hook, &k.rule, k.action]), *n)).collect(),
    )?;
    f.counter(
        "zt_agent_decision_series_overflow_total",
        "Decision events not counted by label set (more label sets than the agent keeps).",
        &[],
        one(s.tally.series_overflow),
    )?;

    // The policy.
    f.gauge("zt_agent_policy_version", "Version of the policy in force.", &[], one(st.policy.version as f64))?;
    f.gauge("zt_agent_policy_generation", "Kernel map generation of the policy in force.", &[], one(f64::from(st.policy.generation)))?;
    f.counter(
        "zt_agent_policy_changes_total",
        "Policy changes by action: applied (the first policy and every reload), rejected, rolled_back, quarantined, released.",
        &["action"],
        s.tally.policy_changes.iter().map(|(a, n)| (labels([a]), *n)).collect(),
    )?;
    f.gauge("zt_agent_identities", "Identities the policy in force defines.", &[], one(st.policy.identities.len() as f64))?;
    f.gauge("zt_agent_identities_quarantined", "Identities whose egress is deny-all.", &[], one(st.policy.quarantined.len() as f64))?;

    // The kernel programs.
    f.gauge(
        "zt_agent_hook_attached",
        "Whether each of the agent's eBPF programs is attached (1) or not (0).",
        &["program", "attach_point"],
        st.info.hooks.iter().map(|h| (labels([&h.program, &h.attach_point]), if h.attached { 1.0 } else { 0.0 })).collect(),
    )?;
    f.gauge(
        "zt_agent_bpf_stats_enabled",
        "Whether kernel BPF statistics are on (--bpf-stats): program run time and count below.",
        &[],
        one(if s.programs.is_some() { 1.0 } else { 0.0 }),
    )?;
    if let Some(programs) = s.programs {
        f.seconds(
            "zt_agent_bpf_program_run_seconds_total",
            "Time the kernel spent running each program, while BPF statistics were on.",
            &["program"],
            programs.iter().map(|p| (labels([&p.program]), p.run_time_ns as f64 / 1e9)).collect(),
        )?;
        f.counter(
            "zt_agent_bpf_program_runs_total",
            "Runs of each program, while BPF statistics were on.",
            &["program"],
            programs.iter().map(|p| (labels([&p.program]), p.run_count)).collect(),
        )?;
    }

    // The audit log.
    if let Some(a) = &st.audit {
        f.gauge("zt_agent_audit_records", "Records in the audit log.", &[], one(a.records as f64))?;
        f.gauge("zt_agent_audit_signed_records", "Records covered by the latest signed checkpoint.", &[], one(a.signed_size as f64))?;
        f.counter("zt_agent_audit_write_errors_total", "Failed audit-log writes.", &[], one(a.write_errors))?;
        f.gauge(
            "zt_agent_audit_writable",
            "Whether the audit log can write now (0: full disk or failed; records wait in memory or are counted lost).",
            &[],
            one(if a.unwritable.is_none() && a.failed.is_none() { 1.0 } else { 0.0 }),
        )?;
    }

    // SIEM destinations.
    let dest = |d: &crate::siem::Status| labels([&d.name]);
    f.gauge(
        "zt_agent_siem_backlog_records",
        "Audit records a SIEM destination does not have yet.",
        &["destination"],
        st.siem.iter().map(|d| (dest(d), d.backlog as f64)).collect(),
    )?;
    f.gauge(
        "zt_agent_siem_lag_seconds",
        "Seconds since a SIEM destination last had every audit record (0 while caught up).",
        &["destination"],
        st.siem.iter().map(|d| (dest(d), siem_lag(d, s.now))).collect(),
    )?;
    f.gauge(
        "zt_agent_siem_connected",
        "Whether a SIEM destination's connection is up.",
        &["destination"],
        st.siem.iter().map(|d| (dest(d), if d.connected { 1.0 } else { 0.0 })).collect(),
    )?;
    f.counter(
        "zt_agent_siem_records_sent_total",
        "Records sent to a SIEM destination (resent ones included).",
        &["destination"],
        st.siem.iter().map(|d| (dest(d), d.records_sent)).collect(),
    )?;
    f.counter(
        "zt_agent_siem_reconnects_total",
        "Reconnections to a SIEM destination.",
        &["destination"],
        st.siem.iter().map(|d| (dest(d), d.reconnects)).collect(),
    )?;

    // Kubernetes pod metadata.
    if let Some(k) = &st.kubernetes {
        f.gauge("zt_agent_kube_pods", "Pods in the agent's pod metadata cache.", &[], one(k.pods as f64))?;
        f.gauge(
            "zt_agent_kube_watching",
            "Whether the API server watch is up (1) or being retried (0).",
            &[],
            one(if k.state == "watching" { 1.0 } else { 0.0 }),
        )?;
        f.counter("zt_agent_kube_lists_total", "Pod lists read from the API server.", &[], one(k.lists))?;
        f.counter("zt_agent_kube_watch_events_total", "Watch events applied.", &[], one(k.watch_events))?;
        f.counter("zt_agent_kube_bad_lines_total", "Watch lines skipped as not understood.", &[], one(k.bad_lines))?;
        f.counter("zt_agent_kube_pods_dropped_total", "Pods not cached: the cache was full.", &[], one(k.pods_dropped))?;
    }

    // Continuous verification.
    if let Some(v) = &st.verification {
        f.counter("zt_agent_verification_passes_total", "Continuous-verification passes.", &[], one(v.passes))?;
        f.gauge(
            "zt_agent_integrity_findings",
            "What the last verification pass found (0: everything the agent put in place is as it was).",
            &[],
            one(v.findings.len() as f64),
        )?;
        f.counter("zt_agent_integrity_findings_total", "Integrity findings reported since start.", &[], one(v.findings_total))?;
    }

    // The remote API.
    if let Some(a) = &st.api {
        f.counter(
            "zt_agent_api_calls_total",
            "Remote API calls (and connections refused before one), by outcome.",
            &["outcome"],
            vec![(labels(["allowed"]), a.allowed), (labels(["refused"]), a.refused)],
        )?;
        f.gauge("zt_agent_api_open_streams", "Live event streams open.", &[], one(a.open_streams as f64))?;
    }

    // The anomaly model.
    f.gauge(
        "zt_agent_anomaly_risk",
        "An identity's live anomaly risk (0-1; input.identity.risk).",
        &["identity"],
        st.anomaly.iter().map(|(n, a)| (labels([n]), a.risk)).collect(),
    )?;
    f.counter(
        "zt_agent_anomaly_findings_total",
        "Anomaly findings per identity.",
        &["identity"],
        st.anomaly.iter().map(|(n, a)| (labels([n]), a.findings)).collect(),
    )?;

    if process {
        f.0.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
    }
    let mut out = Vec::new();
    TextEncoder::new().encode(&f.0.gather(), &mut out)?;
    Ok(String::from_utf8(out).expect("the text encoder writes UTF-8"))
}

/// Seconds a destination is behind: since it last had every record, while
/// it has a backlog.
fn siem_lag(d: &crate::siem::Status, now: SystemTime) -> f64 {
    if d.backlog == 0 {
        return 0.0;
    }
    d.caught_up_at
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .and_then(|t| now.duration_since(t).ok())
        .map_or(0.0, |lag| lag.as_secs_f64())
}
