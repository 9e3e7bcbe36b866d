//! The deployment engine: checks a deployment (schema, signatures, versions, capacity),
//! stores it, and then converges the host to it in the background, one deployment at a time,
//! recording a result per workload. A monitor watches what runs. The engine never names a
//! workload type: each type's module (see [`crate::workload`]) does the type's part.

use crate::capacity;
use crate::config::NodeConfig;
use crate::limits::{OwnerLimits, RateLimiter};
use crate::readers::Readers;
use crate::schedule::Queue;
use crate::store::{self, is_tombstone, Insert, Store};
use crate::workload::{self, deployment_id, is_deleted, result, state, Host, Kinds, Target};
use anyhow::{Context, Result};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;
use zos_flist::fetch::FlistCache;
use zos_flist::store::{StorePolicy, StoreSpec};
use zos_types::api::{Event, NodeInfo, Resources};
use zos_types::{Deployment, Keypair, PublicKey, ResultState, Workload, WorkloadResult};
use zos_vmm::{Vmm, VmmConfig};

/// Why the engine refused a call or failed it. Only the API maps these to HTTP statuses.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The deployment or the request breaks a rule; the message says which.
    #[error("{0}")]
    Invalid(String),
    /// The signatures (of the deployment or the request) do not hold.
    #[error("{0}")]
    Unauthorized(String),
    /// No such deployment (or workload) of the caller's.
    #[error("{0}")]
    NotFound(String),
    /// It clashes with what is stored (exists, stale version).
    #[error("{0}")]
    Conflict(String),
    /// Valid, but the node has no room for it.
    #[error("{0}")]
    NoCapacity(String),
    /// Valid, but beyond one of the owner's limits (how many, how much); the message names
    /// the limit and its value.
    #[error("{0}")]
    OverLimit(String),
    /// One deployment larger than the node stores; the message names the limit.
    #[error("{0}")]
    TooLarge(String),
    /// The owner asks faster than their limit allows; the message says when to try again.
    #[error("{0}")]
    TooManyRequests(String),
    /// The node itself failed.
    #[error("node error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

/// The engine; shared by the API handlers and the background work.
pub struct Engine {
    store: Store,
    host: Host,
    kinds: Kinds,
    node_id: PublicKey,
    totals: Resources,
    /// What each live deployment holds; the lock also serializes admission.
    held: Mutex<HashMap<String, Resources>>,
    /// What each live deployment claims (see [`workload::Claim`]); changed under `held`'s
    /// lock.
    claims: Mutex<HashMap<String, Vec<workload::Claim>>>,
    /// Disk kept free on the data dir's file system, whatever the accounting says.
    reserve_disk: u64,
    /// One lock per deployment: its convergence runs one at a time.
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    events: broadcast::Sender<(PublicKey, Event)>,
    /// Deployments waiting for a worker, owners taking turns.
    queue: Mutex<Queue>,
    queued: Condvar,
    /// The live deployments with a workload of a type the monitor watches: all it reads.
    monitored: Mutex<HashSet<(PublicKey, String)>>,
    /// Each deployment's co-owners, who may read it too.
    readers: Mutex<Readers>,
    /// Passes under way, by deployment key: where the next slice starts.
    passes: Mutex<HashMap<String, Pass>>,
    /// What one owner may store and ask.
    limits: OwnerLimits,
    /// Each owner's request rate.
    rate: RateLimiter,
}

/// A workload's console log, found by [`Engine::console`].
pub struct ConsoleLog {
    /// The log file.
    pub path: PathBuf,
    /// What writes it (a VM), for [`Engine::console_active`].
    pub writer: String,
    /// The workload's type.
    type_name: &'static str,
}

/// Convergence workers: one per host CPU would starve the guests under TCG; two keep a slow
/// VM boot from holding up everything else.
pub const WORKERS: usize = 2;

/// Workloads one turn of a worker converges before the deployment goes to the back of the
/// queue and the next owner's turn comes: a deployment of hundreds of workloads holds a
/// worker for a slice, not for all of them.
pub const SLICE: usize = 16;

/// Workers one owner may keep busy: one fewer than there are, so that another owner's
/// deployment always finds a worker free (or one within a slice).
pub const PER_OWNER: usize = if WORKERS > 1 { WORKERS - 1 } else { 1 };

/// How long a slice goes on converging once it has converged one workload.
pub const SLICE_TIME: Duration = Duration::from_millis(250);

/// What a slow workload (a VM boot: seconds) takes of a slice, in workloads: a turn boots
/// at most `SLICE / SLOW_COST` VMs.
pub const SLOW_COST: usize = 4;

/// A convergence pass of one version of a deployment, done a slice at a time.
struct Pass {
    version: u32,
    /// Workloads (in convergence order) already looked at.
    next: usize,
    /// Whether each workload looked at is usable, for those converged after it.
    earlier: HashMap<String, Result<(), String>>,
}

impl Engine {
    /// Opens the node's state under `cfg.data_dir`, making its identity on first start.
    pub fn open(cfg: NodeConfig) -> Result<Arc<Engine>> {
        Self::open_with(cfg, Kinds::builtin())
    }

