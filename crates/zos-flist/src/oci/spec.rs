//! The parts of the OCI image spec (and Docker's v2 formats, its ancestors) an import reads:
//! indexes, manifests, descriptors, the image config, and how an index entry is chosen for a
//! platform. Everything here is parsed from untrusted input, so every field has a default and
//! every problem becomes an error naming the image.

use super::digest::Digest;
use super::Platform;
use crate::error::{Error, Result};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Manifests and configs are small; anything larger is refused rather than loaded.
pub(crate) const SMALL_BLOB_LIMIT: u64 = 16 << 20;

/// Media types a registry is asked for, and that an import understands.
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// The annotation an OCI layout uses for the tag of an image in `index.json`.
pub(crate) const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The annotation `docker save` and containerd add with the full image name.
pub(crate) const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// A pointer to a blob: what it is, its digest and size, and for index entries the platform.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: Option<i64>,
    pub platform: Option<PlatformSpec>,
    pub annotations: BTreeMap<String, String>,
}

/// The platform of an index entry, as the spec spells it.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub(crate) struct PlatformSpec {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Descriptor {
    /// The digest, validated; `what` names the blob for the error.
    pub(crate) fn digest(&self, image: &str, what: &str) -> Result<Digest> {
        Digest::parse(&self.digest)
            .map_err(|e| Error::Invalid(format!("{image}: {what} has a bad digest: {e}")))
    }

    /// The declared size, if it is a sensible one.
    pub(crate) fn size(&self) -> Option<u64> {
        self.size.and_then(|s| u64::try_from(s).ok())
    }

    fn platform_name(&self) -> Option<String> {
        self.platform.as_ref().map(|p| {
            let mut s = format!("{}/{}", p.os, normalize_arch(&p.architecture));
            if let Some(v) = p.variant.as_deref().filter(|v| !v.is_empty()) {
                s.push('/');
                s.push_str(v);
            }
            s
        })
    }
}

/// An image index (OCI) or manifest list (Docker): one manifest per platform.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct Index {
    pub manifests: Vec<Descriptor>,
}

/// An image manifest: the config blob and the layers, bottom first.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct Manifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// Just enough of any manifest-like document to tell what it is.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Probe {
    schema_version: Option<i64>,
    media_type: Option<String>,
    manifests: Option<serde_json::Value>,
    layers: Option<serde_json::Value>,
    fs_layers: Option<serde_json::Value>,
}

/// A manifest-like document, classified.
pub(crate) enum Document {
    Index(Index),
    Manifest(Manifest),
}

/// Classifies and parses a manifest or index. `what` says where it came from, for errors.
pub(crate) fn parse_document(bytes: &[u8], image: &str, what: &str) -> Result<Document> {
    let probe: Probe = serde_json::from_slice(bytes).map_err(|e| {
        Error::Invalid(format!(
            "{image}: the {what} is not an image manifest or index: {e} (it starts with {:?}); \
             is this really a container image?",
            snippet(bytes)
        ))
    })?;
    if probe.fs_layers.is_some() || probe.schema_version == Some(1) {
        return Err(Error::Invalid(format!(
            "{image}: the {what} is a Docker schema 1 manifest, which is obsolete and not \
             supported; push the image again with a current Docker or skopeo"
        )));
    }
    let media_type = probe.media_type.unwrap_or_default();
    let is_index = media_type == OCI_INDEX
        || media_type == DOCKER_LIST
        || (media_type.is_empty() && probe.manifests.is_some() && probe.layers.is_none());
    let is_manifest = media_type == OCI_MANIFEST
        || media_type == DOCKER_MANIFEST
        || (media_type.is_empty() && probe.layers.is_some());
    let bad = |e: serde_json::Error| {
        Error::Invalid(format!(
            "{image}: the {what} ({media_type}) is malformed: {e}"
        ))
    };
    if is_index {
        Ok(Document::Index(serde_json::from_slice(bytes).map_err(bad)?))
    } else if is_manifest {
        Ok(Document::Manifest(
            serde_json::from_slice(bytes).map_err(bad)?,
        ))
    } else {
        Err(Error::Invalid(format!(
            "{image}: the {what} has media type {media_type:?}, which is not an image manifest \
             or index (an OCI artifact such as a Helm chart or a signature?)"
        )))
    }
}

