//! Applying image layers to a directory, as a container runtime does: layers in order, each a
//! tar stream whose whiteouts (`.wh.NAME`) delete from the layers below and whose opaque marker
//! (`.wh..wh..opq`) hides everything below in its directory.
//!
//! Safety rules, because a layer is input from someone else:
//! - every entry path is normalised lexically, and one that climbs out of the root with `..`
//!   is refused (a leading `/` just means the root, as for tar);
//! - no entry is ever written through a symlink: every parent component is checked with
//!   `lstat` and a symlink (from an earlier entry or layer) is refused; the final component is
//!   replaced, never followed, and files are created with `O_EXCL | O_NOFOLLOW`;
//! - hardlink targets are resolved the same way, inside the tree, and must already exist;
//! - the tree lives in a private (0700) staging directory that only this process writes to.
//!
//! Metadata: owner first (a chown clears setuid and file capabilities), then mode, then xattrs,
//! then times. Directory modes and times are applied once at the very end, deepest first,
//! because later entries and layers keep changing what directories hold.

use super::digest::{Mismatch, Verify};
use super::spec::LayerDesc;
use super::Cancelled;
use crate::error::{Error, IoContext, Result};
use crate::pack::Progress;
use nix::sys::stat::{self, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Mode and time a directory gets at the end.
#[derive(Clone, Copy)]
struct DirMeta {
    mode: u32,
    mtime: i64,
    nsec: u32,
}

/// Directories no entry describes (parents a layer left out, the root of an image without a
/// `./` entry) get what runtimes give them, with a fixed time so that importing the same
/// image twice gives the same flist.
const IMPLICIT_DIR: DirMeta = DirMeta {
    mode: 0o755,
    mtime: 0,
    nsec: 0,
};

/// What a tar header (plus its PAX records) says about an entry.
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: i64,
    nsec: u32,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Counts of what could not be kept, reported to the user.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Skipped {
    /// Device nodes not created (they need root).
    pub devices: u64,
    /// Extended attributes the staging filesystem or our privileges could not hold.
    pub xattrs: u64,
}

/// Why applying a layer stopped: a problem reading the stream (corruption, truncation, a
/// digest mismatch found at its end, the network), which is worth checking the blob's digest
/// for, or anything else (an unsafe entry, a local I/O error), which is not.
pub(crate) enum Failure {
    Read(io::Error),
    Other(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Other(e)
    }
}

/// The tree being built.
pub(crate) struct Tree {
    root: PathBuf,
    /// Every directory in the tree and the metadata it gets at the end. Path order keeps each
    /// subtree contiguous, so a removed subtree's entries are one range.
    dirs: BTreeMap<PathBuf, DirMeta>,
    /// Running as root: keep owners and create device nodes.
    owners: bool,
    /// What the current layer is, for messages: `layer 2/3 sha256:… of IMAGE`.
    at: String,
    buf: Vec<u8>,
    /// What could not be kept.
    pub skipped: Skipped,
}

impl Tree {
    /// Starts an empty tree at `root`, which must not exist yet.
    pub(crate) fn new(root: &Path) -> Result<Tree> {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(root)
            .at(root)?;
        let owners = nix::unistd::geteuid().is_root();
        if owners {
            std::os::unix::fs::lchown(root, Some(0), Some(0)).at(root)?;
        }
        let mut dirs = BTreeMap::new();
        dirs.insert(PathBuf::new(), IMPLICIT_DIR);
        Ok(Tree {
            root: root.to_owned(),
            dirs,
            owners,
            at: String::new(),
            buf: vec![0; 256 << 10],
            skipped: Skipped::default(),
        })
    }

    /// Applies directory modes and times, deepest first. Call once all layers are applied.
    pub(crate) fn finish(&mut self) -> Result<()> {
        for (rel, meta) in self.dirs.iter().rev() {
            let path = self.root.join(rel);
            // Every recorded directory exists and is a directory (removals forget theirs), but
            // checking costs one lstat and guarantees chmod never follows a symlink.
            let m = std::fs::symlink_metadata(&path).at(&path)?;
            if !m.is_dir() {
                return Err(Error::Invalid(format!(
                    "{}: expected a directory while finishing the import",
                    path.display()
                )));
            }
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(meta.mode))
                .at(&path)?;
            let t = TimeSpec::new(meta.mtime, meta.nsec as i64);
            stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &path,
                &t,
                &t,
                UtimensatFlags::NoFollowSymlink,
            )
            .at(&path)?;
        }
        Ok(())
    }

    fn unsafe_entry(&self, entry: &str, reason: &str) -> Error {
        Error::UnsafeEntry {
            entry: entry.to_owned(),
            reason: format!(
                "{reason} (in {}); the image is corrupt or malicious",
                self.at
            ),
        }
    }

    /// Applies one layer's tar stream.
    fn apply<R: Read>(
        &mut self,
        archive: &mut tar::Archive<R>,
        progress: &dyn Progress,
        cancel: Option<&AtomicBool>,
    ) -> Result<(), Failure> {
        // Paths this layer wrote, and their parents: whiteouts and opaque markers only hide
        // what lower layers put there, never this layer's own entries.
        let mut touched: HashSet<PathBuf> = HashSet::new();
        for entry in archive.entries().map_err(Failure::Read)? {
            if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Err(Failure::Read(io::Error::other(Cancelled)));
            }
            let mut entry = entry.map_err(Failure::Read)?;
            self.entry(&mut entry, &mut touched)?;
            progress.entry();
        }
        Ok(())
    }

    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        touched: &mut HashSet<PathBuf>,
    ) -> Result<(), Failure> {
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let rel = normalize(&raw).map_err(|reason| self.unsafe_entry(&shown, reason))?;
        let kind = entry.header().entry_type();
        if let Some(marker) = rel
            .file_name()
            .and_then(|n| n.as_bytes().strip_prefix(b".wh."))
        {
            self.whiteout(&rel, marker, &shown, touched)?;
            return Ok(());
        }
        let meta = read_meta(entry).map_err(Failure::Read)?;
        if rel.as_os_str().is_empty() {
            // The root itself (`./`): only its metadata can change.
            if kind != tar::EntryType::Directory {
                return Err(self
                    .unsafe_entry(&shown, "the image root must be a directory")
                    .into());
            }
            let root = self.root.clone();
            self.own(&root, &meta)?;
            self.replace_xattrs(&root, &meta)?;
            self.dirs.insert(PathBuf::new(), dir_meta(&meta));
            return Ok(());
        }
        self.parents(&rel, &shown, true)?;
        let path = self.root.join(&rel);
        match kind {
            tar::EntryType::Directory => {
                match std::fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        self.remove(&rel)?;
                        self.mkdir(&path)?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => self.mkdir(&path)?,
                    Err(e) => return Err(Error::Io { path, source: e }.into()),
                }
                self.own(&path, &meta)?;
                self.replace_xattrs(&path, &meta)?;
                self.dirs.insert(rel.clone(), dir_meta(&meta));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.remove(&rel)?;
                self.write_file(entry, &path, &shown, &meta, kind)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| self.unsafe_entry(&shown, "a symlink without a target"))?
                    .into_owned();
                self.remove(&rel)?;
                // Stored exactly as written, absolute or not: it is never followed here.
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path).at(&path)?;
                self.finish_node(&path, &meta, true)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.unsafe_entry(&shown, "a hardlink without a target"))?
                    .into_owned();
                let target_rel = normalize(&target).map_err(|reason| {
                    self.unsafe_entry(&shown, &format!("its hardlink target {reason}"))
                })?;
                if target_rel == rel {
                    return Ok(());
                }
                let target_shown = String::from_utf8_lossy(&target).into_owned();
                let exists = self.parents(&target_rel, &target_shown, false)?
                    && std::fs::symlink_metadata(self.root.join(&target_rel))
                        .is_ok_and(|m| !m.is_dir());
                if !exists {
                    return Err(self
                        .unsafe_entry(
                            &shown,
                            &format!(
                                "a hardlink to {target_shown:?}, which is not a file in the \
                                 image at this point"
                            ),
                        )
                        .into());
                }
                self.remove(&rel)?;
                std::fs::hard_link(self.root.join(&target_rel), &path).at(&path)?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let (flag, device) = match kind {
                    tar::EntryType::Char => (SFlag::S_IFCHR, true),
                    tar::EntryType::Block => (SFlag::S_IFBLK, true),
                    _ => (SFlag::S_IFIFO, false),
                };
                if device && !self.owners {
                    // The image replaces whatever lower layers had here, even if we cannot
                    // create the node itself.
                    self.remove(&rel)?;
                    self.skipped.devices += 1;
                    tracing::warn!("{shown}: device node not created (needs root)");
                    return Ok(());
                }
                let header = entry.header();
                let rdev = stat::makedev(
                    u64::from(header.device_major().ok().flatten().unwrap_or(0)),
                    u64::from(header.device_minor().ok().flatten().unwrap_or(0)),
                );
                self.remove(&rel)?;
                stat::mknod(&path, flag, Mode::from_bits_truncate(0o600), rdev).at(&path)?;
                self.finish_node(&path, &meta, false)?;
            }
            tar::EntryType::XGlobalHeader => return Ok(()),
            other => {
                self.remove(&rel)?;
                tracing::warn!("{shown}: tar entry type {other:?} is not a file; skipped");
                return Ok(());
            }
        }
        touch(touched, &rel);
        Ok(())
    }

    /// `.wh..wh..opq` hides what lower layers put in its directory; `.wh.NAME` deletes NAME.
    fn whiteout(
        &mut self,
        rel: &Path,
        marker: &[u8],
        shown: &str,
        touched: &mut HashSet<PathBuf>,
    ) -> Result<()> {
        let dir = rel.parent().unwrap_or(Path::new("")).to_owned();
        if marker == b".wh..opq" {
            // The directory stays (it is part of this layer); only lower contents go.
            self.parents(rel, shown, true)?;
            self.hide_lower(&dir, touched)?;
            if !dir.as_os_str().is_empty() {
                touch(touched, &dir);
            }
            return Ok(());
        }
        if marker.starts_with(b".wh.") {
            // Other `.wh..wh.*` names are aufs bookkeeping (hardlink dirs), not part of the tree.
            return Ok(());
        }
        if marker.is_empty() || marker == b"." || marker == b".." {
            return Err(self.unsafe_entry(shown, "a whiteout without a usable name"));
        }
        let victim = dir.join(OsStr::from_bytes(marker));
        if touched.contains(&victim) || !self.parents(&victim, shown, false)? {
            return Ok(());
        }
        self.remove(&victim)
    }

    /// Removes everything under `dir` that the current layer did not write.
    fn hide_lower(&mut self, dir: &Path, touched: &HashSet<PathBuf>) -> Result<()> {
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            let full = self.root.join(&d);
            let children: Vec<(PathBuf, bool)> = std::fs::read_dir(&full)
                .at(&full)?
                .map(|e| {
                    let e = e?;
                    // DirEntry::file_type does not follow symlinks.
                    Ok((d.join(e.file_name()), e.file_type()?.is_dir()))
                })
                .collect::<io::Result<_>>()
                .at(&full)?;
            for (child, is_dir) in children {
                if !touched.contains(&child) {
                    self.remove(&child)?;
                } else if is_dir {
                    stack.push(child);
                }
            }
        }
        Ok(())
    }

    /// Checks every parent of `rel` is a real directory, never a symlink. Missing ones are
    /// created when `create`, else the answer is `false` (nothing there).
    fn parents(&mut self, rel: &Path, shown: &str, create: bool) -> Result<bool> {
        let Some(parent) = rel.parent() else {
            return Ok(true);
        };
        let mut prefix = PathBuf::new();
        for part in parent.components() {
            prefix.push(part);
            let path = self.root.join(&prefix);
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(self.unsafe_entry(
                        shown,
                        &format!(
                            "its parent {} is a symlink (made by an earlier entry or layer), \
                             and writing through it could land outside the image",
                            prefix.display()
                        ),
                    ))
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(Error::Invalid(format!(
                        "entry {shown:?} ({}): its parent {} is not a directory; the image is \
                         corrupt",
                        self.at,
                        prefix.display()
                    )))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    self.mkdir(&path)?;
                    if self.owners {
                        std::os::unix::fs::lchown(&path, Some(0), Some(0)).at(&path)?;
                    }
                    self.dirs.insert(prefix.clone(), IMPLICIT_DIR);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(e).at(path),
            }
        }
        Ok(true)
    }

    fn mkdir(&self, path: &Path) -> Result<()> {
        // Private until `finish` gives it its real mode.
        std::fs::DirBuilder::new().mode(0o700).create(path).at(path)
    }

    /// Removes whatever is at `rel` (a whole directory tree included), never following a
    /// symlink, and forgets the directories that went with it.
    fn remove(&mut self, rel: &Path) -> Result<()> {
        if rel.as_os_str().is_empty() {
            return Err(Error::Invalid(format!(
                "{}: refusing to remove the image root",
                self.at
            )));
        }
        let path = self.root.join(rel);
        match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).at(path),
            Ok(m) if m.is_dir() => {
                // std's remove_dir_all does not follow symlinks inside the tree.
                std::fs::remove_dir_all(&path).at(&path)?;
                let gone: Vec<PathBuf> = self
                    .dirs
                    .range(rel.to_owned()..)
                    .take_while(|(p, _)| p.starts_with(rel))
                    .map(|(p, _)| p.clone())
                    .collect();
                for p in gone {
                    self.dirs.remove(&p);
                }
                Ok(())
            }
            Ok(_) => std::fs::remove_file(&path).at(&path),
        }
    }

    fn write_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        path: &Path,
        shown: &str,
        meta: &Meta,
        kind: tar::EntryType,
    ) -> Result<(), Failure> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .at(path)?;
        let mut buf = std::mem::take(&mut self.buf);
        let copied = copy_entry(entry, &mut file, &mut buf, path);
        self.buf = buf;
        let written = copied?;
        // A truncated stream just ends early inside tar's reader; only the count shows it.
        if kind != tar::EntryType::GNUSparse && written != entry.size() {
            return Err(Failure::Read(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the layer ends in the middle of {shown:?} ({written} of {} bytes)",
                    entry.size()
                ),
            )));
        }
        if self.owners {
            std::os::unix::fs::fchown(&file, Some(meta.uid), Some(meta.gid)).at(path)?;
        }
        file.set_permissions(std::fs::Permissions::from_mode(meta.mode))
            .at(path)?;
        for (name, value) in &meta.xattrs {
            let set = xattr::FileExt::set_xattr(&file, OsStr::from_bytes(name), value);
            self.tolerate_xattr(path, name, set)?;
        }
        let t = TimeSpec::new(meta.mtime, meta.nsec as i64);
        stat::futimens(&file, &t, &t).at(path)?;
        Ok(())
    }

    /// Owner, mode (not for symlinks: Linux has none), xattrs and times, by path, never
    /// following a final symlink.
    fn finish_node(&mut self, path: &Path, meta: &Meta, is_link: bool) -> Result<()> {
        self.own(path, meta)?;
        if !is_link {
            // Just created by us as a device or fifo: not a symlink, so chmod cannot follow.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(meta.mode)).at(path)?;
        }
        for (name, value) in &meta.xattrs {
            let set = xattr::set(path, OsStr::from_bytes(name), value);
            self.tolerate_xattr(path, name, set)?;
        }
        let t = TimeSpec::new(meta.mtime, meta.nsec as i64);
        stat::utimensat(
            nix::fcntl::AT_FDCWD,
            path,
            &t,
            &t,
            UtimensatFlags::NoFollowSymlink,
        )
        .at(path)
    }

    fn own(&self, path: &Path, meta: &Meta) -> Result<()> {
        if self.owners {
            std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid)).at(path)?;
        }
        Ok(())
    }

    /// A directory entry replaces the directory's metadata as a whole, xattrs included (as an
    /// upper directory does in overlayfs), so attributes the entry does not list are removed.
    fn replace_xattrs(&mut self, path: &Path, meta: &Meta) -> Result<()> {
        let keep: HashSet<&[u8]> = meta.xattrs.iter().map(|(n, _)| n.as_slice()).collect();
        let existing: Vec<_> = match xattr::list(path) {
            Ok(names) => names.collect(),
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => Vec::new(),
            Err(e) => return Err(e).at(path),
        };
        for name in existing {
            if !keep.contains(name.as_bytes()) {
                let removed = xattr::remove(path, &name);
                self.tolerate_xattr(path, name.as_bytes(), removed)?;
            }
        }
        for (name, value) in &meta.xattrs {
            let set = xattr::set(path, OsStr::from_bytes(name), value);
            self.tolerate_xattr(path, name, set)?;
        }
        Ok(())
    }

    /// An xattr the staging filesystem or our privileges cannot hold (`user.*` on a symlink,
    /// `trusted.*` as a user, a filesystem without xattrs) is reported and skipped, as tar
    /// does; any other failure stops the import.
    fn tolerate_xattr(&mut self, path: &Path, name: &[u8], result: io::Result<()>) -> Result<()> {
        match result {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::EPERM)) => {
                self.skipped.xattrs += 1;
                tracing::warn!(
                    "{}: extended attribute {} not kept: {e}",
                    path.display(),
                    String::from_utf8_lossy(name)
                );
                Ok(())
            }
            other => other.at(path),
        }
    }
}

