//! A read-only FUSE view of an flist: metadata answered from the `.fl` file, content fetched
//! block by block on first read through the shared [`BlockCache`].
//!
//! An flist never changes, which is what makes this fast: entries, attributes and file pages
//! are given to the kernel with long lifetimes (`FOPEN_KEEP_CACHE`), so a warm read never
//! reaches this process. Directory listings are read once per `opendir` and served from
//! memory, so `ls` of a large directory is linear. Sequential reads prefetch the next blocks
//! through a pool of fetch workers (a window that widens as the reader keeps going), so a cold
//! read decodes on every core while the stores are read. A large file's blocks are written
//! once, by the worker that fetched them, into the file's whole copy in the cache, so the
//! reading thread only waits for decoding, and later opens go through passthrough.

use crate::block::BlockRef;
use crate::cache::{BlockCache, WholeFile};
use crate::error::{Error, Result};
use crate::meta::{Flist, Ino, Inode, Kind};
use crossbeam_channel::{bounded, Sender};
use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

/// Lifetime of entries and attributes in the kernel: the flist is immutable.
const TTL: Duration = Duration::from_secs(3600);
/// Blocks fetched ahead of a reader's first read; the window doubles with each sequential
/// read up to [`PREFETCH_MAX`], so a small read pulls little and a stream keeps every fetch
/// worker busy.
const PREFETCH_BLOCKS: u64 = 4;
/// Widest prefetch window, in blocks, reached after a few sequential reads.
const PREFETCH_MAX: u64 = 16;
/// Threads fetching and decoding blocks ahead of readers. More than the cores: part of each
/// fetch waits on the store (disk or network), and decoding the other blocks fills that time.
const FETCH_WORKERS: usize = 4;
/// Files smaller than this are not worth a whole-file copy: the page cache serves them well.
const WHOLE_FILE_MIN: u64 = 1024 * 1024;
/// Largest read the kernel is told it may send (and readahead window).
const MAX_READ: u32 = 1024 * 1024;

/// A directory listing read at `opendir`: (attributes, name), `.` and `..` first.
type Listing = Arc<Vec<(FileAttr, Vec<u8>)>>;

/// A block for a fetch worker, with the whole copy (and place in it) it goes into, if any.
type Prefetch = (BlockRef, Option<(Arc<WholeFile>, usize)>);

/// The filesystem served for one mounted flist.
pub struct FlistFs {
    meta: Mutex<Flist>,
    cache: Arc<BlockCache>,
    /// Names per inode, for inodes with hardlinks (every other file has one).
    nlinks: HashMap<Ino, u32>,
    /// Inodes that have extended attributes: `ls -l` asks for them on every entry, and most
    /// have none, so those are answered without touching the metadata file.
    with_xattrs: HashSet<Ino>,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    dirs: Mutex<HashMap<u64, Listing>>,
    next_handle: AtomicU64,
    prefetch: Sender<Prefetch>,
    /// Whether the kernel accepted passthrough: opens of fully cached files are then served
    /// by the kernel from the cache's whole-file copy, without a round trip per read.
    passthrough: bool,
    /// Whether large files are opened with direct I/O until their whole copy exists (needs
    /// passthrough, and mmap of direct-I/O files so programs can still be mapped).
    direct_until_whole: bool,
    /// Backing files of inodes opened in passthrough, with their open count: the kernel wants
    /// one backing id per inode for as long as any handle is open.
    backing: Mutex<HashMap<u64, (Arc<BackingId>, usize)>>,
    /// Whole copies assembled in this mount from the blocks readers fetch, by inode: kept
    /// once complete too, as the place their blocks are read back from.
    wholes: Mutex<HashMap<u64, Arc<WholeFile>>>,
    /// Whole files known good in this mount: assembled here from verified blocks, or checked
    /// against their block keys at their first passthrough open.
    verified: Mutex<HashSet<crate::block::Hash>>,
    /// (content bytes, inodes) for statfs, counted on first use: counting walks every row,
    /// which mount start-up should not wait for.
    totals: std::sync::OnceLock<(u64, u64)>,
}