/// The start of some bytes that should have been JSON, printable, for an error message.
pub(crate) fn snippet(bytes: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(&bytes[..bytes.len().min(60)])
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    text.trim().to_owned()
}

/// The image config blob: the runtime defaults and the uncompressed layer digests.
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub(crate) struct ConfigFile {
    pub architecture: String,
    pub os: String,
    pub variant: Option<String>,
    pub config: Option<RunConfig>,
    pub rootfs: Option<RootFs>,
}

/// The `config` object of an image config (Docker's capitalised names).
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub(crate) struct RunConfig {
    #[serde(rename = "Entrypoint")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd")]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "Env")]
    pub env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir")]
    pub working_dir: Option<String>,
    #[serde(rename = "User")]
    pub user: Option<String>,
    #[serde(rename = "ExposedPorts")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(rename = "Labels")]
    pub labels: Option<BTreeMap<String, String>>,
}

/// The layer list of an image config.
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub(crate) struct RootFs {
    pub diff_ids: Vec<String>,
}

/// Parses an image config blob, checking its media type when the manifest gives one.
pub(crate) fn parse_config(bytes: &[u8], media_type: &str, image: &str) -> Result<ConfigFile> {
    if !media_type.is_empty() && media_type != OCI_CONFIG && media_type != DOCKER_CONFIG {
        return Err(Error::Invalid(format!(
            "{image}: not a container image: its config has media type {media_type:?} (an OCI \
             artifact such as a Helm chart, a WebAssembly module or a signature?)"
        )));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        Error::Invalid(format!(
            "{image}: the image config is not valid JSON: {e} (it starts with {:?})",
            snippet(bytes)
        ))
    })
}

/// Docker and Go use `amd64`/`arm64`; uname and some tools say `x86_64`/`aarch64`.
pub(crate) fn normalize_arch(arch: &str) -> &str {
    match arch {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The variant a platform has when none is written (`arm64` is `v8`).
fn default_variant(arch: &str) -> Option<&'static str> {
    match arch {
        "arm64" => Some("v8"),
        _ => None,
    }
}

fn variant_matches(want: &Platform, have: Option<&str>) -> bool {
    let arch = normalize_arch(&want.architecture);
    let have = have.filter(|v| !v.is_empty()).or(default_variant(arch));
    match want.variant.as_deref() {
        None => true,
        Some(w) => Some(w) == have,
    }
}

/// Whether an image config (os, architecture, variant) is for `want`.
pub(crate) fn config_matches(config: &ConfigFile, want: &Platform) -> bool {
    config.os == want.os
        && normalize_arch(&config.architecture) == normalize_arch(&want.architecture)
        && variant_matches(want, config.variant.as_deref())
}

/// Picks the entry of an index for `want`. Entries without a platform, or for the `unknown`
/// platform (build attestations), are never picked. When no variant is asked for, an entry
/// without one is preferred, then the first. The error lists what the index does have.
pub(crate) fn pick_platform<'a>(
    manifests: &'a [Descriptor],
    want: &Platform,
    image: &str,
) -> Result<&'a Descriptor> {
    let arch = normalize_arch(&want.architecture);
    let candidates: Vec<&Descriptor> = manifests
        .iter()
        .filter(|d| {
            d.platform.as_ref().is_some_and(|p| {
                p.os == want.os
                    && normalize_arch(&p.architecture) == arch
                    && variant_matches(want, p.variant.as_deref())
            })
        })
        .collect();
    let plain = candidates.iter().find(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.variant.as_deref().unwrap_or("").is_empty())
    });
    if let Some(d) = plain.or(candidates.first()) {
        return Ok(d);
    }
    let mut available: Vec<String> = manifests
        .iter()
        .filter(|d| d.platform.as_ref().is_some_and(|p| p.os != "unknown"))
        .filter_map(Descriptor::platform_name)
        .collect();
    available.dedup();
    Err(Error::Invalid(if available.is_empty() {
        format!(
            "{image}: the image index names no platforms, so none can be chosen for {want}; \
             refer to one of its manifests by digest instead"
        )
    } else {
        format!(
            "{image}: no {want} image; it has {}. Pick one with --platform, e.g. --platform {}",
            available.join(", "),
            available[0]
        )
    }))
}

