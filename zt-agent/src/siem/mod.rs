//! Security records to the SIEM over syslog.
//!
//! # Layout
//! - [`rfc5424`]: RFC 5424 messages and octet-counted framing (pure).
pub mod rfc5424;
