//! `http(s)://`: a read-only view of a dir store served over HTTP. Tries the sharded layout
//! `<url>/<hh>/<id>` first and the flat legacy layout `<url>/<id>` second, as rfs does.

use super::{sharded_name, strip_password, Store, StoreError, StorePolicy};
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

pub(super) struct HttpStore {
    base: String,
    agent: ureq::Agent,
    url: String,
}

/// Largest body accepted for one block: a 512 KiB block that did not compress, plus slack.
const MAX_BLOCK: u64 = 2 * 1024 * 1024;

impl HttpStore {
    pub(super) fn new(
        url: &url::Url,
        policy: Option<Arc<StorePolicy>>,
    ) -> Result<Self, StoreError> {
        let display = strip_password(url.as_str());
        Ok(HttpStore {
            base: url.as_str().trim_end_matches('/').to_owned(),
            agent: agent(policy, &display, Duration::from_secs(60)),
            url: display,
        })
    }

    fn fetch(&self, path: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let fail = |reason: String| StoreError::Unavailable {
            store: self.url.clone(),
            reason,
        };
        let response = self
            .agent
            .get(&format!("{}/{path}", self.base))
            .call()
            .map_err(|e| refusal_of(e).unwrap_or_else(fail))?;
        match response.status().as_u16() {
            200 => {
                let mut body = Vec::new();
                response
                    .into_body()
                    .into_reader()
                    .take(MAX_BLOCK)
                    .read_to_end(&mut body)
                    .map_err(|e| fail(format!("reading body: {e}")))?;
                Ok(Some(body))
            }
            404 => Ok(None),
            status => Err(fail(format!("HTTP {status} for {path}"))),
        }
    }
}

/// Why a request failed: `Ok` with the store policy's refusal (the checking resolver's),
/// `Err` with what happened otherwise.
pub(crate) fn refusal_of(e: ureq::Error) -> Result<StoreError, String> {
    match e {
        ureq::Error::Other(inner) => inner
            .downcast::<StoreError>()
            .map(|refused| *refused)
            .map_err(|other| other.to_string()),
        e => Err(e.to_string()),
    }
}

/// An HTTP client for `what` (a store, a URL: named in refusals) with `timeout` for a whole
/// request; under a policy, every connection, redirects included, is checked first.
pub(crate) fn agent(
    policy: Option<Arc<StorePolicy>>,
    what: &str,
    timeout: Duration,
) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(5)))
        .timeout_global(Some(timeout))
        .http_status_as_error(false);
    match policy {
        None => config.build().into(),
        // A proxy from the environment would connect for us, unchecked, so none is used.
        Some(policy) => ureq::Agent::with_parts(
            config.proxy(None).build(),
            DefaultConnector::default(),
            CheckingResolver {
                inner: DefaultResolver::default(),
                policy,
                store: what.to_owned(),
            },
        ),
    }
}

/// ureq's resolver, then the policy on every address it found: the connector gets only
/// checked addresses, so what was checked is what is connected to. (ureq's resolver trait
/// is in its `unversioned` API, hence the `~` on ureq's version in Cargo.toml.)
#[derive(Debug)]
struct CheckingResolver {
    inner: DefaultResolver,
    policy: Arc<StorePolicy>,
    store: String,
}

impl Resolver for CheckingResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let addrs = self.inner.resolve(uri, config, timeout)?;
        for addr in addrs.iter() {
            self.policy
                .check_ip(&self.store, addr.ip())
                .map_err(|e| ureq::Error::Other(Box::new(e)))?;
        }
        Ok(addrs)
    }
}

impl Store for HttpStore {
    fn get(&self, id: &[u8; 32]) -> Result<Vec<u8>, StoreError> {
        let (shard, name) = sharded_name(id);
        if let Some(body) = self.fetch(&format!("{shard}/{name}"))? {
            return Ok(body);
        }
        self.fetch(&name)?.ok_or_else(|| StoreError::NotFound {
            store: self.url.clone(),
        })
    }

    fn set(&self, _id: &[u8; 32], _data: &[u8]) -> Result<(), StoreError> {
        Err(StoreError::ReadOnly {
            store: self.url.clone(),
        })
    }

    fn exists(&self, id: &[u8; 32]) -> Result<bool, StoreError> {
        match self.get(id) {
            Ok(_) => Ok(true),
            Err(StoreError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn url(&self) -> &str {
        &self.url
    }
}
