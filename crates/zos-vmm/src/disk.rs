//! Disk images for VMs (what `zmount` will hand out): data disks of a given size, raw or
//! qcow2, formatted ext4 on creation so a guest can mount them straight away, and qcow2
//! copy-on-write overlays that boot a VM from a read-only image (one inside an flist mount,
//! say) without copying it.
//!
//! The work is done by the host's `mkfs.ext4` and `qemu-img`. Every function builds its
//! result in a temp file next to the target and renames it into place, refusing to replace
//! an existing file: a failure, at any step, leaves nothing behind, and a path that exists is
//! always a complete disk.

use serde::{Deserialize, Serialize};
use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;

/// Smallest disk [`create_disk`] makes. Below this ext4 ends up with a tiny journal and
/// block groups, which is not a useful data disk.
pub const MIN_DISK_SIZE: u64 = 16 << 20;

/// Disk sizes must be whole sectors: QEMU presents disks in 512-byte sectors and would round
/// the size, so the guest would see a disk of another size than asked for.
const SECTOR_SIZE: u64 = 512;

/// Filesystem label given to new disks, so a guest can mount one by `LABEL=zos`.
const EXT4_LABEL: &str = "zos";

/// Where `mkfs.ext4` lives when it is not in `PATH`: a root shell's `PATH` does not always
/// include the sbin directories.
const SBIN_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin"];

/// Where `qemu-img` lives when it is not in `PATH`.
const BIN_DIRS: &[&str] = &["/usr/local/bin", "/usr/bin", "/bin"];

/// Format of a disk image file, as QEMU names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// A plain image: byte N of the file is byte N of the disk. Sparse where never written.
    Raw,
    /// QEMU copy-on-write: grows as written, and can sit over a read-only backing file.
    Qcow2,
}

impl DiskFormat {
    /// The name QEMU uses for the format (`format=` of `-drive`, `-f`/`-O` of `qemu-img`).
    pub fn as_qemu(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_qemu())
    }
}

impl FromStr for DiskFormat {
    type Err = DiskError;

    /// Parses the QEMU name, `raw` or `qcow2` (lowercase, as in serde).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "raw" => Ok(DiskFormat::Raw),
            "qcow2" => Ok(DiskFormat::Qcow2),
            _ => Err(DiskError::UnknownFormat(s.to_string())),
        }
    }
}

/// What `qemu-img info` says about a disk image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskInfo {
    /// The format qemu-img detected. Detection is a guess from the content (a raw disk whose
    /// guest wrote a qcow2 header looks like qcow2), which is why callers compare it with the
    /// format they expect and refuse a mismatch rather than trusting it.
    pub format: DiskFormat,
    /// Size of the disk as the guest sees it, in bytes.
    pub virtual_size: u64,
    /// Bytes the image occupies on the host (allocated blocks); 0 if qemu-img cannot tell.
    pub actual_size: u64,
    /// The backing file of a qcow2 overlay, as recorded in the image. A disk from outside
    /// with a backing file could read any host file through it: refuse those unless the
    /// backing is one of ours.
    pub backing_filename: Option<String>,
    /// The external data file of a qcow2 image (`data_file`): like a backing file, a way for
    /// an image from outside to reach host files, so it is refused the same way.
    pub data_file: Option<String>,
}

impl DiskInfo {
    /// Why an image from outside (a user's disk, an flist's disk image) must not be opened:
    /// it refers to another file on the host.
    pub fn external_reference(&self) -> Option<String> {
        match (&self.backing_filename, &self.data_file) {
            (Some(b), _) => Some(format!("it has a backing file ({b})")),
            (None, Some(d)) => Some(format!("it has an external data file ({d})")),
            (None, None) => None,
        }
    }
}

