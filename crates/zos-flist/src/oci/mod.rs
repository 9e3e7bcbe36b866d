//! Docker / OCI image import: an image (a `docker save` archive, an OCI image layout as a
//! directory or tarball, or an image in a registry) becomes an flist.
//!
//! The image's layers are applied in order, as a container runtime applies them (whiteouts,
//! opaque directories, owners, modes, times, xattrs, hardlinks, devices), into a private
//! staging directory created next to the output; that tree is then [packed](crate::pack) and
//! the `.fl` renamed into place. Every blob (manifests, config, layers) is checked against its
//! digest while it streams past. Whatever happens, the staging directory is removed, and the
//! output only appears when complete.
//!
//! The image config (entrypoint, command, environment…) is kept in the flist's `zos.image`
//! tag, as JSON ([`ImageConfig`]), so that a runner can start the image as Docker would; read
//! it back with [`image_config`].

mod apply;
mod digest;
mod local;
mod registry;
mod spec;

use crate::error::{Error, IoContext, Result};
use crate::meta::Flist;
use crate::pack::{PackOptions, PackReport, Progress};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The tag holding the image config, as JSON ([`ImageConfig`]).
pub const IMAGE_TAG: &str = "zos.image";
/// The tag holding the image reference and digest, `REFERENCE@sha256:…`.
pub const IMAGE_REF_TAG: &str = "zos.image.ref";

/// How to run the image, from its config, with Docker's meaning: the command is
/// `entrypoint + cmd` (or `cmd` alone without an entrypoint), run as `user` in `working_dir`
/// with `env`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageConfig {
    /// `ENTRYPOINT`: the program and its first arguments; empty when the image sets none.
    pub entrypoint: Vec<String>,
    /// `CMD`: default arguments appended to the entrypoint, or the whole command when there is
    /// no entrypoint; replaced by the arguments a user gives.
    pub cmd: Vec<String>,
    /// Environment, as `KEY=value` strings, in the image's order.
    pub env: Vec<String>,
    /// Working directory; empty means `/`.
    pub working_dir: String,
    /// User to run as: `name`, `uid`, `name:group` or `uid:gid`; empty means root.
    pub user: String,
    /// Ports the image documents as listening, like `80/tcp`, sorted.
    pub exposed_ports: Vec<String>,
    /// The image's labels.
    pub labels: BTreeMap<String, String>,
    /// Operating system the image is for (`linux`).
    pub os: String,
    /// CPU architecture, Go style (`amd64`, `arm64`).
    pub architecture: String,
    /// Docker's `HEALTHCHECK`, when the image has one that runs something.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<ImageHealthcheck>,
}

/// An image's healthcheck, as zos runs it: a program and its arguments (a `CMD-SHELL` test
/// through `/bin/sh -c`), exit 0 a pass; durations in seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageHealthcheck {
    /// Program and arguments.
    pub test: Vec<String>,
    /// Seconds between checks.
    pub interval_secs: u32,
    /// Seconds a check may take.
    pub timeout_secs: u32,
    /// Failures in a row that make the container unhealthy.
    pub retries: u32,
    /// Seconds after start during which failures do not count.
    pub start_period_secs: u32,
}

impl ImageConfig {
    fn from_config(
        config: &spec::ImageConfiguration,
        healthcheck: Option<ImageHealthcheck>,
    ) -> ImageConfig {
        let run = config.config().as_ref();
        let get = |f: fn(&oci_spec::image::Config) -> &Option<Vec<String>>| {
            run.and_then(|r| f(r).clone()).unwrap_or_default()
        };
        let mut exposed_ports = get(|r| r.exposed_ports());
        exposed_ports.sort();
        ImageConfig {
            entrypoint: get(|r| r.entrypoint()),
            cmd: get(|r| r.cmd()),
            env: get(|r| r.env()),
            working_dir: run
                .and_then(|r| r.working_dir().clone())
                .unwrap_or_default(),
            user: run.and_then(|r| r.user().clone()).unwrap_or_default(),
            exposed_ports,
            labels: run
                .and_then(|r| r.labels().as_ref())
                .map(|l| l.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
            os: config.os().to_string(),
            architecture: config.architecture().to_string(),
            healthcheck,
        }
    }
}

/// Reads the image config an import stored in `flist`; `None` if the flist was not made by an
/// import (it has no `zos.image` tag).
pub fn image_config(flist: &Flist) -> Result<Option<ImageConfig>> {
    let Some((_, value)) = flist.tags()?.into_iter().find(|(k, _)| k == IMAGE_TAG) else {
        return Ok(None);
    };
    serde_json::from_str(&value).map(Some).map_err(|e| {
        Error::Invalid(format!(
            "{}: tag {IMAGE_TAG} does not hold a valid image config ({e}); import the image \
             again, or remove the tag with `zos flist tag FLIST rm {IMAGE_TAG}`",
            flist.path().display()
        ))
    })
}

/// A platform, `os/architecture[/variant]` as Docker writes it: `linux/amd64`,
/// `linux/arm64`, `linux/arm/v7`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// CPU architecture, e.g. `amd64`.
    pub architecture: String,
    /// Variant, e.g. `v7` for 32-bit ARM; `None` accepts any.
    pub variant: Option<String>,
}