struct OpenFile {
    ino: u64,
    blocks: Vec<BlockRef>,
    size: u64,
    /// Index of the last block read, to recognise sequential readers.
    last_block: AtomicU64,
    /// Sequential reads in a row, which widen the prefetch window.
    streak: AtomicU64,
    /// First block not yet handed to the fetch workers: each sequential read sends only the
    /// blocks its window adds, not again the ones earlier reads sent.
    sent_to: AtomicU64,
    /// Set when the kernel reads this handle straight from a cached whole file.
    backing: Option<Arc<BackingId>>,
    /// Key of the file's whole copy in the cache, for files that get one (passthrough is on
    /// and the file is large enough); computed once here rather than on every read.
    whole: Option<crate::block::Hash>,
}

impl FlistFs {
    /// Prepares to serve `flist`, reading content through `cache`.
    pub fn new(flist: Flist, cache: Arc<BlockCache>) -> Result<FlistFs> {
        let nlinks = flist.hardlink_counts()?;
        let with_xattrs = flist.inodes_with_xattrs()?;
        let (tx, rx) = bounded::<Prefetch>(64);
        for _ in 0..FETCH_WORKERS {
            let (rx, cache) = (rx.clone(), cache.clone());
            std::thread::spawn(move || {
                for (block, whole) in rx {
                    // A hint: errors surface to the reader who needs the block.
                    cache.prefetch_for(&block, whole.as_ref().map(|(w, i)| (&**w, *i)));
                }
            });
        }
        Ok(FlistFs {
            meta: Mutex::new(flist),
            cache,
            nlinks,
            with_xattrs,
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            prefetch: tx,
            passthrough: false,
            direct_until_whole: false,
            backing: Mutex::new(HashMap::new()),
            wholes: Mutex::new(HashMap::new()),
            verified: Mutex::new(HashSet::new()),
            totals: std::sync::OnceLock::new(),
        })
    }

    fn meta<T>(&self, f: impl FnOnce(&Flist) -> Result<T>) -> std::result::Result<T, Errno> {
        let meta = self.meta.lock().unwrap_or_else(|e| e.into_inner());
        f(&meta).map_err(|e| {
            tracing::error!("metadata: {e}");
            Errno::EIO
        })
    }

    /// The inode the kernel sees for an entry: hardlinks share their first name's.
    fn visible_ino(inode: &Inode) -> u64 {
        inode.hardlink_of.unwrap_or(inode.ino)
    }

    fn attr(&self, inode: &Inode) -> std::result::Result<FileAttr, Errno> {
        let kind = file_type(inode.kind().map_err(|_| Errno::EIO)?);
        let ino = Self::visible_ino(inode);
        // Times come from the flist, so out-of-range values must clamp, not overflow.
        let time = |secs: i64, nsec: u32| {
            let whole = if secs >= 0 {
                UNIX_EPOCH.checked_add(Duration::from_secs(secs as u64))
            } else {
                UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
            };
            whole
                .and_then(|t| t.checked_add(Duration::from_nanos(u64::from(nsec.min(999_999_999)))))
                .unwrap_or(UNIX_EPOCH)
        };
        let mtime = time(inode.mtime, inode.mtime_nsec);
        Ok(FileAttr {
            ino: INodeNo(ino),
            size: inode.size,
            blocks: inode.size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: time(inode.ctime, inode.ctime_nsec),
            crtime: mtime,
            kind,
            perm: (inode.mode & 0o7777) as u16,
            nlink: self.nlinks.get(&ino).copied().unwrap_or(1),
            uid: inode.uid,
            gid: inode.gid,
            rdev: inode.rdev as u32,
            blksize: 128 * 1024,
            flags: 0,
        })
    }