/// Marks `rel` and its parents as written by the current layer.
fn touch(touched: &mut HashSet<PathBuf>, rel: &Path) {
    let mut p = Some(rel);
    while let Some(path) = p.filter(|p| !p.as_os_str().is_empty()) {
        if !touched.insert(path.to_owned()) {
            break;
        }
        p = path.parent();
    }
}

/// Copies an entry's data into `file`, telling read failures (the stream) from write failures
/// (the local disk).
fn copy_entry<R: Read>(
    entry: &mut tar::Entry<R>,
    file: &mut File,
    buf: &mut [u8],
    path: &Path,
) -> Result<u64, Failure> {
    let mut written = 0u64;
    loop {
        let n = match entry.read(buf) {
            Ok(0) => return Ok(written),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Failure::Read(e)),
        };
        file.write_all(&buf[..n]).at(path)?;
        written += n as u64;
    }
}

fn dir_meta(meta: &Meta) -> DirMeta {
    DirMeta {
        mode: meta.mode,
        mtime: meta.mtime,
        nsec: meta.nsec,
    }
}

/// Normalises an entry path to a relative path inside the root: empty and `.` components go,
/// a leading `/` means the root, `..` goes up, and going up past the root is refused.
fn normalize(raw: &[u8]) -> Result<PathBuf, &'static str> {
    if raw.contains(&0) {
        return Err("the path contains a NUL byte");
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if parts.pop().is_none() {
                    return Err("the path climbs out of the image root with `..`");
                }
            }
            p => parts.push(p),
        }
    }
    Ok(parts.iter().map(|p| OsStr::from_bytes(p)).collect())
}