impl Default for Platform {
    /// `linux/amd64`: what zos nodes run.
    fn default() -> Platform {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }
}

impl FromStr for Platform {
    type Err = Error;

    fn from_str(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: (*os).to_owned(),
                architecture: spec::normalize_arch(arch).to_owned(),
                variant: parts
                    .get(2)
                    .filter(|v| !v.is_empty())
                    .map(|v| (*v).to_owned()),
            }),
            _ => Err(Error::Invalid(format!(
                "{s:?} is not a platform; write os/arch[/variant], e.g. linux/arm64 or \
                 linux/arm/v7"
            ))),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// What to import into and how.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Stores, tags, workers for the pack step (the image tags are added to `tags`).
    pub pack: PackOptions,
    /// The platform to pick from a multi-platform image; `None` means linux/amd64 and accepts
    /// a single-platform image whatever its platform.
    pub platform: Option<Platform>,
    /// Talk plain HTTP to the registry (always done for loopback registries).
    pub insecure: bool,
    /// Raised (by a signal handler) to stop the import early; it then cleans up and fails.
    pub cancel: Option<Arc<AtomicBool>>,
}

/// A user's credentials for a private registry: sent as HTTP Basic auth, or traded for a
/// token where the registry asks for one. Its `Debug` hides the password, so a logged
/// options struct or error never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The registry user.
    pub username: String,
    /// Their password or access token.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"(hidden)")
            .finish()
    }
}

/// Told about an import as it goes. The [`Progress`] counts are bytes of layer blobs read
/// while layers are applied, then bytes of file content while packing.
pub trait ImportProgress: Progress {
    /// Layer `index` (from 1) of `count` starts; `size` is its size as stored, when known.
    fn layer(&self, _index: usize, _count: usize, _digest: &str, _size: Option<u64>) {}
    /// Every layer is applied; packing `bytes` of file content starts.
    fn packing(&self, _bytes: u64) {}
}

impl ImportProgress for crate::pack::NoProgress {}

/// One layer of an imported image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerReport {
    /// Digest of the blob as stored, when the format records one.
    pub digest: Option<String>,
    /// Digest of the uncompressed layer (from the image config).
    pub diff_id: Option<String>,
    /// Size as stored, when known.
    pub size: Option<u64>,
    /// Media type, when the format records one.
    pub media_type: String,
}

/// What an import did.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    /// The image as given.
    pub image: String,
    /// What was stored in the `zos.image.ref` tag: where the image came from and its digest,
    /// `docker://HOST/NAME:TAG@sha256:…` or `oci:/ABSOLUTE/PATH[:NAME]@sha256:…`.
    pub reference: String,
    /// The manifest digest (for a docker-archive, which has none, the image id).
    pub digest: String,
    /// The digest of the multi-platform index the manifest was picked from, if any.
    pub index_digest: Option<String>,
    /// The image id: the digest of its config.
    pub image_id: String,
    /// The platform of the image, from its config.
    pub platform: String,
    /// The layers, bottom first.
    pub layers: Vec<LayerReport>,
    /// The image config, as stored in the `zos.image` tag.
    pub config: ImageConfig,
    /// Device nodes that could not be created (only root can).
    pub devices_skipped: u64,
    /// Extended attributes the staging filesystem could not hold.
    pub xattrs_skipped: u64,
    /// The pack step.
    pub pack: PackReport,
}

/// Raised when the cancel flag stops an import.
#[derive(Debug)]
pub(crate) struct Cancelled;

impl fmt::Display for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("interrupted; nothing was written")
    }
}

impl std::error::Error for Cancelled {}

/// Where an image comes from.
enum Source {
    Layout(local::OciLayout, String),
    Archive(local::DockerArchive, String),
    Registry(Box<registry::Registry>),
}