/// What can go wrong creating or inspecting a disk.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// A disk format name that is neither `raw` nor `qcow2`.
    #[error("unknown disk format {0:?}: expected \"raw\" or \"qcow2\"")]
    UnknownFormat(String),
    /// The target path exists; disks are never overwritten.
    #[error("{} already exists; refusing to overwrite it", path.display())]
    AlreadyExists {
        /// The path.
        path: PathBuf,
    },
    /// The requested size is below [`MIN_DISK_SIZE`].
    #[error("disk size {size} bytes is too small: the minimum is {min} bytes (16 MiB)")]
    TooSmall {
        /// The requested size.
        size: u64,
        /// The minimum.
        min: u64,
    },
    /// The requested size is not a whole number of 512-byte sectors.
    #[error("disk size {size} bytes is not a multiple of 512 bytes")]
    Unaligned {
        /// The requested size.
        size: u64,
    },
    /// A required host tool is not installed.
    #[error("{tool} not found in PATH or in {searched}; is it installed?")]
    ToolNotFound {
        /// The tool's name.
        tool: &'static str,
        /// The directories searched besides `PATH`.
        searched: String,
    },
    /// A host tool failed; carries its error output.
    #[error("{command} failed ({status}): {stderr}")]
    Tool {
        /// The command line that was run.
        command: String,
        /// How it ended (exit code or signal).
        status: String,
        /// Its error output (or standard output when it wrote nothing on stderr).
        stderr: String,
    },
    /// `qemu-img info` found an image in a format other than raw and qcow2.
    #[error("{} is a {format} image; only raw and qcow2 are supported", path.display())]
    UnsupportedFormat {
        /// The image.
        path: PathBuf,
        /// The format qemu-img reported.
        format: String,
    },
    /// `qemu-img info` printed something that is not the JSON expected.
    #[error("unexpected output from qemu-img info for {}: {detail}", path.display())]
    BadInfo {
        /// The image.
        path: PathBuf,
        /// What could not be parsed.
        detail: String,
    },
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, on which path.
        what: String,
        /// The cause.
        source: io::Error,
    },
}

/// Creates a disk of `size_bytes` at `path` in `format`, holding an empty ext4 filesystem
/// labelled `zos`.
///
/// A raw disk is a sparse file; a qcow2 disk is converted from a formatted raw temp file, so
/// it holds only the filesystem's metadata and stays small. `size_bytes` must be at least
/// [`MIN_DISK_SIZE`] and a multiple of 512. An existing `path` is refused with
/// [`DiskError::AlreadyExists`].
pub fn create_disk(path: &Path, size_bytes: u64, format: DiskFormat) -> Result<(), DiskError> {
    if size_bytes < MIN_DISK_SIZE {
        return Err(DiskError::TooSmall {
            size: size_bytes,
            min: MIN_DISK_SIZE,
        });
    }
    if !size_bytes.is_multiple_of(SECTOR_SIZE) {
        return Err(DiskError::Unaligned { size: size_bytes });
    }
    refuse_existing(path)?;
    // Find the tools before creating anything, so a missing one fails cleanly and early.
    let mkfs = find_tool("mkfs.ext4", SBIN_DIRS)?;
    let qemu_img = match format {
        DiskFormat::Raw => None,
        DiskFormat::Qcow2 => Some(find_tool("qemu-img", BIN_DIRS)?),
    };

    // Every temp file below is a NamedTempFile: whatever fails, dropping it removes it.
    let raw = temp_next_to(path)?;
    raw.as_file()
        .set_len(size_bytes)
        .map_err(|e| io_error(format!("sizing {}", raw.path().display()), e))?;
    // Lazy init: the inode tables are zeroed by the guest kernel in the background after
    // the first mount and the journal is not zeroed at all, instead of both being written
    // here, which keeps creation fast and the raw file (and the qcow2 made from it) sparse.
    run(
        &mkfs,
        &[
            "-q".as_ref(),
            "-F".as_ref(),
            "-E".as_ref(),
            "lazy_itable_init=1,lazy_journal_init=1".as_ref(),
            "-L".as_ref(),
            EXT4_LABEL.as_ref(),
            tool_arg(raw.path()).as_os_str(),
        ],
    )?;
    let done = match qemu_img {
        None => raw,
        Some(qemu_img) => {
            let qcow2 = temp_next_to(path)?;
            run(
                &qemu_img,
                &[
                    "convert".as_ref(),
                    "-q".as_ref(),
                    "-f".as_ref(),
                    "raw".as_ref(),
                    "-O".as_ref(),
                    "qcow2".as_ref(),
                    tool_arg(raw.path()).as_os_str(),
                    tool_arg(qcow2.path()).as_os_str(),
                ],
            )?;
            let raw_path = raw.path().to_path_buf();
            raw.close()
                .map_err(|e| io_error(format!("removing {}", raw_path.display()), e))?;
            qcow2
        }
    };
    persist(done, path)?;
    tracing::info!(path = %path.display(), size_bytes, %format, "created disk");
    Ok(())
}

