//! Unpack: restore the tree an flist describes, identical to what was packed.
//!
//! Safety rules, because an flist is input from someone else:
//! - the tree is built in a fresh private directory next to the target and renamed into place
//!   only when complete, so a failure leaves nothing half-written and the target is either
//!   absent, empty or complete;
//! - every name is a single path component (checked by [`Flist::walk`]), entries under a
//!   non-directory are refused, and every create is exclusive and does not follow symlinks,
//!   so nothing is ever written outside the target or through a link;
//! - symlinks are recreated exactly as stored, absolute ones too, and never followed.
//!
//! Metadata is applied after content: owner before mode (chown clears setuid), directory times
//! last, deepest first, so that creating children does not disturb them.

use crate::block::{BlockRef, BLOCK_SIZE};
use crate::error::{Error, IoContext, Result};
use crate::meta::{Flist, Ino, Inode, Kind, Xattrs};
use crate::pack::Progress;
use crate::pool::{default_workers, with_workers, SEGMENT_BLOCKS};
use crate::store::Router;
use nix::sys::stat::{self, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// How to unpack.
#[derive(Debug, Clone, Default)]
pub struct UnpackOptions {
    /// Worker threads; 0 picks a default from the number of cores.
    pub workers: usize,
    /// Restore owners (uid/gid). Needs root; `None` means "when running as root".
    pub owners: Option<bool>,
}

/// What an unpack did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct UnpackReport {
    /// Entries created, the root included.
    pub entries: u64,
    /// Regular files written (hardlinks not counted).
    pub files: u64,
    /// Bytes of content written.
    pub bytes: u64,
    /// Sockets in the flist, recorded but not recreated.
    pub sockets_skipped: u64,
}

/// Everything needed to write one file and finish it, shared by its segment jobs.
struct FileJob {
    rel: PathBuf,
    file: File,
    inode: Inode,
    blocks: Vec<BlockRef>,
    xattrs: Xattrs,
    remaining: AtomicUsize,
}

struct Segment {
    job: Arc<FileJob>,
    first_block: usize,
}