/// The header fields, overridden by PAX records where present (ids too large for the header,
/// sub-second times, xattrs as `SCHILY.xattr.NAME`).
fn read_meta<R: Read>(entry: &mut tar::Entry<R>) -> io::Result<Meta> {
    let header = entry.header();
    let id = |v: u64| {
        u32::try_from(v).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("owner id {v} is too large"),
            )
        })
    };
    let mut meta = Meta {
        uid: id(header.uid()?)?,
        gid: id(header.gid()?)?,
        mode: header.mode()? & 0o7777,
        mtime: i64::try_from(header.mtime()?).unwrap_or(i64::MAX),
        nsec: 0,
        xattrs: Vec::new(),
    };
    if let Some(extensions) = entry.pax_extensions()? {
        for ext in extensions {
            let ext = ext?;
            let value = ext.value_bytes();
            let number = || {
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidData, "bad number in a PAX record")
                    })
            };
            match ext.key_bytes() {
                b"uid" => meta.uid = id(number()?)?,
                b"gid" => meta.gid = id(number()?)?,
                b"mtime" => {
                    if let Some((s, ns)) = parse_pax_time(value) {
                        meta.mtime = s;
                        meta.nsec = ns;
                    }
                }
                key => {
                    if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                        meta.xattrs.push((name.to_vec(), value.to_vec()));
                    }
                }
            }
        }
    }
    Ok(meta)
}