/// Creates a qcow2 overlay at `path` over `backing` (read as `backing_format`): the guest
/// sees the backing's content, and its writes go to the overlay only. Its size is the
/// backing's, or `size` bytes (larger than the backing: the guest can grow into it).
///
/// The backing path is recorded absolute (symlinks resolved), so the overlay works from any
/// working directory; the backing must stay where it is for the overlay's lifetime. Its
/// format is recorded too, since letting QEMU guess it from the content is unsafe. An existing
/// `path` is refused with [`DiskError::AlreadyExists`].
pub fn create_overlay(
    backing: &Path,
    backing_format: DiskFormat,
    path: &Path,
    size: Option<u64>,
) -> Result<(), DiskError> {
    refuse_existing(path)?;
    let backing = std::fs::canonicalize(backing)
        .map_err(|e| io_error(format!("resolving backing file {}", backing.display()), e))?;
    let qemu_img = find_tool("qemu-img", BIN_DIRS)?;
    let overlay = temp_next_to(path)?;
    // qemu-img opens the backing to take its size, so it fails here, not at boot, if the
    // backing is missing or not readable as backing_format.
    let overlay_arg = tool_arg(overlay.path());
    let size_arg = size.map(|s| s.to_string());
    let mut args: Vec<&OsStr> = vec![
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-F".as_ref(),
        backing_format.as_qemu().as_ref(),
        "-b".as_ref(),
        backing.as_os_str(),
        overlay_arg.as_os_str(),
    ];
    if let Some(size) = &size_arg {
        args.push(size.as_ref());
    }
    run(&qemu_img, &args)?;
    persist(overlay, path)?;
    tracing::info!(
        path = %path.display(),
        backing = %backing.display(),
        %backing_format,
        "created overlay"
    );
    Ok(())
}

/// Reads format and sizes of the image at `path` with `qemu-img info`.
///
/// Works on an image a running VM has open (the image is opened shared, read-only). An image
/// in a format other than raw or qcow2 is [`DiskError::UnsupportedFormat`].
pub fn disk_info(path: &Path) -> Result<DiskInfo, DiskError> {
    /// The parts of `qemu-img info --output=json` used here.
    #[derive(Deserialize)]
    #[serde(rename_all = "kebab-case")]
    struct QemuImgInfo {
        format: String,
        virtual_size: u64,
        #[serde(default)]
        actual_size: Option<u64>,
        #[serde(default)]
        backing_filename: Option<String>,
        #[serde(default)]
        format_specific: Option<FormatSpecific>,
    }
    #[derive(Deserialize)]
    struct FormatSpecific {
        #[serde(default)]
        data: Option<FormatData>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "kebab-case")]
    struct FormatData {
        #[serde(default)]
        data_file: Option<String>,
    }

    let qemu_img = find_tool("qemu-img", BIN_DIRS)?;
    // -U (force share): without it qemu-img wants a lock that a running QEMU holds.
    let stdout = run(
        &qemu_img,
        &[
            "info".as_ref(),
            "-U".as_ref(),
            "--output=json".as_ref(),
            tool_arg(path).as_os_str(),
        ],
    )?;
    let info: QemuImgInfo = serde_json::from_slice(&stdout).map_err(|e| DiskError::BadInfo {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let format = info
        .format
        .parse()
        .map_err(|_| DiskError::UnsupportedFormat {
            path: path.to_path_buf(),
            format: info.format.clone(),
        })?;
    Ok(DiskInfo {
        format,
        virtual_size: info.virtual_size,
        actual_size: info.actual_size.unwrap_or(0),
        backing_filename: info.backing_filename,
        data_file: info
            .format_specific
            .and_then(|f| f.data)
            .and_then(|d| d.data_file),
    })
}

fn io_error(what: String, source: io::Error) -> DiskError {
    DiskError::Io { what, source }
}

/// Fails with [`DiskError::AlreadyExists`] if anything, even a dangling symlink, is at `path`.
/// This is the friendly early check; [`persist`] is the one that closes the race.
fn refuse_existing(path: &Path) -> Result<(), DiskError> {
    match path.symlink_metadata() {
        Ok(_) => Err(DiskError::AlreadyExists {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(format!("checking {}", path.display()), e)),
    }
}

/// A temp file next to `path` (see [`crate::fsutil::temp_next_to`]).
fn temp_next_to(path: &Path) -> Result<tempfile::NamedTempFile, DiskError> {
    crate::fsutil::temp_next_to(path).map_err(|e| {
        io_error(
            format!("creating a temp file next to {}", path.display()),
            e,
        )
    })
}

/// Flushes `tmp` to disk and renames it to `path`, unless something appeared at `path` in the
/// meantime. On failure the temp file is removed.
fn persist(tmp: tempfile::NamedTempFile, path: &Path) -> Result<(), DiskError> {
    // Through a new descriptor: the tools wrote the file through their own.
    File::open(tmp.path())
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error(format!("syncing {}", tmp.path().display()), e))?;
    // No-clobber rename (renameat2 RENAME_NOREPLACE, or link + unlink), so two creators
    // racing for one path cannot replace each other's disk.
    tmp.persist_noclobber(path).map_err(|e| {
        if e.error.kind() == io::ErrorKind::AlreadyExists {
            DiskError::AlreadyExists {
                path: path.to_path_buf(),
            }
        } else {
            io_error(
                format!("renaming a temp file to {}", path.display()),
                e.error,
            )
        }
    })?;
    Ok(())
}

/// `path` as a tool argument: relative paths get a `./` so that one starting with `-` is not
/// read as an option, and one with a `:` is not read by QEMU as `protocol:filename`.
fn tool_arg(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        Path::new(".").join(path)
    }
}