    /// The passthrough backing for an open of `ino`, when the kernel supports passthrough and
    /// the cache holds the whole file: shared with the inode's other open handles.
    fn backing_for(
        &self,
        ino: u64,
        key: &crate::block::Hash,
        blocks: &[BlockRef],
        size: u64,
        reply: &ReplyOpen,
    ) -> Option<Arc<BackingId>> {
        let mut backing = self.backing.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((id, count)) = backing.get_mut(&ino) {
            *count += 1;
            return Some(id.clone());
        }
        let file = self.cache.open_whole(key, size)?;
        let assembled = self
            .wholes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ino)
            .is_some_and(|w| w.is_complete());
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        // A copy assembled here holds only blocks that passed their checks when fetched.
        if !assembled && !verified.contains(key) {
            if !self.cache.verify_whole(key, &file, blocks) {
                return None;
            }
            verified.insert(*key);
        }
        drop(verified);
        match reply.open_backing(&file) {
            Ok(id) => {
                tracing::debug!("inode {ino}: passthrough to the cached whole file");
                let id = Arc::new(id);
                backing.insert(ino, (id.clone(), 1));
                Some(id)
            }
            Err(e) => {
                tracing::warn!("passthrough for inode {ino} refused: {e}");
                None
            }
        }
    }

    /// The whole copy `file`'s blocks go into: the one this mount assembles for its inode,
    /// begun on first use; none for a file without one, or whose copy an earlier mount made.
    fn whole_for(&self, file: &OpenFile) -> Option<Arc<WholeFile>> {
        let key = file.whole?;
        let mut wholes = self.wholes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = wholes.get(&file.ino) {
            return Some(w.clone());
        }
        // Already whole (checked at its passthrough open, or to be): its blocks come from
        // the block cache or the stores as for any file, and nothing is assembled.
        let known = self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&key);
        if known || self.cache.open_whole(&key, file.size).is_some() {
            return None;
        }
        let w = Arc::new(self.cache.begin_whole(key, file.size, &file.blocks)?);
        wholes.insert(file.ino, w.clone());
        Some(w)
    }

    fn listing(&self, fh: FileHandle) -> Option<Listing> {
        self.dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh.0)
            .cloned()
    }

    fn handle(&self) -> u64 {
        self.next_handle.fetch_add(1, Ordering::Relaxed)
    }
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::CharDevice => FileType::CharDevice,
        Kind::BlockDevice => FileType::BlockDevice,
        Kind::Socket => FileType::Socket,
    }
}

