//! `dir:///path`: blocks as files under `<path>/<first-byte-hex>/<id-hex>`, the rfs layout.

use super::{sharded_name, Store, StoreError};
use std::io::{ErrorKind, Write};
use std::path::PathBuf;

pub(super) struct DirStore {
    root: PathBuf,
    url: String,
}

impl DirStore {
    pub(super) fn new(url: &url::Url) -> Result<Self, StoreError> {
        if url.host_str().is_some_and(|h| !h.is_empty()) || url.path().is_empty() {
            return Err(StoreError::BadUrl {
                url: url.to_string(),
                reason: "a dir store needs an absolute path: dir:///var/lib/zos/store".into(),
            });
        }
        Ok(DirStore {
            root: PathBuf::from(url.path()),
            url: url.to_string(),
        })
    }

    fn path(&self, id: &[u8; 32]) -> PathBuf {
        let (shard, name) = sharded_name(id);
        self.root.join(shard).join(name)
    }

    fn failed(&self, what: &str, e: std::io::Error) -> StoreError {
        StoreError::Unavailable {
            store: self.url.clone(),
            reason: format!("{what}: {e}"),
        }
    }
}

impl Store for DirStore {
    fn get(&self, id: &[u8; 32]) -> Result<Vec<u8>, StoreError> {
        match std::fs::read(self.path(id)) {
            Ok(data) => Ok(data),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(StoreError::NotFound {
                store: self.url.clone(),
            }),
            Err(e) => Err(self.failed("read", e)),
        }
    }

    fn set(&self, id: &[u8; 32], data: &[u8]) -> Result<(), StoreError> {
        let path = self.path(id);
        let dir = path.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir).map_err(|e| self.failed("create directory", e))?;
        // Write under a temporary name and rename, so a reader never sees half a block and
        // two writers of the same block cannot interleave.
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| self.failed("write", e))?;
        tmp.write_all(data).map_err(|e| self.failed("write", e))?;
        tmp.persist(&path)
            .map_err(|e| self.failed("rename", e.error))?;
        Ok(())
    }

    fn exists(&self, id: &[u8; 32]) -> Result<bool, StoreError> {
        match std::fs::metadata(self.path(id)) {
            Ok(m) => Ok(m.is_file()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.failed("stat", e)),
        }
    }

    fn url(&self) -> &str {
        &self.url
    }
}
