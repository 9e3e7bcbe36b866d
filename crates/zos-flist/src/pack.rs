//! Pack: a directory tree into a `.fl` file plus blocks in stores.
//!
//! One thread walks the tree in name order and writes metadata rows; a pool of workers reads
//! file content in segments, runs the block pipeline and pushes blocks to the stores. Large
//! files are split into segments so both cores work on one big file. The metadata file is
//! written under a temporary name next to the output and renamed into place only when every
//! block is stored, so a failed pack leaves no `.fl` behind.

use crate::block::{self, BlockRef, Hash, BLOCK_SIZE};
use crate::error::{Error, IoContext, Result};
use crate::meta::{FlistWriter, Ino, Inode, Route};
use crate::pool::{default_workers, with_workers, SEGMENT_BLOCKS};
use crate::store::{Router, StoreSpec};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Bytes per job: a segment of blocks.
const SEGMENT_BYTES: u64 = SEGMENT_BLOCKS as u64 * BLOCK_SIZE as u64;

/// What to pack into and how.
#[derive(Debug, Clone, Default)]
pub struct PackOptions {
    /// Stores to push blocks to; they become the flist's routes.
    pub stores: Vec<StoreSpec>,
    /// Keep store passwords in the routes written to the flist (off: they are stripped).
    pub keep_passwords: bool,
    /// Tags to set on the new flist.
    pub tags: Vec<(String, String)>,
    /// Worker threads; 0 picks a default from the number of cores.
    pub workers: usize,
}

/// Told about progress while packing or unpacking; all methods may be called from any thread.
pub trait Progress: Sync {
    /// One more entry (file, directory, link…) has been handled.
    fn entry(&self) {}
    /// `n` more bytes of file content have been processed.
    fn bytes(&self, _n: u64) {}
}

/// A [`Progress`] that ignores everything.
pub struct NoProgress;
impl Progress for NoProgress {}

/// What a pack did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PackReport {
    /// Entries written (the root included).
    pub entries: u64,
    /// Regular files with content read (hardlinks counted once).
    pub files: u64,
    /// Bytes of file content read.
    pub bytes: u64,
    /// Blocks of the files read, each hardlinked file once: the same count as the flist's
    /// [`Stats::blocks`](crate::meta::Stats::blocks).
    pub blocks: u64,
    /// Block writes sent to stores (a block sent to two stores counts twice).
    pub blocks_sent: u64,
    /// Blocks every covering store already had, so nothing was sent.
    pub blocks_present: u64,
}

/// A regular file whose content is being processed, shared by the jobs of its segments.
struct PendingFile {
    ino: Ino,
    path: PathBuf,
    file: File,
    size: u64,
    segments: Mutex<Vec<Vec<BlockRef>>>,
    remaining: AtomicUsize,
}

struct Segment {
    file: Arc<PendingFile>,
    index: usize,
}

/// Result of one segment: the whole file's blocks once its last segment is done.
enum Outcome {
    Partial {
        sent: u64,
        present: u64,
    },
    FileDone {
        ino: Ino,
        blocks: Vec<BlockRef>,
        sent: u64,
        present: u64,
    },
}

/// Packs `source` into a new flist at `output`.
pub fn pack(
    source: &Path,
    output: &Path,
    opts: &PackOptions,
    progress: &dyn Progress,
) -> Result<PackReport> {
    let meta = std::fs::symlink_metadata(source).at(source)?;
    if !meta.is_dir() {
        return Err(Error::Invalid(format!(
            "{}: not a directory; pack takes the root directory of the tree",
            source.display()
        )));
    }
    if opts.stores.is_empty() {
        return Err(Error::Invalid(
            "no store given: pass at least one --store, e.g. --store dir:///var/lib/zos/store"
                .into(),
        ));
    }
    let router = Router::from_specs(&opts.stores)?;
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = output.file_name().ok_or_else(|| {
        Error::Invalid(format!("{}: output must be a file name", output.display()))
    })?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".partial")
        .tempfile_in(parent)
        .at(parent)?;
    let writer = FlistWriter::create(tmp.path())?;
    // When the output lies inside the tree, the half-written flist must not pack itself.
    let tmp_meta = tmp.as_file().metadata().at(tmp.path())?;
    let tmp_identity = (tmp_meta.dev(), tmp_meta.ino());
    for spec in &opts.stores {
        writer.add_route(&Route {
            start: spec.start,
            end: spec.end,
            url: spec.route_url(opts.keep_passwords),
        })?;
    }
    for (k, v) in &opts.tags {
        writer.set_tag(k, v)?;
    }

    let workers = if opts.workers == 0 {
        default_workers()
    } else {
        opts.workers
    };
    let recent = RecentBlocks::default();
    let report = with_workers(
        workers,
        |seg: Segment| process_segment(&seg, &router, &recent, progress),
        |pool| {
            let mut walker = Walker {
                writer: &writer,
                report: PackReport::default(),
                in_flight: HashSet::new(),
                first_names: HashMap::new(),
                pending_links: HashMap::new(),
                progress,
                skip: tmp_identity,
            };
            walker.add(source, &meta, 0, Vec::new())?;
            walker.walk(source, pool)?;
            while !walker.in_flight.is_empty() {
                match pool.result() {
                    Some(outcome) => walker.record(outcome?)?,
                    None => return Err(Error::Invalid("pack workers stopped early".into())),
                }
            }
            Ok(walker.report)
        },
    )?;
    writer.finish()?;
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .at(tmp.path())?;
    tmp.persist(output).map_err(|e| Error::Io {
        path: output.to_owned(),
        source: e.error,
    })?;
    Ok(report)
}