/// Restores the tree of `flist` at `target`, reading blocks through `router`.
/// `target` must not exist or be an empty directory.
pub fn unpack(
    flist: &Flist,
    router: &Router,
    target: &Path,
    opts: &UnpackOptions,
    progress: &dyn Progress,
) -> Result<UnpackReport> {
    check_target(target)?;
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = target
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{}: not a usable target", target.display())))?;
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".partial")
        .tempdir_in(parent)
        .at(parent)?;
    let owners = opts
        .owners
        .unwrap_or_else(|| nix::unistd::geteuid().is_root());
    let workers = if opts.workers == 0 {
        default_workers()
    } else {
        opts.workers
    };
    let root = staging.path().to_owned();
    // A setgid parent would hand its group down to everything created inside; clear the bit
    // so created files carry our own ids until their recorded owners are applied.
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).at(&root)?;
    let report = with_workers(
        workers,
        |seg: Segment| write_segment(&seg, &root, router, owners, progress),
        |pool| {
            let mut report = UnpackReport::default();
            let mut dirs: Vec<(PathBuf, Inode, Xattrs)> = Vec::new();
            let mut links: Vec<(PathBuf, Ino)> = Vec::new();
            let link_targets = flist.hardlink_counts()?;
            // Most flists have few or no xattrs: ask the metadata only for inodes that have some.
            let with_xattrs = flist.inodes_with_xattrs()?;
            let mut target_paths: HashMap<Ino, PathBuf> = HashMap::new();
            let mut in_flight = 0usize;
            let drain = |in_flight: &mut usize, wait: bool| -> Result<()> {
                loop {
                    let next = if wait {
                        pool.result()
                    } else {
                        pool.try_result()
                    };
                    match next {
                        Some(r) => {
                            *in_flight -= 1;
                            r?;
                        }
                        None => return Ok(()),
                    }
                    if wait && *in_flight == 0 {
                        return Ok(());
                    }
                }
            };
            flist.walk(|rel, inode| {
                let path = root.join(rel);
                let xattrs = if with_xattrs.contains(&inode.ino) {
                    flist.xattrs(inode.ino)?
                } else {
                    Vec::new()
                };
                report.entries += 1;
                progress.entry();
                if let Some(first) = inode.hardlink_of {
                    links.push((rel.to_owned(), first));
                    return Ok(());
                }
                if link_targets.contains_key(&inode.ino) {
                    target_paths.insert(inode.ino, rel.to_owned());
                }
                match inode.kind()? {
                    Kind::Dir => {
                        if !rel.as_os_str().is_empty() {
                            std::fs::DirBuilder::new()
                                .mode(0o700)
                                .create(&path)
                                .map_err(|e| exists_error(rel, e))?;
                        }
                        dirs.push((rel.to_owned(), inode.clone(), xattrs));
                    }
                    Kind::File => {
                        report.files += 1;
                        report.bytes += inode.size;
                        let blocks = flist.blocks(inode.ino)?;
                        check_block_count(rel, inode, &blocks)?;
                        let file = OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .mode(0o600)
                            .custom_flags(libc::O_NOFOLLOW)
                            .open(&path)
                            .map_err(|e| exists_error(rel, e))?;
                        let segments = blocks.len().div_ceil(SEGMENT_BLOCKS).max(1);
                        let job = Arc::new(FileJob {
                            rel: rel.to_owned(),
                            file,
                            inode: inode.clone(),
                            blocks,
                            xattrs,
                            remaining: AtomicUsize::new(segments),
                        });
                        for s in 0..segments {
                            pool.submit(Segment {
                                job: job.clone(),
                                first_block: s * SEGMENT_BLOCKS,
                            });
                            in_flight += 1;
                            drain(&mut in_flight, false)?;
                        }
                    }
                    Kind::Symlink => {
                        let target =
                            inode
                                .link_target
                                .as_deref()
                                .ok_or_else(|| Error::UnsafeEntry {
                                    entry: rel.display().to_string(),
                                    reason: "symlink without a target".into(),
                                })?;
                        std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &path)
                            .map_err(|e| exists_error(rel, e))?;
                        finish_node(&path, inode, &xattrs, owners)?;
                    }
                    Kind::Fifo | Kind::CharDevice | Kind::BlockDevice => {
                        let kind = SFlag::from_bits_truncate(inode.mode & libc::S_IFMT);
                        stat::mknod(&path, kind, Mode::from_bits_truncate(0o600), inode.rdev)
                            .map_err(|e| exists_error(rel, e.into()))?;
                        finish_node(&path, inode, &xattrs, owners)?;
                    }
                    Kind::Socket => report.sockets_skipped += 1,
                }
                Ok(())
            })?;
            if in_flight > 0 {
                drain(&mut in_flight, true)?;
            }
            for (rel, first) in links {
                let original = target_paths.get(&first).ok_or_else(|| Error::UnsafeEntry {
                    entry: rel.display().to_string(),
                    reason: format!("hardlink to inode {first}, which is not a file in this flist"),
                })?;
                std::fs::hard_link(root.join(original), root.join(&rel))
                    .map_err(|e| exists_error(&rel, e))?;
            }
            // Deepest directories first: setting a parent's time before its children are
            // finished would be undone by their creation.
            for (rel, inode, xattrs) in dirs.iter().rev() {
                finish_node(&root.join(rel), inode, xattrs, owners)?;
            }
            Ok::<_, Error>(report)
        },
    )?;
    let staged = staging.keep();
    if target.exists() {
        // check_target made sure it is an empty directory.
        std::fs::remove_dir(target).at(target)?;
    }
    std::fs::rename(&staged, target).map_err(|e| {
        let _ = std::fs::remove_dir_all(&staged);
        Error::Io {
            path: target.to_owned(),
            source: e,
        }
    })?;
    Ok(report)
}

fn check_target(target: &Path) -> Result<()> {
    match std::fs::symlink_metadata(target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Io {
            path: target.to_owned(),
            source: e,
        }),
        Ok(m) if m.is_dir() => {
            if std::fs::read_dir(target).at(target)?.next().is_some() {
                Err(Error::Invalid(format!(
                    "{}: target directory is not empty; unpack into a new or empty directory",
                    target.display()
                )))
            } else {
                Ok(())
            }
        }
        Ok(_) => Err(Error::Invalid(format!(
            "{}: target exists and is not a directory",
            target.display()
        ))),
    }
}

fn exists_error(rel: &Path, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::AlreadyExists {
        Error::UnsafeEntry {
            entry: rel.display().to_string(),
            reason: "the flist names this path twice".into(),
        }
    } else {
        Error::Io {
            path: rel.to_owned(),
            source: e,
        }
    }
}