/// Finds `name` in `PATH`, then in `extra_dirs`.
fn find_tool(name: &'static str, extra_dirs: &[&str]) -> Result<PathBuf, DiskError> {
    find_tool_in(name, std::env::var_os("PATH").as_deref(), extra_dirs)
}

fn find_tool_in(
    name: &'static str,
    path_var: Option<&OsStr>,
    extra_dirs: &[&str],
) -> Result<PathBuf, DiskError> {
    use std::os::unix::fs::PermissionsExt;
    let path_dirs: Vec<PathBuf> = path_var
        .map(|p| std::env::split_paths(p).collect())
        .unwrap_or_default();
    path_dirs
        .iter()
        // Relative PATH entries (".", "") would make the tool depend on the caller's working
        // directory; a root daemon must not run whatever sits there.
        .filter(|dir| dir.is_absolute())
        .map(PathBuf::as_path)
        .chain(extra_dirs.iter().map(Path::new))
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
        .ok_or_else(|| DiskError::ToolNotFound {
            tool: name,
            searched: extra_dirs.join(", "),
        })
}

/// Writes a read-only ext4 image of the tree at `dir` to `path` (`mke2fs -d`: no loop device
/// or mount, so no root needed), labelled `label`, every file owned by root, no journal (it is
/// never written) and sized to the tree; made mode 0644, since jailed QEMUs of other uids
/// read it. Placed atomically: `path` is the whole image or absent; if another builder placed
/// it first, that one is kept.
pub fn ext4_image_of(dir: &Path, path: &Path, label: &str) -> Result<(), DiskError> {
    use std::os::unix::fs::PermissionsExt;
    let mke2fs = find_tool("mke2fs", SBIN_DIRS)?;
    let (bytes, entries) = tree_size(dir)?;
    // Room for the metadata (inode tables, bitmaps, directories), generously: the file is
    // sparse, so unused blocks cost nothing on the host.
    let size_kib = (bytes + entries * 4096) / 1024 * 5 / 4 + 16 * 1024;
    let inodes = (entries + 1024).to_string();
    let tmp = temp_next_to(path)?;
    run(
        &mke2fs,
        &[
            "-q".as_ref(),
            "-F".as_ref(),
            "-t".as_ref(),
            "ext4".as_ref(),
            "-O".as_ref(),
            "^has_journal".as_ref(),
            "-m".as_ref(),
            "0".as_ref(),
            "-N".as_ref(),
            inodes.as_ref(),
            "-E".as_ref(),
            "root_owner=0:0".as_ref(),
            "-L".as_ref(),
            label.as_ref(),
            "-d".as_ref(),
            tool_arg(dir).as_os_str(),
            tool_arg(tmp.path()).as_os_str(),
            format!("{size_kib}k").as_ref(),
        ],
    )?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
        .map_err(|e| io_error(format!("making {} readable", tmp.path().display()), e))?;
    match persist(tmp, path) {
        Err(DiskError::AlreadyExists { .. }) => Ok(()),
        other => other,
    }
}

