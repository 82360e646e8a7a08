//! Security records to the SIEM over syslog.
//!
//! # Layout
//! - [`record`]: what is sent (an audit record with its place in the log,
//!   or a telemetry event) and how severe each kind is.
//! - [`ocsf`], [`cef`]: message bodies (pure).
//! - [`rfc5424`]: RFC 5424 messages and octet-counted framing (pure).
pub mod cef;
pub mod ocsf;
pub mod record;
pub mod rfc5424;
