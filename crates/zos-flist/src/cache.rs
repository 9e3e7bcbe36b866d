//! A local cache of verified block plaintext, shared by every mount on the host.
//!
//! Blocks live as files `<dir>/<hh>/<id-hex>` holding the plaintext, so a hit costs one read
//! and one hash (the plaintext must still hash to the block key: a damaged cache file is
//! detected, dropped and fetched again). The cache has a size limit; when an insert would
//! pass it, the least recently used blocks are evicted. Concurrent requests for the same block
//! are coalesced: one fetch, many readers. Stores that fail are retried with backoff before a
//! read gives up.

use crate::block::{self, BlockRef, Hash};
use crate::store::{FetchError, Router};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
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
    /// Recency order: block id → (last use tick, size on disk).
    entries: HashMap<Hash, (u64, u64)>,
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
        for shard in std::fs::read_dir(dir)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(shard.path())? {
                let entry = entry?;
                let name = entry.file_name();
                let Some(id) = parse_id(&name.to_string_lossy()) else {
                    // Leftover temporary files from a crash: not blocks, remove them.
                    let _ = std::fs::remove_file(entry.path());
                    continue;
                };
                let meta = entry.metadata()?;
                let used = meta.accessed().or_else(|_| meta.modified()).ok();
                found.push((used, id, meta.len()));
            }
        }
        found.sort_by_key(|(used, _, _)| *used);
        let mut state = State::default();
        for (_, id, size) in found {
            state.tick += 1;
            state.used += size;
            state.entries.insert(id, (state.tick, size));
        }
        let cache = BlockCache {
            dir: dir.to_owned(),
            limit,
            router,
            state: Mutex::new(state),
            in_flight: Mutex::new(HashMap::new()),
        };
        cache.evict(0);
        Ok(cache)
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
            guard.result = self.load(block);
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

    /// Disk cache, then the stores with retries; stores what was fetched.
    fn load(&self, block: &BlockRef) -> Result<Shared, String> {
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
        self.evict(size);
        let path = self.path(id);
        let dir = path.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        tmp.write_all(plain)?;
        tmp.persist(&path).map_err(|e| e.error)?;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.tick += 1;
        let tick = state.tick;
        if let Some((_, old)) = state.entries.insert(*id, (tick, size)) {
            state.used -= old;
        }
        state.used += size;
        Ok(())
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
    }

    /// Removes least recently used blocks until `incoming` more bytes fit under the limit,
    /// down to 90% of it so that a full cache does not sort its index on every insert.
    fn evict(&self, incoming: u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
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
            // fresh file removed behind the index's back.
            let _ = std::fs::remove_file(self.path(&id));
        }
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
