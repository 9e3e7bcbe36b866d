//! Images on local disk: an OCI image layout or a `docker save` archive, each either as a
//! directory or as a tarball (plain or gzip-compressed). The format is recognised by content,
//! not by name. A tarball is indexed once (name → offset) and its members are then read in
//! place, so nothing is extracted and blobs stream straight from the archive.

use super::digest::{read_limited, Digest, Verify};
use super::spec::{
    self, Descriptor, DescriptorExt, LayerDesc, ManifestSource, Resolved, SMALL_BLOB_LIMIT,
};
use super::Platform;
use crate::error::{Error, IoContext, Result};
use serde::Deserialize;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The files of an image: in a directory, or members of a tarball.
pub(crate) enum Files {
    Dir(PathBuf),
    Tar {
        file: File,
        members: HashMap<String, Member>,
    },
}

/// A member of an indexed tarball.
pub(crate) enum Member {
    File {
        offset: u64,
        size: u64,
    },
    /// Old `docker save` archives share identical layers between images with symlinks.
    Link(String),
}

/// Normalises a member name (`./a//b/../c` → `a/c`), refusing any that climbs out of the top
/// with `..`, so names taken from a manifest can never point outside the image.
fn clean_name(name: &str) -> Option<String> {
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

impl Files {
    /// Opens a directory as-is, or indexes a tarball. A gzip-compressed tarball is first
    /// decompressed into `scratch` (a private file in the staging directory), since reading
    /// members in place needs an uncompressed archive.
    pub(crate) fn open(path: &Path, scratch: &Path, image: &str) -> Result<Files> {
        let meta = std::fs::metadata(path).at(path)?;
        if meta.is_dir() {
            return Ok(Files::Dir(path.to_owned()));
        }
        let mut file = File::open(path).at(path)?;
        let mut magic = [0u8; 2];
        let n = file.read_at(&mut magic, 0).at(path)?;
        if n == 2 && magic == [0x1f, 0x8b] {
            let mut out = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(scratch)
                .at(scratch)?;
            let mut gz = flate2::read::MultiGzDecoder::new(io::BufReader::new(file));
            io::copy(&mut gz, &mut out).map_err(|e| {
                Error::Invalid(format!(
                    "{image}: not a container image: the gzip-compressed file cannot be \
                     decompressed: {e}"
                ))
            })?;
            file = out;
        }
        let members = index_tar(&file).map_err(|e| {
            Error::Invalid(format!(
                "{image}: not a container image: expected a tar archive (docker save, or an \
                 OCI layout), but it cannot be read as one: {e}"
            ))
        })?;
        Ok(Files::Tar { file, members })
    }

    /// Whether `name` exists (as a file).
    pub(crate) fn has(&self, name: &str) -> bool {
        match self {
            Files::Dir(dir) => clean_name(name).is_some_and(|n| dir.join(n).is_file()),
            Files::Tar { .. } => self.locate(name).is_some(),
        }
    }

    /// Some top-level names, to show what a tarball that is not an image holds instead.
    pub(crate) fn sample(&self) -> Vec<String> {
        let mut names: Vec<String> = match self {
            Files::Dir(dir) => std::fs::read_dir(dir)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default(),
            Files::Tar { members, .. } => members
                .keys()
                .map(|k| k.split('/').next().unwrap_or(k).to_owned())
                .collect(),
        };
        names.sort();
        names.dedup();
        names.truncate(5);
        names
    }

    fn locate(&self, name: &str) -> Option<(u64, u64)> {
        let Files::Tar { members, .. } = self else {
            return None;
        };
        let mut name = clean_name(name)?;
        // Links are followed a few times at most, so a loop of links cannot hang us.
        for _ in 0..8 {
            match members.get(&name)? {
                Member::File { offset, size } => return Some((*offset, *size)),
                Member::Link(target) => {
                    name = match target.strip_prefix('/') {
                        Some(from_top) => clean_name(from_top)?,
                        None => {
                            let base = name.rsplit_once('/').map_or("", |(dir, _)| dir);
                            clean_name(&format!("{base}/{target}"))?
                        }
                    };
                }
            }
        }
        None
    }

    /// Opens `name` for reading; `Ok(None)` if there is no such file.
    pub(crate) fn open_member(&self, name: &str) -> Result<Option<Box<dyn Read + '_>>> {
        match self {
            Files::Dir(dir) => {
                let Some(clean) = clean_name(name) else {
                    return Ok(None);
                };
                let path = dir.join(clean);
                match File::open(&path) {
                    Ok(f) => Ok(Some(Box::new(f))),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e).at(path),
                }
            }
            Files::Tar { file, .. } => Ok(self.locate(name).map(|(offset, size)| {
                Box::new(Section {
                    file,
                    pos: offset,
                    end: offset + size,
                }) as Box<dyn Read>
            })),
        }
    }
}

