//! `http(s)://`: a read-only view of a dir store served over HTTP. Tries the sharded layout
//! `<url>/<hh>/<id>` first and the flat legacy layout `<url>/<id>` second, as rfs does.

use super::{sharded_name, strip_password, Store, StoreError};
use std::io::Read;
use std::time::Duration;

pub(super) struct HttpStore {
    base: String,
    agent: ureq::Agent,
    url: String,
}

/// Largest body accepted for one block: a 512 KiB block that did not compress, plus slack.
const MAX_BLOCK: u64 = 2 * 1024 * 1024;

impl HttpStore {
    pub(super) fn new(url: &url::Url) -> Result<Self, StoreError> {
        let agent = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(HttpStore {
            base: url.as_str().trim_end_matches('/').to_owned(),
            agent,
            url: strip_password(url.as_str()),
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
            .map_err(|e| fail(e.to_string()))?;
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