/// A PAX time: decimal seconds with an optional fraction, possibly negative.
fn parse_pax_time(value: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(value).ok()?.trim();
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let nsec: u32 = digits.parse().ok()?;
    Some(match (negative, nsec) {
        (false, n) => (secs, n),
        (true, 0) => (-secs, 0),
        (true, n) => (-secs - 1, 1_000_000_000 - n),
    })
}

/// Reads through, telling the progress about the bytes and failing once cancelled.
struct Tick<'a, R> {
    inner: R,
    progress: &'a dyn Progress,
    cancel: Option<&'a AtomicBool>,
}

impl<R: Read> Read for Tick<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(io::Error::other(Cancelled));
        }
        let n = self.inner.read(buf)?;
        self.progress.bytes(n as u64);
        Ok(n)
    }
}

/// A stream with its first bytes read and put back in front.
type Peeked<R> = io::Chain<io::Cursor<Vec<u8>>, R>;

/// Reads the first bytes of a stream, for a format's magic number, and gives them back in
/// front of the rest.
fn peek<R: BufRead>(mut reader: R) -> io::Result<(Vec<u8>, Peeked<R>)> {
    let mut head = Vec::with_capacity(6);
    while head.len() < 6 {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        let n = buf.len().min(6 - head.len());
        head.extend_from_slice(&buf[..n]);
        reader.consume(n);
    }
    Ok((head.clone(), io::Cursor::new(head).chain(reader)))
}

