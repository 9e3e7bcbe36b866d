//! A local cache of verified block plaintext, shared by every mount on the host.
//!
//! Blocks live as files `<dir>/<hh>/<id-hex>` holding the plaintext, so a hit costs one read
//! and one hash (the plaintext must still hash to the block key: a damaged cache file is
//! detected, dropped and fetched again). The cache has a size limit; when an insert would
//! pass it, the least recently used blocks are evicted. Concurrent requests for the same block
//! are coalesced: one fetch, many readers. Stores that fail are retried with backoff before a
//! read gives up.
//!
//! A large file read through a mount also gets a whole copy (`files/<key>`, see [`WholeFile`])
//! for passthrough reads. A block fetched for such a file is written once, into that copy,
//! not also as a block file: on a cold read the second write cost more than decoding (a
//! file create, a rename and often a directory per block). The copy is then where the block
//! is read back from, checked against its key like a block file. Blocks of a copy left
//! incomplete are written out as block files when the mount ends ([`BlockCache::spill`]), so a
//! partly read file stays cached.

use crate::block::{self, BlockRef, Hash};
use crate::store::{FetchError, Router};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How often a failing fetch is retried, and how long to wait before each retry.
const RETRY_DELAYS: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_millis(400),
    Duration::from_millis(1600),
];

/// Decoded blocks kept in memory on top of the disk cache: sequential readers ask for the same
/// block several times (the kernel reads 128 KiB–1 MiB at a time, blocks are 512 KiB).
const MEMORY_BLOCKS: usize = 64;

type Shared = Arc<Vec<u8>>;
type Slot = Arc<(Mutex<Option<Result<Shared, String>>>, Condvar)>;

/// The block cache. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct BlockCache {
    dir: PathBuf,
    limit: u64,
    router: Router,
    state: Mutex<State>,
    in_flight: Mutex<HashMap<Hash, Slot>>,
}

#[derive(Default)]
struct State {
    /// Recency order: block id (or whole-file key) → (last use tick, size on disk).
    entries: HashMap<Hash, (u64, u64)>,
    /// Which entries are whole files (under `files/`) rather than blocks.
    whole: HashSet<Hash>,
    tick: u64,
    used: u64,
    /// Small in-memory LRU of decoded blocks.
    memory: Vec<(Hash, Shared)>,
}

/// Counters for tests and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Blocks on disk.
    pub blocks: u64,
    /// Bytes on disk.
    pub bytes: u64,
}

impl BlockCache {
    /// Opens (creating if needed) the cache at `dir`, limited to `limit` bytes, fetching misses
    /// through `router`. Existing cache files are indexed, oldest first, so eviction after a
    /// restart still removes what was used least recently.
    pub fn open(dir: &Path, limit: u64, router: Router) -> std::io::Result<BlockCache> {
        std::fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        for sub in std::fs::read_dir(dir)? {
            let sub = sub?;
            let name = sub.file_name().to_string_lossy().into_owned();
            let whole = name == WHOLE_DIR;
            let shard = name.len() == 2 && name.bytes().all(|b| b.is_ascii_hexdigit());
            if !sub.file_type()?.is_dir() || !(whole || shard) {
                continue;
            }
            for entry in std::fs::read_dir(sub.path())? {
                let entry = entry?;
                let Some(id) = parse_id(&entry.file_name().to_string_lossy()) else {
                    // Leftover temporary files from a crash: not blocks, remove them.
                    let _ = std::fs::remove_file(entry.path());
                    continue;
                };
                let meta = entry.metadata()?;
                let used = meta.accessed().or_else(|_| meta.modified()).ok();
                found.push((used, id, meta.len(), whole));
            }
        }
        found.sort_by_key(|(used, _, _, _)| *used);
        let mut state = State::default();
        for (_, id, size, whole) in found {
            state.tick += 1;
            state.used += size;
            state.entries.insert(id, (state.tick, size));
            if whole {
                state.whole.insert(id);
            }
        }
        let cache = BlockCache {
            dir: dir.to_owned(),
            limit,
            router,
            state: Mutex::new(state),
            in_flight: Mutex::new(HashMap::new()),
        };
        {
            let mut state = cache.state.lock().unwrap_or_else(|e| e.into_inner());
            cache.evict_locked(&mut state, 0);
        }
        Ok(cache)
    }

