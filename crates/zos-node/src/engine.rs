//! The deployment engine: checks a deployment (schema, signatures, versions, capacity),
//! stores it, and then converges the host to it in the background, one deployment at a time,
//! recording a result per workload. A monitor restarts crashed zmachines with backoff.

use crate::capacity;
use crate::config::NodeConfig;
use crate::provision::{self, VmOutcome};
use crate::store::{self, Insert, Store};
use anyhow::{Context, Result};
use serde_json::json;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;
use zos_types::api::{Event, NodeInfo, Resources};
use zos_types::{
    Deployment, Keypair, PublicKey, ResultState, Workload, WorkloadResult, WorkloadSpec,
};
use zos_vmm::{VmState, Vmm, VmmConfig};

/// An error for the API: an HTTP status and a message for the user.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status code.
    pub status: u16,
    /// What went wrong and what to do.
    pub message: String,
}

impl ApiError {
    /// 400: the request itself is wrong.
    pub fn bad_request(m: impl Into<String>) -> Self {
        ApiError {
            status: 400,
            message: m.into(),
        }
    }
    /// 401: the signatures or the request signature do not hold.
    pub fn unauthorized(m: impl Into<String>) -> Self {
        ApiError {
            status: 401,
            message: m.into(),
        }
    }
    /// 404: no such deployment of the caller's.
    pub fn not_found(m: impl Into<String>) -> Self {
        ApiError {
            status: 404,
            message: m.into(),
        }
    }
    /// 409: it clashes with what is stored (exists, stale version).
    pub fn conflict(m: impl Into<String>) -> Self {
        ApiError {
            status: 409,
            message: m.into(),
        }
    }
    /// 422: valid, but the node cannot take it.
    pub fn unprocessable(m: impl Into<String>) -> Self {
        ApiError {
            status: 422,
            message: m.into(),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        tracing::error!(error = %format!("{e:#}"), "internal error");
        ApiError {
            status: 500,
            message: format!("node error: {e:#}"),
        }
    }
}

/// Restart bookkeeping of one zmachine.
struct Restart {
    count: u32,
    next: Instant,
}

/// The engine; shared by the API handlers and the background work.
pub struct Engine {
    cfg: NodeConfig,
    store: Store,
    vmm: Vmm,
    disks: PathBuf,
    /// The node's data dir (absolute): no flist may come from inside it.
    data: PathBuf,
    node_id: PublicKey,
    totals: Resources,
    /// What each live deployment holds; the lock also serializes admission.
    held: Mutex<HashMap<String, Resources>>,
    /// One lock per deployment: its convergence runs one at a time.
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    restarts: Mutex<HashMap<String, Restart>>,
    events: broadcast::Sender<(PublicKey, Event)>,
    /// Deployments waiting for a worker.
    queue: Mutex<VecDeque<(PublicKey, String)>>,
    queued: Condvar,
}

/// Convergence workers: one per host CPU would starve the guests under TCG; two keep a slow
/// VM boot from holding up everything else.
pub const WORKERS: usize = 2;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn is_deleted(w: &Workload) -> bool {
    w.result
        .as_ref()
        .is_some_and(|r| r.state == ResultState::Deleted)
}

/// A deployment whose every workload is deleted: kept only so old versions cannot return.
fn is_tombstone(d: &Deployment) -> bool {
    d.workloads.iter().all(is_deleted)
}

/// A zmachine whose VM should be up: the ones the monitor watches.
fn is_running_zmachine(w: &Workload) -> bool {
    matches!(w.spec, WorkloadSpec::Zmachine(_))
        && w.result
            .as_ref()
            .is_some_and(|r| r.state == ResultState::Ok)
}

fn result(
    state: ResultState,
    message: impl Into<String>,
    data: serde_json::Value,
) -> WorkloadResult {
    WorkloadResult {
        state,
        message: message.into(),
        data,
        created: now(),
    }
}

impl Engine {
    /// Opens the node's state under `cfg.data_dir`, making its identity on first start.
    pub fn open(cfg: NodeConfig) -> Result<Arc<Engine>> {
        let data = &cfg.data_dir;
        std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
        let data = std::path::absolute(data)?;
        let key = identity(&data.join("identity.pem"))?;
        let disks = data.join("disks");
        std::fs::create_dir_all(&disks)?;
        let store = Store::open(&data.join("node.redb"), &key.public())?;
        let zos = std::env::current_exe().context("finding the zos binary")?;
        let vmm = Vmm::new(VmmConfig::new(
            data.join("vms"),
            zos,
            std::path::absolute(cfg.cache_dir())?,
        ))?;
        let disk_size = match cfg.disk {
            Some(size) => size.0,
            None => capacity::filesystem_size(&data)
                .with_context(|| format!("measuring the filesystem of {}", data.display()))?,
        };
        let totals = capacity::totals(&cfg, disk_size);
        let mut held = HashMap::new();
        for d in store.all()? {
            if !is_tombstone(&d) {
                held.insert(store::key(&d.owner, &d.name), capacity::demand(&d));
            }
        }
        let (events, _) = broadcast::channel(1024);
        Ok(Arc::new(Engine {
            cfg,
            store,
            vmm,
            disks,
            data: data.clone(),
            node_id: key.public(),
            totals,
            held: Mutex::new(held),
            locks: Mutex::new(HashMap::new()),
            restarts: Mutex::new(HashMap::new()),
            events,
            queue: Mutex::new(VecDeque::new()),
            queued: Condvar::new(),
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
            time: now(),
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

    fn check(&self, d: &Deployment) -> Result<(), ApiError> {
        if d.node != self.node_id {
            return Err(ApiError::bad_request(format!(
                "deployment {:?} is signed for node {}, but this is node {}: sign it for this \
                 node (zos deploy does)",
                d.name, d.node, self.node_id
            )));
        }
        d.validate()
            .map_err(|e| ApiError::bad_request(format!("deployment {:?}: {e}", d.name)))?;
        for (i, w) in d.workloads.iter().enumerate() {
            if let WorkloadSpec::Zmachine(m) = &w.spec {
                provision::check_flist(&m.flist, &self.data).map_err(|e| {
                    ApiError::bad_request(format!(
                        "deployment {:?}: workloads[{i}] (name {:?}): {e}",
                        d.name,
                        w.name.as_str()
                    ))
                })?;
            }
        }
        d.verify_signatures()
            .map_err(|e| ApiError::unauthorized(format!("deployment {:?}: {e}", d.name)))
    }

    /// A new deployment: checked, admitted, stored, then provisioned in the background.
    pub fn deploy(self: &Arc<Self>, mut d: Deployment) -> Result<Deployment, ApiError> {
        self.check(&d)?;
        if d.version != 0 {
            return Err(ApiError::bad_request(format!(
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
            let used = capacity::total_held(&held, None);
            let demand = capacity::demand(&d);
            capacity::check_fits(demand, capacity::sub(self.totals, used))
                .map_err(ApiError::unprocessable)?;
            match self.store.insert_new(&d)? {
                Insert::Done => {}
                Insert::Exists(old) => {
                    return Err(ApiError::conflict(format!(
                        "deployment {:?} exists (version {}{}): update it with version {}",
                        d.name,
                        old.version,
                        if is_tombstone(&old) { ", deleted" } else { "" },
                        old.version.saturating_add(1)
                    )));
                }
            }
            held.insert(key, demand);
        }
        self.emit(&d, None, ResultState::Init, "deployed");
        self.spawn_converge(d.owner, d.name.clone());
        Ok(d)
    }

    /// A new version of a deployment: `old.version + 1`; workloads at the new version are
    /// (re)provisioned, the others kept as they run, and the missing ones removed.
    pub fn update(self: &Arc<Self>, name: &str, mut d: Deployment) -> Result<Deployment, ApiError> {
        if d.name != name {
            return Err(ApiError::bad_request(format!(
                "the path names deployment {name:?} but the body {:?}",
                d.name
            )));
        }
        self.check(&d)?;
        let key = store::key(&d.owner, &d.name);
        let mut held = self.held();
        let used = capacity::total_held(&held, Some(&key));
        let free = capacity::sub(self.totals, used);
        // Checked and written in one transaction, against the stored record as it is then:
        // results recorded meanwhile are carried over, not lost.
        let (owner, dname) = (d.owner, d.name.clone());
        let demand = self
            .store
            .modify(&owner, &dname, |old| {
                let next = Self::next_version(&mut d, old, free)?;
                *old = next.clone();
                d = next;
                Ok::<_, ApiError>(capacity::demand(&d))
            })?
            .ok_or_else(|| {
                ApiError::not_found(format!("no deployment named {name:?}: create it first"))
            })??;
        held.insert(key, demand);
        drop(held);
        self.emit(&d, None, ResultState::Init, "updated");
        self.spawn_converge(d.owner, d.name.clone());
        Ok(d)
    }

    /// `d` as the successor of the stored `old`: version, signatures against the old
    /// requirement, which workloads keep their results, and whether it fits in `free`.
    fn next_version(
        d: &mut Deployment,
        old: &Deployment,
        free: Resources,
    ) -> Result<Deployment, ApiError> {
        let name = &d.name;
        let next = old.version.checked_add(1).ok_or_else(|| {
            ApiError::conflict(format!(
                "deployment {name:?} is at the last version: deploy under a new name"
            ))
        })?;
        if d.version != next {
            return Err(ApiError::conflict(format!(
                "deployment {name:?} is at version {}; an update must have version {next} (got {})",
                old.version, d.version
            )));
        }
        d.verify_update_from(&old.signature_requirement).map_err(|e| {
            ApiError::unauthorized(format!(
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
                        return Err(ApiError::bad_request(format!(
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
        capacity::check_fits(capacity::demand(d), free).map_err(ApiError::unprocessable)?;
        Ok(d.clone())
    }

    /// Tears a deployment down; it stays listed as deleted, its version one past the last
    /// (so a revival must be signed after the delete, and an update racing the delete finds
    /// its version taken). Returns once its VMs and disks are gone.
    pub fn delete(&self, owner: &PublicKey, name: &str) -> Result<Deployment, ApiError> {
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
                d.clone()
            })?
            .ok_or_else(|| ApiError::not_found(format!("no deployment named {name:?}")))?;
        held.remove(&store::key(owner, name));
        drop(held);
        if let Ok(mut restarts) = self.restarts.lock() {
            let prefix = format!("{}-", provision::deployment_id(owner, name));
            restarts.retain(|vm, _| !vm.starts_with(&prefix));
        }
        self.converge(owner, name)?;
        self.emit(&tombstone, None, ResultState::Deleted, "deleted");
        Ok(tombstone)
    }

    /// One of the caller's deployments.
    pub fn get(&self, owner: &PublicKey, name: &str) -> Result<Deployment, ApiError> {
        self.store
            .get(owner, name)?
            .ok_or_else(|| ApiError::not_found(format!("no deployment named {name:?}")))
    }

    /// The caller's deployments; deleted ones only with `include_deleted`.
    pub fn list(
        &self,
        owner: &PublicKey,
        include_deleted: bool,
    ) -> Result<Vec<Deployment>, ApiError> {
        let mut all = self.store.list(owner)?;
        all.retain(|d| include_deleted || !is_tombstone(d));
        Ok(all)
    }

    /// Whether the VM `vm` is up (for ending a followed log).
    pub fn vm_active(&self, vm: &str) -> bool {
        self.vmm.status(vm).is_ok_and(|i| i.state.is_active())
    }

    /// The console log of one of the caller's zmachines, and its VM's name.
    pub fn console(
        &self,
        owner: &PublicKey,
        name: &str,
        workload: &str,
    ) -> Result<(PathBuf, String), ApiError> {
        let d = self.get(owner, name)?;
        let w = d
            .workloads
            .iter()
            .find(|w| w.name.as_str() == workload)
            .ok_or_else(|| {
                ApiError::not_found(format!("deployment {name:?} has no workload {workload:?}"))
            })?;
        if !matches!(w.spec, WorkloadSpec::Zmachine(_)) {
            return Err(ApiError::bad_request(format!(
                "{workload:?} is not a zmachine: only zmachines have a console"
            )));
        }
        let vm = provision::vm_name(&provision::deployment_id(owner, name), workload);
        let path = self
            .vmm
            .console_path(&vm)
            .map_err(|_| ApiError::not_found(format!("{name}/{workload} has no VM (yet)")))?;
        Ok((path, vm))
    }

    fn lock_for(&self, owner: &PublicKey, name: &str) -> Arc<Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(store::key(owner, name)).or_default().clone()
    }

    /// Queues a deployment for convergence (once, however often it is asked for).
    fn spawn_converge(self: &Arc<Self>, owner: PublicKey, name: String) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if queue.iter().any(|(o, n)| *o == owner && *n == name) {
            return;
        }
        queue.push_back((owner, name));
        self.queued.notify_one();
    }

    /// Converges queued deployments, one at a time per worker; the node runs
    /// [`WORKERS`] of these, so a burst of deployments does not start a burst of VMs.
    pub fn worker(self: &Arc<Self>) {
        loop {
            let (owner, name) = {
                let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if let Some(job) = queue.pop_front() {
                        break job;
                    }
                    queue = self.queued.wait(queue).unwrap_or_else(|e| e.into_inner());
                }
            };
            if let Err(e) = self.converge(&owner, &name) {
                tracing::error!(deployment = %name, error = %e.message, "converging failed");
            }
        }
    }

    /// Makes the host match the stored deployment, until a pass finds nothing newer.
    fn converge(&self, owner: &PublicKey, name: &str) -> Result<(), ApiError> {
        let lock = self.lock_for(owner, name);
        let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let Some(mut d) = self.store.get(owner, name)? else {
            return Ok(());
        };
        loop {
            self.converge_once(&d)?;
            match self.store.get(owner, name)? {
                Some(now) if now.version != d.version => d = now,
                _ => return Ok(()),
            }
        }
    }

    fn converge_once(&self, d: &Deployment) -> Result<(), ApiError> {
        let id = provision::deployment_id(&d.owner, &d.name);
        let live: Vec<&Workload> = d.workloads.iter().filter(|w| !is_deleted(w)).collect();
        let timeout = Duration::from_secs(self.cfg.stop_timeout_secs);
        // What this deployment no longer has goes first, freeing its resources.
        let wanted_vms: HashSet<String> = live
            .iter()
            .filter(|w| matches!(w.spec, WorkloadSpec::Zmachine(_)))
            .map(|w| provision::vm_name(&id, w.name.as_str()))
            .collect();
        // By name alone: asking every VM of the node for its state would make each
        // deployment's pass cost as much as all VMs.
        for entry in std::fs::read_dir(&self.vmm.config().root).map_err(anyhow::Error::from)? {
            let vm = entry
                .map_err(anyhow::Error::from)?
                .file_name()
                .to_string_lossy()
                .into_owned();
            if vm.starts_with(&format!("{id}-")) && !wanted_vms.contains(&vm) {
                if let Err(e) = provision::remove_vm(&self.vmm, &vm, timeout) {
                    tracing::warn!(vm = %vm, error = %e, "removing a VM");
                }
            }
        }
        let wanted_disks: HashSet<PathBuf> = live
            .iter()
            .filter(|w| matches!(w.spec, WorkloadSpec::Zmount(_)))
            .map(|w| provision::disk_path(&self.disks, &id, w.name.as_str()))
            .collect();
        for path in self.disk_files(&id)? {
            if !wanted_disks.contains(&path) {
                if let Err(e) = provision::remove_disk(&path) {
                    tracing::warn!(error = %e, "removing a disk");
                }
            }
        }
        // Disks before the machines that mount them.
        let mut mount_ok: HashMap<&str, Result<(), String>> = HashMap::new();
        for w in &live {
            let WorkloadSpec::Zmount(m) = &w.spec else {
                continue;
            };
            let state = w.result.as_ref().map(|r| r.state);
            let outcome = if state == Some(ResultState::Init) {
                let path = provision::disk_path(&self.disks, &id, w.name.as_str());
                let r = provision::ensure_zmount(&path, m);
                match &r {
                    Ok(data) => {
                        self.set_result(d, w, result(ResultState::Ok, "disk ready", data.clone()))?
                    }
                    Err(e) => self.set_result(
                        d,
                        w,
                        result(ResultState::Error, e.clone(), serde_json::Value::Null),
                    )?,
                }
                r.map(drop)
            } else if state == Some(ResultState::Ok) {
                Ok(())
            } else {
                Err(w
                    .result
                    .as_ref()
                    .map(|r| r.message.clone())
                    .unwrap_or_default())
            };
            mount_ok.insert(w.name.as_str(), outcome);
        }
        for w in &live {
            let WorkloadSpec::Zmachine(m) = &w.spec else {
                continue;
            };
            let state = w.result.as_ref().map(|r| r.state);
            if !matches!(state, Some(ResultState::Init | ResultState::Ok)) {
                continue;
            }
            // A VM boot takes seconds: if the deployment moved on (updated, deleted) meanwhile,
            // stop here and let the next pass work from the new version.
            let current = self.store.get(&d.owner, &d.name)?;
            if current.is_none_or(|c| c.version != d.version || is_tombstone(&c)) {
                return Ok(());
            }
            let vm = provision::vm_name(&id, w.name.as_str());
            let bad_mount =
                m.mounts
                    .iter()
                    .find_map(|mount| match mount_ok.get(mount.name.as_str()) {
                        Some(Ok(())) => None,
                        Some(Err(e)) => Some(format!(
                            "zmount {:?} is not available: {e}",
                            mount.name.as_str()
                        )),
                        None => Some(format!(
                            "zmount {:?} is not in this deployment",
                            mount.name.as_str()
                        )),
                    });
            let outcome = match bad_mount {
                Some(e) => {
                    // Without its disk it must not run on unmanaged.
                    let _ = provision::remove_vm(&self.vmm, &vm, timeout);
                    Err(e)
                }
                None => provision::vm_spec(w.name.as_str(), m, &self.disks, &id).and_then(|spec| {
                    provision::ensure_vm(
                        &self.vmm,
                        &vm,
                        spec,
                        state == Some(ResultState::Init),
                        timeout,
                    )
                }),
            };
            let data = json!({ "vm": vm });
            let r = match outcome {
                Ok(VmOutcome::Running) => result(ResultState::Ok, "running", data),
                Ok(VmOutcome::Replaced) => result(
                    ResultState::Ok,
                    "running; replaced: the VM was recreated with the new settings",
                    data,
                ),
                Ok(VmOutcome::Finished) => result(ResultState::Ok, "exited (0)", data),
                Err(e) => result(ResultState::Error, e, data),
            };
            if state == Some(ResultState::Init) {
                // A fresh (re)provisioning starts a new crash streak.
                if let Ok(mut restarts) = self.restarts.lock() {
                    restarts.remove(&vm);
                }
            }
            let unchanged = w
                .result
                .as_ref()
                .is_some_and(|old| old.state == r.state && old.message == r.message);
            if !unchanged {
                self.set_result(d, w, r)?;
            }
        }
        Ok(())
    }

    fn disk_files(&self, id: &str) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.disks)? {
            let entry = entry?;
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(&format!("{id}-"))
            {
                out.push(entry.path());
            }
        }
        Ok(out)
    }

    /// Records a workload's result, unless the deployment moved on to a newer version of it.
    fn set_result(&self, d: &Deployment, w: &Workload, r: WorkloadResult) -> Result<(), ApiError> {
        let (state, message) = (r.state, r.message.clone());
        let stored = self.store.modify(&d.owner, &d.name, |now| {
            let Some(target) = now.workloads.iter_mut().find(|x| x.name == w.name) else {
                return false;
            };
            if target.version != w.version || is_deleted(target) {
                return false;
            }
            target.result = Some(r);
            true
        })?;
        if stored == Some(true) {
            self.emit(d, Some(w.name.as_str()), state, &message);
        }
        Ok(())
    }

    /// After a start: removes what no deployment owns (VMs, disks, half-made leftovers) and
    /// converges every deployment, which reattaches to running VMs and restarts the rest.
    pub fn reconcile(self: &Arc<Self>) -> Result<()> {
        self.vmm.sweep()?;
        let all = self.store.all()?;
        let mut ids = HashSet::new();
        for d in &all {
            if !is_tombstone(d) {
                ids.insert(provision::deployment_id(&d.owner, &d.name));
            }
        }
        let owned = |file: &str| file.split_once('-').is_some_and(|(id, _)| ids.contains(id));
        let timeout = Duration::from_secs(self.cfg.stop_timeout_secs);
        for vm in self.vmm.list()? {
            if !owned(&vm.name) {
                tracing::info!(vm = %vm.name, "removing a VM no deployment owns");
                let _ = provision::remove_vm(&self.vmm, &vm.name, timeout);
            }
        }
        for entry in std::fs::read_dir(&self.disks)? {
            let entry = entry?;
            let file = entry.file_name().to_string_lossy().into_owned();
            if !owned(&file) {
                tracing::info!(disk = %file, "removing a disk no deployment owns");
                let _ = provision::remove_disk(&entry.path());
            }
        }
        for d in all {
            if !is_tombstone(&d) {
                self.spawn_converge(d.owner, d.name);
            }
        }
        Ok(())
    }

    /// Watches zmachines until the process ends: a crashed one is restarted at once, then
    /// after 2, 4, 8… (at most 64) seconds; after `max_restarts` crashes in a row it is left in `error` with the reason.
    pub fn monitor(self: &Arc<Self>) {
        loop {
            std::thread::sleep(Duration::from_secs(1));
            if let Err(e) = self.monitor_once() {
                tracing::warn!(error = %e, "monitoring");
            }
        }
    }

    fn monitor_once(&self) -> Result<()> {
        for d in self.store.all()? {
            if is_tombstone(&d) || !d.workloads.iter().any(is_running_zmachine) {
                continue;
            }
            let id = provision::deployment_id(&d.owner, &d.name);
            let lock = self.lock_for(&d.owner, &d.name);
            // Busy deployments are being converged: look again next round.
            let Ok(_guard) = lock.try_lock() else {
                continue;
            };
            // Read again under the lock: a convergence may have just changed it.
            let Some(d) = self.store.get(&d.owner, &d.name)? else {
                continue;
            };
            for w in d.workloads.iter().filter(|w| is_running_zmachine(w)) {
                let Some(r) = &w.result else { continue };
                let vm = provision::vm_name(&id, w.name.as_str());
                let Ok(info) = self.vmm.status(&vm) else {
                    continue;
                };
                let data = json!({ "vm": vm });
                let failure = match &info.state {
                    VmState::Running | VmState::Paused | VmState::Created => {
                        // A minute up after a restart ends the crash streak.
                        let mut restarts = self.restarts.lock().unwrap_or_else(|e| e.into_inner());
                        if restarts
                            .get(&vm)
                            .is_some_and(|r| Instant::now() > r.next + Duration::from_secs(60))
                        {
                            restarts.remove(&vm);
                        }
                        continue;
                    }
                    VmState::Exited { code: 0, .. } | VmState::Stopped => {
                        let message = info.state.to_string();
                        if r.message != message {
                            self.set_result(&d, w, result(ResultState::Ok, message, data))
                                .map_err(|e| anyhow::anyhow!(e.message))?;
                        }
                        continue;
                    }
                    VmState::Exited { .. } | VmState::Crashed { .. } => info.state.to_string(),
                };
                let reason = match &info.state {
                    VmState::Crashed { reason } => reason.clone(),
                    _ => format!(
                        "{failure}\n--- last console lines ---\n{}",
                        zos_vmm::console::tail(&info.console, 20)
                    ),
                };
                let mut restarts = self.restarts.lock().unwrap_or_else(|e| e.into_inner());
                let entry = restarts.entry(vm.clone()).or_insert(Restart {
                    count: 0,
                    next: Instant::now(),
                });
                if entry.count >= self.cfg.max_restarts {
                    let message = format!(
                        "failed {} times in a row; the last time: {reason}",
                        entry.count + 1
                    );
                    restarts.remove(&vm);
                    drop(restarts);
                    self.set_result(&d, w, result(ResultState::Error, message, data))
                        .map_err(|e| anyhow::anyhow!(e.message))?;
                    continue;
                }
                if Instant::now() < entry.next {
                    continue;
                }
                entry.count += 1;
                entry.next = Instant::now() + Duration::from_secs(1 << entry.count.min(6));
                let count = entry.count;
                drop(restarts);
                tracing::info!(vm = %vm, count, "restarting a failed zmachine");
                let first_line = reason.lines().next().unwrap_or("").to_string();
                let message = match self.vmm.start(&vm) {
                    Ok(_) => format!(
                        "running; restarted ({count} of {}) after: {first_line}",
                        self.cfg.max_restarts
                    ),
                    Err(e) => format!("restart {count} failed: {e}"),
                };
                self.set_result(&d, w, result(ResultState::Ok, message, data))
                    .map_err(|e| anyhow::anyhow!(e.message))?;
            }
        }
        Ok(())
    }
}

/// Loads the key at `path`, making it on first use (the node's identity).
pub fn identity(path: &std::path::Path) -> Result<Keypair> {
    Ok(if path.exists() {
        zos_types::read_key_file(path)?
    } else {
        zos_types::write_new_key_file(path)?
    })
}
