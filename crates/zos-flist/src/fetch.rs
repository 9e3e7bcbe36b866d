//! Flists named by URL: downloaded once into a cache keyed by their SHA-256, so a node can
//! boot what a user publishes on any web server without anyone copying files onto it.
//!
//! A download is streamed to a temporary file in the cache while it is hashed, checked
//! against the pin (`sha256:…`) when one is given, opened as an flist (so what is kept is
//! one), and only then renamed to `sha256-<hex>.fl`: a failed or refused download leaves
//! nothing behind. A pinned flist already in the cache is used without any request; an
//! unpinned URL is downloaded once and then resolved through a small record naming the
//! hash it gave (`refs/<sha256 of the URL>`), like an image tag pulled if not present.
//!
//! Container images named by reference (`docker://…`) are imported the same way: once per
//! reference (asks at the same time wait for the one import), into the node's own store,
//! kept as `image-<manifest digest>.fl` with a record of the digest the reference gave.
//!
//! A private image (pulled with credentials) must not reach someone who may not pull it, so
//! its record is kept per owner: another owner's ask misses it and goes to the registry
//! with their own credentials (or none), which must resolve the reference (manifest and
//! config) before the digest's flist, already here, is handed over without pulling its
//! layers again. An anonymous pull's record serves everyone: the image was public.

use crate::store::{http_agent, refusal_of, strip_password, StoreError, StorePolicy};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Largest flist accepted (its metadata only: content stays in the stores).
pub const MAX_FLIST: u64 = 1 << 30;
/// How long one download may take in all.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// Why an flist could not be had from its URL.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is not an http(s) URL.
    #[error("flist URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given (password stripped).
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The pin is not `sha256:` and 64 hex digits.
    #[error("flist_hash {0:?}: give it as sha256: followed by 64 hex digits")]
    BadPin(String),
    /// The policy forbids the URL's host (see [`StorePolicy`]).
    #[error(transparent)]
    Refused(StoreError),
    /// The server could not be reached or the transfer broke off.
    #[error("downloading flist {url}: {reason}")]
    Unreachable {
        /// The URL (password stripped).
        url: String,
        /// What happened.
        reason: String,
    },
    /// The server answered with something other than 200.
    #[error("downloading flist {url}: HTTP {status}{hint}")]
    Status {
        /// The URL (password stripped).
        url: String,
        /// The HTTP status.
        status: u16,
        /// What to check, for the usual statuses.
        hint: &'static str,
    },
    /// The file is larger than [`MAX_FLIST`].
    #[error("downloading flist {url}: larger than {MAX_FLIST} bytes; an flist holds metadata only, is this an flist?")]
    TooLarge {
        /// The URL (password stripped).
        url: String,
    },
    /// The file does not hash to the pin.
    #[error("flist {url}: sha256:{got} does not match flist_hash sha256:{want}; the file changed on the server, or the pin is wrong")]
    Mismatch {
        /// The URL (password stripped).
        url: String,
        /// The pin, hex.
        want: String,
        /// What the download hashed to, hex.
        got: String,
    },
    /// The file is not an flist.
    #[error("flist {url}: the file downloaded is not an flist ({reason})")]
    NotAnFlist {
        /// The URL (password stripped).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The registry refused to serve the image: it wants credentials, or refused those given.
    #[error("importing image {reference}: {reason}")]
    Unauthorized {
        /// The reference as given.
        reference: String,
        /// What the importer said (never the password).
        reason: String,
        /// Whether credentials were sent.
        with_credentials: bool,
    },
    /// The image could not be imported (registry unreachable, 404, no image for this
    /// platform…).
    #[error("importing image {reference}: {reason}")]
    Import {
        /// The reference as given.
        reference: String,
        /// What the importer said.
        reason: String,
    },
    /// The cache could not be read or written.
    #[error("flist cache {}: {source}", path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// An flist in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The `.fl` file.
    pub path: PathBuf,
    /// Its SHA-256, hex.
    pub sha256: String,
}

/// A container image in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The `.fl` file.
    pub path: PathBuf,
    /// Where it came from and its manifest digest: `docker://HOST/NAME:TAG@sha256:…`.
    pub reference: String,
}

/// A pull of a private image: whom it is for and with what.
#[derive(Debug, Clone, Copy)]
pub struct PrivatePull<'a> {
    /// Whom it is for (the deployment's owner, as text): what is pulled with these
    /// credentials is reused for them alone.
    pub owner: &'a str,
    /// Their registry credentials.
    pub credentials: &'a crate::oci::Credentials,
}

/// What makes an OS error at `path` a [`FetchError`].
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError {
    let path = path.to_path_buf();
    move |source| FetchError::Io { path, source }
}