    /// Path of a cache entry: a whole file under `files/`, a block under its shard.
    fn entry_path(&self, state: &State, id: &Hash) -> PathBuf {
        if state.whole.contains(id) {
            self.whole_path(id)
        } else {
            self.path(id)
        }
    }

    /// Where the whole-file copy with this key lives.
    fn whole_path(&self, key: &Hash) -> PathBuf {
        self.dir.join(WHOLE_DIR).join(hex::encode(key))
    }

    /// The key of a whole file: the hash of its block ids in order.
    pub fn whole_key(blocks: &[BlockRef]) -> Hash {
        let ids: Vec<u8> = blocks.iter().flat_map(|b| b.id).collect();
        block::hash(&ids)
    }

    /// Opens the assembled copy of a whole file, if the cache holds one of the right size.
    pub fn open_whole(&self, key: &Hash, size: u64) -> Option<File> {
        let path = self.whole_path(key);
        let file = File::open(path).ok()?;
        if file.metadata().ok()?.len() != size {
            return None;
        }
        self.touch(key, size);
        Some(file)
    }

    /// Checks a whole file against the keys of its blocks; a damaged copy is removed so the
    /// file is read (and assembled) again from verified blocks.
    pub fn verify_whole(&self, key: &Hash, file: &File, blocks: &[BlockRef]) -> bool {
        let mut buf = vec![0u8; block::BLOCK_SIZE];
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let good = blocks.iter().enumerate().all(|(i, b)| {
            let offset = i as u64 * block::BLOCK_SIZE as u64;
            let len = block::block_len(size, i as u64) as usize;
            file.read_exact_at(&mut buf[..len], offset).is_ok() && block::hash(&buf[..len]) == b.key
        });
        if !good {
            tracing::warn!(
                "cached whole file {} is corrupt; dropping it",
                hex::encode(key)
            );
            let path = self.whole_path(key);
            self.forget(key);
            let _ = std::fs::remove_file(path);
        }
        good
    }

    /// Starts assembling a whole file from its blocks as they are read, when it is small enough
    /// to keep next to its blocks without crowding them out of the cache.
    pub fn begin_whole(&self, key: Hash, size: u64, blocks: &[BlockRef]) -> Option<WholeFile> {
        if size > self.limit / 4 {
            return None;
        }
        let dir = self.dir.join(WHOLE_DIR);
        std::fs::create_dir_all(&dir).ok()?;
        let tmp = tempfile::NamedTempFile::new_in(&dir).ok()?;
        tmp.as_file().set_len(size).ok()?;
        // A second descriptor for reads and writes: it stays valid after the copy is renamed
        // into place (or evicted), so blocks can still be read back from it.
        let file = tmp.as_file().try_clone().ok()?;
        Some(WholeFile {
            key,
            size,
            blocks: blocks.to_vec(),
            file,
            tmp: Mutex::new(Some(tmp)),
            states: blocks.iter().map(|_| AtomicU8::new(EMPTY)).collect(),
            remaining: AtomicUsize::new(blocks.len()),
            abandoned: AtomicBool::new(false),
        })
    }

    /// Writes the blocks an incomplete whole copy holds out as block files, so what was read
    /// stays cached when the copy itself is given up (the mount ends before the file was read
    /// to its end). Each is checked against its key on the way: the copy is on disk, outside
    /// the check its blocks passed when fetched.
    pub fn spill(&self, whole: &WholeFile) {
        if whole.is_complete() {
            return;
        }
        let mut spilled = 0;
        for (index, block) in whole.blocks.iter().enumerate() {
            if self.path(&block.id).exists() {
                continue;
            }
            if let Some(plain) = whole.read(self, index, block) {
                match self.store(&block.id, &plain) {
                    Ok(()) => spilled += 1,
                    Err(e) => {
                        tracing::warn!("could not cache block {}: {e}", block.id_hex());
                        return;
                    }
                }
            }
        }
        tracing::debug!(
            "kept {spilled} blocks of the incomplete whole file {}",
            hex::encode(whole.key)
        );
    }

    /// Moves a completed whole file into place and counts it against the limit.
    fn adopt_whole(
        &self,
        key: Hash,
        size: u64,
        tmp: tempfile::NamedTempFile,
    ) -> std::io::Result<()> {
        self.install(&key, size, true, tmp)
    }

