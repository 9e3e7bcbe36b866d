//! The parts of the OCI image spec (and Docker's v2 formats, its ancestors) an import reads:
//! indexes, manifests, descriptors, the image config, and how an index entry is chosen for a
//! platform. The documents themselves are `oci-spec`'s types (Docker's v2 formats are
//! JSON-compatible with them for every field read here); this module classifies them, checks
//! media types and picks platforms. Everything is parsed from untrusted input, so every
//! problem becomes an error naming the image.

use super::digest::Digest;
use super::Platform;
use crate::error::{Error, Result};
pub(crate) use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use oci_spec::image::{MediaType, ToDockerV2S2};
use serde::Deserialize;

/// Manifests and configs are small; anything larger is refused rather than loaded.
pub(crate) const SMALL_BLOB_LIMIT: u64 = 16 << 20;

/// The annotation an OCI layout uses for the tag of an image in `index.json`.
pub(crate) use oci_spec::image::ANNOTATION_REF_NAME as REF_NAME;
/// The annotation `docker save` and containerd add with the full image name.
pub(crate) const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// Whether `media_type` is the OCI type `oci` or its Docker v2 schema 2 equivalent.
fn is_type(media_type: &str, oci: &MediaType) -> bool {
    media_type == oci.to_string() || oci.to_docker_v2s2().is_ok_and(|d| d == media_type)
}

/// Reading a descriptor the way an import needs it.
pub(crate) trait DescriptorExt {
    /// The digest, validated; `what` names the blob for the error.
    fn checked_digest(&self, image: &str, what: &str) -> Result<Digest>;
    /// An annotation, if present.
    fn annotation(&self, key: &str) -> Option<&String>;
    /// `os/arch[/variant]`, for index entries with a platform.
    fn platform_name(&self) -> Option<String>;
}

impl DescriptorExt for Descriptor {
    fn checked_digest(&self, image: &str, what: &str) -> Result<Digest> {
        Digest::parse(self.digest().as_ref())
            .map_err(|e| Error::Invalid(format!("{image}: {what} has a bad digest: {e}")))
    }

    fn annotation(&self, key: &str) -> Option<&String> {
        self.annotations().as_ref().and_then(|a| a.get(key))
    }