impl Filesystem for FlistFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Larger requests and parallel lookups; refusals leave the kernel defaults.
        let _ = config.add_capabilities(
            InitFlags::FUSE_PARALLEL_DIROPS
                | InitFlags::FUSE_CACHE_SYMLINKS
                | InitFlags::FUSE_DO_READDIRPLUS
                // Plain readdir for a bare `ls`, readdirplus once lookups follow a listing.
                | InitFlags::FUSE_READDIRPLUS_AUTO,
        );
        let _ = config.set_max_readahead(MAX_READ);
        // Passthrough stacks this filesystem on the cache's: depth 1 leaves room for the
        // overlay a container's root is built from.
        self.passthrough = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok();
        self.direct_until_whole = self.passthrough
            && config
                .add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
                .is_ok();
        Ok(())
    }

    fn destroy(&mut self) {
        // Blocks of files read only in part live in copies that are dropped now: keep them.
        let wholes = self.wholes.get_mut().unwrap_or_else(|e| e.into_inner());
        for whole in wholes.values() {
            self.cache.spill(whole);
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.meta(|m| m.lookup(parent.0, name.as_bytes())) {
            Ok(Some(inode)) => match self.attr(&inode) {
                Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
                Err(e) => reply.error(e),
            },
            Ok(None) => reply.error(Errno::ENOENT),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.meta(|m| m.inode(ino.0)) {
            Ok(Some(inode)) => match self.attr(&inode) {
                Ok(attr) => reply.attr(&TTL, &attr),
                Err(e) => reply.error(e),
            },
            Ok(None) => reply.error(Errno::ENOENT),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.meta(|m| m.inode(ino.0)) {
            Ok(Some(Inode {
                link_target: Some(target),
                ..
            })) => reply.data(&target),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let loaded = self.meta(|m| {
            let inode = m.inode(ino.0)?;
            Ok(match inode {
                Some(i) if i.kind()? == Kind::File => Some((m.blocks(i.ino)?, i.size)),
                _ => None,
            })
        });
        match loaded {
            // Every block but the last is full, so the count follows from the size; a flist
            // that says otherwise would make reads index past its block list.
            Ok(Some((blocks, size))) if blocks.len() as u64 != crate::block::block_count(size) => {
                tracing::error!(
                    "inode {}: size {size} needs {} blocks, the flist lists {}",
                    ino.0,
                    crate::block::block_count(size),
                    blocks.len()
                );
                reply.error(Errno::EIO)
            }
            Ok(Some((blocks, size))) => {
                let fh = self.handle();
                let whole = (self.passthrough && size >= WHOLE_FILE_MIN)
                    .then(|| BlockCache::whole_key(&blocks));
                let gets_whole = whole.is_some();
                let backing = whole
                    .as_ref()
                    .and_then(|key| self.backing_for(ino.0, key, &blocks, size, &reply));
                let file = OpenFile {
                    ino: ino.0,
                    blocks,
                    size,
                    last_block: AtomicU64::new(u64::MAX),
                    streak: AtomicU64::new(0),
                    sent_to: AtomicU64::new(0),
                    backing: backing.clone(),
                    whole,
                };
                self.files
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(fh, Arc::new(file));
                match backing {
                    Some(id) => reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id),
                    // A file on its way to a whole copy is read around the FUSE page cache:
                    // pages cached now would have to be dropped when a later open switches the
                    // inode to passthrough, which costs more than the read saves.
                    None if self.direct_until_whole && gets_whole => {
                        reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO)
                    }
                    None => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
                }
            }
            Ok(None) => reply.error(Errno::EISDIR),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let file = self
            .files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh.0)
            .cloned();
        let Some(file) = file else {
            return reply.error(Errno::EBADF);
        };
        if offset >= file.size {
            return reply.data(&[]);
        }
        let end = (offset + size as u64).min(file.size);
        let bs = crate::block::BLOCK_SIZE as u64;
        let (first, last) = (offset / bs, (end - 1) / bs);
        // Sequential: this read starts in the block after (or the same as) the last one.
        let previous = file.last_block.swap(last, Ordering::Relaxed);
        let whole = self.whole_for(&file);
        if previous == u64::MAX || first == previous || first == previous + 1 {
            let streak = file.streak.fetch_add(1, Ordering::Relaxed).min(8);
            let window = (PREFETCH_BLOCKS << streak).min(PREFETCH_MAX);
            let until = (last + window + 1).min(file.blocks.len() as u64);
            let from = file
                .sent_to
                .fetch_max(until, Ordering::Relaxed)
                .max(last + 1);
            for ahead in from..until {
                let into = whole.clone().map(|w| (w, ahead as usize));
                let _ = self.prefetch.try_send((file.blocks[ahead as usize], into));
            }
        } else {
            file.streak.store(0, Ordering::Relaxed);
            // A jump: the next run of reads prefetches from wherever it starts.
            file.sent_to.store(0, Ordering::Relaxed);
        }
        // Most reads fall inside one block: those are answered from the shared block itself,
        // without assembling a copy first.
        let mut out = Vec::new();
        for index in first..=last {
            let Some(block) = file.blocks.get(index as usize) else {
                return reply.error(Errno::EIO);
            };
            let place = whole.as_deref().map(|w| (w, index as usize));
            let data = match self.cache.get_for(block, place) {
                // A block shorter than its place in the file would shift every later byte.
                Ok(data) if data.len() as u64 != crate::block::block_len(file.size, index) => {
                    tracing::error!("block {index} ({}) has the wrong length", block.id_hex());
                    return reply.error(Errno::EIO);
                }
                Ok(data) => data,
                Err(e) => {
                    tracing::error!("read block {index} ({}): {e}", block.id_hex());
                    return reply.error(Errno::EIO);
                }
            };
            let start = if index == first {
                (offset - index * bs) as usize
            } else {
                0
            };
            let stop = ((end - index * bs) as usize).min(data.len());
            if first == last {
                return reply.data(&data[start..stop]);
            }
            if out.is_empty() {
                out.reserve_exact((end - offset) as usize);
            }
            out.extend_from_slice(&data[start..stop]);
        }
        reply.data(&out);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        _flush: bool,
        reply: fuser::ReplyEmpty,
    ) {
        let closed = self
            .files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh.0);
        if let Some(file) = closed.filter(|f| f.backing.is_some()) {
            let mut backing = self.backing.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, count)) = backing.get_mut(&file.ino) {
                *count -= 1;
                if *count == 0 {
                    backing.remove(&file.ino);
                }
            }
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let loaded = self.meta(|m| {
            let Some(dir) = m.inode(ino.0)? else {
                return Ok(None);
            };
            if dir.kind()? != Kind::Dir {
                return Ok(None);
            }
            let parent = match m.inode(dir.parent)? {
                Some(p) => p,
                None => dir.clone(),
            };
            Ok(Some((dir.clone(), parent, m.children(dir.ino)?)))
        });
        let (dir, parent, children) = match loaded {
            Ok(Some(found)) => found,
            Ok(None) => return reply.error(Errno::ENOTDIR),
            Err(e) => return reply.error(e),
        };
        // Attributes are computed once here so readdirplus can hand them to the kernel with
        // the names: a `find` or `ls -l` then needs no lookup per entry.
        let mut entries = Vec::with_capacity(children.len() + 2);
        for (node, name) in [(&dir, &b"."[..]), (&parent, &b".."[..])]
            .into_iter()
            .map(|(n, name)| (n.clone(), name.to_vec()))
            .chain(children.into_iter().map(|c| {
                let name = c.name.clone();
                (c, name)
            }))
        {
            match self.attr(&node) {
                Ok(attr) => entries.push((attr, name)),
                Err(e) => return reply.error(e),
            }
        }
        let fh = self.handle();
        self.dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fh, Arc::new(entries));
        reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(entries) = self.listing(fh) else {
            return reply.error(Errno::EBADF);
        };
        for (i, (attr, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(attr.ino, i as u64 + 1, attr.kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let Some(entries) = self.listing(fh) else {
            return reply.error(Errno::EBADF);
        };
        for (i, (attr, name)) in entries.iter().enumerate().skip(offset as usize) {
            let name = OsStr::from_bytes(name);
            if reply.add(attr.ino, i as u64 + 1, name, &TTL, attr, Generation(0)) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: fuser::ReplyEmpty,
    ) {
        self.dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let (bytes, inodes) = match self.totals.get() {
            Some(t) => *t,
            None => match self.meta(|m| m.stats()) {
                Ok(s) => *self.totals.get_or_init(|| {
                    let inodes = s.files + s.dirs + s.symlinks + s.specials + s.hardlinks;
                    (s.total_bytes, inodes)
                }),
                Err(e) => return reply.error(e),
            },
        };
        let bsize = 4096u64;
        reply.statfs(
            bytes.div_ceil(bsize),
            0,
            0,
            inodes,
            0,
            bsize as u32,
            255,
            bsize as u32,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if self.with_xattrs.is_empty() {
            // ENOSYS makes the kernel stop asking for the rest of the mount's life.
            return reply.error(Errno::ENOSYS);
        }
        if !self.with_xattrs.contains(&ino.0) {
            return reply.error(Errno::NO_XATTR);
        }
        match self.meta(|m| m.xattrs(ino.0)) {
            Ok(attrs) => match attrs.iter().find(|(n, _)| n.as_slice() == name.as_bytes()) {
                Some((_, value)) => xattr_reply(reply, value, size),
                None => reply.error(Errno::NO_XATTR),
            },
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if self.with_xattrs.is_empty() {
            return reply.error(Errno::ENOSYS);
        }
        if !self.with_xattrs.contains(&ino.0) {
            return xattr_reply(reply, &[], size);
        }
        match self.meta(|m| m.xattrs(ino.0)) {
            Ok(attrs) => {
                let mut names = Vec::new();
                for (n, _) in attrs {
                    names.extend_from_slice(&n);
                    names.push(0);
                }
                xattr_reply(reply, &names, size);
            }
            Err(e) => reply.error(e),
        }
    }
}

/// The xattr protocol: a zero size asks for the length, a short buffer is ERANGE.
fn xattr_reply(reply: ReplyXattr, value: &[u8], size: u32) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if (size as usize) < value.len() {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Let users other than the mounting one read (needed for overlayfs and virtiofsd).
    pub allow_other: bool,
    /// Threads answering the kernel.
    pub threads: usize,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            allow_other: nix::unistd::geteuid().is_root(),
            threads: 4,
        }
    }
}

/// A live mount; dropping it unmounts.
pub struct Mounted {
    session: fuser::BackgroundSession,
}

impl Mounted {
    /// Waits until the filesystem is unmounted (by `zos flist umount` or `umount`).
    pub fn wait(self) -> Result<()> {
        self.session
            .join()
            .map_err(|e| Error::Invalid(format!("FUSE session ended with an error: {e}")))
    }

    /// Unmounts now and waits for the session to end.
    pub fn unmount(self) -> Result<()> {
        self.session
            .umount_and_join()
            .map_err(|e| Error::Invalid(format!("unmount failed: {e}")))
    }
}

/// Mounts `flist` read-only at `mountpoint`. Returns once the kernel has the mount.
pub fn mount(
    flist: Flist,
    cache: Arc<BlockCache>,
    mountpoint: &std::path::Path,
    opts: &MountOptions,
) -> Result<Mounted> {
    let meta = std::fs::metadata(mountpoint).map_err(|e| Error::Io {
        path: mountpoint.to_owned(),
        source: e,
    })?;
    if !meta.is_dir() {
        return Err(Error::Invalid(format!(
            "{}: mountpoint is not a directory",
            mountpoint.display()
        )));
    }
    let name = flist.path().display().to_string();
    let fs = FlistFs::new(flist, cache)?;
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::RO,
        fuser::MountOption::FSName(format!("zos:{name}")),
        fuser::MountOption::Subtype("zos".into()),
        fuser::MountOption::DefaultPermissions,
        // An flist comes from users: with `allow_other`, a setuid-root program or a device
        // node in it would be a way into the host for any local account. The bits still show
        // in `stat`, so a guest that gets the tree over virtio-fs honours them in its own
        // kernel, and the host's overlay copies them up unchanged.
        fuser::MountOption::NoSuid,
        fuser::MountOption::NoDev,
        fuser::MountOption::Exec,
    ];
    if opts.allow_other {
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(opts.threads.max(1));
    let session = fuser::Session::new(fs, mountpoint, &config).map_err(|e| Error::Io {
        path: mountpoint.to_owned(),
        source: e,
    })?;
    let session = session.spawn().map_err(|e| Error::Io {
        path: mountpoint.to_owned(),
        source: e,
    })?;
    Ok(Mounted { session })
}

/// Unmounts a mounted flist (or any mount) at `mountpoint`. `lazy` detaches it even while
/// files are open. Falls back to `fusermount3 -u` when not allowed to unmount directly.
pub fn unmount(mountpoint: &std::path::Path, lazy: bool) -> Result<()> {
    let flags = if lazy {
        nix::mount::MntFlags::MNT_DETACH
    } else {
        nix::mount::MntFlags::empty()
    };
    match nix::mount::umount2(mountpoint, flags) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EPERM) => {
            let mut cmd = std::process::Command::new("fusermount3");
            cmd.arg("-u");
            if lazy {
                cmd.arg("-z");
            }
            let status = cmd.arg(mountpoint).status().map_err(|e| Error::Io {
                path: "fusermount3".into(),
                source: e,
            })?;
            if status.success() {
                Ok(())
            } else {
                Err(Error::Invalid(format!(
                    "{}: fusermount3 -u failed ({status})",
                    mountpoint.display()
                )))
            }
        }
        Err(nix::errno::Errno::EINVAL) => Err(Error::Invalid(format!(
            "{}: nothing is mounted there",
            mountpoint.display()
        ))),
        Err(nix::errno::Errno::EBUSY) => Err(Error::Invalid(format!(
            "{}: busy (files are open or a process is inside); close them or use --lazy",
            mountpoint.display()
        ))),
        Err(e) => Err(Error::Io {
            path: mountpoint.to_owned(),
            source: e.into(),
        }),
    }
}
