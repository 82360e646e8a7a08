//! zt-agent: zero-trust host enforcement for AI-agent workloads.
//!
//! # Layout
//! Dependencies point one way, down this list (`bpf` implements the
//! domain's traits; nothing but `bpf` imports aya):
//! - [`run`]: the daemon: wires the rest together and owns shutdown.
//! - [`control`]: the local control socket and its protocol (`zt-agent status`).
//! - [`api`]: the remote control API over mutual TLS, SPIFFE-authorised.
//! - [`metrics`]: Prometheus `/metrics`, `/healthz`, `/readyz` over HTTP.
//! - [`config`]: the config file (every `run` option), checked at `file:line:col`.
//! - [`manager`]: applies policies to a [`policy::target::PolicyTarget`]
//!   (reload, history, rollback, conditions).
//! - [`bpf`]: the only module that uses aya: load, attach, probe, typed
//!   maps, and the domain's table traits implemented over them.
//! - [`files`]: file rules where BPF LSM does not load (fanotify).
//! - [`anomaly`]: the per-identity syscall anomaly model (pure; no kernel).
//! - [`audit`]: the signed, tamper-evident audit log (an output of the pipeline).
//! - [`siem`]: the audit log's records to SIEM destinations over syslog.
//! - [`pipeline`]: ring buffer -> decode -> enrich -> outputs, loss counting.
//! - [`policy`]: host policy language, compilation to map entries, history.
//! - [`identity`]: selectors, the resolver, and the attribution tables as traits.
//! - [`kube`]: Kubernetes pod metadata (API server list and watch) for `k8s:` selectors and events.
//! - [`host`]: mounts, cgroup v2, privileges, clocks.
//! - [`fsutil`]: crash-safe file replacement.
//! - [`dirwatch`]: directory watching (inotify on tokio).
//! - [`error`]: rendering error chains.
//! - [`verify`]: continuous verification of what the agent put in place.
pub mod anomaly;
pub mod api;
pub mod audit;
pub mod bpf;
pub mod config;
pub mod control;
pub mod dirwatch;
pub mod error;
pub mod files;
pub mod fsutil;
pub mod host;
pub mod identity;
pub mod kube;
pub mod manager;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod run;
pub mod siem;
pub mod verify;