impl Source {
    /// How to find the image again, without its digest: `docker://HOST/NAME:TAG`, or the
    /// detected format with the absolute path (`oci:/srv/images/app:1`), since the path as
    /// typed means nothing once the flist has moved elsewhere.
    fn reference(&self, image: &str) -> String {
        match self {
            Source::Layout(_, r) | Source::Archive(_, r) => r.clone(),
            Source::Registry(_) => image.split('@').next().unwrap_or(image).to_owned(),
        }
    }

    fn resolve(&mut self, platform: &Platform, explicit: bool) -> Result<spec::Resolved> {
        match self {
            Source::Layout(s, _) => s.resolve(platform, explicit),
            Source::Archive(s, _) => s.resolve(platform, explicit),
            Source::Registry(s) => s.resolve(platform, explicit),
        }
    }

    fn open_layer(&self, layer: &spec::LayerDesc) -> Result<Box<dyn std::io::Read + '_>> {
        match self {
            Source::Layout(s, _) => s.open_layer(layer),
            Source::Archive(s, _) => s.open_layer(layer),
            Source::Registry(s) => s.open_layer(layer),
        }
    }
}

/// Splits `PATH[:NAME]` where PATH exists: the whole string if it exists, else the shortest
/// existing prefix before a colon (names and tags may hold colons, paths rarely do).
fn split_path(s: &str) -> Option<(PathBuf, Option<String>)> {
    if Path::new(s).exists() {
        return Some((PathBuf::from(s), None));
    }
    s.match_indices(':').find_map(|(i, _)| {
        let (path, name) = (&s[..i], &s[i + 1..]);
        (!path.is_empty() && !name.is_empty() && Path::new(path).exists())
            .then(|| (PathBuf::from(path), Some(name.to_owned())))
    })
}

/// Opens the image `image` names. Local images are recognised by content; the `oci:`,
/// `oci-archive:` and `docker-archive:` prefixes are accepted and only strip off.
fn open_source(
    image: &str,
    scratch: &Path,
    opts: &ImportOptions,
    credentials: Option<&Credentials>,
) -> Result<Source> {
    if let Some(reference) = image.strip_prefix("docker://") {
        return Ok(Source::Registry(Box::new(registry::Registry::new(
            image,
            reference,
            opts.insecure,
            credentials,
            opts.cancel.clone(),
        )?)));
    }
    if credentials.is_some() {
        return Err(Error::Invalid(format!(
            "{image}: credentials are for registry images (docker://…), not local files"
        )));
    }
    let spec = ["oci:", "oci-archive:", "docker-archive:"]
        .iter()
        .find_map(|p| image.strip_prefix(p))
        .unwrap_or(image);
    let (path, name) = split_path(spec).ok_or_else(|| {
        let hint = if !spec.starts_with(['.', '/']) && spec.contains([':', '/']) {
            format!(" To pull it from a registry, write docker://{spec}")
        } else {
            String::new()
        };
        Error::Invalid(format!("{image}: no such file or directory.{hint}"))
    })?;
    let files = local::Files::open(&path, scratch, image)?;
    let absolute = std::fs::canonicalize(&path).unwrap_or(path);
    let reference = |kind: &str| match &name {
        Some(n) => format!("{kind}:{}:{n}", absolute.display()),
        None => format!("{kind}:{}", absolute.display()),
    };
    Ok(match local::detect(&files, image)? {
        local::Layout::Oci => Source::Layout(
            local::OciLayout {
                files,
                image: image.to_owned(),
                name: name.clone(),
            },
            reference("oci"),
        ),
        local::Layout::DockerArchive => Source::Archive(
            local::DockerArchive {
                files,
                image: image.to_owned(),
                name: name.clone(),
            },
            reference("docker-archive"),
        ),
    })
}

/// The private directory an import works in, next to the output (so the final rename stays
/// on one filesystem). Removed on drop, even when an image left directories without write
/// permission in it.
struct Staging {
    dir: Option<tempfile::TempDir>,
}

impl Staging {
    fn path(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new(""), |d| d.path())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else {
            return;
        };
        let path = dir.path().to_owned();
        if std::fs::remove_dir_all(&path).is_err() {
            // Only a non-root import can be stopped by a read-only directory: open them up.
            let mut stack = vec![path.clone()];
            while let Some(d) = stack.pop() {
                let _ = std::fs::set_permissions(
                    &d,
                    std::os::unix::fs::PermissionsExt::from_mode(0o700),
                );
                if let Ok(rd) = std::fs::read_dir(&d) {
                    stack.extend(
                        rd.filter_map(|e| e.ok())
                            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                            .map(|e| e.path()),
                    );
                }
            }
            if let Err(e) = std::fs::remove_dir_all(&path) {
                tracing::error!("{}: staging directory not removed: {e}", path.display());
            }
        }
        drop(dir);
    }
}

