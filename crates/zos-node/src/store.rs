//! The node's state: every deployment with its workloads' results, in an embedded database
//! (redb) so that each change is one transaction, durable before it is answered.
//!
//! Keys are `<owner hex>/<name>`: a deployment belongs to its owner's key, and two owners
//! may use the same name. Deleted deployments stay, every result `deleted`, so an old
//! signed version cannot be replayed to bring one back.

use anyhow::{Context, Result};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use zos_types::{Deployment, PublicKey};

const DEPLOYMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("deployments");
/// Facts about the database itself; `format` is the version of the stored deployments.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Format 3: tombstones are stripped ([`tombstone_of`]); format 2: every deployment names
/// its node (format 1, before, had no `meta` table).
const FORMAT: u64 = 3;

/// The deployment database.
pub struct Store {
    db: Database,
    /// Write transactions committed, and the bytes of the deployments they wrote: what
    /// batching results is judged by.
    writes: AtomicU64,
    written: AtomicU64,
    /// Single deployments read ([`Store::get`]): what the monitor's index is judged by.
    reads: AtomicU64,
}

/// The database key of a deployment.
pub fn key(owner: &PublicKey, name: &str) -> String {
    format!("{owner}/{name}")
}

/// What [`Store::insert_new`] found in the way.
pub enum Insert {
    /// Stored.
    Done,
    /// A deployment of that owner and name exists (it is returned).
    Exists(Box<Deployment>),
}

impl Store {
    /// Opens (or creates) the database at `path`, the database of node `node`.
    pub fn open(path: &Path, node: &PublicKey) -> Result<Store> {
        // Owners' env values live here: readable by the node alone, from the first byte on
        // (redb initializes an empty file), and tightened on databases made before.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .and_then(|_| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)))
            .with_context(|| format!("creating the node database {}", path.display()))?;
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => anyhow::anyhow!(
                "the node database {} is in use: another `zos node run` has this data_dir; \
                 stop it first, or give this one its own data_dir",
                path.display()
            ),
            e => anyhow::Error::new(e)
                .context(format!("opening the node database {}", path.display())),
        })?;
        let mut db = db;
        let mut upgraded = false;
        let txn = db.begin_write()?;
        {
            let mut deployments = txn.open_table(DEPLOYMENTS)?;
            let mut meta = txn.open_table(META)?;
            // Upgraded once, not read through at every start.
            if meta.get("format")?.map(|v| v.value()) != Some(FORMAT) {
                name_the_node(&mut deployments, node)?;
                strip_tombstones(&mut deployments)?;
                meta.insert("format", FORMAT)?;
                upgraded = true;
            }
        }
        txn.commit()?;
        // The space fat tombstones took goes back to the file system once.
        if upgraded {
            db.compact().context("compacting the node database")?;
        }
        Ok(Store {
            db,
            writes: AtomicU64::new(0),
            written: AtomicU64::new(0),
            reads: AtomicU64::new(0),
        })
    }

    /// Stores `d` unless its owner already has a deployment of that name: the check and the
    /// write are one transaction, so of two concurrent deploys exactly one wins.
    pub fn insert_new(&self, d: &Deployment) -> Result<Insert> {
        let k = key(&d.owner, &d.name);
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(DEPLOYMENTS)?;
            if let Some(old) = table.get(k.as_str())? {
                return Ok(Insert::Exists(Box::new(decode(old.value())?)));
            }
            let bytes = encode(d)?;
            table.insert(k.as_str(), bytes.as_slice())?;
            self.count(bytes.len());
        }
        txn.commit()?;
        Ok(Insert::Done)
    }

    /// Changes a stored deployment in one transaction (read, `f`, write); `None` if it is
    /// not there. Writers are serialized by the database, so nothing changes in between.
    pub fn modify<T>(
        &self,
        owner: &PublicKey,
        name: &str,
        f: impl FnOnce(&mut Deployment) -> T,
    ) -> Result<Option<T>> {
        let k = key(owner, name);
        let txn = self.db.begin_write()?;
        let out = {
            let mut table = txn.open_table(DEPLOYMENTS)?;
            let current = match table.get(k.as_str())? {
                Some(v) => decode(v.value())?,
                None => return Ok(None),
            };
            let mut d = current;
            let out = f(&mut d);
            let bytes = encode(&d)?;
            table.insert(k.as_str(), bytes.as_slice())?;
            self.count(bytes.len());
            out
        };
        txn.commit()?;
        Ok(Some(out))
    }

    fn count(&self, bytes: usize) {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.written.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Deployment writes since the store was opened, and the bytes they wrote.
    pub fn writes(&self) -> (u64, u64) {
        (
            self.writes.load(Ordering::Relaxed),
            self.written.load(Ordering::Relaxed),
        )
    }

    /// Deployments read one by one since the store was opened.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// One deployment.
    pub fn get(&self, owner: &PublicKey, name: &str) -> Result<Option<Deployment>> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let txn = self.db.begin_read()?;
        let table = txn.open_table(DEPLOYMENTS)?;
        let k = key(owner, name);
        match table.get(k.as_str())? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// The deployments of one owner, by name.
    pub fn list(&self, owner: &PublicKey) -> Result<Vec<Deployment>> {
        // `/` sorts right before `0`, so the owner's keys are the range [owner/, owner0).
        let (from, to) = (format!("{owner}/"), format!("{owner}0"));
        let txn = self.db.begin_read()?;
        let table = txn.open_table(DEPLOYMENTS)?;
        let mut out = Vec::new();
        for entry in table.range(from.as_str()..to.as_str())? {
            let (_, v) = entry?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    /// The bytes `owner`'s stored deployments take, leaving out the one named `except`.
    pub fn owner_bytes(&self, owner: &PublicKey, except: Option<&str>) -> Result<u64> {
        let (from, to) = (format!("{owner}/"), format!("{owner}0"));
        let skip = except.map(|name| key(owner, name));
        let txn = self.db.begin_read()?;
        let table = txn.open_table(DEPLOYMENTS)?;
        let mut total = 0u64;
        for entry in table.range(from.as_str()..to.as_str())? {
            let (k, v) = entry?;
            if skip.as_deref() != Some(k.value()) {
                total = total.saturating_add(v.value().len() as u64);
            }
        }
        Ok(total)
    }

    /// Every deployment.
    pub fn all(&self) -> Result<Vec<Deployment>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(DEPLOYMENTS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (_, v) = entry?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }
}

fn encode(d: &Deployment) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(d)?)
}