/// The 32 bytes of a pin written `sha256:<64 hex digits>`.
pub fn parse_pin(pin: &str) -> Result<[u8; 32], FetchError> {
    let bad = || FetchError::BadPin(pin.to_owned());
    let hex_part = pin.strip_prefix("sha256:").ok_or_else(bad)?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).map_err(|_| bad())?;
    Ok(out)
}

/// The cache of downloaded flists: a directory of `sha256-<hex>.fl` files. Clones share
/// their downloads in flight.
#[derive(Debug, Clone)]
pub struct FlistCache {
    dir: PathBuf,
    policy: Option<Arc<StorePolicy>>,
    /// One lock per URL being resolved, so machines asking for one URL at once cause one
    /// download.
    busy: Arc<Mutex<HashMap<String, Arc<Mutex<()>>>>>,
}

impl FlistCache {
    /// A cache in `dir` (made on first use); downloads keep to `policy` when given.
    pub fn new(dir: &Path, policy: Option<Arc<StorePolicy>>) -> FlistCache {
        FlistCache {
            dir: dir.to_path_buf(),
            policy,
            busy: Arc::default(),
        }
    }

    fn path_of(&self, hex: &str) -> PathBuf {
        self.dir.join(format!("sha256-{hex}.fl"))
    }

    fn record_of(&self, url: &str) -> PathBuf {
        self.dir
            .join("refs")
            .join(hex::encode(Sha256::digest(url.as_bytes())))
    }