/// Lists the members of an uncompressed tarball with where their data starts, skipping over
/// the data itself.
fn index_tar(mut file: &File) -> io::Result<HashMap<String, Member>> {
    // A freshly decompressed file is positioned at its end.
    io::Seek::rewind(&mut file)?;
    let mut archive = tar::Archive::new(file);
    let mut members = HashMap::new();
    for entry in archive.entries_with_seek()? {
        let entry = entry?;
        let Some(name) = clean_name(&String::from_utf8_lossy(&entry.path_bytes())) else {
            continue;
        };
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                members.insert(
                    name,
                    Member::File {
                        offset: entry.raw_file_position(),
                        size: entry.size(),
                    },
                );
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                if let Some(target) = entry.link_name_bytes() {
                    let target = String::from_utf8_lossy(&target).into_owned();
                    // A hardlink's target is relative to the archive root, a symlink's to its
                    // directory; `locate` resolves the latter, so store hardlinks as absolute.
                    let target = if entry.header().entry_type() == tar::EntryType::Link {
                        format!("/{target}")
                    } else {
                        target
                    };
                    members.insert(name, Member::Link(target));
                }
            }
            _ => {}
        }
    }
    if members.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "it holds no files",
        ));
    }
    Ok(members)
}

/// A byte range of a file, read with `pread` so several can be open at once.
struct Section<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for Section<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (self.end - self.pos).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive is truncated",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// What kind of image a set of files holds.
pub(crate) enum Layout {
    Oci,
    DockerArchive,
}

/// Recognises the format by content: an OCI layout has `oci-layout` and `index.json` (Docker
/// 25+ writes both formats in one archive; the OCI side is preferred since it has digests for
/// everything), a docker-archive has `manifest.json`.
pub(crate) fn detect(files: &Files, image: &str) -> Result<Layout> {
    if files.has("oci-layout") && files.has("index.json") {
        return Ok(Layout::Oci);
    }
    if files.has("manifest.json") {
        return Ok(Layout::DockerArchive);
    }
    let sample = files.sample();
    Err(Error::Invalid(format!(
        "{image}: not a container image: a docker save archive has manifest.json at the top and \
         an OCI layout has oci-layout and index.json, but this holds neither{}. Make one with \
         `docker save IMAGE -o image.tar` or `skopeo copy docker://IMAGE oci-archive:image.tar`",
        if sample.is_empty() {
            String::new()
        } else {
            format!(" (it holds {}…)", sample.join(", "))
        }
    )))
}

/// An OCI image layout: `index.json` names images (by the `ref.name` annotation), blobs live
/// under `blobs/<algorithm>/<hex>`.
pub(crate) struct OciLayout {
    pub files: Files,
    /// The image as the user wrote it, for messages.
    pub image: String,
    /// The image's name in the layout, if one was given.
    pub name: Option<String>,
}

