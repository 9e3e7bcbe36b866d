//! Block stores: where encrypted blocks live, keyed by their id.
//!
//! A store URL names one backend: `dir:///path`, `zdb://[user:pass@]host[:port][/namespace]`,
//! `redis://[user:pass@]host[:port][/db]`, `http(s)://host/path` (read-only). Any of them may be
//! prefixed with a range over the first byte of the block id, `00-7f=URL`, as `rfs` accepts.
//! The [`Router`] sends each block to the stores whose range covers it. Under a
//! [`StorePolicy`] (a node mounting tenants' flists), stores are reached only where the
//! policy allows.

mod dir;
mod http;
pub(crate) use http::{agent as http_agent, refusal_of};
mod policy;
mod redis;
mod router;

pub use ipnet::IpNet;
pub use policy::{Allowance, StorePolicy};
pub use router::{FetchError, Router};

use std::sync::Arc;

/// Why a store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL could not be understood.
    #[error("invalid store URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given (password stripped).
        url: String,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// The block is not in this store.
    #[error("{store}: block not found")]
    NotFound {
        /// The store (password stripped).
        store: String,
    },
    /// The store did not answer or answered with an error.
    #[error("{store}: {reason}")]
    Unavailable {
        /// The store (password stripped).
        store: String,
        /// What happened.
        reason: String,
    },
    /// The store cannot take writes (HTTP stores).
    #[error("{store}: store is read-only")]
    ReadOnly {
        /// The store (password stripped).
        store: String,
    },
    /// The store policy forbids reaching this store.
    #[error("store {store} refused by the store policy: {reason}")]
    Refused {
        /// The store (password stripped).
        store: String,
        /// What it would reach and why that is denied.
        reason: String,
        /// What would let it through, for the hint the policy's owner gives.
        allow: Allowance,
    },
    /// No configured store covers this block id.
    #[error(
        "no store covers block ids starting with {first:02x}; add a store with a route covering it"
    )]
    NotRoutable {
        /// First byte of the id.
        first: u8,
    },
}

/// A backend holding blocks by id. Implementations are blocking and safe to share between
/// threads; each call may open or reuse a connection.
pub trait Store: Send + Sync {
    /// Reads the bytes stored under `id`.
    fn get(&self, id: &[u8; 32]) -> Result<Vec<u8>, StoreError>;
    /// Stores `data` under `id` (idempotent: blocks are content-addressed).
    fn set(&self, id: &[u8; 32], data: &[u8]) -> Result<(), StoreError>;
    /// Whether `id` is already stored, so pack can skip sending it.
    fn exists(&self, id: &[u8; 32]) -> Result<bool, StoreError>;
    /// The URL for display and for routes, without any password.
    fn url(&self) -> &str;
}

/// A store URL with its optional id range, parsed but not connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSpec {
    /// First id byte covered.
    pub start: u8,
    /// Last id byte covered.
    pub end: u8,
    /// The full URL, password included (used to connect).
    pub url: String,
}

impl StoreSpec {
    /// Parses `[hh-hh=]URL`.
    pub fn parse(spec: &str) -> Result<StoreSpec, StoreError> {
        let (start, end, url) = match spec.split_once('=') {
            Some((range, url)) if is_range(range) => {
                let (lo, hi) = range.split_at(2);
                let lo = u8::from_str_radix(lo, 16);
                let hi = u8::from_str_radix(&hi[1..], 16);
                match (lo, hi) {
                    (Ok(lo), Ok(hi)) if lo <= hi => (lo, hi, url),
                    _ => {
                        return Err(StoreError::BadUrl {
                            url: strip_password(spec),
                            reason: format!(
                                "range {range:?} must be two hex bytes, low first, like 00-7f"
                            ),
                        })
                    }
                }
            }
            _ => (0x00, 0xff, spec),
        };
        let parsed = url::Url::parse(url).map_err(|e| StoreError::BadUrl {
            url: strip_password(url),
            reason: format!(
                "{e}; expected e.g. dir:///var/lib/zos/store or redis://127.0.0.1:6379"
            ),
        })?;
        match parsed.scheme() {
            "dir" | "zdb" | "redis" | "http" | "https" => {}
            other => {
                return Err(StoreError::BadUrl {
                    url: strip_password(url),
                    reason: format!(
                        "unknown scheme {other:?}; supported: dir, zdb, redis, http, https"
                    ),
                })
            }
        }
        Ok(StoreSpec {
            start,
            end,
            url: url.to_owned(),
        })
    }