    fn platform_name(&self) -> Option<String> {
        self.platform().as_ref().map(|p| {
            let arch = p.architecture().to_string();
            let mut s = format!("{}/{}", p.os(), normalize_arch(&arch));
            if let Some(v) = p.variant().as_deref().filter(|v| !v.is_empty()) {
                s.push('/');
                s.push_str(v);
            }
            s
        })
    }
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
    Index(Box<ImageIndex>),
    Manifest(Box<ImageManifest>),
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
    let is_index = is_type(&media_type, &MediaType::ImageIndex)
        || (media_type.is_empty() && probe.manifests.is_some() && probe.layers.is_none());
    let is_manifest = is_type(&media_type, &MediaType::ImageManifest)
        || (media_type.is_empty() && probe.layers.is_some());
    let bad = |e: serde_json::Error| {
        Error::Invalid(format!(
            "{image}: the {what} ({media_type}) is malformed: {e}"
        ))
    };
    if is_index {
        Ok(Document::Index(Box::new(
            serde_json::from_slice(bytes).map_err(bad)?,
        )))
    } else if is_manifest {
        Ok(Document::Manifest(Box::new(
            serde_json::from_slice(bytes).map_err(bad)?,
        )))
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

/// Parses an image config blob, checking its media type when the manifest gives one.
pub(crate) fn parse_config(
    bytes: &[u8],
    media_type: &str,
    image: &str,
) -> Result<ImageConfiguration> {
    if !media_type.is_empty() && !is_type(media_type, &MediaType::ImageConfig) {
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

/// Whether an os, architecture and variant (of a config or an index entry) are `want`.
fn platform_matches(os: &str, arch: &str, variant: Option<&str>, want: &Platform) -> bool {
    os == want.os
        && normalize_arch(arch) == normalize_arch(&want.architecture)
        && variant_matches(want, variant)
}

/// Whether an image config (os, architecture, variant) is for `want`.
pub(crate) fn config_matches(config: &ImageConfiguration, want: &Platform) -> bool {
    platform_matches(
        &config.os().to_string(),
        &config.architecture().to_string(),
        config.variant().as_deref(),
        want,
    )
}

/// Picks the entry of an index for `want`. Entries without a platform, or for the `unknown`
/// platform (build attestations), are never picked. When no variant is asked for, an entry
/// without one is preferred, then the first. The error lists what the index does have.
pub(crate) fn pick_platform<'a>(
    manifests: &'a [Descriptor],
    want: &Platform,
    image: &str,
) -> Result<&'a Descriptor> {
    let candidates: Vec<&Descriptor> = manifests
        .iter()
        .filter(|d| {
            d.platform().as_ref().is_some_and(|p| {
                platform_matches(
                    &p.os().to_string(),
                    &p.architecture().to_string(),
                    p.variant().as_deref(),
                    want,
                )
            })
        })
        .collect();
    let plain = candidates.iter().find(|d| {
        d.platform()
            .as_ref()
            .is_some_and(|p| p.variant().as_deref().unwrap_or("").is_empty())
    });
    if let Some(d) = plain.or(candidates.first()) {
        return Ok(d);
    }
    let mut available: Vec<String> = manifests
        .iter()
        .filter(|d| {
            d.platform()
                .as_ref()
                .is_some_and(|p| p.os().to_string() != "unknown")
        })
        .filter_map(DescriptorExt::platform_name)
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
    pub config: ImageConfiguration,
    /// Its Docker `Healthcheck`, which the OCI config type does not carry.
    pub healthcheck: Option<super::ImageHealthcheck>,
    /// Layers, bottom first.
    pub layers: Vec<LayerDesc>,
}

/// The Docker `config.Healthcheck` of a raw image config, if it has one that runs something:
/// `["CMD", prog, args…]` or `["CMD-SHELL", "command"]` (through `/bin/sh -c`); `["NONE"]`
/// and an empty test are none. Durations are nanoseconds there; zero means Docker's default.
pub(crate) fn healthcheck_of(bytes: &[u8]) -> Option<super::ImageHealthcheck> {
    let raw: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let h = raw.get("config")?.get("Healthcheck")?;
    let test: Vec<String> = serde_json::from_value(h.get("Test")?.clone()).ok()?;
    let argv = match test.split_first()? {
        (kind, rest) if kind == "CMD" && !rest.is_empty() => rest.to_vec(),
        (kind, [command]) if kind == "CMD-SHELL" => {
            vec!["/bin/sh".into(), "-c".into(), command.clone()]
        }
        _ => return None,
    };
    let secs = |field: &str, default: u32| {
        let ns = h
            .get(field)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        match ns / 1_000_000_000 {
            0 => default,
            s => u32::try_from(s).unwrap_or(u32::MAX),
        }
    };
    let retries = h.get("Retries").and_then(serde_json::Value::as_u64);
    Some(super::ImageHealthcheck {
        test: argv,
        interval_secs: secs("Interval", 30),
        timeout_secs: secs("Timeout", 30),
        retries: retries.filter(|r| *r > 0).map_or(3, |r| r.min(1000) as u32),
        start_period_secs: secs("StartPeriod", 0),
    })
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
                let entry = pick_platform(index.manifests(), platform, image)?;
                let entry_digest = entry.checked_digest(image, "an index entry")?;
                index_digest = Some(digest);
                bytes = source.manifest(entry, &entry_digest)?;
                digest = entry_digest;
            }
            Document::Manifest(manifest) => {
                return from_manifest(
                    source,
                    image,
                    &manifest,
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
    manifest: &ImageManifest,
    digest: Digest,
    index_digest: Option<Digest>,
    platform: &Platform,
    explicit: bool,
) -> Result<Resolved> {
    let config_digest = manifest.config().checked_digest(image, "the config")?;
    let bytes = source.small_blob(manifest.config(), &config_digest)?;
    let media_type = manifest.config().media_type().to_string();
    let config = parse_config(&bytes, &media_type, image)?;
    let healthcheck = healthcheck_of(&bytes);
    if explicit && !config_matches(&config, platform) {
        return Err(Error::Invalid(format!(
            "{image}: this image is for {}/{}{}, not {platform}; leave out --platform to import \
             it anyway",
            config.os(),
            config.architecture(),
            config
                .variant()
                .as_deref()
                .map(|v| format!("/{v}"))
                .unwrap_or_default()
        )));
    }
    let diff_ids = diff_ids(&config, manifest.layers().len(), image)?;
    let layers = manifest
        .layers()
        .iter()
        .zip(diff_ids)
        .enumerate()
        .map(|(i, (d, diff_id))| {
            let media_type = d.media_type().to_string();
            if !media_type.is_empty() && !media_type.contains("tar") {
                return Err(Error::Invalid(format!(
                    "{image}: layer {} has media type {:?}, which is not a filesystem layer; \
                     this is not a container image",
                    i + 1,
                    media_type
                )));
            }
            Ok(LayerDesc {
                digest: Some(d.checked_digest(image, &format!("layer {}", i + 1))?),
                diff_id: Some(diff_id),
                size: Some(d.size()),
                media_type,
                path: None,
            })
        })
        .collect::<Result<_>>()?;
    Ok(Resolved {
        digest,
        index_digest,
        config_digest,
        config,
        healthcheck,
        layers,
    })
}

/// The config's `rootfs.diff_ids`, which must list exactly one digest per layer.
pub(crate) fn diff_ids(
    config: &ImageConfiguration,
    layers: usize,
    image: &str,
) -> Result<Vec<Digest>> {
    let ids = config.rootfs().diff_ids();
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

    #[test]
    fn docker_healthchecks_are_read_from_the_raw_config() {
        let with =
            |h: &str| healthcheck_of(format!(r#"{{"config":{{"Healthcheck":{h}}}}}"#).as_bytes());
        let shell = with(r#"{"Test":["CMD-SHELL","curl -f http://localhost/"],"Interval":5000000000,"Retries":2}"#)
            .unwrap();
        assert_eq!(shell.test, ["/bin/sh", "-c", "curl -f http://localhost/"]);
        assert_eq!(
            (shell.interval_secs, shell.timeout_secs, shell.retries),
            (5, 30, 2)
        );
        let cmd = with(r#"{"Test":["CMD","/bin/check","--quick"]}"#).unwrap();
        assert_eq!(cmd.test, ["/bin/check", "--quick"]);
        assert_eq!(with(r#"{"Test":["NONE"]}"#), None);
        assert_eq!(healthcheck_of(br#"{"config":{}}"#), None);
    }
    use oci_spec::image::{Os, Platform as OciPlatform};

    /// A fake but well-formed digest standing for `name`.
    fn fake_digest(name: &str) -> String {
        let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex:0<64}")
    }

    fn entry(os: &str, arch: &str, variant: Option<&str>, name: &str) -> Descriptor {
        let mut platform = OciPlatform::default();
        platform.set_os(Os::from(os));
        platform.set_architecture(arch.into());
        platform.set_variant(variant.map(str::to_owned));
        let mut d = Descriptor::new(
            MediaType::ImageManifest,
            0,
            fake_digest(name)
                .parse::<oci_spec::image::Digest>()
                .unwrap(),
        );
        d.set_platform(Some(platform));
        d
    }

    #[test]
    fn picks_platforms_and_lists_the_others() {
        let list = vec![
            entry("unknown", "unknown", None, "att"),
            entry("linux", "arm", Some("v7"), "armv7"),
            entry("linux", "arm64", Some("v8"), "arm64"),
            entry("linux", "amd64", None, "amd64"),
        ];
        let pick = |p: &str| {
            pick_platform(&list, &p.parse().unwrap(), "img").map(|d| d.digest().to_string())
        };
        assert_eq!(pick("linux/amd64").unwrap(), fake_digest("amd64"));
        assert_eq!(pick("linux/x86_64").unwrap(), fake_digest("amd64"));
        assert_eq!(pick("linux/arm64").unwrap(), fake_digest("arm64"));
        assert_eq!(pick("linux/arm64/v8").unwrap(), fake_digest("arm64"));
        assert_eq!(pick("linux/arm/v7").unwrap(), fake_digest("armv7"));
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
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{}","digest":"{}","size":2}},"layers":[]}}"#,
            MediaType::ImageConfig,
            fake_digest("config")
        );
        assert!(matches!(
            parse_document(manifest.as_bytes(), "i", "m"),
            Ok(Document::Manifest(_))
        ));
        let docker = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}"#;
        assert!(matches!(
            parse_document(docker, "i", "m"),
            Ok(Document::Index(_))
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

    #[test]
    fn docker_config_media_type_is_accepted() {
        let config = br#"{"architecture":"amd64","os":"linux","config":{"Cmd":["sh"],"ExposedPorts":{"80/tcp":{}}},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let c = parse_config(
            config,
            "application/vnd.docker.container.image.v1+json",
            "i",
        )
        .unwrap();
        assert!(config_matches(&c, &"linux/x86_64".parse().unwrap()));
        assert!(parse_config(config, "application/vnd.wasm.config.v1+json", "i").is_err());
    }
}