/// Passes pack's progress on to the import's.
struct PackProgress<'a>(&'a dyn ImportProgress);

impl Progress for PackProgress<'_> {
    fn entry(&self) {
        self.0.entry();
    }
    fn bytes(&self, n: u64) {
        self.0.bytes(n);
    }
}

/// Imports `image` into a new flist at `output`. `image` is a path (a docker save tarball or
/// an OCI layout, as a directory or tarball, optionally prefixed `docker-archive:`, `oci:` or
/// `oci-archive:` and suffixed `:NAME` to pick one of several images), or
/// `docker://HOST[:PORT]/NAME:TAG` (or `@sha256:…`) for a registry.
pub fn import(
    image: &str,
    output: &Path,
    opts: &ImportOptions,
    progress: &dyn ImportProgress,
) -> Result<ImportReport> {
    import_with(image, output, opts, None, progress)
}

/// [`import`], pulling a registry image with `credentials` (anonymously when `None`).
pub fn import_with(
    image: &str,
    output: &Path,
    opts: &ImportOptions,
    credentials: Option<&Credentials>,
    progress: &dyn ImportProgress,
) -> Result<ImportReport> {
    // Everything that can be checked before any download is checked first.
    if opts.pack.stores.is_empty() {
        return Err(Error::Invalid(
            "no store given: pass at least one --store, e.g. --store dir:///var/lib/zos/store"
                .into(),
        ));
    }
    crate::store::Router::from_specs(&opts.pack.stores)?;
    if let Some((key, _)) = opts
        .pack
        .tags
        .iter()
        .find(|(k, _)| k == IMAGE_TAG || k.starts_with("zos.image."))
    {
        return Err(Error::Invalid(format!(
            "tag {key:?}: the zos.image tags are set by the import itself; pick another name"
        )));
    }
    let name = output
        .file_name()
        .filter(|_| !output.is_dir())
        .ok_or_else(|| {
            Error::Invalid(format!("{}: output must be a file name", output.display()))
        })?;
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let staging = Staging {
        dir: Some(
            tempfile::Builder::new()
                .prefix(&format!(".{}.", name.to_string_lossy()))
                .suffix(".import")
                .tempdir_in(parent)
                .at(parent)?,
        ),
    };
    let result = run(
        image,
        output,
        opts,
        credentials,
        progress,
        staging.path(),
        name,
    );
    drop(staging);
    let cancelled = opts
        .cancel
        .as_ref()
        .is_some_and(|c| c.load(Ordering::Relaxed));
    match result {
        Err(_) if cancelled => Err(Error::Invalid(Cancelled.to_string())),
        other => other,
    }
}

/// Where a registry image's reference leads now, without pulling its layers: the reference
/// [`ImportReport::reference`] would hold (`docker://HOST/NAME:TAG@sha256:…`, the manifest
/// for the platform `opts` asks for). Pulling the manifests and config with `credentials`
/// also proves they may read the image.
pub fn locate(
    image: &str,
    opts: &ImportOptions,
    credentials: Option<&Credentials>,
) -> Result<String> {
    let reference = image.strip_prefix("docker://").ok_or_else(|| {
        Error::Invalid(format!(
            "{image}: only registry images (docker://…) can be located"
        ))
    })?;
    let mut source = Source::Registry(Box::new(registry::Registry::new(
        image,
        reference,
        opts.insecure,
        credentials,
        opts.cancel.clone(),
    )?));
    let platform = opts.platform.clone().unwrap_or_default();
    let resolved = source.resolve(&platform, opts.platform.is_some())?;
    Ok(format!("{}@{}", source.reference(image), resolved.digest))
}