    /// Connects (lazily where the backend allows it) to the store this spec names.
    pub fn open(&self) -> Result<Arc<dyn Store>, StoreError> {
        self.open_with(None)
    }

    /// [`StoreSpec::open`] under `policy`: a store the policy refuses now is an error here,
    /// and the store checks again each address it connects to.
    pub fn open_with(
        &self,
        policy: Option<&Arc<StorePolicy>>,
    ) -> Result<Arc<dyn Store>, StoreError> {
        let mut parsed = url::Url::parse(&self.url).map_err(|e| StoreError::BadUrl {
            url: strip_password(&self.url),
            reason: e.to_string(),
        })?;
        if let Some(policy) = policy {
            let display = strip_password(&self.url);
            if let Some(real) = policy.check_url(&display, &parsed)? {
                // Open what was checked, not what a symlink swapped in later points to.
                parsed.set_path(&real.to_string_lossy());
            }
        }
        Ok(match parsed.scheme() {
            "dir" => Arc::new(dir::DirStore::new(&parsed)?),
            "zdb" | "redis" => Arc::new(redis::RedisStore::new(&parsed, policy.cloned())?),
            _ => Arc::new(http::HttpStore::new(&parsed, policy.cloned())?),
        })
    }

    /// The URL as it goes into a route: password removed unless `keep_password`.
    pub fn route_url(&self, keep_password: bool) -> String {
        if keep_password {
            self.url.clone()
        } else {
            strip_password(&self.url)
        }
    }
}

fn is_range(s: &str) -> bool {
    s.len() == 5 && s.as_bytes()[2] == b'-' && s.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
}

/// Removes the password from a URL (keeps the user name), for display and stored routes.
pub fn strip_password(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) if u.password().is_some() => {
            // Only fails for URLs that cannot have credentials, which have no password.
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => raw.to_owned(),
    }
}

/// The `<first-byte-hex>/<id-hex>` layout shared by dir and HTTP stores.
pub(crate) fn sharded_name(id: &[u8; 32]) -> (String, String) {
    let hex = hex::encode(id);
    (hex[..2].to_owned(), hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ranges_and_defaults() {
        let s = StoreSpec::parse("00-7f=dir:///tmp/a").unwrap();
        assert_eq!((s.start, s.end, s.url.as_str()), (0, 0x7f, "dir:///tmp/a"));
        let s = StoreSpec::parse("redis://127.0.0.1:6379").unwrap();
        assert_eq!((s.start, s.end), (0, 0xff));
    }

    #[test]
    fn rejects_bad_specs_with_reason() {
        let e = StoreSpec::parse("80-10=dir:///x").unwrap_err().to_string();
        assert!(e.contains("low first"), "{e}");
        let e = StoreSpec::parse("ftp://host/x").unwrap_err().to_string();
        assert!(e.contains("unknown scheme"), "{e}");
        let e = StoreSpec::parse("/just/a/path").unwrap_err().to_string();
        assert!(e.contains("dir:///"), "{e}");
    }

    #[test]
    fn strips_passwords_but_keeps_users() {
        let s = StoreSpec::parse("zdb://alice:secret@10.0.0.1:9900/ns").unwrap();
        assert_eq!(s.route_url(false), "zdb://alice@10.0.0.1:9900/ns");
        assert_eq!(s.route_url(true), "zdb://alice:secret@10.0.0.1:9900/ns");
        assert_eq!(strip_password("dir:///a/b"), "dir:///a/b");
    }
}
