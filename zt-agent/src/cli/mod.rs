//! The CLI's subcommand groups (the binary's own modules; the work is in
//! the library).
//!
//! # Layout
//! - [`run`]: `zt-agent run` options (flags, environment, config file) -> the daemon.
//! - [`config`]: `config check`.
//! - [`status`]: `status`, `verify`, `probe`, `identity quarantine|release`.
//! - [`policy`]: `policy check|explain|diff|history|rollback|reload`.
//! - [`audit`]: `audit verify|proof|consistency|show|tail|key|rotate-key`.
//! - [`model`]: `model train|eval` (the anomaly model offline).
pub mod audit;
pub mod config;
pub mod model;
pub mod policy;
pub mod run;
pub mod status;

/// Runs one control-socket exchange on a small runtime.
pub fn client<T, E>(f: impl std::future::Future<Output = Result<T, E>>) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f)?)
}