/// Where the manifests and blobs of an OCI-style image (a layout or a registry) come from.
pub(crate) trait ManifestSource {
    /// The bytes of the manifest or index `descriptor` points to, verified against its digest.
    fn manifest(&mut self, descriptor: &Descriptor, digest: &Digest) -> Result<Vec<u8>>;
    /// The bytes of a small blob (the config), verified against its digest.
    fn small_blob(&mut self, descriptor: &Descriptor, digest: &Digest) -> Result<Vec<u8>>;
}

/// A layer to apply: where to read it from and what to check it against.
#[derive(Debug, Clone)]
pub(crate) struct LayerDesc {
    /// Digest of the blob as stored (compressed), when the format records one.
    pub digest: Option<Digest>,
    /// Digest of the uncompressed tar, from the image config.
    pub diff_id: Option<Digest>,
    /// Declared size of the blob as stored.
    pub size: Option<u64>,
    /// Media type, when the format records one.
    pub media_type: String,
    /// Path of the blob inside a docker-archive (other sources find blobs by digest).
    pub path: Option<String>,
}

/// An image found in a source, ready to be applied.
#[derive(Debug)]
pub(crate) struct Resolved {
    /// The manifest digest, or the image id (config digest) for a docker-archive.
    pub digest: Digest,
    /// The index the manifest was picked from, if any.
    pub index_digest: Option<Digest>,
    /// The image id: the digest of the config.
    pub config_digest: Digest,
    /// The parsed config.
    pub config: ConfigFile,
    /// Layers, bottom first.
    pub layers: Vec<LayerDesc>,
}

/// Starting from a manifest or index document (`bytes`, whose digest is `digest`), descends
/// through indexes to the manifest for the platform, then reads the config and lists the
/// layers. `explicit` says whether the platform was asked for (then a single-platform image
/// must match it) or is the default.
pub(crate) fn resolve(
    source: &mut dyn ManifestSource,
    image: &str,
    mut bytes: Vec<u8>,
    mut digest: Digest,
    platform: &Platform,
    explicit: bool,
) -> Result<Resolved> {
    let mut index_digest = None;
    // Indexes may nest (an index entry pointing at another index); a few levels is plenty and
    // the bound keeps a malicious loop of indexes from running forever.
    for _ in 0..4 {
        let what = if index_digest.is_some() {
            format!("manifest {digest}")
        } else {
            "manifest".to_owned()
        };
        match parse_document(&bytes, image, &what)? {
            Document::Index(index) => {
                let entry = pick_platform(&index.manifests, platform, image)?;
                let entry_digest = entry.digest(image, "an index entry")?;
                index_digest = Some(digest);
                bytes = source.manifest(entry, &entry_digest)?;
                digest = entry_digest;
            }
            Document::Manifest(manifest) => {
                return from_manifest(
                    source,
                    image,
                    manifest,
                    digest,
                    index_digest,
                    platform,
                    explicit,
                )
            }
        }
    }
    Err(Error::Invalid(format!(
        "{image}: image indexes nest too deeply; this is not a usable image"
    )))
}