    /// Moves a written temporary file into place and records it, making room first, all
    /// under the lock: eviction and renames cannot interleave, so the files on disk and the
    /// index always agree and concurrent inserts cannot together pass the limit.
    fn install(
        &self,
        id: &Hash,
        size: u64,
        whole: bool,
        tmp: tempfile::NamedTempFile,
    ) -> std::io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, old)) = state.entries.remove(id) {
            state.used -= old;
        }
        self.evict_locked(&mut state, size);
        let path = if whole {
            self.whole_path(id)
        } else {
            self.path(id)
        };
        tmp.persist(path).map_err(|e| e.error)?;
        state.tick += 1;
        let tick = state.tick;
        state.entries.insert(*id, (tick, size));
        state.used += size;
        if whole {
            state.whole.insert(*id);
        }
        Ok(())
    }

    fn path(&self, id: &Hash) -> PathBuf {
        let hex = hex::encode(id);
        self.dir.join(&hex[..2]).join(hex)
    }

    /// Current size of the cache on disk.
    pub fn stats(&self) -> CacheStats {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        CacheStats {
            blocks: state.entries.len() as u64,
            bytes: state.used,
        }
    }

    /// The verified plaintext of `block`, from memory, disk or the stores, in that order.
    pub fn get(&self, block: &BlockRef) -> Result<Shared, String> {
        self.get_for(block, None)
    }

    /// [`BlockCache::get`] for block `place.1` of the whole file `place.0`: the block is read
    /// from that copy when it is there, and put into it otherwise. A block fetched from a store
    /// is then written only there, not also as a block file.
    pub fn get_for(
        &self,
        block: &BlockRef,
        place: Option<(&WholeFile, usize)>,
    ) -> Result<Shared, String> {
        let data = self.get_shared(block, place)?;
        if let Some((whole, index)) = place {
            // A no-op when this fetch (or another) already put it there.
            whole.write(self, index, &data);
        }
        Ok(data)
    }

    /// [`BlockCache::get_for`] as a hint, for fetch workers: a block already being fetched
    /// is left to that fetch rather than waited for, so the worker moves on to the next one.
    pub fn prefetch_for(&self, block: &BlockRef, place: Option<(&WholeFile, usize)>) {
        let busy = self
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&block.id);
        if !busy {
            // Errors surface to the reader who needs the block.
            let _ = self.get_for(block, place);
        }
    }

    fn get_shared(
        &self,
        block: &BlockRef,
        place: Option<(&WholeFile, usize)>,
    ) -> Result<Shared, String> {
        if let Some(hit) = self.memory_hit(&block.id) {
            return Ok(hit);
        }
        // One fetch per block: the first caller fetches, the others wait for its result.
        let (slot, leader) = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            match in_flight.get(&block.id) {
                Some(slot) => (slot.clone(), false),
                None => {
                    let slot: Slot = Arc::new((Mutex::new(None), Condvar::new()));
                    in_flight.insert(block.id, slot.clone());
                    (slot, true)
                }
            }
        };
        if leader {
            // The guard publishes a result and clears the slot even if loading panics, so
            // waiters are never left blocked on a fetch that will not finish.
            let mut guard = Publish {
                cache: self,
                id: block.id,
                slot: &slot,
                result: Err("fetch abandoned".into()),
            };
            guard.result = self.load(block, place);
            if let Ok(data) = &guard.result {
                self.remember(block.id, data.clone());
            }
            return guard.result.clone();
        }
        let (lock, cond) = &*slot;
        let mut done = lock.lock().unwrap_or_else(|e| e.into_inner());
        while done.is_none() {
            done = cond.wait(done).unwrap_or_else(|e| e.into_inner());
        }
        done.clone()
            .unwrap_or_else(|| Err("fetch abandoned".into()))
    }

    fn memory_hit(&self, id: &Hash) -> Option<Shared> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let pos = state.memory.iter().position(|(k, _)| k == id)?;
        let entry = state.memory.remove(pos);
        let data = entry.1.clone();
        state.memory.push(entry);
        Some(data)
    }

    fn remember(&self, id: Hash, data: Shared) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.memory.len() >= MEMORY_BLOCKS {
            state.memory.remove(0);
        }
        state.memory.push((id, data));
    }

    /// The whole copy it belongs to, the disk cache, then the stores with retries; caches what
    /// was fetched, in the whole copy when there is one.
    fn load(&self, block: &BlockRef, place: Option<(&WholeFile, usize)>) -> Result<Shared, String> {
        if let Some(plain) = place.and_then(|(whole, index)| whole.read(self, index, block)) {
            return Ok(Arc::new(plain));
        }
        let path = self.path(&block.id);
        if let Ok(plain) = std::fs::read(&path) {
            if block::hash(&plain) == block.key {
                self.touch(&block.id, plain.len() as u64);
                return Ok(Arc::new(plain));
            }
            // Damaged cache file: forget it and fetch the block again.
            tracing::warn!(
                "cached block {} is corrupt; fetching it again",
                block.id_hex()
            );
            self.forget(&block.id);
            let _ = std::fs::remove_file(&path);
        }
        let plain = self.fetch_with_retry(block).map_err(|e| e.to_string())?;
        if place.is_some_and(|(whole, index)| whole.write(self, index, &plain)) {
            return Ok(Arc::new(plain));
        }
        if let Err(e) = self.store(&block.id, &plain) {
            // A full or read-only cache disk must not fail the read: the data is in hand.
            tracing::warn!("could not cache block {}: {e}", block.id_hex());
        }
        Ok(Arc::new(plain))
    }

    fn fetch_with_retry(&self, block: &BlockRef) -> Result<Vec<u8>, FetchError> {
        let mut attempt = 0;
        loop {
            match self.router.fetch(block) {
                Ok(plain) => return Ok(plain),
                Err(e) if attempt < RETRY_DELAYS.len() => {
                    tracing::info!("block {}: {e}; retrying", block.id_hex());
                    std::thread::sleep(RETRY_DELAYS[attempt]);
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn store(&self, id: &Hash, plain: &[u8]) -> std::io::Result<()> {
        let size = plain.len() as u64;
        if size > self.limit {
            return Ok(());
        }
        let path = self.path(id);
        let dir = path.parent().unwrap_or(&self.dir);
        // The shard directory exists after its first block: a mkdir per block is wasted.
        let mut tmp = match tempfile::NamedTempFile::new_in(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir)?;
                tempfile::NamedTempFile::new_in(dir)?
            }
            other => other?,
        };
        tmp.write_all(plain)?;
        self.install(id, size, false, tmp)
    }

    /// Marks a disk hit as recently used; a block another process cached is adopted into
    /// this index so it counts against the limit and can be evicted.
    fn touch(&self, id: &Hash, size: u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.tick += 1;
        let tick = state.tick;
        match state.entries.get_mut(id) {
            Some(entry) => entry.0 = tick,
            None => {
                state.entries.insert(*id, (tick, size));
                state.used += size;
            }
        }
    }

    fn forget(&self, id: &Hash) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, size)) = state.entries.remove(id) {
            state.used -= size;
        }
        state.whole.remove(id);
    }

    /// Removes least recently used blocks until `incoming` more bytes fit under the limit,
    /// down to 90% of it so that a full cache does not sort its index on every insert.
    fn evict_locked(&self, state: &mut State, incoming: u64) {
        if state.used + incoming <= self.limit {
            return;
        }
        let mut by_age: Vec<(u64, Hash, u64)> = state
            .entries
            .iter()
            .map(|(id, (tick, size))| (*tick, *id, *size))
            .collect();
        by_age.sort_unstable();
        let goal = self.limit - self.limit / 10;
        for (_, id, size) in by_age {
            if state.used + incoming <= goal {
                break;
            }
            state.entries.remove(&id);
            state.used -= size;
            // Unlinked under the lock, so a concurrent store of the same id cannot have its
            // fresh file removed behind the index's back. (An open whole file stays readable.)
            let _ = std::fs::remove_file(self.entry_path(state, &id));
            state.whole.remove(&id);
        }
    }
}