impl OciLayout {
    fn blob(&self, digest: &Digest) -> Result<Box<dyn Read + '_>> {
        let path = format!("blobs/{}/{}", digest.algorithm(), digest.hex());
        self.files.open_member(&path)?.ok_or_else(|| {
            Error::Invalid(format!(
                "{}: blob {digest} is missing from the layout ({path}); the layout is incomplete",
                self.image
            ))
        })
    }

    fn read_blob(&self, digest: &Digest, size: Option<u64>, what: &str) -> Result<Vec<u8>> {
        let reader = Verify::new(self.blob(digest)?, Some(digest.clone()), size, false);
        read_limited(reader, SMALL_BLOB_LIMIT)
            .map_err(|e| Error::Invalid(format!("{}: {what} {digest}: {e}", self.image)))
    }

    fn read_top(&self, name: &str) -> Result<Vec<u8>> {
        let reader = self
            .files
            .open_member(name)?
            .ok_or_else(|| Error::Invalid(format!("{}: {name} is missing", self.image)))?;
        read_limited(reader, SMALL_BLOB_LIMIT)
            .map_err(|e| Error::Invalid(format!("{}: {name}: {e}", self.image)))
    }

    /// Finds the image (by name if one was given) and resolves it for `platform`.
    pub(crate) fn resolve(&mut self, platform: &Platform, explicit: bool) -> Result<Resolved> {
        let image = self.image.clone();
        let marker: oci_spec::image::OciLayout =
            serde_json::from_slice(&self.read_top("oci-layout")?).map_err(|e| {
                Error::Invalid(format!("{image}: oci-layout is not a layout marker: {e}"))
            })?;
        if !marker.image_layout_version().starts_with("1.") {
            return Err(Error::Invalid(format!(
                "{image}: OCI layout version {} is not supported (only 1.x)",
                marker.image_layout_version()
            )));
        }
        let index_bytes = self.read_top("index.json")?;
        let index = match spec::parse_document(&index_bytes, &image, "index.json")? {
            spec::Document::Index(index) => index,
            spec::Document::Manifest(_) => {
                return Err(Error::Invalid(format!(
                    "{image}: index.json is a manifest, not an index; the layout is malformed"
                )))
            }
        };
        let names: Vec<String> = index
            .manifests()
            .iter()
            .filter_map(|d| d.annotation(spec::REF_NAME).cloned())
            .collect();
        let chosen: Vec<&Descriptor> = match &self.name {
            Some(name) => index
                .manifests()
                .iter()
                .filter(|d| {
                    // `docker save` (25+) names images by tag in ref.name and in full in
                    // containerd's annotation; either is accepted.
                    d.annotation(spec::REF_NAME) == Some(name)
                        || d.annotation(spec::CONTAINERD_NAME)
                            .is_some_and(|full| same_tag(full, name))
                })
                .collect(),
            None => index.manifests().iter().collect(),
        };
        let entry = match chosen.as_slice() {
            [] if self.name.is_some() => {
                return Err(Error::Invalid(format!(
                    "{image}: the layout has no image named {:?}; it has: {}",
                    self.name.as_deref().unwrap_or_default(),
                    list_or_none(&names)
                )))
            }
            [] => {
                return Err(Error::Invalid(format!(
                    "{image}: the layout's index.json lists no images"
                )))
            }
            [one] => (*one).clone(),
            several if several.iter().all(|d| d.platform().is_some()) => {
                let owned: Vec<Descriptor> = several.iter().map(|d| (*d).clone()).collect();
                spec::pick_platform(&owned, platform, &image)?.clone()
            }
            _ => {
                return Err(Error::Invalid(format!(
                    "{image}: the layout holds several images; name one, e.g. oci:PATH:{} \
                     (names: {})",
                    names.first().map_or("NAME", String::as_str),
                    list_or_none(&names)
                )))
            }
        };
        let digest = entry.checked_digest(&image, "the index.json entry")?;
        let bytes = self.read_blob(&digest, Some(entry.size()), "manifest")?;
        spec::resolve(self, &image, bytes, digest, platform, explicit)
    }

    /// Opens a layer blob as stored (not yet verified: the caller checks while applying).
    pub(crate) fn open_layer(&self, layer: &LayerDesc) -> Result<Box<dyn Read + '_>> {
        match &layer.digest {
            Some(d) => self.blob(d),
            None => Err(Error::Invalid(format!(
                "{}: a layer has no digest",
                self.image
            ))),
        }
    }
}