/// A layer's content, decompressed according to its magic number (not its media type, which
/// docker-archives do not record and some registries get wrong).
fn decompress<'a, R: BufRead + 'a>(reader: R) -> io::Result<Box<dyn Read + 'a>> {
    let (head, reader) = peek(reader)?;
    Ok(match head.as_slice() {
        [0x1f, 0x8b, ..] => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Box::new(Zstd::new(reader)),
        [0xfd, b'7', b'z', b'X', b'Z', 0x00] | [b'B', b'Z', b'h', ..] => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the layer is compressed with xz or bzip2, which images do not use and zos \
                 does not read (only gzip, zstd and plain tar)",
            ))
        }
        _ => Box::new(reader),
    })
}

/// A zstd stream of one or more frames (skippable frames are skipped), decoded as it is read.
struct Zstd<R> {
    source: R,
    decoder: ruzstd::decoding::FrameDecoder,
    in_frame: bool,
}

impl<R: BufRead> Zstd<R> {
    fn new(source: R) -> Zstd<R> {
        Zstd {
            source,
            decoder: ruzstd::decoding::FrameDecoder::new(),
            in_frame: false,
        }
    }
}

impl<R: BufRead> Read for Zstd<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
        loop {
            if self.in_frame {
                if self.decoder.can_collect() == 0 && !self.decoder.is_finished() {
                    self.decoder
                        .decode_blocks(
                            &mut self.source,
                            ruzstd::decoding::BlockDecodingStrategy::UptoBlocks(1),
                        )
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    continue;
                }
                let n = self.decoder.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                self.in_frame = false;
            }
            if self.source.fill_buf()?.is_empty() {
                return Ok(0);
            }
            match self.decoder.init(&mut self.source) {
                Ok(()) => self.in_frame = true,
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    let skipped = io::copy(
                        &mut (&mut self.source).take(u64::from(length)),
                        &mut io::sink(),
                    )?;
                    if skipped != u64::from(length) {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "truncated zstd skippable frame",
                        ));
                    }
                }
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        }
    }
}

