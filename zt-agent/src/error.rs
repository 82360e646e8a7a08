//! Rendering errors for logs, events and the control socket.

/// An error and every source below it, `outer: inner: root` (what
/// `anyhow`'s `{:#}` prints), for places that keep errors as text.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Displays an error with every source (see [`chain`]), for log lines.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&chain(self.0))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn chain_lists_every_source() {
        let io = std::io::Error::other("disk on fire");
        let e = crate::fsutil::FsError { op: "writing", path: "/x".into(), source: io };
        assert_eq!(super::chain(&e), "writing /x: disk on fire");
    }
}