impl ManifestSource for OciLayout {
    fn manifest(&mut self, descriptor: &Descriptor, digest: &Digest) -> Result<Vec<u8>> {
        self.read_blob(digest, Some(descriptor.size()), "manifest")
    }

    fn small_blob(&mut self, descriptor: &Descriptor, digest: &Digest) -> Result<Vec<u8>> {
        self.read_blob(digest, Some(descriptor.size()), "config")
    }
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "(no names)".to_owned()
    } else {
        names.join(", ")
    }
}

/// A `docker save` archive: `manifest.json` lists images, each a config file and layer tars.
pub(crate) struct DockerArchive {
    pub files: Files,
    /// The image as the user wrote it, for messages.
    pub image: String,
    /// The image's tag in the archive, if one was given.
    pub name: Option<String>,
}

#[derive(Deserialize)]
struct ArchiveEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// The digest a docker-archive member name implies: `<hex>.json`, `<hex>.tar`, `<hex>/…` in
/// the old format are v1 ids (not digests), but `blobs/sha256/<hex>` and skopeo's `<hex>.tar`
/// and `<hex>.json` are content digests.
fn digest_from_name(name: &str) -> Option<Digest> {
    let clean = clean_name(name)?;
    if let Some(rest) = clean.strip_prefix("blobs/") {
        let (alg, hex) = rest.split_once('/')?;
        return Digest::parse(&format!("{alg}:{hex}")).ok();
    }
    let stem = clean
        .strip_suffix(".json")
        .or_else(|| clean.strip_suffix(".tar"))?;
    if stem.contains('/') {
        return None;
    }
    Digest::parse(&format!("sha256:{stem}")).ok()
}

/// Docker's short forms: `busybox` is `docker.io/library/busybox:latest`, so tags written
/// either way by different tools (skopeo qualifies them, docker does not) still match.
fn canonical_tag(tag: &str) -> String {
    let mut t = tag;
    for prefix in ["docker.io/", "index.docker.io/"] {
        t = t.strip_prefix(prefix).unwrap_or(t);
    }
    t = t.strip_prefix("library/").unwrap_or(t);
    let last = t.rsplit('/').next().unwrap_or(t);
    if last.contains(':') || last.contains('@') {
        t.to_owned()
    } else {
        format!("{t}:latest")
    }
}

fn same_tag(a: &str, b: &str) -> bool {
    canonical_tag(a) == canonical_tag(b)
}