/// Deployments stored before they named their node were all accepted by this node: they get
/// its id, so every stored deployment reads as the current type does.
fn name_the_node(table: &mut redb::Table<&str, &[u8]>, node: &PublicKey) -> Result<()> {
    let mut older = Vec::new();
    for entry in table.iter()? {
        let (k, v) = entry?;
        let mut value: serde_json::Value = serde_json::from_slice(v.value())
            .with_context(|| format!("the stored deployment {} is not JSON", k.value()))?;
        if let Some(map) = value.as_object_mut().filter(|m| !m.contains_key("node")) {
            map.insert("node".into(), serde_json::json!(node.to_string()));
            older.push((k.value().to_string(), serde_json::to_vec(&value)?));
        }
    }
    for (k, v) in older {
        table.insert(k.as_str(), v.as_slice())?;
    }
    Ok(())
}

/// Whether `d` is deleted: every workload's result says so (a stripped tombstone has none).
pub fn is_tombstone(d: &Deployment) -> bool {
    d.workloads.iter().all(|w| {
        w.result
            .as_ref()
            .is_some_and(|r| r.state == zos_types::ResultState::Deleted)
    })
}

/// What a deleted deployment keeps: its owner, name and version (so that no signed version
/// up to it can be replayed into existence), its node, and its signature requirement (a
/// revival must still satisfy every co-owner); not its workloads, metadata or signatures,
/// which could take a megabyte each for good.
pub fn tombstone_of(d: &Deployment) -> Deployment {
    Deployment {
        name: d.name.clone(),
        version: d.version,
        owner: d.owner,
        node: d.node,
        metadata: String::new(),
        description: String::new(),
        signature_requirement: d.signature_requirement.clone(),
        signatures: Vec::new(),
        workloads: Vec::new(),
    }
}

/// Tombstones stored whole before format 3 are stripped.
fn strip_tombstones(table: &mut redb::Table<&str, &[u8]>) -> Result<()> {
    let mut fat = Vec::new();
    for entry in table.iter()? {
        let (k, v) = entry?;
        let d = decode(v.value())?;
        if is_tombstone(&d) && !d.workloads.is_empty() {
            fat.push((k.value().to_string(), encode(&tombstone_of(&d))?));
        }
    }
    for (k, v) in fat {
        table.insert(k.as_str(), v.as_slice())?;
    }
    Ok(())
}

fn decode(bytes: &[u8]) -> Result<Deployment> {
    serde_json::from_slice(bytes).context("a stored deployment cannot be read")
}

#[cfg(test)]
mod tests {
    use super::*;
    use zos_types::{DeploymentFile, Keypair};

    fn deployment(key: &Keypair, name: &str) -> Deployment {
        let file = DeploymentFile::from_yaml_str(&format!(
            "name: {name}\nworkloads:\n  - name: data\n    type: zmount\n    data: {{ size: 1G }}\n"
        ))
        .unwrap();
        file.into_deployment(key.public(), node())
    }