/// Applies one layer blob (`raw`, as stored) to `tree`, checking its digest as stored and, once
/// decompressed, its diff_id from the image config. `at` names the layer for messages.
pub(crate) fn apply_layer(
    tree: &mut Tree,
    raw: Box<dyn Read + '_>,
    layer: &LayerDesc,
    at: &str,
    progress: &dyn Progress,
    cancel: Option<&AtomicBool>,
) -> Result<()> {
    tree.at = at.to_owned();
    let ticking = Tick {
        inner: raw,
        progress,
        cancel,
    };
    let stored = Verify::new(ticking, layer.digest.clone(), layer.size, false);
    let mut stored = io::BufReader::with_capacity(256 << 10, stored);
    let (applied, plain_end) = match decompress(&mut stored) {
        Err(e) => (Err(Failure::Read(e)), Ok(())),
        Ok(decoded) => {
            let plain = Verify::new(decoded, layer.diff_id.clone(), None, true);
            let mut archive = tar::Archive::new(plain);
            let applied = tree.apply(&mut archive, progress, cancel);
            // The tar reader stops at the end-of-archive marker; reading on to the end of the
            // stream is what checks the diff_id.
            let end = match &applied {
                Err(Failure::Other(_)) => Ok(()),
                _ => io::copy(&mut archive.into_inner(), &mut io::sink()).map(drop),
            };
            (applied, end)
        }
    };
    let failure = match applied {
        Ok(()) => None,
        // An unsafe entry or a local problem: the blob's digest would not explain it.
        Err(Failure::Other(e)) => return Err(e),
        Err(Failure::Read(e)) => Some(e),
    };
    if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
        return Err(Error::Invalid(Cancelled.to_string()));
    }
    // Read the blob to its end whatever happened: its digest is checked there, and when the
    // stream could not be decoded, "it does not match its digest" is the real cause.
    let stored_end = io::copy(&mut stored, &mut io::sink()).map(drop);
    for end in [&stored_end, &plain_end] {
        if let Some(m) = end.as_ref().err().and_then(Mismatch::find) {
            return Err(Error::Invalid(format!(
                "{at}: {m}; the image is corrupt or was tampered with: fetch or export it again"
            )));
        }
    }
    let unreadable = |e: io::Error| Error::Invalid(format!("{at}: cannot read the layer: {e}"));
    if let Some(e) = failure {
        return Err(unreadable(e));
    }
    plain_end.and(stored_end).map_err(unreadable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_paths_inside_the_root() {
        let n = |s: &str| normalize(s.as_bytes());
        assert_eq!(n("./etc/passwd").unwrap(), PathBuf::from("etc/passwd"));
        assert_eq!(n("/etc//passwd").unwrap(), PathBuf::from("etc/passwd"));
        assert_eq!(n("a/../b").unwrap(), PathBuf::from("b"));
        assert_eq!(n("./").unwrap(), PathBuf::new());
        assert!(n("../etc/passwd").is_err());
        assert!(n("a/../../etc").is_err());
        assert!(n("/../x").is_err());
    }

    #[test]
    fn layers_decompress_by_magic_number() {
        use ruzstd::encoding::{compress_to_vec, CompressionLevel};
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let read_all = |bytes: Vec<u8>| {
            let mut out = Vec::new();
            decompress(io::Cursor::new(bytes))
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            out
        };
        assert_eq!(read_all(data.clone()), data, "plain");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        assert_eq!(read_all(gz.finish().unwrap()), data, "gzip");
        // Two zstd frames with a skippable frame between them, as some writers produce.
        let (a, b) = data.split_at(70_000);
        let mut zst = compress_to_vec(a, CompressionLevel::Fastest);
        zst.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3]);
        zst.extend(compress_to_vec(b, CompressionLevel::Fastest));
        assert_eq!(read_all(zst), data, "zstd");
        let xz = b"\xfd7zXZ\x00rest".to_vec();
        assert!(decompress(io::Cursor::new(xz)).is_err());
    }

    #[test]
    fn pax_times() {
        assert_eq!(
            parse_pax_time(b"1700000000.5"),
            Some((1_700_000_000, 500_000_000))
        );
        assert_eq!(parse_pax_time(b"12"), Some((12, 0)));
        assert_eq!(parse_pax_time(b"-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_pax_time(b"1.1234567891"), Some((1, 123_456_789)));
        assert_eq!(parse_pax_time(b"x"), None);
    }
}