impl DockerArchive {
    /// Finds the image (by `name:tag` if one was given) and reads its config. A docker-archive
    /// holds one platform only, so `platform` is only checked when it was asked for.
    pub(crate) fn resolve(&mut self, platform: &Platform, explicit: bool) -> Result<Resolved> {
        let image = self.image.clone();
        let reader = self
            .files
            .open_member("manifest.json")?
            .ok_or_else(|| Error::Invalid(format!("{image}: manifest.json is missing")))?;
        let bytes = read_limited(reader, SMALL_BLOB_LIMIT)
            .map_err(|e| Error::Invalid(format!("{image}: manifest.json: {e}")))?;
        let entries: Vec<ArchiveEntry> = serde_json::from_slice(&bytes).map_err(|e| {
            Error::Invalid(format!(
                "{image}: manifest.json is not a docker save manifest: {e} (it starts with {:?})",
                spec::snippet(&bytes)
            ))
        })?;
        let tags: Vec<String> = entries
            .iter()
            .flat_map(|e| e.repo_tags.clone().unwrap_or_default())
            .collect();
        let entry = match &self.name {
            Some(name) => entries
                .iter()
                .find(|e| {
                    e.repo_tags
                        .as_ref()
                        .is_some_and(|t| t.iter().any(|t| same_tag(t, name)))
                })
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "{image}: the archive has no image tagged {name:?}; it has: {}",
                        list_or_none(&tags)
                    ))
                })?,
            None => match entries.as_slice() {
                [one] => one,
                [] => {
                    return Err(Error::Invalid(format!(
                        "{image}: manifest.json lists no images"
                    )))
                }
                _ => {
                    return Err(Error::Invalid(format!(
                        "{image}: the archive holds {} images; name one, e.g. \
                         docker-archive:PATH:{} (tags: {})",
                        entries.len(),
                        tags.first().map_or("NAME:TAG", String::as_str),
                        list_or_none(&tags)
                    )))
                }
            },
        };
        let config_reader = self.files.open_member(&entry.config)?.ok_or_else(|| {
            Error::Invalid(format!(
                "{image}: the config {} named in manifest.json is missing",
                entry.config
            ))
        })?;
        let named = digest_from_name(&entry.config);
        let mut verify = Verify::new(config_reader, named, None, false);
        let config_bytes = read_limited(&mut verify, SMALL_BLOB_LIMIT)
            .map_err(|e| Error::Invalid(format!("{image}: image config {}: {e}", entry.config)))?;
        let config_digest = verify.digest().cloned().ok_or_else(|| {
            Error::Invalid(format!(
                "{image}: image config {} was not read",
                entry.config
            ))
        })?;
        let config = spec::parse_config(&config_bytes, "", &image)?;
        let healthcheck = spec::healthcheck_of(&config_bytes);
        if explicit && !spec::config_matches(&config, platform) {
            return Err(Error::Invalid(format!(
                "{image}: this image is for {}/{}, not {platform}; leave out --platform to \
                 import it anyway",
                config.os(),
                config.architecture()
            )));
        }
        let diff_ids = spec::diff_ids(&config, entry.layers.len(), &image)?;
        let layers = entry
            .layers
            .iter()
            .zip(diff_ids)
            .map(|(path, diff_id)| LayerDesc {
                digest: digest_from_name(path),
                diff_id: Some(diff_id),
                size: None,
                media_type: String::new(),
                path: Some(path.clone()),
            })
            .collect();
        Ok(Resolved {
            digest: config_digest.clone(),
            index_digest: None,
            config_digest,
            config,
            healthcheck,
            layers,
        })
    }

    /// Opens a layer tar as stored (checked by the caller against the diff_id while applying).
    pub(crate) fn open_layer(&self, layer: &LayerDesc) -> Result<Box<dyn Read + '_>> {
        let path = layer.path.as_deref().unwrap_or_default();
        self.files.open_member(path)?.ok_or_else(|| {
            Error::Invalid(format!(
                "{}: layer {path} named in manifest.json is missing from the archive",
                self.image
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cleaned_and_never_climb() {
        assert_eq!(
            clean_name("./blobs//sha256/x").as_deref(),
            Some("blobs/sha256/x")
        );
        assert_eq!(
            clean_name("/manifest.json").as_deref(),
            Some("manifest.json")
        );
        assert_eq!(clean_name("../etc/passwd"), None);
        assert_eq!(clean_name("a/../../b"), None);
        assert_eq!(clean_name("a/../b").as_deref(), Some("b"));
        assert_eq!(clean_name("./"), None);
    }

    #[test]
    fn tags_match_in_short_and_qualified_forms() {
        assert!(same_tag("docker.io/test/busybox:1", "test/busybox:1"));
        assert!(same_tag("docker.io/library/busybox:latest", "busybox"));
        assert!(same_tag("localhost:5000/app:1", "localhost:5000/app:1"));
        assert!(!same_tag("busybox:1", "busybox"));
    }

    #[test]
    fn digests_from_member_names() {
        let hex = "a".repeat(64);
        assert!(digest_from_name(&format!("{hex}.tar")).is_some());
        assert!(digest_from_name(&format!("{hex}.json")).is_some());
        assert!(digest_from_name(&format!("blobs/sha256/{hex}")).is_some());
        assert!(digest_from_name(&format!("{hex}/layer.tar")).is_none());
        assert!(digest_from_name("config.json").is_none());
    }
}