/// Bytes of file content (each file rounded up to 4 KiB blocks) and entries under `dir`,
/// symlinks not followed.
fn tree_size(dir: &Path) -> Result<(u64, u64), DiskError> {
    let mut bytes = 0;
    let mut entries = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let listing = std::fs::read_dir(&dir)
            .map_err(|e| io_error(format!("listing {}", dir.display()), e))?;
        for entry in listing {
            let entry = entry.map_err(|e| io_error(format!("listing {}", dir.display()), e))?;
            let meta = entry
                .metadata()
                .map_err(|e| io_error(format!("reading {}", entry.path().display()), e))?;
            entries += 1;
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                bytes += meta.len().div_ceil(4096) * 4096;
            }
        }
    }
    Ok((bytes, entries))
}

/// Runs `tool` with `args` and returns its standard output, or [`DiskError::Tool`] with its
/// error output if it fails.
fn run(tool: &Path, args: &[&OsStr]) -> Result<Vec<u8>, DiskError> {
    let command = std::iter::once(tool.as_os_str())
        .chain(args.iter().copied())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    tracing::debug!(%command, "running");
    let out = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io_error(format!("running {command}"), e))?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let stderr = if stderr.is_empty() {
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    } else {
        stderr
    };
    Err(DiskError::Tool {
        command,
        status: out.status.to_string(),
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::names_in;

    const MIB: u64 = 1 << 20;

    /// The ext4 superblock starts at byte 1024; its magic (0xEF53, little-endian) is at 0x38
    /// within it, and the volume name at 0x78.
    fn assert_ext4(head: &[u8]) {
        assert!(head.len() >= 2048, "{}", head.len());
        assert_eq!(
            &head[0x438..0x43a],
            &[0x53, 0xEF],
            "no ext4 superblock magic"
        );
        assert_eq!(&head[0x478..0x47c], b"zos\0", "ext4 label");
    }

    fn read_head(path: &Path) -> Vec<u8> {
        use std::io::Read;
        let mut head = vec![0; 2048];
        File::open(path).unwrap().read_exact(&mut head).unwrap();
        head
    }

    fn qemu_img() -> PathBuf {
        find_tool("qemu-img", BIN_DIRS).expect("these tests need qemu-img")
    }

    #[test]
    fn raw_and_qcow2_disks_are_ext4() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("data.raw");
        let qcow2 = dir.path().join("data.qcow2");
        create_disk(&raw, 64 * MIB, DiskFormat::Raw).unwrap();
        create_disk(&qcow2, 64 * MIB, DiskFormat::Qcow2).unwrap();
        // The temp files are gone.
        assert_eq!(names_in(dir.path()), vec!["data.qcow2", "data.raw"]);

        let info = disk_info(&raw).unwrap();
        assert_eq!(info.format, DiskFormat::Raw);
        assert_eq!(info.virtual_size, 64 * MIB);
        assert_eq!(info.backing_filename, None);
        assert_eq!(std::fs::metadata(&raw).unwrap().len(), 64 * MIB);
        assert_ext4(&read_head(&raw));

        let info = disk_info(&qcow2).unwrap();
        assert_eq!(info.format, DiskFormat::Qcow2);
        assert_eq!(info.virtual_size, 64 * MIB);
        assert_eq!(info.backing_filename, None);
        // Only the filesystem metadata was converted, not 64 MiB of zeros.
        let file_len = std::fs::metadata(&qcow2).unwrap().len();
        assert!(file_len < 16 * MIB, "qcow2 is {file_len} bytes");
        assert!(
            info.actual_size > 0 && info.actual_size < 16 * MIB,
            "{info:?}"
        );
        // Read the start of the guest-visible disk back through qemu-img.
        let head = dir.path().join("head.raw");
        let (from, to) = (
            format!("if={}", qcow2.display()),
            format!("of={}", head.display()),
        );
        let dd = [
            "dd", "-f", "qcow2", "-O", "raw", "bs=1024", "count=2", &from, &to,
        ];
        run(&qemu_img(), &dd.map(OsStr::new)).unwrap();
        assert_ext4(&read_head(&head));
    }

    #[test]
    fn smallest_disk_and_tool_args() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("min.qcow2");
        create_disk(&path, MIN_DISK_SIZE, DiskFormat::Qcow2).unwrap();
        assert_eq!(disk_info(&path).unwrap().virtual_size, MIN_DISK_SIZE);
        // Relative paths (not exercised above: the working directory is process-wide, so
        // tests cannot cd) reach the tools as "./…": never an option, never "protocol:".
        assert_eq!(tool_arg(Path::new("-x:y.img")), PathBuf::from("./-x:y.img"));
        assert_eq!(tool_arg(Path::new("/a/b")), PathBuf::from("/a/b"));
    }

    #[test]
    fn refusals_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");

        let err = create_disk(&path, MIN_DISK_SIZE - SECTOR_SIZE, DiskFormat::Raw).unwrap_err();
        assert!(matches!(err, DiskError::TooSmall { .. }), "{err}");
        assert!(err.to_string().contains("too small"), "{err}");
        let err = create_disk(&path, 64 * MIB + 1, DiskFormat::Qcow2).unwrap_err();
        assert!(matches!(err, DiskError::Unaligned { .. }), "{err}");
        assert!(names_in(dir.path()).is_empty());

        // An existing file is refused and left as it was, whatever the format.
        std::fs::write(&path, b"precious").unwrap();
        for format in [DiskFormat::Raw, DiskFormat::Qcow2] {
            let err = create_disk(&path, 64 * MIB, format).unwrap_err();
            assert!(matches!(err, DiskError::AlreadyExists { .. }), "{err}");
            assert!(err.to_string().contains("disk.raw"), "{err}");
        }
        let err = create_overlay(&path, DiskFormat::Raw, &path, None).unwrap_err();
        assert!(matches!(err, DiskError::AlreadyExists { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");

        // So is a dangling symlink: creating through it would write somewhere else.
        let link = dir.path().join("link.raw");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &link).unwrap();
        let err = create_disk(&link, 64 * MIB, DiskFormat::Raw).unwrap_err();
        assert!(matches!(err, DiskError::AlreadyExists { .. }), "{err}");

        // A missing directory fails at the temp file.
        let err =
            create_disk(&dir.path().join("no/such.raw"), 64 * MIB, DiskFormat::Raw).unwrap_err();
        assert!(matches!(err, DiskError::Io { .. }), "{err}");

        assert_eq!(names_in(dir.path()), vec!["disk.raw", "link.raw"]);
    }

    #[test]
    fn overlay_over_raw_backing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let backing = dir.path().join("base.raw");
        create_disk(&backing, MIN_DISK_SIZE, DiskFormat::Raw).unwrap();
        let before = std::fs::read(&backing).unwrap();

        // A non-canonical backing path is recorded resolved.
        let overlay = dir.path().join("vm.qcow2");
        let backing_spelled = dir.path().join("sub/../base.raw");
        create_overlay(&backing_spelled, DiskFormat::Raw, &overlay, None).unwrap();
        assert_eq!(names_in(dir.path()), vec!["base.raw", "sub", "vm.qcow2"]);

        let canonical = std::fs::canonicalize(&backing).unwrap();
        let info = disk_info(&overlay).unwrap();
        assert_eq!(info.format, DiskFormat::Qcow2);
        assert_eq!(info.virtual_size, MIN_DISK_SIZE);
        assert_eq!(
            info.backing_filename.as_deref(),
            canonical.to_str(),
            "{info:?}"
        );
        // And the backing format is recorded, so QEMU never probes it.
        let info = run(
            &qemu_img(),
            &[
                OsStr::new("info"),
                OsStr::new("-U"),
                OsStr::new("--output=json"),
                overlay.as_os_str(),
            ],
        )
        .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&info).unwrap();
        assert_eq!(json["backing-filename-format"], "raw", "{json}");
        assert_eq!(
            json["backing-filename"],
            canonical.to_str().unwrap(),
            "{json}"
        );

        // Writes through the overlay stay in the overlay.
        match find_tool("qemu-io", BIN_DIRS) {
            Ok(qemu_io) => {
                let io = |cmd: &str| {
                    let out = Command::new(&qemu_io)
                        .args(["-f", "qcow2", "-c", cmd])
                        .arg(&overlay)
                        .output()
                        .unwrap();
                    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
                    assert!(
                        out.status.success() && !stdout.contains("failed"),
                        "{cmd}: {stdout}{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                };
                io("write -P 0xab 0 4k");
                io("read -P 0xab 0 4k");
                assert!(
                    std::fs::read(&backing).unwrap() == before,
                    "backing changed"
                );
                let overlay_len = std::fs::metadata(&overlay).unwrap().len();
                assert!(overlay_len < 4 * MIB, "{overlay_len}");
                // The guest now sees the write over the backing's content, everything past
                // it unchanged.
                let flat = dir.path().join("flat.raw");
                let convert = ["convert", "-f", "qcow2", "-O", "raw"].map(OsStr::new);
                let files = [overlay.as_os_str(), flat.as_os_str()];
                run(&qemu_img(), &[&convert[..], &files[..]].concat()).unwrap();
                let flat = std::fs::read(&flat).unwrap();
                assert_eq!(flat.len(), before.len());
                assert!(flat[..4096].iter().all(|b| *b == 0xab));
                assert!(
                    flat[4096..] == before[4096..],
                    "overlay lost backing content"
                );
            }
            Err(e) => zos_testkit::skip(&format!(
                "the overlay write check needs qemu-io ({e}): run scripts/setup"
            )),
        }

        // Overwrite refused.
        let err = create_overlay(&backing, DiskFormat::Raw, &overlay, None).unwrap_err();
        assert!(matches!(err, DiskError::AlreadyExists { .. }), "{err}");
    }

    #[test]
    fn an_image_of_a_tree_holds_its_files_and_is_readable_by_all() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("kernel/net")).unwrap();
        std::fs::write(tree.join("kernel/net/br.ko"), b"module bytes").unwrap();
        std::fs::write(tree.join("config"), b"CONFIG_BRIDGE=m\n").unwrap();
        let image = dir.path().join("kit.ext4");
        ext4_image_of(&tree, &image, "zos-kit").unwrap();
        let mode = std::fs::metadata(&image).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        let debugfs = find_tool("debugfs", SBIN_DIRS).expect("these tests need debugfs");
        let cat = |path: &str| {
            let request = format!("cat {path}");
            run(
                &debugfs,
                &["-R".as_ref(), request.as_ref(), image.as_os_str()],
            )
            .unwrap()
        };
        assert_eq!(cat("/kernel/net/br.ko"), b"module bytes");
        assert_eq!(cat("/config"), b"CONFIG_BRIDGE=m\n");
        // A second builder that lost the race keeps the first's image.
        std::fs::write(tree.join("config"), b"other").unwrap();
        ext4_image_of(&tree, &image, "zos-kit").unwrap();
        assert_eq!(cat("/config"), b"CONFIG_BRIDGE=m\n");
        assert_eq!(names_in(dir.path()), vec!["kit.ext4", "tree"]);
    }

    #[test]
    fn failing_tool_reports_stderr_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("base.raw");
        std::fs::write(&backing, vec![0u8; MIB as usize]).unwrap();
        // The backing is raw, not qcow2: qemu-img refuses to create the overlay.
        let err = create_overlay(
            &backing,
            DiskFormat::Qcow2,
            &dir.path().join("vm.qcow2"),
            None,
        )
        .unwrap_err();
        let DiskError::Tool { stderr, .. } = &err else {
            panic!("{err}");
        };
        assert!(stderr.contains("qcow2"), "{err}");
        assert!(err.to_string().contains("qemu-img create"), "{err}");
        assert_eq!(names_in(dir.path()), vec!["base.raw"]);

        let err = create_overlay(
            &dir.path().join("none"),
            DiskFormat::Raw,
            &dir.path().join("x"),
            None,
        )
        .unwrap_err();
        assert!(matches!(err, DiskError::Io { .. }), "{err}");
        assert_eq!(names_in(dir.path()), vec!["base.raw"]);
    }

    #[test]
    fn images_that_reach_other_host_files_are_flagged() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        create_disk(&base, MIN_DISK_SIZE, DiskFormat::Raw).unwrap();
        let plain = disk_info(&base).unwrap();
        assert_eq!(plain.external_reference(), None);

        let overlay = dir.path().join("over.qcow2");
        create_overlay(&base, DiskFormat::Raw, &overlay, None).unwrap();
        let why = disk_info(&overlay).unwrap().external_reference().unwrap();
        assert!(
            why.contains("backing file") && why.contains("base.raw"),
            "{why}"
        );

        let with_data_file = dir.path().join("data.qcow2");
        let option = format!("data_file={}", dir.path().join("d.raw").display());
        let file = with_data_file.to_string_lossy();
        let create = ["create", "-q", "-f", "qcow2", "-o", &option, &file, "1M"];
        run(&qemu_img(), &create.map(OsStr::new)).unwrap();
        let why = disk_info(&with_data_file)
            .unwrap()
            .external_reference()
            .unwrap();
        assert!(why.contains("data file") && why.contains("d.raw"), "{why}");
    }

    #[test]
    fn info_of_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let err = disk_info(&dir.path().join("missing")).unwrap_err();
        let DiskError::Tool { stderr, .. } = &err else {
            panic!("{err}");
        };
        assert!(stderr.contains("missing"), "{err}");

        // Anything qemu-img does not recognise is raw.
        let text = dir.path().join("text");
        std::fs::write(&text, "hello\n").unwrap();
        let info = disk_info(&text).unwrap();
        assert_eq!(info.format, DiskFormat::Raw);
        // QEMU rounds to whole sectors: why create_disk wants a multiple of 512.
        assert_eq!(info.virtual_size, 512);

        // A format QEMU knows but we do not use.
        let vmdk = dir.path().join("disk.vmdk");
        let file = vmdk.to_string_lossy();
        run(
            &qemu_img(),
            &["create", "-q", "-f", "vmdk", &file, "1M"].map(OsStr::new),
        )
        .unwrap();
        let err = disk_info(&vmdk).unwrap_err();
        assert!(
            matches!(&err, DiskError::UnsupportedFormat { format, .. } if format == "vmdk"),
            "{err}"
        );
    }

    #[test]
    fn format_names() {
        assert_eq!("raw".parse::<DiskFormat>().unwrap(), DiskFormat::Raw);
        assert_eq!("qcow2".parse::<DiskFormat>().unwrap(), DiskFormat::Qcow2);
        let err = "vmdk".parse::<DiskFormat>().unwrap_err();
        assert!(matches!(err, DiskError::UnknownFormat(_)), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("\"vmdk\"") && message.contains("qcow2"),
            "{message}"
        );
        assert_eq!(DiskFormat::Qcow2.as_qemu(), "qcow2");
        assert_eq!(DiskFormat::Raw.to_string(), "raw");
        assert_eq!(
            serde_json::to_string(&DiskFormat::Qcow2).unwrap(),
            "\"qcow2\""
        );
        assert_eq!(
            serde_json::from_str::<DiskFormat>("\"raw\"").unwrap(),
            DiskFormat::Raw
        );
        assert!(serde_json::from_str::<DiskFormat>("\"Raw\"").is_err());
    }

    #[test]
    fn tools_are_found_outside_path() {
        // As for a root shell whose PATH lacks sbin: the fallback dirs still find mkfs.ext4.
        let found = find_tool_in("mkfs.ext4", Some(OsStr::new("/nonexistent:.")), SBIN_DIRS)
            .expect("these tests need mkfs.ext4");
        assert!(found.is_absolute(), "{}", found.display());
        let err = find_tool_in("mkfs.ext4", Some(OsStr::new("/nonexistent")), &[]).unwrap_err();
        assert!(matches!(err, DiskError::ToolNotFound { .. }), "{err}");
        assert!(err.to_string().contains("mkfs.ext4"), "{err}");
    }
}