fn from_manifest(
    source: &mut dyn ManifestSource,
    image: &str,
    manifest: Manifest,
    digest: Digest,
    index_digest: Option<Digest>,
    platform: &Platform,
    explicit: bool,
) -> Result<Resolved> {
    let config_digest = manifest.config.digest(image, "the config")?;
    let bytes = source.small_blob(&manifest.config, &config_digest)?;
    let config = parse_config(&bytes, &manifest.config.media_type, image)?;
    if explicit && !config_matches(&config, platform) {
        return Err(Error::Invalid(format!(
            "{image}: this image is for {}/{}{}, not {platform}; leave out --platform to import \
             it anyway",
            config.os,
            config.architecture,
            config
                .variant
                .as_deref()
                .map(|v| format!("/{v}"))
                .unwrap_or_default()
        )));
    }
    let diff_ids = diff_ids(&config, manifest.layers.len(), image)?;
    let layers = manifest
        .layers
        .iter()
        .zip(diff_ids)
        .enumerate()
        .map(|(i, (d, diff_id))| {
            if !d.media_type.is_empty() && !d.media_type.contains("tar") {
                return Err(Error::Invalid(format!(
                    "{image}: layer {} has media type {:?}, which is not a filesystem layer; \
                     this is not a container image",
                    i + 1,
                    d.media_type
                )));
            }
            Ok(LayerDesc {
                digest: Some(d.digest(image, &format!("layer {}", i + 1))?),
                diff_id: Some(diff_id),
                size: d.size(),
                media_type: d.media_type.clone(),
                path: None,
            })
        })
        .collect::<Result<_>>()?;
    Ok(Resolved {
        digest,
        index_digest,
        config_digest,
        config,
        layers,
    })
}

/// The config's `rootfs.diff_ids`, which must list exactly one digest per layer.
pub(crate) fn diff_ids(config: &ConfigFile, layers: usize, image: &str) -> Result<Vec<Digest>> {
    let ids = config
        .rootfs
        .as_ref()
        .map(|r| r.diff_ids.as_slice())
        .unwrap_or_default();
    if ids.len() != layers {
        return Err(Error::Invalid(format!(
            "{image}: the image config lists {} layer digests (rootfs.diff_ids) but the manifest \
             has {layers} layers; the image is inconsistent",
            ids.len()
        )));
    }
    ids.iter()
        .map(|id| {
            Digest::parse(id).map_err(|e| {
                Error::Invalid(format!(
                    "{image}: the image config has a bad layer digest: {e}"
                ))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(os: &str, arch: &str, variant: Option<&str>, digest: &str) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: digest.into(),
            platform: Some(PlatformSpec {
                os: os.into(),
                architecture: arch.into(),
                variant: variant.map(str::to_owned),
            }),
            ..Descriptor::default()
        }
    }

    #[test]
    fn picks_platforms_and_lists_the_others() {
        let list = vec![
            entry("unknown", "unknown", None, "att"),
            entry("linux", "arm", Some("v7"), "armv7"),
            entry("linux", "arm64", Some("v8"), "arm64"),
            entry("linux", "amd64", None, "amd64"),
        ];
        let pick =
            |p: &str| pick_platform(&list, &p.parse().unwrap(), "img").map(|d| d.digest.clone());
        assert_eq!(pick("linux/amd64").unwrap(), "amd64");
        assert_eq!(pick("linux/x86_64").unwrap(), "amd64");
        assert_eq!(pick("linux/arm64").unwrap(), "arm64");
        assert_eq!(pick("linux/arm64/v8").unwrap(), "arm64");
        assert_eq!(pick("linux/arm/v7").unwrap(), "armv7");
        let err = pick("linux/s390x").unwrap_err().to_string();
        assert!(
            err.contains("linux/arm/v7, linux/arm64/v8, linux/amd64"),
            "{err}"
        );
        assert!(!err.contains("unknown"), "{err}");
    }

    #[test]
    fn classifies_documents() {
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            parse_document(index, "i", "m"),
            Ok(Document::Index(_))
        ));
        let manifest = br#"{"schemaVersion":2,"config":{},"layers":[]}"#;
        assert!(matches!(
            parse_document(manifest, "i", "m"),
            Ok(Document::Manifest(_))
        ));
        let html = b"<html><body>hello</body></html>";
        let err = parse_document(html, "img", "manifest")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("<html>"), "{err}");
        let v1 = br#"{"schemaVersion":1,"fsLayers":[]}"#;
        assert!(parse_document(v1, "i", "m")
            .err()
            .unwrap()
            .to_string()
            .contains("schema 1"));
    }
}