struct Walker<'a> {
    writer: &'a FlistWriter,
    report: PackReport,
    /// Files whose blocks are still being computed.
    in_flight: HashSet<Ino>,
    /// First name of each multiply-linked file seen: (dev, ino) → flist ino.
    first_names: HashMap<(u64, u64), Ino>,
    /// Hardlinks waiting for their first name's blocks.
    pending_links: HashMap<Ino, Vec<Ino>>,
    progress: &'a dyn Progress,
    /// (dev, ino) of the flist being written.
    skip: (u64, u64),
}

impl Walker<'_> {
    /// Walks the tree under `root` (already added as ino 1) depth-first, names sorted.
    fn walk(
        &mut self,
        root: &Path,
        pool: &crate::pool::Pool<Segment, Result<Outcome>>,
    ) -> Result<()> {
        let mut stack: Vec<(PathBuf, Ino)> = vec![(root.to_owned(), crate::meta::ROOT)];
        while let Some((dir, dir_ino)) = stack.pop() {
            let mut names: Vec<_> = std::fs::read_dir(&dir)
                .at(&dir)?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<std::io::Result<_>>()
                .at(&dir)?;
            names.sort();
            let mut subdirs = Vec::new();
            for name in names {
                let path = dir.join(&name);
                let meta = std::fs::symlink_metadata(&path).at(&path)?;
                if (meta.dev(), meta.ino()) == self.skip {
                    continue;
                }
                let ino = self.add(&path, &meta, dir_ino, name.as_bytes().to_vec())?;
                if meta.is_dir() {
                    subdirs.push((path, ino));
                } else if self.in_flight.contains(&ino) {
                    let file = File::open(&path).at(&path)?;
                    let segments = meta.len().div_ceil(SEGMENT_BYTES);
                    let pending = Arc::new(PendingFile {
                        ino,
                        path: path.clone(),
                        file,
                        size: meta.len(),
                        segments: Mutex::new(vec![Vec::new(); segments as usize]),
                        remaining: AtomicUsize::new(segments as usize),
                    });
                    for index in 0..segments as usize {
                        pool.submit(Segment {
                            file: pending.clone(),
                            index,
                        });
                        while let Some(outcome) = pool.try_result() {
                            self.record(outcome?)?;
                        }
                    }
                }
            }
            // Reversed so that popping visits subdirectories in name order.
            stack.extend(subdirs.into_iter().rev());
        }
        Ok(())
    }

    /// Writes one entry's metadata row and returns its ino. Regular files with content are
    /// marked in flight; their blocks are recorded when the workers finish them.
    fn add(
        &mut self,
        path: &Path,
        meta: &std::fs::Metadata,
        parent: Ino,
        name: Vec<u8>,
    ) -> Result<Ino> {
        let ft = meta.file_type();
        let mut inode = Inode {
            parent,
            name: if parent == 0 { b"/".to_vec() } else { name },
            size: meta.size(),
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.mode(),
            rdev: meta.rdev(),
            ctime: meta.ctime(),
            mtime: meta.mtime(),
            ctime_nsec: meta.ctime_nsec() as u32,
            mtime_nsec: meta.mtime_nsec() as u32,
            ..Inode::default()
        };
        if ft.is_symlink() {
            let target = std::fs::read_link(path).at(path)?;
            inode.size = target.as_os_str().len() as u64;
            inode.link_target = Some(target.as_os_str().as_bytes().to_vec());
        }
        let first = (ft.is_file() && meta.nlink() > 1)
            .then(|| self.first_names.get(&(meta.dev(), meta.ino())).copied())
            .flatten();
        inode.hardlink_of = first;
        let ino = self.writer.add_inode(&inode)?;
        self.report.entries += 1;
        self.progress.entry();
        for name in xattr::list(path).at(path)? {
            if let Some(value) = xattr::get(path, &name).at(path)? {
                self.writer.add_xattr(ino, name.as_bytes(), &value)?;
            }
        }
        if let Some(first) = first {
            // A further name of a file already packed: share its blocks (rows duplicated so
            // that rfs, which knows no hardlinks, still reads a complete copy).
            if self.in_flight.contains(&first) {
                self.pending_links.entry(first).or_default().push(ino);
            } else {
                self.writer.copy_blocks(first, ino)?;
            }
        } else if ft.is_file() {
            self.report.files += 1;
            self.report.bytes += meta.len();
            if meta.nlink() > 1 {
                self.first_names.insert((meta.dev(), meta.ino()), ino);
            }
            if meta.len() > 0 {
                self.in_flight.insert(ino);
            }
        }
        Ok(ino)
    }

    fn record(&mut self, outcome: Outcome) -> Result<()> {
        let (sent, present) = match outcome {
            Outcome::Partial { sent, present } => (sent, present),
            Outcome::FileDone {
                ino,
                blocks,
                sent,
                present,
            } => {
                self.writer.add_blocks(ino, &blocks)?;
                self.report.blocks += blocks.len() as u64;
                self.in_flight.remove(&ino);
                for link in self.pending_links.remove(&ino).unwrap_or_default() {
                    self.writer.add_blocks(link, &blocks)?;
                }
                (sent, present)
            }
        };
        self.report.blocks_sent += sent;
        self.report.blocks_present += present;
        Ok(())
    }
}