/// Subdirectory holding whole files assembled for passthrough reads.
const WHOLE_DIR: &str = "files";

/// Block states in a [`WholeFile`]: not there yet, being written by one thread, written.
const EMPTY: u8 = 0;
const WRITING: u8 = 1;
const WRITTEN: u8 = 2;

/// A whole file being assembled in the cache from the blocks readers fetch, so that later
/// opens can be served straight from it (FUSE passthrough) at the speed of the local disk.
/// While it is being assembled (and after), it is also where its blocks are cached.
pub struct WholeFile {
    key: Hash,
    size: u64,
    blocks: Vec<BlockRef>,
    /// Reads and writes go through this descriptor, shared by every thread (positioned I/O).
    file: File,
    /// The file's name until it is complete and moved into place.
    tmp: Mutex<Option<tempfile::NamedTempFile>>,
    states: Vec<AtomicU8>,
    remaining: AtomicUsize,
    /// Set after a failed write: the copy is given up and its blocks go to block files.
    abandoned: AtomicBool,
}

impl WholeFile {
    /// Writes block `index` into the copy unless it is there already. Returns whether the
    /// block is in the copy (false after an error, so the caller caches it another way). The
    /// write that completes the file moves it into the cache.
    pub fn write(&self, cache: &BlockCache, index: usize, data: &[u8]) -> bool {
        let Some(state) = self.states.get(index) else {
            return false;
        };
        if self.abandoned.load(Ordering::Acquire) {
            return false;
        }
        match state.compare_exchange(EMPTY, WRITING, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {}
            // Another thread writes it, or did: either way it will be (or is) in the copy.
            Err(_) => return true,
        }
        let offset = index as u64 * block::BLOCK_SIZE as u64;
        if let Err(e) = self.file.write_all_at(data, offset) {
            tracing::warn!("assembling a cached whole file: {e}; caching its blocks apart");
            self.give_up(cache);
            return false;
        }
        state.store(WRITTEN, Ordering::Release);
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let done = self.tmp.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(done) = done {
                if let Err(e) = cache.adopt_whole(self.key, self.size, done) {
                    tracing::warn!("keeping a cached whole file: {e}");
                }
            }
        }
        true
    }

    /// Block `index` read back from the copy, if it was written there and still hashes to its
    /// key (the disk is outside the check the block passed when it was fetched).
    fn read(&self, cache: &BlockCache, index: usize, block: &BlockRef) -> Option<Vec<u8>> {
        let written = self.states.get(index)?.load(Ordering::Acquire) == WRITTEN;
        if !written || self.abandoned.load(Ordering::Acquire) {
            return None;
        }
        let mut plain = vec![0u8; block::block_len(self.size, index as u64) as usize];
        let offset = index as u64 * block::BLOCK_SIZE as u64;
        self.file.read_exact_at(&mut plain, offset).ok()?;
        if block::hash(&plain) != block.key {
            tracing::warn!(
                "block {} in a cached whole file is corrupt; dropping the file, fetching again",
                block.id_hex()
            );
            self.give_up(cache);
            return None;
        }
        Some(plain)
    }

    /// Stops using the copy after a failed write or a corrupt read: its blocks go to block
    /// files from now on, and a copy already in the cache is removed so no open uses it.
    fn give_up(&self, cache: &BlockCache) {
        if self.abandoned.swap(true, Ordering::AcqRel) {
            return;
        }
        // Dropping the temporary file removes it; a completed one is in the cache instead.
        if self
            .tmp
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .is_none()
        {
            cache.forget(&self.key);
            let _ = std::fs::remove_file(cache.whole_path(&self.key));
        }
    }

    /// Whether every block is written and the file is in the cache.
    pub fn is_complete(&self) -> bool {
        self.remaining.load(Ordering::Acquire) == 0 && !self.abandoned.load(Ordering::Acquire)
    }
}