    /// [`Engine::open`] with the workload types in `kinds` (tests register their own).
    pub fn open_with(cfg: NodeConfig, kinds: Kinds) -> Result<Arc<Engine>> {
        let data = std::path::absolute(&cfg.data_dir)?;
        let (disks, vms) = (data.join("disks"), data.join("vms"));
        // Tenants' data lives below: no other account of the host looks in.
        for dir in [&data, &disks, &vms] {
            workload::private_dir(dir)
                .with_context(|| format!("making {} private to the node", dir.display()))?;
        }
        let key = identity(&data.join("identity.pem"))?;
        let zos = std::env::current_exe().context("finding the zos binary")?;
        let cache_dir = std::path::absolute(cfg.cache_dir())?;
        let mut vmm_cfg = VmmConfig::new(vms, zos, cache_dir.clone());
        // Flists by URL and imported images, beside the blocks (which the block cache keeps
        // in directories of its own); the images' blocks in a store of the node's own.
        let flists_dir = cache_dir.join("flists");
        let image_store = flists_dir.join("store");
        // Tenants' flists name their stores, and their URLs: the node reaches only what its
        // policy allows, and its own store.
        let policy = cfg.store_policy()?;
        let mut dirs = policy.allow_dirs().to_vec();
        dirs.push(image_store.clone());
        let policy = StorePolicy::new(policy.allow_nets().to_vec(), dirs)
            .map_err(|e| anyhow::anyhow!("the node's image store: {e}"))?;
        vmm_cfg.store_policy = Some(policy.clone());
        let vmm = Vmm::new(vmm_cfg)?;
        let flists = FlistCache::new(&flists_dir, Some(Arc::new(policy)));
        let image_store = StoreSpec::parse(&format!("dir://{}", image_store.display()))
            .map_err(|e| anyhow::anyhow!("the node's image store: {e}"))?;
        let host = Host {
            vmm,
            disks,
            data,
            stop_timeout: Duration::from_secs(cfg.stop_timeout_secs),
            max_restarts: cfg.max_restarts,
            quarantine_days: cfg.quarantine_days,
            flist_dirs: cfg.flist_dirs.clone(),
            flists,
            image_store,
            opener: Arc::new(
                zos_seal::Opener::new(&key).context("making the node's key an age identity")?,
            ),
            node_tag: workload::node_tag(&key.public()),
            wireguard_seed: key.derive(b"wireguard"),
            wireguard_host: cfg.wireguard_host.clone(),
            public_ips: cfg.public_ips.clone(),
        };
        let db = host.data.join("node.redb");
        let store = Store::open(&db, &key.public())?;
        let stored = store.all()?;
        if stored.is_empty() {
            refuse_unaccounted(&kinds, &host, &db)?;
        }
        let mut held = HashMap::new();
        let mut claims = HashMap::new();
        let mut monitored = HashSet::new();
        let mut readers = Readers::default();
        // Tombstones keep their requirement: co-owners see a deleted deployment as its
        // owner does.
        for d in &stored {
            readers.set(d);
        }
        for d in stored.iter().filter(|d| !is_tombstone(d)) {
            held.insert(store::key(&d.owner, &d.name), kinds.demand(&d.workloads));
            claims.insert(store::key(&d.owner, &d.name), kinds.claims(d));
            if is_monitored(&kinds, d) {
                monitored.insert((d.owner, d.name.clone()));
            }
        }
        // What the file system really has free, plus what deployments already hold (their
        // disks may not have taken all of it yet): the node offers no more than that.
        let disk_size = match cfg.disk {
            Some(size) => size.0,
            None => capacity::filesystem_free(&host.data)
                .with_context(|| format!("measuring the filesystem of {}", host.data.display()))?
                .saturating_add(capacity::total_held(&held, None).disk),
        };
        let totals = capacity::totals(&cfg, disk_size);
        let (events, _) = broadcast::channel(1024);
        Ok(Arc::new(Engine {
            store,
            host,
            reserve_disk: cfg.reserve_disk.0,
            kinds,
            node_id: key.public(),
            totals,
            held: Mutex::new(held),
            claims: Mutex::new(claims),
            locks: Mutex::new(HashMap::new()),
            events,
            queue: Mutex::default(),
            queued: Condvar::new(),
            passes: Mutex::default(),
            monitored: Mutex::new(monitored),
            readers: Mutex::new(readers),
            rate: RateLimiter::new(cfg.limits.requests_per_second, cfg.limits.request_burst),
            limits: cfg.limits,
        }))
    }

    /// The node's identity.
    pub fn node_id(&self) -> PublicKey {
        self.node_id
    }

    /// New events, for the event stream.
    pub fn subscribe(&self) -> broadcast::Receiver<(PublicKey, Event)> {
        self.events.subscribe()
    }

    fn emit(&self, d: &Deployment, workload: Option<&str>, state: ResultState, message: &str) {
        let event = Event {
            time: workload::now(),
            deployment: d.name.clone(),
            version: d.version,
            workload: workload.map(str::to_string),
            state,
            message: message.to_string(),
        };
        let _ = self.events.send((d.owner, event));
    }