fn run(
    image: &str,
    output: &Path,
    opts: &ImportOptions,
    credentials: Option<&Credentials>,
    progress: &dyn ImportProgress,
    staging: &Path,
    name: &std::ffi::OsStr,
) -> Result<ImportReport> {
    let cancel = opts.cancel.as_deref();
    let mut source = open_source(image, &staging.join("image.tar"), opts, credentials)?;
    let platform = opts.platform.clone().unwrap_or_default();
    let resolved = source.resolve(&platform, opts.platform.is_some())?;

    let rootfs = staging.join("rootfs");
    let mut tree = apply::Tree::new(&rootfs)?;
    let count = resolved.layers.len();
    for (i, layer) in resolved.layers.iter().enumerate() {
        let shown = layer
            .digest
            .as_ref()
            .or(layer.diff_id.as_ref())
            .map(|d| d.to_string())
            .unwrap_or_default();
        progress.layer(i + 1, count, &shown, layer.size);
        let at = format!(
            "layer {}/{count} {} of {image}",
            i + 1,
            layer
                .digest
                .as_ref()
                .or(layer.diff_id.as_ref())
                .map(|d| d.short() + "…")
                .unwrap_or_default()
        );
        let raw = source.open_layer(layer)?;
        apply::apply_layer(&mut tree, raw, layer, &at, progress, cancel)?;
    }
    tree.finish()?;

    let config = ImageConfig::from_config(&resolved.config, resolved.healthcheck.clone());
    let reference = format!("{}@{}", source.reference(image), resolved.digest);
    let mut pack_opts = opts.pack.clone();
    let config_json = serde_json::to_string(&config)
        .map_err(|e| Error::Invalid(format!("cannot encode the image config: {e}")))?;
    pack_opts.tags.splice(
        0..0,
        [
            (IMAGE_TAG.to_owned(), config_json),
            (IMAGE_REF_TAG.to_owned(), reference.clone()),
        ],
    );
    progress.packing(crate::pack::content_bytes(&rootfs));
    let staged = staging.join(name);
    let pack = crate::pack::pack(&rootfs, &staged, &pack_opts, &PackProgress(progress))?;
    if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
        return Err(Error::Invalid(Cancelled.to_string()));
    }
    std::fs::rename(&staged, output).at(output)?;

    let platform = {
        let c = &resolved.config;
        let mut p = format!("{}/{}", c.os(), c.architecture());
        if let Some(v) = c.variant().as_deref().filter(|v| !v.is_empty()) {
            p = format!("{p}/{v}");
        }
        p
    };
    Ok(ImportReport {
        image: image.to_owned(),
        reference,
        digest: resolved.digest.to_string(),
        index_digest: resolved.index_digest.as_ref().map(|d| d.to_string()),
        image_id: resolved.config_digest.to_string(),
        platform,
        layers: resolved
            .layers
            .iter()
            .map(|l| LayerReport {
                digest: l.digest.as_ref().map(|d| d.to_string()),
                diff_id: l.diff_id.as_ref().map(|d| d.to_string()),
                size: l.size,
                media_type: l.media_type.clone(),
            })
            .collect(),
        config,
        devices_skipped: tree.skipped.devices,
        xattrs_skipped: tree.skipped.xattrs,
        pack,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_parse_and_print() {
        let p: Platform = "linux/arm/v7".parse().unwrap();
        assert_eq!(p.variant.as_deref(), Some("v7"));
        assert_eq!(p.to_string(), "linux/arm/v7");
        let p: Platform = "linux/x86_64".parse().unwrap();
        assert_eq!(p.to_string(), "linux/amd64");
        assert!("amd64".parse::<Platform>().is_err());
        assert!("linux/".parse::<Platform>().is_err());
        assert_eq!(Platform::default().to_string(), "linux/amd64");
    }

    #[test]
    fn image_config_round_trips_through_a_tag() {
        let dir = tempfile::tempdir().unwrap();
        let (tree, path) = (dir.path().join("tree"), dir.path().join("a.fl"));
        std::fs::create_dir(&tree).unwrap();
        let config = ImageConfig {
            entrypoint: vec!["/bin/sh".into(), "-c".into()],
            env: vec!["A=1".into()],
            ..ImageConfig::default()
        };
        let opts = PackOptions {
            stores: vec![crate::StoreSpec::parse(&format!(
                "dir://{}",
                dir.path().join("store").display()
            ))
            .unwrap()],
            tags: vec![(IMAGE_TAG.into(), serde_json::to_string(&config).unwrap())],
            ..PackOptions::default()
        };
        crate::pack(&tree, &path, &opts, &crate::NoProgress).unwrap();
        let flist = Flist::open_rw(&path).unwrap();
        assert_eq!(image_config(&flist).unwrap(), Some(config));
        flist.set_tag(IMAGE_TAG, "{not json").unwrap();
        let err = image_config(&flist).unwrap_err().to_string();
        assert!(err.contains("not hold a valid image config"), "{err}");
        flist.remove_tag(IMAGE_TAG).unwrap();
        assert_eq!(image_config(&flist).unwrap(), None);
    }
}