/// Hands the leader's result to the waiters of one in-flight fetch when dropped.
struct Publish<'a> {
    cache: &'a BlockCache,
    id: Hash,
    slot: &'a Slot,
    result: Result<Shared, String>,
}

impl Drop for Publish<'_> {
    fn drop(&mut self) {
        let (lock, cond) = &**self.slot;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = Some(self.result.clone());
        cond.notify_all();
        self.cache
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

fn parse_id(name: &str) -> Option<Hash> {
    let bytes = hex::decode(name).ok()?;
    Hash::try_from(bytes.as_slice()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreSpec;

    /// A file of `n` blocks (the last one short) packed into a dir store under `dir`, and a
    /// cache over that store.
    fn setup(dir: &Path, n: usize) -> (Vec<u8>, Vec<BlockRef>, BlockCache) {
        let store = dir.join("store");
        let spec = StoreSpec::parse(&format!("dir://{}", store.display())).unwrap();
        let router = Router::from_specs(&[spec]).unwrap();
        let size = n * block::BLOCK_SIZE - 1000;
        let content: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        let blocks = content
            .chunks(block::BLOCK_SIZE)
            .map(|piece| {
                let (r, stored) = block::encode(piece);
                router.put(&r.id, &stored).unwrap();
                r
            })
            .collect();
        let cache = BlockCache::open(&dir.join("cache"), 1 << 30, router).unwrap();
        (content, blocks, cache)
    }

    /// Block files in the cache (whole copies not counted).
    fn block_files(cache: &Path) -> usize {
        std::fs::read_dir(cache)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name() != WHOLE_DIR)
            .map(|e| std::fs::read_dir(e.path()).unwrap().count())
            .sum()
    }

    fn empty_the_store(dir: &Path) {
        std::fs::remove_dir_all(dir.join("store")).unwrap();
    }

    #[test]
    fn blocks_of_a_whole_copy_are_written_once_and_read_back_from_it() {
        let tmp = tempfile::tempdir().unwrap();
        let (content, blocks, cache) = setup(tmp.path(), 5);
        let key = BlockCache::whole_key(&blocks);
        let whole = cache
            .begin_whole(key, content.len() as u64, &blocks)
            .unwrap();
        // Backwards, so no block is complete-by-order by accident.
        for (i, b) in blocks.iter().enumerate().rev() {
            let got = cache.get_for(b, Some((&whole, i))).unwrap();
            assert!(got[..] == content[i * block::BLOCK_SIZE..][..got.len()]);
        }
        assert!(whole.is_complete());
        assert_eq!(block_files(&tmp.path().join("cache")), 0, "no block file");
        let copy = cache.open_whole(&key, content.len() as u64).unwrap();
        assert!(cache.verify_whole(&key, &copy, &blocks));
        assert!(std::fs::read(cache.whole_path(&key)).unwrap() == content);

        // With the store gone and a cold memory, the copy still serves its blocks.
        empty_the_store(tmp.path());
        cache.state.lock().unwrap().memory.clear();
        for (i, b) in blocks.iter().enumerate() {
            let got = cache.get_for(b, Some((&whole, i))).unwrap();
            assert!(got[..] == content[i * block::BLOCK_SIZE..][..got.len()]);
        }
    }

    #[test]
    fn a_partly_read_copy_spills_its_blocks_to_block_files() {
        let tmp = tempfile::tempdir().unwrap();
        let (content, blocks, cache) = setup(tmp.path(), 4);
        let key = BlockCache::whole_key(&blocks);
        let whole = cache
            .begin_whole(key, content.len() as u64, &blocks)
            .unwrap();
        for i in [0, 2] {
            cache.get_for(&blocks[i], Some((&whole, i))).unwrap();
        }
        assert!(!whole.is_complete());
        assert_eq!(block_files(&tmp.path().join("cache")), 0);
        cache.spill(&whole);
        drop(whole);
        assert_eq!(
            block_files(&tmp.path().join("cache")),
            2,
            "the two read blocks"
        );

        empty_the_store(tmp.path());
        cache.state.lock().unwrap().memory.clear();
        for i in [0, 2] {
            let got = cache.get(&blocks[i]).unwrap();
            assert!(got[..] == content[i * block::BLOCK_SIZE..][..got.len()]);
        }
        assert!(cache.get(&blocks[1]).is_err(), "never read, never cached");
    }

    #[test]
    fn a_damaged_block_in_a_copy_is_refused_and_fetched_again() {
        let tmp = tempfile::tempdir().unwrap();
        let (content, blocks, cache) = setup(tmp.path(), 3);
        let key = BlockCache::whole_key(&blocks);
        let whole = cache
            .begin_whole(key, content.len() as u64, &blocks)
            .unwrap();
        cache.get_for(&blocks[0], Some((&whole, 0))).unwrap();
        // Flip a byte of block 0 on disk, behind the cache's back.
        let mut byte = [0u8];
        whole.file.read_exact_at(&mut byte, 10).unwrap();
        whole.file.write_all_at(&[byte[0] ^ 1], 10).unwrap();
        cache.state.lock().unwrap().memory.clear();

        let got = cache.get_for(&blocks[0], Some((&whole, 0))).unwrap();
        assert!(
            got[..] == content[..block::BLOCK_SIZE],
            "fetched again, not served"
        );
        assert!(!whole.is_complete(), "the damaged copy is given up");
        // Its blocks are cached apart from now on.
        cache.get_for(&blocks[1], Some((&whole, 1))).unwrap();
        cache.get_for(&blocks[2], Some((&whole, 2))).unwrap();
        assert!(cache.open_whole(&key, content.len() as u64).is_none());
        assert_eq!(block_files(&tmp.path().join("cache")), 3);
    }
}