    /// The admission lock and what live deployments hold. A panic elsewhere must not stop
    /// admission for good, so a poisoned lock is taken over.
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Resources>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What is free for a deployment (leaving out what `except`, the one being updated,
    /// holds): the accounting's free, with disk also capped by what the file system really
    /// has free now, less the reserve, so a filling disk refuses new zmounts.
    fn free(&self, held: &HashMap<String, Resources>, except: Option<&str>) -> Resources {
        let mut free = capacity::sub(self.totals, capacity::total_held(held, except));
        if let Ok(now) = capacity::filesystem_free(&self.host.data) {
            let own = except.and_then(|k| held.get(k)).map_or(0, |r| r.disk);
            free.disk = free
                .disk
                .min(now.saturating_sub(self.reserve_disk).saturating_add(own));
        }
        free
    }

    /// Capacity and identity.
    pub fn info(&self) -> NodeInfo {
        let used = capacity::total_held(&self.held(), None);
        NodeInfo {
            node_id: self.node_id,
            version: env!("CARGO_PKG_VERSION").to_string(),
            accel: zos_vmm::host::Accel::Auto.resolve().as_str().to_string(),
            total: self.totals,
            used,
            free: capacity::sub(self.totals, used),
        }
    }

    fn check(&self, d: &Deployment) -> Result<(), EngineError> {
        if d.node != self.node_id {
            return Err(EngineError::Invalid(format!(
                "deployment {:?} is signed for node {}, but this is node {}: sign it for this \
                 node (zos deploy does)",
                d.name, d.node, self.node_id
            )));
        }
        d.validate()
            .map_err(|e| EngineError::Invalid(format!("deployment {:?}: {e}", d.name)))?;
        // Signatures before anything on the host is looked at: a request whose signatures
        // fail learns nothing about the host (which files exist, say).
        d.verify_signatures()
            .map_err(|e| EngineError::Unauthorized(format!("deployment {:?}: {e}", d.name)))?;
        self.throttle(&d.owner)?;
        self.check_size(d)?;
        self.kinds
            .check(&self.host, &d.workloads)
            .map_err(|e| EngineError::Invalid(format!("deployment {:?}: {e}", d.name)))
    }

    /// Takes one of `owner`'s requests from their rate limit (signed requests only: an
    /// unsigned one must not spend someone else's).
    pub fn throttle(&self, owner: &PublicKey) -> Result<(), EngineError> {
        self.rate.take(owner).map_err(|wait| {
            EngineError::TooManyRequests(format!(
                "too many requests from {owner}: the node's limit is limits.requests_per_second \
                 = {} (bursts of limits.request_burst = {}); try again in {:.1} s",
                self.limits.requests_per_second, self.limits.request_burst, wait
            ))
        })
    }

    /// The limits on one deployment by itself: how many workloads, how many bytes.
    fn check_size(&self, d: &Deployment) -> Result<(), EngineError> {
        let max = self.limits.workloads_per_deployment;
        if d.workloads.len() > max {
            return Err(EngineError::OverLimit(format!(
                "deployment {:?} has {} workloads; the node's limit is \
                 limits.workloads_per_deployment = {max}: split it into several deployments",
                d.name,
                d.workloads.len()
            )));
        }
        let size = stored_size(d)?;
        let max = self.limits.deployment_bytes;
        if size > max.0 {
            return Err(EngineError::TooLarge(format!(
                "deployment {:?} takes {} stored; the node's limit is limits.deployment_bytes = \
                 {max}: keep metadata, description and env smaller",
                d.name,
                zos_types::ByteSize(size)
            )));
        }
        Ok(())
    }

    /// The limits on all of an owner's deployments once `d` is stored: how many are live
    /// (`new` when `d` adds one) and how many bytes they take.
    fn check_owner(
        &self,
        held: &HashMap<String, Resources>,
        d: &Deployment,
        new: bool,
    ) -> Result<(), EngineError> {
        let max = self.limits.deployments_per_owner;
        let prefix = format!("{}/", d.owner);
        let live = held.keys().filter(|k| k.starts_with(&prefix)).count();
        if new && live >= max {
            return Err(EngineError::OverLimit(format!(
                "{} has {live} deployments on this node; the node's limit is \
                 limits.deployments_per_owner = {max}: remove one first (zos rm)",
                d.owner
            )));
        }
        let others = self.store.owner_bytes(&d.owner, Some(&d.name))?;
        let total = others.saturating_add(stored_size(d)?);
        let max = self.limits.owner_bytes;
        if total > max.0 {
            return Err(EngineError::OverLimit(format!(
                "{}'s deployments would take {} stored; the node's limit is limits.owner_bytes \
                 = {max}: remove deployments or keep their metadata smaller",
                d.owner,
                zos_types::ByteSize(total)
            )));
        }
        Ok(())
    }

    fn claims(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<workload::Claim>>> {
        self.claims.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What `d` claims, once checked against the other live deployments' claims (call with
    /// `held` locked, and record the answer under the same lock).
    fn check_claims(&self, d: &Deployment) -> Result<Vec<workload::Claim>, EngineError> {
        let mine = self.kinds.claims(d);
        let key = store::key(&d.owner, &d.name);
        let all = self.claims();
        for (holder, theirs) in all.iter().filter(|(k, _)| **k != key) {
            let holder = holder.split_once('/').map_or(holder.as_str(), |(_, n)| n);
            for claim in &mine {
                if let Some(why) = theirs.iter().find_map(|t| claim.clash(t, holder)) {
                    return Err(EngineError::Conflict(format!(
                        "deployment {:?}: {why}",
                        d.name
                    )));
                }
            }
        }
        Ok(mine)
    }

    /// A new deployment: checked, admitted, stored, then provisioned in the background.
    pub fn deploy(self: &Arc<Self>, mut d: Deployment) -> Result<Deployment, EngineError> {
        self.check(&d)?;
        if d.version != 0 {
            return Err(EngineError::Invalid(format!(
                "a new deployment starts at version 0 (got {}); to update {:?}, PUT it",
                d.version, d.name
            )));
        }
        for w in &mut d.workloads {
            w.result = Some(result(ResultState::Init, "", serde_json::Value::Null));
        }
        let key = store::key(&d.owner, &d.name);
        {
            let mut held = self.held();
            let demand = self.kinds.demand(&d.workloads);
            self.check_owner(&held, &d, true)?;
            capacity::check_fits(demand, self.free(&held, None))
                .map_err(EngineError::NoCapacity)?;
            let claims = self.check_claims(&d)?;
            match self.store.insert_new(&d)? {
                Insert::Done => {}
                Insert::Exists(old) => {
                    return Err(EngineError::Conflict(format!(
                        "deployment {:?} exists (version {}{}): update it with version {}",
                        d.name,
                        old.version,
                        if is_tombstone(&old) { ", deleted" } else { "" },
                        old.version.saturating_add(1)
                    )));
                }
            }
            self.claims().insert(key.clone(), claims);
            held.insert(key, demand);
        }
        self.index(&d);
        self.readers().set(&d);
        self.emit(&d, None, ResultState::Init, "deployed");
        self.spawn_converge(d.owner, d.name.clone());
        Ok(d)
    }

    /// A new version of a deployment: `old.version + 1`; workloads at the new version are
    /// (re)provisioned, the others kept as they run, and the missing ones removed.
    pub fn update(
        self: &Arc<Self>,
        name: &str,
        mut d: Deployment,
    ) -> Result<Deployment, EngineError> {
        if d.name != name {
            return Err(EngineError::Invalid(format!(
                "the path names deployment {name:?} but the body {:?}",
                d.name
            )));
        }
        self.check(&d)?;
        let key = store::key(&d.owner, &d.name);
        let mut held = self.held();
        // A deleted deployment brought back counts as a new one.
        self.check_owner(&held, &d, !held.contains_key(&key))?;
        let free = self.free(&held, Some(&key));
        // Checked and written in one transaction, against the stored record as it is then:
        // results recorded meanwhile are carried over, not lost.
        let (owner, dname) = (d.owner, d.name.clone());
        let claims = self.check_claims(&d)?;
        let demand = self
            .store
            .modify(&owner, &dname, |old| {
                let next = self.next_version(&mut d, old, free)?;
                *old = next.clone();
                d = next;
                Ok::<_, EngineError>(self.kinds.demand(&d.workloads))
            })?
            .ok_or_else(|| {
                EngineError::NotFound(format!("no deployment named {name:?}: create it first"))
            })??;
        self.claims().insert(key.clone(), claims);
        held.insert(key, demand);
        drop(held);
        self.index(&d);
        self.readers().set(&d);
        self.emit(&d, None, ResultState::Init, "updated");
        self.spawn_converge(d.owner, d.name.clone());
        Ok(d)
    }

    /// `d` as the successor of the stored `old`: version, signatures against the old
    /// requirement, which workloads keep their results, and whether it fits in `free`.
    fn next_version(
        &self,
        d: &mut Deployment,
        old: &Deployment,
        free: Resources,
    ) -> Result<Deployment, EngineError> {
        let name = &d.name;
        let next = old.version.checked_add(1).ok_or_else(|| {
            EngineError::Conflict(format!(
                "deployment {name:?} is at the last version: deploy under a new name"
            ))
        })?;
        if d.version != next {
            return Err(EngineError::Conflict(format!(
                "deployment {name:?} is at version {}; an update must have version {next} (got {})",
                old.version, d.version
            )));
        }
        d.verify_update_from(&old.signature_requirement).map_err(|e| {
            EngineError::Unauthorized(format!(
                "deployment {name:?}: {e} (the signatures must also satisfy version {}'s requirement)",
                old.version
            ))
        })?;
        let revived = is_tombstone(old);
        let version = d.version;
        for w in &mut d.workloads {
            let before = old.workloads.iter().find(|o| o.name == w.name && !revived);
            match before {
                Some(o) if w.version < version => {
                    if o.spec != w.spec || o.version != w.version {
                        return Err(EngineError::Invalid(format!(
                            "workload {:?} differs from version {} but its version is {}: give changed workloads version {version}",
                            w.name.as_str(), o.version, w.version
                        )));
                    }
                    // Deploying again retries what failed; the rest keeps running untouched.
                    w.result = match &o.result {
                        Some(r) if r.state == ResultState::Error => {
                            Some(result(ResultState::Init, "", serde_json::Value::Null))
                        }
                        other => other.clone(),
                    };
                }
                _ => w.result = Some(result(ResultState::Init, "", serde_json::Value::Null)),
            }
        }
        self.kinds
            .check_update(&d.workloads)
            .map_err(|e| EngineError::Conflict(format!("deployment {name:?}: {e}")))?;
        capacity::check_fits(self.kinds.demand(&d.workloads), free)
            .map_err(EngineError::NoCapacity)?;
        Ok(d.clone())
    }

    /// Tears a deployment down; it stays listed as deleted, its version one past the last
    /// (so a revival must be signed after the delete, and an update racing the delete finds
    /// its version taken). Returns once its VMs and disks are gone.
    pub fn delete(&self, owner: &PublicKey, name: &str) -> Result<Deployment, EngineError> {
        let mut held = self.held();
        if let Some(d) = self.store.get(owner, name)? {
            if is_tombstone(&d) {
                return Ok(d);
            }
        }
        let tombstone = self
            .store
            .modify(owner, name, |d| {
                d.version = d.version.saturating_add(1);
                for w in &mut d.workloads {
                    if !is_deleted(w) {
                        w.result = Some(result(
                            ResultState::Deleted,
                            "deleted by its owner",
                            serde_json::Value::Null,
                        ));
                    }
                }
                // The caller sees what went; the database keeps only what replay
                // protection needs.
                let whole = d.clone();
                *d = store::tombstone_of(d);
                whole
            })?
            .ok_or_else(|| EngineError::NotFound(format!("no deployment named {name:?}")))?;
        held.remove(&store::key(owner, name));
        self.claims().remove(&store::key(owner, name));
        drop(held);
        self.index(&tombstone);
        let id = deployment_id(owner, name);
        for kind in self.kinds.all() {
            kind.forget(&id);
        }
        self.converge(owner, name)?;
        self.emit(&tombstone, None, ResultState::Deleted, "deleted");
        Ok(tombstone)
    }

    /// This node's end of the WireGuard link of network `network` of `owner`'s deployment
    /// `name` (deployed or not: its key and port follow from the names).
    pub fn wireguard_end(
        &self,
        owner: &PublicKey,
        name: &str,
        network: &str,
    ) -> Result<zos_types::WireGuardEnd, EngineError> {
        if !zos_types::is_valid_deployment_name(name) {
            return Err(EngineError::Invalid(format!(
                "{name:?} is not a deployment name"
            )));
        }
        zos_types::WorkloadName::try_from(network.to_string())
            .map_err(|e| EngineError::Invalid(format!("network {network:?}: {e}")))?;
        Ok(workload::network::wireguard_end(
            &self.host, owner, name, network,
        ))
    }

    /// One of the caller's deployments.
    pub fn get(&self, owner: &PublicKey, name: &str) -> Result<Deployment, EngineError> {
        self.store
            .get(owner, name)?
            .ok_or_else(|| EngineError::NotFound(format!("no deployment named {name:?}")))
    }

    /// The caller's deployments and those it co-owns, by name; deleted ones only with
    /// `include_deleted`.
    pub fn list(
        &self,
        caller: &PublicKey,
        include_deleted: bool,
    ) -> Result<Vec<Deployment>, EngineError> {
        let mut all = self.store.list(caller)?;
        let co_owned = self.readers().of(caller);
        for (owner, name) in co_owned {
            all.extend(self.store.get(&owner, &name)?);
        }
        all.retain(|d| include_deleted || !is_tombstone(d));
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    fn readers(&self) -> std::sync::MutexGuard<'_, Readers> {
        self.readers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `caller` may read `owner`'s deployment `name`: its owner, or a key its
    /// signature requirement names.
    pub fn may_read(&self, caller: &PublicKey, owner: &PublicKey, name: &str) -> bool {
        self.readers().can_read(caller, owner, name)
    }

    /// The owner of the deployment `name` that `caller` asks about: `owner` when given (and
    /// `caller` may read it), else `caller`'s own, else the one deployment of that name
    /// `caller` co-owns. Another's deployment `caller` may not read is not found, as one
    /// that does not exist.
    pub fn resolve(
        &self,
        caller: &PublicKey,
        owner: Option<&PublicKey>,
        name: &str,
    ) -> Result<PublicKey, EngineError> {
        let missing = || EngineError::NotFound(format!("no deployment named {name:?}"));
        if let Some(owner) = owner {
            return if self.may_read(caller, owner, name) {
                Ok(*owner)
            } else {
                Err(missing())
            };
        }
        if self.store.get(caller, name)?.is_some() {
            return Ok(*caller);
        }
        let owners: Vec<PublicKey> = self
            .readers()
            .of(caller)
            .into_iter()
            .filter(|(_, n)| n == name)
            .map(|(o, _)| o)
            .collect();
        match owners.as_slice() {
            [] => Err(missing()),
            [one] => Ok(*one),
            several => Err(EngineError::Conflict(format!(
                "you co-own {} deployments named {name:?} (owners {}): name the owner \
                 (?owner=KEY)",
                several.len(),
                several
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// A deployment `caller` may read (see [`Engine::resolve`]).
    pub fn read(
        &self,
        caller: &PublicKey,
        owner: Option<&PublicKey>,
        name: &str,
    ) -> Result<Deployment, EngineError> {
        let owner = self.resolve(caller, owner, name)?;
        self.get(&owner, name)
    }

    /// Keeps `d` in the monitor's index while it has a workload the monitor may watch.
    fn index(&self, d: &Deployment) {
        let mut monitored = self.monitored.lock().unwrap_or_else(|e| e.into_inner());
        let key = (d.owner, d.name.clone());
        if !is_tombstone(d) && is_monitored(&self.kinds, d) {
            monitored.insert(key);
        } else {
            monitored.remove(&key);
        }
    }

    /// A live workload of the caller's deployment and its type's module, with the
    /// deployment's id.
    fn live_workload(
        &self,
        owner: &PublicKey,
        name: &str,
        workload: &str,
        what: &str,
    ) -> Result<(&dyn workload::Kind, String), EngineError> {
        let d = self.get(owner, name)?;
        if is_tombstone(&d) {
            return Err(EngineError::NotFound(format!(
                "deployment {name:?} was removed (version {}): its workloads and their {what} \
                 are gone",
                d.version
            )));
        }
        let w = d
            .workloads
            .iter()
            .find(|w| w.name.as_str() == workload)
            .ok_or_else(|| {
                EngineError::NotFound(format!("deployment {name:?} has no workload {workload:?}"))
            })?;
        if is_deleted(w) {
            return Err(EngineError::NotFound(format!(
                "{name}/{workload} was removed by an update: its {what} is gone"
            )));
        }
        Ok((self.kind_of(w)?, deployment_id(owner, name)))
    }

    /// The console log of a workload, for `logs`.
    pub fn console(
        &self,
        owner: &PublicKey,
        name: &str,
        workload: &str,
    ) -> Result<ConsoleLog, EngineError> {
        let (kind, id) = self.live_workload(owner, name, workload, "logs")?;
        let (path, writer) = kind
            .console(&self.host, &id, workload)
            .map_err(|e| unreachable_workload(name, e))?;
        Ok(ConsoleLog {
            path,
            writer,
            type_name: kind.type_name(),
        })
    }

    /// Opens an exec or copy session in a running container workload, for `exec` and `cp`.
    pub fn session(
        &self,
        owner: &PublicKey,
        name: &str,
        workload: &str,
        open: zos_init::Open,
    ) -> Result<zos_vmm::Session, EngineError> {
        let (kind, id) = self.live_workload(owner, name, workload, "container")?;
        kind.session(&self.host, &id, workload, open)
            .map_err(|e| unreachable_workload(name, e))
    }

    /// Whether what writes `log` still runs (a followed log ends when it stops).
    pub fn console_active(&self, log: &ConsoleLog) -> bool {
        self.kinds
            .named(log.type_name)
            .is_some_and(|k| k.console_active(&self.host, &log.writer))
    }

    /// The module of a stored workload's type.
    fn kind_of(&self, w: &Workload) -> Result<&dyn workload::Kind, EngineError> {
        self.kinds.of(&w.spec).ok_or_else(|| {
            EngineError::Internal(anyhow::anyhow!(
                "workload {:?} is of type {}, which this node does not run",
                w.name.as_str(),
                w.spec.type_name()
            ))
        })
    }

    fn lock_for(&self, owner: &PublicKey, name: &str) -> Arc<Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        // Locks nobody holds go, so the map stays as small as the work in flight instead of
        // growing with every name ever deployed. One that someone holds stays: a second
        // caller for its deployment gets the same lock.
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        locks.entry(store::key(owner, name)).or_default().clone()
    }

    /// Queues a deployment for convergence (once, however often it is asked for).
    fn spawn_converge(&self, owner: PublicKey, name: String) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.push(owner, name);
        self.queued.notify_one();
    }

    /// Converges queued deployments a slice at a time, owners taking turns, each owner on
    /// at most [`PER_OWNER`] workers; the node runs [`WORKERS`] of these, so a burst of
    /// deployments does not start a burst of VMs.
    pub fn worker(self: &Arc<Self>) {
        loop {
            let job = {
                let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if let Some(job) = queue.pop(PER_OWNER) {
                        break job;
                    }
                    queue = self.queued.wait(queue).unwrap_or_else(|e| e.into_inner());
                }
            };
            self.work(job);
        }
    }

    /// One turn of a worker without waiting: false if nothing was queued.
    #[cfg(test)]
    fn work_once(&self) -> bool {
        let job = self
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop(PER_OWNER);
        job.map(|job| self.work(job)).is_some()
    }

    /// A slice of `name`'s convergence; queued again (behind other owners) if more is left.
    fn work(&self, (owner, name): (PublicKey, String)) {
        let more = self.converge_slice(&owner, &name, SLICE);
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .finished(&owner);
        // The owner's next deployment may be waiting for this worker.
        self.queued.notify_one();
        match more {
            Ok(true) => self.spawn_converge(owner, name),
            Ok(false) => {}
            Err(e) => tracing::error!(deployment = %name, error = %e, "converging failed"),
        }
    }

    /// Makes the host match the stored deployment, until a pass finds nothing newer.
    fn converge(&self, owner: &PublicKey, name: &str) -> Result<(), EngineError> {
        while self.converge_slice(owner, name, usize::MAX)? {}
        Ok(())
    }

    /// Converges up to `budget` workloads of the stored deployment, going on from where the
    /// last slice of its current version stopped; true if more is left (the rest of the
    /// pass, or a newer version stored meanwhile).
    fn converge_slice(
        &self,
        owner: &PublicKey,
        name: &str,
        budget: usize,
    ) -> Result<bool, EngineError> {
        let lock = self.lock_for(owner, name);
        let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let key = store::key(owner, name);
        let passes = || self.passes.lock().unwrap_or_else(|e| e.into_inner());
        let Some(d) = self.store.get(owner, name)? else {
            passes().remove(&key);
            return Ok(false);
        };
        let pass = passes().remove(&key).filter(|p| p.version == d.version);
        let mut pass = match pass {
            Some(pass) => pass,
            None => {
                self.remove_unwanted(&d)?;
                Pass {
                    version: d.version,
                    next: 0,
                    earlier: HashMap::new(),
                }
            }
        };
        let done = self.converge_some(&d, &mut pass, budget)?;
        if !done {
            passes().insert(key, pass);
            return Ok(true);
        }
        Ok(self
            .store
            .get(owner, name)?
            .is_some_and(|now| now.version != d.version))
    }

    /// What this deployment no longer has goes first, freeing its resources. Found by name
    /// alone: asking every VM of the node for its state would make each deployment's pass
    /// cost as much as all VMs. Highest rank first: machines go before the networks and
    /// disks they use.
    fn remove_unwanted(&self, d: &Deployment) -> Result<(), EngineError> {
        let id = deployment_id(&d.owner, &d.name);
        let kinds: Vec<&dyn workload::Kind> = self.kinds.all().collect();
        for kind in kinds.into_iter().rev() {
            let wanted: HashSet<String> = d
                .workloads
                .iter()
                .filter(|w| !is_deleted(w) && w.spec.type_name() == kind.type_name())
                .map(|w| kind.resource(&id, w.name.as_str()))
                .collect();
            let existing = kind.resources(&self.host).map_err(anyhow::Error::from)?;
            for resource in existing {
                if workload::belongs_to(&resource, &id) && !wanted.contains(&resource) {
                    if let Err(e) = kind.remove(&self.host, &resource) {
                        tracing::warn!(resource = %resource, error = %e, "removing");
                    }
                }
            }
        }
        Ok(())
    }

    /// Converges `d`'s live workloads from `pass.next` on, lower ranks first (disks before
    /// the machines that mount them), up to `budget` of them; true once the pass is done or
    /// `d` was replaced (the next pass works from the new version).
    fn converge_some(
        &self,
        d: &Deployment,
        pass: &mut Pass,
        budget: usize,
    ) -> Result<bool, EngineError> {
        let id = deployment_id(&d.owner, &d.name);
        let order: Vec<(&dyn workload::Kind, &Workload)> = self
            .kinds
            .all()
            .flat_map(|kind| {
                d.workloads
                    .iter()
                    .filter(move |w| !is_deleted(w) && w.spec.type_name() == kind.type_name())
                    .map(move |w| (kind, w))
            })
            .collect();
        let mut results = Results::default();
        let mut spent = 0;
        let started = std::time::Instant::now();
        while let Some(&(kind, w)) = order.get(pass.next) {
            let current = state(w);
            if !matches!(current, Some(ResultState::Init | ResultState::Ok)) {
                let why = w.result.as_ref().map(|r| r.message.clone());
                pass.earlier
                    .insert(w.name.to_string(), Err(why.unwrap_or_default()));
                pass.next += 1;
                continue;
            }
            // Bounded in time too: a slice of slow disks must not keep another owner's
            // single workload waiting for seconds.
            if spent >= budget || (spent > 0 && started.elapsed() >= SLICE_TIME) {
                self.write_results(d, &mut results)?;
                return Ok(false);
            }
            // A VM boot takes seconds: if the deployment moved on (updated, deleted)
            // meanwhile, stop here and let the next pass work from the new version.
            if kind.slow() {
                // What is done is shown before a boot of seconds, not after.
                self.write_results(d, &mut results)?;
                if self.moved_on(d)? {
                    return Ok(true);
                }
            }
            let progress = |message: &str| {
                let mut one = Results::default();
                one.add(w, result(ResultState::Init, message, serde_json::json!({})));
                if let Err(e) = self.write_results(d, &mut one) {
                    tracing::warn!("recording progress of {}: {e}", w.name.as_str());
                }
            };
            let step = kind.converge(
                &self.host,
                &Target {
                    progress: &progress,
                    id: &id,
                    workload: w,
                    fresh: current == Some(ResultState::Init),
                    earlier: &pass.earlier,
                    owner: &d.owner,
                    name: &d.name,
                    deployment: &d.workloads,
                },
            );
            if let Some(r) = step.result {
                results.add(w, r);
            }
            pass.earlier.insert(w.name.to_string(), step.usable);
            pass.next += 1;
            spent = spent.saturating_add(if kind.slow() { SLOW_COST } else { 1 });
        }
        self.write_results(d, &mut results)?;
        Ok(true)
    }

    /// Whether the stored deployment is no longer `d` (updated or deleted since).
    fn moved_on(&self, d: &Deployment) -> Result<bool, EngineError> {
        let current = self.store.get(&d.owner, &d.name)?;
        Ok(current.is_none_or(|c| c.version != d.version || is_tombstone(&c)))
    }

    /// Records workloads' results in one transaction (each rewrite stores the whole
    /// deployment: one per result made a 17,000-workload deployment write ~146 GB), except
    /// for workloads the deployment moved on from (a newer version of the workload, or
    /// deleted); each recorded result is an event.
    fn write_results(&self, d: &Deployment, results: &mut Results) -> Result<(), EngineError> {
        let pending = std::mem::take(&mut results.0);
        if pending.is_empty() {
            return Ok(());
        }
        let stored = self.store.modify(&d.owner, &d.name, |now| {
            let mut stored = Vec::new();
            for (name, version, r) in pending {
                let Some(target) = now.workloads.iter_mut().find(|x| x.name.as_str() == name)
                else {
                    continue;
                };
                if target.version != version || is_deleted(target) {
                    continue;
                }
                stored.push((name, r.state, r.message.clone()));
                target.result = Some(r);
            }
            stored
        })?;
        for (name, state, message) in stored.unwrap_or_default() {
            self.emit(d, Some(&name), state, &message);
        }
        Ok(())
    }

    /// After a start: sweeps half-made leftovers, moves what no deployment owns (VMs, disks)
    /// into the quarantine, and converges every deployment, which reattaches to running VMs
    /// and restarts the rest.
    pub fn reconcile(self: &Arc<Self>) -> Result<()> {
        for kind in self.kinds.all() {
            kind.sweep(&self.host)
                .with_context(|| format!("sweeping half-made {} resources", kind.type_name()))?;
        }
        let all = self.store.all()?;
        let ids: HashSet<String> = all
            .iter()
            .filter(|d| !is_tombstone(d))
            .map(|d| deployment_id(&d.owner, &d.name))
            .collect();
        // What no deployment owns is never deleted in place: it is stopped and kept in a
        // quarantine for `quarantine_days`, in case the database, not the host, was wrong.
        workload::prune_quarantine(&self.host)?;
        let mut into: Option<PathBuf> = None;
        for kind in self.kinds.all() {
            for resource in kind.resources(&self.host)? {
                if workload::owner_id(&resource).is_some_and(|id| ids.contains(id)) {
                    continue;
                }
                let dir = match &into {
                    Some(dir) => dir.clone(),
                    None => into.insert(workload::new_quarantine(&self.host)?).clone(),
                };
                tracing::warn!(resource = %resource, into = %dir.display(),
                    "no deployment owns this: moved into the quarantine");
                if let Err(e) = kind.quarantine(&self.host, &resource, &dir) {
                    tracing::error!(resource = %resource, error = %e, "quarantining failed; left in place");
                }
            }
        }
        for d in all {
            if !is_tombstone(&d) {
                self.spawn_converge(d.owner, d.name);
            }
        }
        Ok(())
    }

    /// Watches what runs until the process ends, once a second (each type's module decides
    /// what to do: a zmachine is restarted with backoff, see `workload/zmachine.rs`).
    pub fn monitor(self: &Arc<Self>) {
        loop {
            std::thread::sleep(Duration::from_secs(1));
            if let Err(e) = self.monitor_once() {
                tracing::warn!(error = %e, "monitoring");
            }
        }
    }

    fn watched(&self, w: &Workload) -> bool {
        !is_deleted(w) && self.kinds.of(&w.spec).is_some_and(|k| k.watched(w))
    }

    fn monitor_once(&self) -> Result<(), EngineError> {
        let watched: Vec<(PublicKey, String)> = {
            let monitored = self.monitored.lock().unwrap_or_else(|e| e.into_inner());
            monitored.iter().cloned().collect()
        };
        for (owner, name) in watched {
            let lock = self.lock_for(&owner, &name);
            // Busy deployments are being converged: look again next round.
            let Ok(_guard) = lock.try_lock() else {
                continue;
            };
            // Read under the lock: a convergence may have just changed it.
            let Some(d) = self.store.get(&owner, &name)? else {
                continue;
            };
            let id = deployment_id(&d.owner, &d.name);
            let mut results = Results::default();
            for w in d.workloads.iter().filter(|w| self.watched(w)) {
                if let Some(r) = self.kind_of(w)?.monitor(&self.host, &id, w) {
                    results.add(w, r);
                }
            }
            self.write_results(&d, &mut results)?;
        }
        Ok(())
    }
}

/// Whether `d` has a live workload of a type the monitor watches.
fn is_monitored(kinds: &Kinds, d: &Deployment) -> bool {
    d.workloads
        .iter()
        .any(|w| !is_deleted(w) && kinds.of(&w.spec).is_some_and(|k| k.monitors()))
}

/// Results not yet written: (workload, its version, result).
#[derive(Default)]
struct Results(Vec<(String, u32, WorkloadResult)>);

impl Results {
    /// Adds `w`'s new result, unless it says what `w`'s stored one says (passes and monitor
    /// rounds would rewrite the deployment for nothing).
    fn add(&mut self, w: &Workload, r: WorkloadResult) {
        if w.result.as_ref().is_some_and(|old| {
            old.state == r.state && old.message == r.message && old.data == r.data
        }) {
            return;
        }
        self.0.push((w.name.to_string(), w.version, r));
    }
}

/// What `d` takes in the database.
fn stored_size(d: &Deployment) -> Result<u64, EngineError> {
    let bytes = serde_json::to_vec(d).context("measuring a deployment")?;
    Ok(bytes.len() as u64)
}

/// A node whose database holds no deployment, on a host that holds VMs or disks, lost or
/// replaced its database: starting would treat them all as nobody's. Refuses, saying what to
/// do, so that nothing is touched.
fn refuse_unaccounted(kinds: &Kinds, host: &Host, db: &std::path::Path) -> Result<()> {
    let mut found = Vec::new();
    for kind in kinds.all() {
        found.extend(kind.resources(host)?);
    }
    if found.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "refusing to start: {} holds {} VMs and disks ({}{}) but the node database {} has no \
         deployment: it was lost or replaced, and starting would treat them as nobody's. \
         Restore {} from a backup; or, to start as a new node and keep them aside, move {} \
         and {} out of the data dir",
        host.data.display(),
        found.len(),
        found[..found.len().min(3)].join(", "),
        if found.len() > 3 { ", …" } else { "" },
        db.display(),
        db.display(),
        host.vmm.config().root.display(),
        host.disks.display(),
    )
}

/// Loads the key at `path`, making it on first use (the node's identity).
pub fn identity(path: &std::path::Path) -> Result<Keypair> {
    Ok(if path.exists() {
        zos_types::read_key_file(path)?
    } else {
        zos_types::write_new_key_file(path)?
    })
}

/// Why a workload's console or session cannot be had, as an API error.
fn unreachable_workload(name: &str, e: workload::Console) -> EngineError {
    match e {
        workload::Console::None(m) => EngineError::Invalid(m),
        workload::Console::Missing(m) => EngineError::NotFound(format!("{name}/{m}")),
        workload::Console::Stopped(m) => EngineError::Conflict(format!("{name}/{m}")),
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
