//! Routes blocks to stores by the first byte of their id.

use super::{Store, StoreError, StorePolicy, StoreSpec};
use crate::block::{self, BlockRef};
use crate::meta::Route;
use std::sync::Arc;

/// A set of stores, each covering a range of first id bytes. Writes go to every store that
/// covers a block; reads try them in order until one returns a block that verifies.
#[derive(Clone, Default)]
pub struct Router {
    routes: Vec<(u8, u8, Arc<dyn Store>)>,
}

/// Every store that covered a block failed to produce it; one reason per store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchError {
    /// What each store said, in the order they were tried.
    pub reasons: Vec<String>,
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.reasons.is_empty() {
            return write!(f, "no store covers this block");
        }
        write!(f, "{}", self.reasons.join("; "))
    }
}

impl Router {
    /// Connects to the stores named by `specs`.
    pub fn from_specs(specs: &[StoreSpec]) -> Result<Router, StoreError> {
        Self::from_specs_with(specs, None)
    }

    /// Connects to the stores named by `specs` under `policy`: one store it refuses fails
    /// the whole router, so a refused route is never skipped in silence.
    pub fn from_specs_with(
        specs: &[StoreSpec],
        policy: Option<&Arc<StorePolicy>>,
    ) -> Result<Router, StoreError> {
        let mut router = Router::default();
        for spec in specs {
            router.add(spec.start, spec.end, spec.open_with(policy)?);
        }
        Ok(router)
    }

    /// Connects to the stores an flist's route table names.
    pub fn from_routes(routes: &[Route]) -> Result<Router, StoreError> {
        Self::from_routes_with(routes, None)
    }

    /// [`Router::from_routes`] under `policy`.
    pub fn from_routes_with(
        routes: &[Route],
        policy: Option<&Arc<StorePolicy>>,
    ) -> Result<Router, StoreError> {
        let specs: Vec<StoreSpec> = routes
            .iter()
            .map(|r| {
                StoreSpec::parse(&r.url).map(|s| StoreSpec {
                    start: r.start,
                    end: r.end,
                    ..s
                })
            })
            .collect::<Result<_, _>>()?;
        Self::from_specs_with(&specs, policy)
    }

    /// Adds a store for ids whose first byte is in `start..=end`.
    pub fn add(&mut self, start: u8, end: u8, store: Arc<dyn Store>) {
        self.routes.push((start, end, store));
    }

    /// Whether no store is configured.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    fn covering(&self, id: &[u8; 32]) -> impl Iterator<Item = &Arc<dyn Store>> {
        let first = id[0];
        self.routes
            .iter()
            .filter(move |(s, e, _)| (*s..=*e).contains(&first))
            .map(|(_, _, store)| store)
    }

    /// Stores a block in every store covering it, skipping stores that already have it.
    /// Returns how many stores were actually sent the bytes.
    pub fn put(&self, id: &[u8; 32], data: &[u8]) -> Result<usize, StoreError> {
        let mut covered = false;
        let mut sent = 0;
        for store in self.covering(id) {
            covered = true;
            if !store.exists(id)? {
                store.set(id, data)?;
                sent += 1;
            }
        }
        if !covered {
            return Err(StoreError::NotRoutable { first: id[0] });
        }
        Ok(sent)
    }

    /// Reads a block and returns its verified plaintext. A store that fails, lacks the block
    /// or returns bytes that do not verify is skipped for the next one.
    pub fn fetch(&self, block: &BlockRef) -> Result<Vec<u8>, FetchError> {
        let mut reasons = Vec::new();
        for store in self.covering(&block.id) {
            match store.get(&block.id) {
                Ok(stored) => match block::decode(block, stored) {
                    Ok(plain) => return Ok(plain),
                    Err(e) => reasons.push(format!("{}: {e}", store.url())),
                },
                Err(e) => reasons.push(e.to_string()),
            }
        }
        if reasons.is_empty() {
            reasons.push(StoreError::NotRoutable { first: block.id[0] }.to_string());
        }
        Err(FetchError { reasons })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// An in-memory store beside the real ones, to pin down routing rules without I/O.
    #[derive(Default)]
    struct Memory {
        blocks: Mutex<HashMap<[u8; 32], Vec<u8>>>,
        name: String,
    }

    impl Store for Memory {
        fn get(&self, id: &[u8; 32]) -> Result<Vec<u8>, StoreError> {
            self.blocks
                .lock()
                .unwrap()
                .get(id)
                .cloned()
                .ok_or(StoreError::NotFound {
                    store: self.name.clone(),
                })
        }
        fn set(&self, id: &[u8; 32], data: &[u8]) -> Result<(), StoreError> {
            self.blocks.lock().unwrap().insert(*id, data.to_vec());
            Ok(())
        }
        fn exists(&self, id: &[u8; 32]) -> Result<bool, StoreError> {
            Ok(self.blocks.lock().unwrap().contains_key(id))
        }
        fn url(&self) -> &str {
            &self.name
        }
    }

    fn mem(name: &str) -> Arc<Memory> {
        Arc::new(Memory {
            name: name.into(),
            ..Default::default()
        })
    }

    #[test]
    fn writes_go_to_every_covering_store_once() {
        let (a, b, c) = (mem("a"), mem("b"), mem("c"));
        let mut r = Router::default();
        r.add(0x00, 0xff, a.clone());
        r.add(0x00, 0xff, b.clone());
        r.add(0x00, 0x00, c.clone());
        let (block, data) = block::encode(b"hello");
        let expect_c = block.id[0] == 0;
        assert_eq!(r.put(&block.id, &data).unwrap(), 2 + expect_c as usize);
        assert_eq!(
            r.put(&block.id, &data).unwrap(),
            0,
            "second put sends nothing"
        );
        assert!(a.exists(&block.id).unwrap() && b.exists(&block.id).unwrap());
        assert_eq!(c.exists(&block.id).unwrap(), expect_c);
    }

    #[test]
    fn read_falls_back_past_corrupt_and_missing() {
        let (bad, empty, good) = (mem("bad"), mem("empty"), mem("good"));
        let (block, data) = block::encode(b"payload");
        let mut corrupt = data.clone();
        corrupt[0] ^= 1;
        bad.set(&block.id, &corrupt).unwrap();
        good.set(&block.id, &data).unwrap();
        let mut r = Router::default();
        r.add(0, 255, bad);
        r.add(0, 255, empty);
        r.add(0, 255, good);
        assert_eq!(r.fetch(&block).unwrap(), b"payload");
    }

    #[test]
    fn unroutable_block_is_an_error() {
        let (block, data) = block::encode(b"x");
        let mut r = Router::default();
        let other = if block.id[0] == 0 { 1 } else { 0 };
        r.add(other, other, mem("m"));
        assert!(matches!(
            r.put(&block.id, &data),
            Err(StoreError::NotRoutable { .. })
        ));
        assert!(r
            .fetch(&block)
            .unwrap_err()
            .to_string()
            .contains("no store covers"));
    }
}