/// Reads, encodes and stores the blocks of one segment of a file.
/// Block ids this pack has already sent or is sending, so two workers meeting the same content
/// at the same moment send it once. Bounded: older ids are forgotten, and the stores' own
/// `exists` check catches repeats that far apart.
#[derive(Default)]
struct RecentBlocks {
    inner: Mutex<Recent>,
}

/// The ids, and the order they came in (to forget the oldest).
#[derive(Default)]
struct Recent {
    set: HashSet<Hash>,
    order: std::collections::VecDeque<Hash>,
}

impl RecentBlocks {
    const CAPACITY: usize = 65_536;

    /// Records `id`; false if it was already recorded.
    fn first_time(&self, id: &Hash) -> bool {
        let mut recent = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if !recent.set.insert(*id) {
            return false;
        }
        recent.order.push_back(*id);
        if recent.order.len() > Self::CAPACITY {
            if let Some(old) = recent.order.pop_front() {
                recent.set.remove(&old);
            }
        }
        true
    }
}

fn process_segment(
    seg: &Segment,
    router: &Router,
    recent: &RecentBlocks,
    progress: &dyn Progress,
) -> Result<Outcome> {
    let file = &seg.file;
    let seg_start = seg.index as u64 * SEGMENT_BYTES;
    let seg_end = (seg_start + SEGMENT_BYTES).min(file.size);
    let mut buf = vec![0u8; BLOCK_SIZE];
    let mut blocks = Vec::with_capacity(SEGMENT_BLOCKS);
    let (mut sent, mut present) = (0, 0);
    let mut offset = seg_start;
    while offset < seg_end {
        let len = (seg_end - offset).min(BLOCK_SIZE as u64) as usize;
        file.file
            .read_exact_at(&mut buf[..len], offset)
            .map_err(|e| Error::Io {
                path: file.path.clone(),
                source: if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    std::io::Error::other("file shrank while being packed")
                } else {
                    e
                },
            })?;
        let (block, stored) = block::encode(&buf[..len]);
        let copies = if !recent.first_time(&block.id) {
            0
        } else {
            router.put(&block.id, &stored).map_err(|e| {
                let index = (offset / BLOCK_SIZE as u64) as usize;
                Error::block(file.path.display(), index, &block, e)
            })?
        };
        if copies == 0 {
            present += 1;
        }
        sent += copies as u64;
        blocks.push(block);
        progress.bytes(len as u64);
        offset += len as u64;
    }
    let mut segments = file
        .segments
        .lock()
        .map_err(|_| Error::Invalid("a pack worker panicked".into()))?;
    segments[seg.index] = blocks;
    if file.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
        let blocks = segments.iter_mut().flat_map(std::mem::take).collect();
        return Ok(Outcome::FileDone {
            ino: file.ino,
            blocks,
            sent,
            present,
        });
    }
    Ok(Outcome::Partial { sent, present })
}

/// Bytes of regular file content under `root`, hardlinks counted once (as pack counts them):
/// the total a progress bar for packing `root` runs to. Unreadable parts are skipped.
pub fn content_bytes(root: &Path) -> u64 {
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) if m.is_file() && seen.insert((m.dev(), m.ino())) => total += m.len(),
                _ => {}
            }
        }
    }
    total
}
