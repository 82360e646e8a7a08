//! Who may do what through the remote API: grants from the agent config,
//! each a SPIFFE ID pattern and the permissions it gives. Pure: no TLS,
//! no I/O.
//!
//! A pattern is a SPIFFE ID (that ID only), or one ending in `/*` (every
//! ID below that path; `spiffe://td/*` is the whole trust domain). What a
//! caller may do is the union of the grants that match it; no grant, no
//! access.
use serde::{Deserialize, Serialize};

/// What a grant allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// `GET /v1/status`, `GET /v1/policy` (the history).
    Read,
    /// `PUT /v1/policy`, `POST /v1/policy/rollback`.
    Push,
    /// `GET /v1/events`.
    Stream,
}

impl Permission {
    pub fn name(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Push => "push",
            Permission::Stream => "stream",
        }
    }
}

/// A SPIFFE ID pattern, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Exact(String),
    /// Every ID that starts with this (which ends in `/`).
    Below(String),
}

impl std::str::FromStr for Pattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let checked =
            |id: &str| crate::policy::parse::validate_spiffe_id(id, None).map_err(|e| format!("{s:?} is not a SPIFFE ID pattern: {e}"));
        match s.strip_suffix("/*") {
            Some(prefix) if prefix.strip_prefix("spiffe://").is_some_and(|r| !r.contains('/')) => {
                // The whole trust domain: check it as the ID of a path below it.
                checked(&format!("{prefix}/x"))?;
                Ok(Pattern::Below(format!("{prefix}/")))
            }
            Some(prefix) => {
                checked(prefix)?;
                Ok(Pattern::Below(format!("{prefix}/")))
            }
            None => {
                checked(s)?;
                Ok(Pattern::Exact(s.to_string()))
            }
        }
    }
}

impl Pattern {
    pub fn matches(&self, id: &str) -> bool {
        match self {
            Pattern::Exact(p) => p == id,
            Pattern::Below(prefix) => id.starts_with(prefix.as_str()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub pattern: Pattern,
    pub may: Vec<Permission>,
}

/// Every grant of the config, in its order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules(pub Vec<Grant>);

impl Rules {
    pub fn allows(&self, id: &str, p: Permission) -> bool {
        self.0.iter().any(|g| g.pattern.matches(id) && g.may.contains(&p))
    }
}

/// The caller's SPIFFE ID: the certificate's one `spiffe://` URI SAN,
/// checked like the policy's IDs. None, or more than one (the SPIFFE X.509-SVID
/// spec allows exactly one), is an error saying which.
pub fn spiffe_id<'a>(uris: impl Iterator<Item = &'a str>) -> Result<String, String> {
    let ids: Vec<&str> = uris.filter(|u| u.starts_with("spiffe://")).collect();
    match ids[..] {
        [] => Err("the client certificate has no SPIFFE ID (a URI SAN spiffe://TRUST-DOMAIN/PATH)".into()),
        [id] => crate::policy::parse::validate_spiffe_id(id, None)
            .map(|()| id.to_string())
            .map_err(|e| format!("the client certificate's SPIFFE ID {id:?} is invalid: {e}")),
        _ => Err(format!("the client certificate has {} SPIFFE IDs; an X.509-SVID has exactly one", ids.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(grants: &[(&str, &[Permission])]) -> Rules {
        Rules(grants.iter().map(|(p, may)| Grant { pattern: p.parse().unwrap(), may: may.to_vec() }).collect())
    }

    #[test]
    fn patterns() {
        assert_eq!("spiffe://zt.test/ops/ci".parse(), Ok(Pattern::Exact("spiffe://zt.test/ops/ci".into())));
        assert_eq!("spiffe://zt.test/ops/*".parse(), Ok(Pattern::Below("spiffe://zt.test/ops/".into())));
        assert_eq!("spiffe://zt.test/*".parse(), Ok(Pattern::Below("spiffe://zt.test/".into())));
        for bad in ["https://zt.test/x", "spiffe://zt.test", "spiffe://ZT/x", "spiffe://zt.test/a//b", "spiffe://zt.test/*/x", "*"] {
            let e = bad.parse::<Pattern>().unwrap_err();
            assert!(e.contains("is not a SPIFFE ID pattern"), "{bad}: {e}");
        }
        let below: Pattern = "spiffe://zt.test/ops/*".parse().unwrap();
        assert!(below.matches("spiffe://zt.test/ops/ci"));
        assert!(below.matches("spiffe://zt.test/ops/ci/deep"));
        assert!(!below.matches("spiffe://zt.test/ops"), "the prefix itself is not below it");
        assert!(!below.matches("spiffe://zt.test/opsx/ci"), "a segment boundary, not a string prefix");
        assert!(!below.matches("spiffe://other.test/ops/ci"));
    }

    #[test]
    fn permissions_are_the_union_of_matching_grants() {
        use Permission::*;
        let r =
            rules(&[("spiffe://zt.test/ops/*", &[Read]), ("spiffe://zt.test/ops/deployer", &[Push]), ("spiffe://zt.test/siem", &[Stream])]);
        assert!(r.allows("spiffe://zt.test/ops/deployer", Read));
        assert!(r.allows("spiffe://zt.test/ops/deployer", Push));
        assert!(!r.allows("spiffe://zt.test/ops/deployer", Stream));
        assert!(!r.allows("spiffe://zt.test/ops/viewer", Push));
        assert!(r.allows("spiffe://zt.test/siem", Stream));
        assert!(!r.allows("spiffe://zt.test/siem", Read));
        assert!(!Rules::default().allows("spiffe://zt.test/ops/deployer", Read), "no grant, no access");
    }

    #[test]
    fn the_caller_has_exactly_one_valid_spiffe_id() {
        assert_eq!(spiffe_id(["https://x.test/", "spiffe://zt.test/ops/ci"].into_iter()), Ok("spiffe://zt.test/ops/ci".into()));
        assert!(spiffe_id(["https://x.test/"].into_iter()).unwrap_err().contains("has no SPIFFE ID"));
        assert!(spiffe_id(["spiffe://zt.test/a", "spiffe://zt.test/b"].into_iter()).unwrap_err().contains("2 SPIFFE IDs"));
        assert!(spiffe_id(["spiffe://zt.test/a/../b"].into_iter()).unwrap_err().contains("is invalid"));
    }
}