    fn node() -> PublicKey {
        Keypair::from_seed(&[3; 32]).public()
    }

    #[test]
    fn deployments_stored_before_they_named_their_node_get_this_node() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let d = deployment(&Keypair::from_seed(&[1; 32]), "old");
        let mut old = serde_json::to_value(&d).unwrap();
        old.as_object_mut().unwrap().remove("node");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(DEPLOYMENTS)
                .unwrap()
                .insert(key(&d.owner, &d.name).as_str(), old.to_string().as_bytes())
                .unwrap();
            txn.commit().unwrap();
        }
        let store = Store::open(&path, &node()).unwrap();
        assert_eq!(store.get(&d.owner, "old").unwrap(), Some(d));
    }

    #[test]
    fn tombstones_stored_whole_are_stripped_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let owner = Keypair::from_seed(&[1; 32]);
        let mut d = deployment(&owner, "gone");
        d.version = 4;
        d.description = "x".repeat(100_000);
        for w in &mut d.workloads {
            w.result = Some(zos_types::WorkloadResult {
                state: zos_types::ResultState::Deleted,
                message: String::new(),
                data: serde_json::Value::Null,
                created: 0,
            });
        }
        let live = deployment(&owner, "live");
        {
            let store = Store::open(&path, &node()).unwrap();
            store.insert_new(&d).unwrap();
            store.insert_new(&live).unwrap();
            // As format 2 left them.
            let txn = store.db.begin_write().unwrap();
            txn.open_table(META).unwrap().insert("format", 2).unwrap();
            txn.commit().unwrap();
        }
        let before = std::fs::metadata(&path).unwrap().len();
        let store = Store::open(&path, &node()).unwrap();
        let tomb = store.get(&owner.public(), "gone").unwrap().unwrap();
        assert_eq!(tomb, tombstone_of(&d));
        assert!(is_tombstone(&tomb) && tomb.version == 4 && tomb.description.is_empty());
        assert_eq!(store.get(&owner.public(), "live").unwrap(), Some(live));
        assert!(store.owner_bytes(&owner.public(), Some("live")).unwrap() < 1000);
        let after = std::fs::metadata(&path).unwrap().len();
        assert!(
            after < before,
            "the database kept its size: {before} -> {after}"
        );
    }

    #[test]
    fn a_database_in_use_is_refused_with_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        let _first = Store::open(&path, &node()).unwrap();
        let err = Store::open(&path, &node()).err().unwrap().to_string();
        assert!(err.contains("another `zos node run`"), "{err}");
    }

    #[test]
    fn the_database_is_the_nodes_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        drop(Store::open(&path, &node()).unwrap());
        assert_eq!(mode(&path), 0o600);
        // A database made before this rule is tightened when opened.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(Store::open(&path, &node()).unwrap());
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn one_insert_wins_and_owners_are_apart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), &node()).unwrap();
        let (a, b) = (Keypair::generate(), Keypair::generate());
        assert!(matches!(
            store.insert_new(&deployment(&a, "x")).unwrap(),
            Insert::Done
        ));
        assert!(matches!(
            store.insert_new(&deployment(&a, "x")).unwrap(),
            Insert::Exists(_)
        ));
        assert!(matches!(
            store.insert_new(&deployment(&b, "x")).unwrap(),
            Insert::Done
        ));
        assert!(matches!(
            store.insert_new(&deployment(&a, "y")).unwrap(),
            Insert::Done
        ));
        let names: Vec<_> = store
            .list(&a.public())
            .unwrap()
            .into_iter()
            .map(|d| d.name)
            .collect();
        assert_eq!(names, vec!["x", "y"]);
        assert_eq!(store.list(&b.public()).unwrap().len(), 1);
        assert_eq!(store.all().unwrap().len(), 3);

        // A change is one transaction; the closure sees the stored record.
        let bumped = store
            .modify(&a.public(), "x", |d| {
                d.version += 1;
                d.version
            })
            .unwrap();
        assert_eq!(bumped, Some(1));
        drop(store);
        // Durable across reopen.
        let store = Store::open(&dir.path().join("db"), &node()).unwrap();
        assert_eq!(store.get(&a.public(), "x").unwrap().unwrap().version, 1);
        let changed = store
            .modify(&a.public(), "y", |d| d.description = "z".into())
            .unwrap();
        assert!(changed.is_some());
        assert_eq!(
            store.get(&a.public(), "y").unwrap().unwrap().description,
            "z"
        );
        assert!(store.modify(&b.public(), "y", |_| ()).unwrap().is_none());
    }
}