    /// Holds the lock of `key` (a URL, an image reference) while the caller works on it.
    fn one_at_a_time(&self, key: &str) -> Arc<Mutex<()>> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        busy.retain(|_, l| Arc::strong_count(l) > 1);
        Arc::clone(busy.entry(key.to_owned()).or_default())
    }

    /// The flist of container image `reference` (`docker://…`), imported (its blocks into
    /// `store`) unless the cache has what this reference gave last time: to anyone, or to
    /// this owner for a `private` pull (see the module's doc).
    pub fn import(
        &self,
        reference: &str,
        private: Option<PrivatePull<'_>>,
        store: &crate::store::StoreSpec,
        progress: &dyn crate::oci::ImportProgress,
    ) -> Result<Imported, FetchError> {
        let failed = |e: crate::error::Error| match e {
            crate::error::Error::Unauthorized { .. } => FetchError::Unauthorized {
                reference: reference.to_owned(),
                reason: e.to_string(),
                with_credentials: private.is_some(),
            },
            e => FetchError::Import {
                reference: reference.to_owned(),
                reason: e.to_string(),
            },
        };
        let url = url::Url::parse(reference).map_err(|e| FetchError::Import {
            reference: reference.to_owned(),
            reason: e.to_string(),
        })?;
        let key = match private {
            None => reference.to_owned(),
            Some(p) => format!("{reference} for {}", p.owner),
        };
        let lock = self.one_at_a_time(&key);
        let _one_at_a_time = lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cached) = self.cached_image(reference, &key) {
            return Ok(cached);
        }
        if let Some(policy) = &self.policy {
            policy
                .check_url(reference, &url)
                .map_err(FetchError::Refused)?;
        }
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let opts = crate::oci::ImportOptions {
            pack: crate::pack::PackOptions {
                stores: vec![store.clone()],
                ..Default::default()
            },
            // Strictly what this node runs: an image for another platform fails here, named.
            platform: Some(crate::oci::Platform::default()),
            ..Default::default()
        };
        let credentials = private.map(|p| p.credentials);
        // Another ask (another owner, another tag) may have imported this digest: resolving
        // it here proves these credentials may read it, and its layers are not pulled again.
        let located = crate::oci::locate(reference, &opts, credentials).map_err(failed)?;
        if let Some(path) = self.image_path(&located).filter(|p| p.is_file()) {
            self.write_record(&key, &located)?;
            return Ok(Imported {
                path,
                reference: located,
            });
        }
        // Imported aside, renamed in once its digest is known.
        let tmp = tempfile::Builder::new()
            .prefix(".import-")
            .suffix(".fl")
            .tempfile_in(&self.dir)
            .map_err(io(&self.dir))?
            .into_temp_path();
        let report = crate::oci::import_with(reference, &tmp, &opts, credentials, progress)
            .map_err(failed)?;
        let path = self
            .image_path(&report.reference)
            .ok_or_else(|| FetchError::Import {
                reference: reference.to_owned(),
                reason: format!("unexpected digest in {}", report.reference),
            })?;
        tmp.persist(&path).map_err(|e| FetchError::Io {
            path: path.clone(),
            source: e.error,
        })?;
        self.write_record(&key, &report.reference)?;
        Ok(Imported {
            path,
            reference: report.reference,
        })
    }

    /// The image `reference` gave last time, if its flist is still here: an anonymous pull
    /// (public, for anyone), or one recorded under `key` (this owner's private pull).
    fn cached_image(&self, reference: &str, key: &str) -> Option<Imported> {
        [reference, key].into_iter().find_map(|k| {
            let resolved = self.read_record(k)?;
            let path = self.image_path(&resolved).filter(|p| p.is_file())?;
            Some(Imported {
                path,
                reference: resolved,
            })
        })
    }

    /// `image-<hex>.fl` for a reference ending in `@sha256:<hex>`.
    fn image_path(&self, resolved: &str) -> Option<PathBuf> {
        let (_, hex) = resolved.rsplit_once("@sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| self.dir.join(format!("image-{hex}.fl")))
    }

    /// The flist at `url`, downloaded unless the cache has it: by its pin when given, else
    /// by what this URL gave last time.
    pub fn get(&self, url: &str, pin: Option<&str>) -> Result<Fetched, FetchError> {
        let display = strip_password(url);
        let parsed = url::Url::parse(url).map_err(|e| FetchError::BadUrl {
            url: display.clone(),
            reason: e.to_string(),
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(FetchError::BadUrl {
                url: display,
                reason: "only http:// and https:// URLs are downloaded".into(),
            });
        }
        let want = pin.map(parse_pin).transpose()?.map(hex::encode);
        let lock = self.one_at_a_time(url);
        let _one_at_a_time = lock.lock().unwrap_or_else(|e| e.into_inner());
        let known = match &want {
            Some(hex) => Some(hex.clone()),
            None => self.read_record(url),
        };
        if let Some(hex) = known {
            let path = self.path_of(&hex);
            if path.is_file() {
                return Ok(Fetched { path, sha256: hex });
            }
        }
        if let Some(policy) = &self.policy {
            policy
                .check_url(&display, &parsed)
                .map_err(FetchError::Refused)?;
        }
        let fetched = self.download(url, &display, want.as_deref())?;
        self.write_record(url, &fetched.sha256)?;
        Ok(fetched)
    }

    /// Streams `url` into the cache, hashing it; keeps it only if it matches `want` and
    /// opens as an flist.
    fn download(
        &self,
        url: &str,
        display: &str,
        want: Option<&str>,
    ) -> Result<Fetched, FetchError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let unreachable = |reason: String| FetchError::Unreachable {
            url: display.to_owned(),
            reason,
        };
        let response = http_agent(self.policy.clone(), display, DOWNLOAD_TIMEOUT)
            .get(url)
            .call()
            .map_err(|e| refusal_of(e).map_or_else(unreachable, FetchError::Refused))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(FetchError::Status {
                url: display.to_owned(),
                status,
                hint: match status {
                    404 => ": no file at this URL; check it",
                    401 | 403 => {
                        ": the server refuses to serve it; flists are fetched without credentials"
                    }
                    _ => "",
                },
            });
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(".download-")
            .tempfile_in(&self.dir)
            .map_err(io(&self.dir))?;
        let mut body = response.into_body().into_reader().take(MAX_FLIST + 1);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        loop {
            let n = body
                .read(&mut buf)
                .map_err(|e| unreachable(format!("reading the body: {e}")))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > MAX_FLIST {
                return Err(FetchError::TooLarge {
                    url: display.to_owned(),
                });
            }
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n]).map_err(io(tmp.path()))?;
        }
        let got = hex::encode(hasher.finalize());
        if let Some(want) = want {
            if want != got {
                return Err(FetchError::Mismatch {
                    url: display.to_owned(),
                    want: want.to_owned(),
                    got,
                });
            }
        }
        tmp.as_file().sync_all().map_err(io(tmp.path()))?;
        crate::meta::Flist::open(tmp.path()).map_err(|e| FetchError::NotAnFlist {
            url: display.to_owned(),
            reason: match e {
                crate::error::Error::NotAnFlist { reason, .. } => reason,
                other => other.to_string(),
            },
        })?;
        let path = self.path_of(&got);
        tmp.persist(&path).map_err(|e| FetchError::Io {
            path: path.clone(),
            source: e.error,
        })?;
        Ok(Fetched { path, sha256: got })
    }

    /// What `key` (a URL, an image reference) gave last time, if it was recorded.
    fn read_record(&self, key: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.record_of(key)).ok()?;
        Some(text.trim().to_owned())
    }

    /// Remembers what `key` (a URL, an image reference) gave (written aside and renamed in).
    fn write_record(&self, key: &str, gave: &str) -> Result<(), FetchError> {
        let record = self.record_of(key);
        let dir = self.dir.join("refs");
        std::fs::create_dir_all(&dir).map_err(io(&record))?;
        let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io(&record))?;
        tmp.write_all(gave.as_bytes()).map_err(io(&record))?;
        tmp.persist(&record).map_err(|e| io(&record)(e.error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::{pack, NoProgress, PackOptions};
    use crate::store::StoreSpec;

    /// Python's HTTP server on `dir`, its request log in `log`.
    fn serve(dir: &Path, log: &Path) -> Option<zos_testkit::Server> {
        zos_testkit::have("python3")
            .then(|| zos_testkit::http_server(dir, std::fs::File::create(log).unwrap()))
    }

    /// How many GETs of `name` the server's log shows.
    fn gets(log: &Path, name: &str) -> usize {
        std::fs::read_to_string(log)
            .unwrap()
            .matches(&format!("\"GET /{name} "))
            .count()
    }

    /// A served dir with `app.fl` (one small file) and `junk.fl` (not an flist); the pin of
    /// app.fl.
    fn published(dir: &Path) -> String {
        let tree = dir.join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(tree.join("hello"), b"hello").unwrap();
        let www = dir.join("www");
        std::fs::create_dir_all(&www).unwrap();
        let opts = PackOptions {
            stores: vec![
                StoreSpec::parse(&format!("dir://{}", dir.join("store").display())).unwrap(),
            ],
            keep_passwords: false,
            tags: Vec::new(),
            workers: 1,
        };
        pack(&tree, &www.join("app.fl"), &opts, &NoProgress).unwrap();
        std::fs::write(www.join("junk.fl"), b"<html>not an flist</html>").unwrap();
        let bytes = std::fs::read(www.join("app.fl")).unwrap();
        format!("sha256:{}", hex::encode(Sha256::digest(&bytes)))
    }

    fn loopback_allowed() -> Option<Arc<StorePolicy>> {
        let net = StorePolicy::parse_net("127.0.0.0/8").unwrap();
        Some(Arc::new(StorePolicy::new(vec![net], Vec::new()).unwrap()))
    }

    /// Entries of the cache dir but the URL records: what a failed download must not add to.
    fn cached(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != "refs")
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    #[test]
    fn a_url_is_downloaded_once_and_pins_and_bad_files_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let pin = published(tmp.path());
        let log = tmp.path().join("http.log");
        let Some(server) = serve(&tmp.path().join("www"), &log) else {
            return;
        };
        let base = format!("http://127.0.0.1:{}", server.port);
        let cache = FlistCache::new(&tmp.path().join("cache"), loopback_allowed());

        // Unpinned: downloaded, opened, kept under its hash; the second time from the cache.
        let url = format!("{base}/app.fl");
        let first = cache.get(&url, None).unwrap();
        assert_eq!(format!("sha256:{}", first.sha256), pin);
        assert!(crate::meta::Flist::open(&first.path).is_ok());
        assert_eq!(cache.get(&url, None).unwrap(), first);
        assert_eq!(gets(&log, "app.fl"), 1, "one download for two asks");
        // Pinned and cached: no request at all.
        assert_eq!(cache.get(&url, Some(&pin)).unwrap(), first);
        assert_eq!(gets(&log, "app.fl"), 1);

        // A pin that does not match: refused, nothing kept.
        let other = format!("sha256:{}", "0".repeat(64));
        let err = cache.get(&url, Some(&other)).unwrap_err().to_string();
        assert!(err.contains("does not match flist_hash"), "{err}");
        // Not an flist, a missing file: refused by name, nothing kept.
        let err = cache
            .get(&format!("{base}/junk.fl"), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not an flist"), "{err}");
        let err = cache
            .get(&format!("{base}/gone.fl"), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("HTTP 404"), "{err}");
        assert_eq!(
            cached(&tmp.path().join("cache")),
            vec![format!("sha256-{}.fl", first.sha256)]
        );

        // The node's policy keeps downloads off loopback unless allowed.
        let strict = FlistCache::new(
            &tmp.path().join("strict"),
            Some(Arc::new(StorePolicy::default())),
        );
        let err = strict.get(&url, None).unwrap_err();
        assert!(matches!(err, FetchError::Refused(_)), "{err}");
        assert!(cached(&tmp.path().join("strict")).is_empty());
    }

    #[test]
    fn pins_and_urls_are_checked_before_any_request() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = FlistCache::new(tmp.path(), None);
        for (url, pin, want) in [
            ("ftp://h/app.fl", None, "only http"),
            (
                "http://h/app.fl",
                Some("md5:abc"),
                "sha256: followed by 64 hex",
            ),
            (
                "http://h/app.fl",
                Some("sha256:xyz"),
                "sha256: followed by 64 hex",
            ),
        ] {
            let err = cache.get(url, pin).unwrap_err().to_string();
            assert!(err.contains(want), "{url} {pin:?}: {err}");
        }
    }
}