/// Every block but the last holds exactly BLOCK_SIZE bytes, so the count follows from the
/// size; a mismatch means the metadata is damaged, and writing would produce wrong bytes.
fn check_block_count(rel: &Path, inode: &Inode, blocks: &[BlockRef]) -> Result<()> {
    let expected = crate::block::block_count(inode.size);
    if blocks.len() as u64 != expected {
        return Err(Error::UnsafeEntry {
            entry: rel.display().to_string(),
            reason: format!(
                "size {} needs {expected} blocks but the flist lists {}",
                inode.size,
                blocks.len()
            ),
        });
    }
    Ok(())
}

fn write_segment(
    seg: &Segment,
    root: &Path,
    router: &Router,
    owners: bool,
    progress: &dyn Progress,
) -> Result<()> {
    let job = &seg.job;
    let end = (seg.first_block + SEGMENT_BLOCKS).min(job.blocks.len());
    for index in seg.first_block..end {
        let block = &job.blocks[index];
        let file = job.rel.display();
        let plain = router
            .fetch(block)
            .map_err(|e| Error::block(&file, index, block, e))?;
        let offset = index as u64 * BLOCK_SIZE as u64;
        let expected = crate::block::block_len(job.inode.size, index as u64);
        if plain.len() as u64 != expected {
            let reason = format!(
                "holds {} bytes where the file needs {expected}",
                plain.len()
            );
            return Err(Error::block(&file, index, block, reason));
        }
        job.file
            .write_all_at(&plain, offset)
            .at(root.join(&job.rel))?;
        progress.bytes(plain.len() as u64);
    }
    if job.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
        let path = root.join(&job.rel);
        apply_owner_mode(&job.file, &job.inode, owners).at(&path)?;
        for (name, value) in &job.xattrs {
            let set =
                xattr::FileExt::set_xattr(&job.file, std::ffi::OsStr::from_bytes(name), value);
            tolerate_xattr(&path, name, set)?;
        }
        stat::futimens(&job.file, &atime_now(), &mtime(&job.inode)).at(&path)?;
    }
    Ok(())
}

/// Whether a file we created (so owned by our effective ids: the staging directory is made
/// without setgid, so nothing inherits a group) needs a chown.
fn needs_chown(inode: &Inode, owners: bool) -> bool {
    owners
        && (inode.uid, inode.gid)
            != (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            )
}

fn apply_owner_mode(file: &File, inode: &Inode, owners: bool) -> std::io::Result<()> {
    if needs_chown(inode, owners) {
        std::os::unix::fs::fchown(file, Some(inode.uid), Some(inode.gid))?;
    }
    file.set_permissions(std::fs::Permissions::from_mode(inode.permissions()))
}

/// Owner, mode, xattrs and times for anything that is not a regular file, by path and
/// without following a final symlink.
fn finish_node(path: &Path, inode: &Inode, xattrs: &Xattrs, owners: bool) -> Result<()> {
    let is_link = inode.kind()? == Kind::Symlink;
    if owners {
        std::os::unix::fs::lchown(path, Some(inode.uid), Some(inode.gid)).at(path)?;
    }
    if !is_link {
        // Linux has no lchmod; the path was just created by us and is not a symlink.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(inode.permissions()))
            .at(path)?;
    }
    for (name, value) in xattrs {
        let set = xattr::set(path, std::ffi::OsStr::from_bytes(name), value);
        tolerate_xattr(path, name, set)?;
    }
    stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &atime_now(),
        &mtime(inode),
        UtimensatFlags::NoFollowSymlink,
    )
    .at(path)?;
    Ok(())
}

/// An xattr the target filesystem or our privileges cannot hold (`trusted.*` as a user,
/// `user.*` on a filesystem without them) is reported and skipped, as tar does; any other
/// failure stops the unpack.
fn tolerate_xattr(path: &Path, name: &[u8], result: std::io::Result<()>) -> Result<()> {
    match result {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::EPERM)) => {
            tracing::warn!(
                "{}: extended attribute {} not restored: {e}",
                path.display(),
                String::from_utf8_lossy(name)
            );
            Ok(())
        }
        other => other.at(path),
    }
}

fn atime_now() -> TimeSpec {
    // The format stores no access time; UTIME_NOW is what a fresh copy would have.
    TimeSpec::UTIME_NOW
}

fn mtime(inode: &Inode) -> TimeSpec {
    TimeSpec::new(inode.mtime, inode.mtime_nsec as i64)
}
