//! The node's side of each workload type, one module per type behind [`Kind`]: checks
//! against the node, demand on capacity, convergence, monitoring and removal. The engine
//! loops over workloads and asks [`Kinds`] for each one's module; it never names a type.
//!
//! Adding a type: its data in `zos-types`' `workload/<type>.rs`, its node side in a module
//! here, and one line in [`Kinds::builtin`].

pub mod ip;
pub mod network;
mod zmachine;
mod zmount;

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use zos_types::api::Resources;
use zos_types::{PublicKey, ResultState, Workload, WorkloadResult, WorkloadSpec};
use zos_vmm::Vmm;

pub use ip::Ip;
pub use network::Network;
pub use zmachine::Zmachine;
pub use zmount::Zmount;

/// What the workload modules work with on the host.
pub struct Host {
    /// The VM manager (VMs live under its root).
    pub vmm: Vmm,
    /// Where zmount disks live.
    pub disks: PathBuf,
    /// The node's data dir (absolute): no flist may come from inside it.
    pub data: PathBuf,
    /// How long a VM gets to stop before it is killed.
    pub stop_timeout: Duration,
    /// Crashes in a row after which a zmachine is left in `error`.
    pub max_restarts: u32,
    /// Days what no deployment owns is kept in the quarantine.
    pub quarantine_days: u32,
    /// The directories tenants may name flists from.
    pub flist_dirs: Vec<PathBuf>,
    /// Flists tenants name by URL, downloaded once, and images they name, imported once.
    pub flists: zos_flist::fetch::FlistCache,
    /// The node's own store, where imported images' blocks go.
    pub image_store: zos_flist::store::StoreSpec,
    /// Opens values sealed to the node (zmachines' `secret_env`).
    pub opener: std::sync::Arc<zos_seal::Opener>,
    /// A short tag of the node's identity: names the node makes in host-wide places
    /// (network namespaces) carry it, so two nodes on one host never take each other's.
    pub node_tag: String,
    /// The secret its networks' WireGuard keys are derived from (from the node's identity).
    pub wireguard_seed: [u8; 32],
    /// The address its networks' WireGuard peers reach it at (the config's
    /// `wireguard_host`).
    pub wireguard_host: Option<String>,
    /// The public addresses `ip` workloads may take (the config's `public_ips`).
    pub public_ips: Vec<crate::config::PublicIps>,
}

#[cfg(test)]
impl Host {
    /// A host for unit tests: VMs and disks under `data`, the block cache in `cache`, short
    /// timeouts, flists served from `flist_dirs`.
    pub(crate) fn for_test(data: &Path, cache: &Path, flist_dirs: Vec<PathBuf>) -> Host {
        Host {
            vmm: Vmm::new(zos_vmm::VmmConfig::new(
                data.join("vms"),
                "zos".into(),
                cache.to_path_buf(),
            ))
            .unwrap(),
            disks: data.join("disks"),
            data: data.to_path_buf(),
            stop_timeout: Duration::from_secs(1),
            max_restarts: 1,
            quarantine_days: 1,
            flist_dirs,
            flists: zos_flist::fetch::FlistCache::new(&cache.join("flists"), None),
            image_store: zos_flist::store::StoreSpec::parse(&format!(
                "dir://{}",
                cache.join("flists/store").display()
            ))
            .unwrap(),
            opener: std::sync::Arc::new(
                zos_seal::Opener::new(&zos_types::Keypair::generate()).unwrap(),
            ),
            node_tag: node_tag(&zos_types::Keypair::generate().public()),
            wireguard_seed: [7; 32],
            wireguard_host: None,
            public_ips: Vec::new(),
        }
    }
}

/// The [`Host::node_tag`] of the node with identity `node`.
pub fn node_tag(node: &PublicKey) -> String {
    hex::encode(&node.0[..4])
}

/// Where the node keeps what it found but could not account for.
pub fn quarantine_dir(host: &Host) -> PathBuf {
    host.data.join("quarantine")
}

/// A new dir in the quarantine, named by the time it was made (unix seconds).
pub fn new_quarantine(host: &Host) -> std::io::Result<PathBuf> {
    let quarantine = quarantine_dir(host);
    private_dir(&quarantine)?;
    let dir = quarantine.join(now().to_string());
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Makes `dir` (and its parents) and keeps it to the node: mode 0700.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Deletes what was quarantined more than `quarantine_days` ago.
pub fn prune_quarantine(host: &Host) -> std::io::Result<()> {
    let dir = quarantine_dir(host);
    let keep = u64::from(host.quarantine_days) * 86_400;
    for name in names_in(&dir).or_else(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Ok(Vec::new()),
        _ => Err(e),
    })? {
        let Ok(made) = name.parse::<u64>() else {
            continue;
        };
        if now().saturating_sub(made) > keep {
            tracing::info!(dir = %dir.join(&name).display(), "quarantine expired: deleting");
            std::fs::remove_dir_all(dir.join(&name))?;
        }
    }
    Ok(())
}

/// One deployment's workload as a module sees it during a convergence pass.
pub struct Target<'a> {
    /// The deployment's host-side id ([`deployment_id`]).
    pub id: &'a str,
    /// The workload.
    pub workload: &'a Workload,
    /// Whether the workload was just (re)deployed (its result is `init`): make it anew,
    /// rather than only keep what runs.
    pub fresh: bool,
    /// Workloads converged earlier in this pass (lower rank), by name: `Ok` when usable,
    /// else why not (a zmachine looks up the zmounts it mounts here).
    pub earlier: &'a HashMap<String, Result<(), String>>,
    /// The deployment's owner.
    pub owner: &'a PublicKey,
    /// The deployment's name.
    pub name: &'a str,
    /// Every workload of the deployment, as stored when the pass began.
    pub deployment: &'a [Workload],
    /// Shows how long work goes (an image pull) in the workload's result, still `init`.
    pub progress: &'a (dyn Fn(&str) + Sync),
}

/// Something a workload holds on the node that another must not hold at the same time;
/// the engine refuses a deployment whose claims clash with those of the live ones.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// An owner's network range: two networks of one owner on a node must not overlap.
    Range {
        /// The owner.
        owner: PublicKey,
        /// The range.
        range: ipnet::Ipv4Net,
        /// The network workload's name.
        network: String,
    },
    /// One of the node's public addresses.
    PublicIp(std::net::Ipv4Addr),
    /// A port on every address of the node.
    HostPort {
        /// The port.
        port: u16,
        /// Its protocol.
        protocol: zos_types::Protocol,
        /// What the claimant can do about a clash (its own setting to change).
        remedy: &'static str,
    },
}

impl Claim {
    /// Why `self` cannot be held while `other` (held by deployment `holder` of the same
    /// owner, if it is theirs) is; `None` when they do not clash.
    pub fn clash(&self, other: &Claim, holder: &str) -> Option<String> {
        match (self, other) {
            (
                Claim::Range {
                    owner,
                    range,
                    network,
                },
                Claim::Range {
                    owner: other_owner,
                    range: other_range,
                    network: other_network,
                },
            ) if owner == other_owner
                && (range.contains(&other_range.network())
                    || other_range.contains(&range.network())) =>
            {
                Some(format!(
                    "network {network:?}: ip_range {range} overlaps {other_range} of network \
                     {other_network:?} in your deployment {holder:?} on this node: pick \
                     another range"
                ))
            }
            (Claim::PublicIp(ip), other) if self == other => Some(format!(
                "public IP {ip} is already taken on this node: pick another, or leave the \
                 address out to get a free one"
            )),
            (
                Claim::HostPort {
                    port,
                    protocol,
                    remedy,
                },
                Claim::HostPort {
                    port: other_port,
                    protocol: other_protocol,
                    ..
                },
            ) if port == other_port && protocol == other_protocol => Some(format!(
                "host port {port}/{protocol} is already taken on this node: {remedy}"
            )),
            _ => None,
        }
    }
}

/// What converging one workload did.
pub struct Step {
    /// The result to record, or `None` to leave the stored one.
    pub result: Option<WorkloadResult>,
    /// Whether workloads converged later in the pass may use this one.
    pub usable: Result<(), String>,
}

/// The node's side of one workload type.
pub trait Kind: Send + Sync {
    /// The type's name, as in `type:` (`WorkloadSpec::type_name`).
    fn type_name(&self) -> &'static str;

    /// Convergence order: every workload of a lower rank is converged first (disks before
    /// the machines that mount them).
    fn rank(&self) -> u8;

    /// Checks a workload against this node before it is admitted (e.g. the flist exists).
    fn check(&self, _host: &Host, _spec: &WorkloadSpec) -> Result<(), String> {
        Ok(())
    }

    /// Checks a workload of an updated deployment against what the deployment's other
    /// workloads hold (their results, as carried over from the stored version): an address
    /// another machine has, say.
    fn check_update(&self, _w: &Workload, _deployment: &[Workload]) -> Result<(), String> {
        Ok(())
    }

    /// What the workload holds of the node's capacity.
    fn demand(&self, spec: &WorkloadSpec) -> Resources;

    /// What workload `w` of `owner`'s deployment `deployment` holds exclusively on the node
    /// (see [`Claim`]).
    fn claims(&self, _owner: &PublicKey, _deployment: &str, _w: &Workload) -> Vec<Claim> {
        Vec::new()
    }

    /// Whether converging one workload can take seconds (a VM boot): the engine then
    /// checks before each one that the deployment has not moved on.
    fn slow(&self) -> bool {
        false
    }

    /// Makes the host match the workload (idempotent: repeated after a node crash).
    fn converge(&self, host: &Host, target: &Target) -> Step;

    /// The host resource (VM, disk file) of workload `workload` of deployment `id`.
    fn resource(&self, id: &str, workload: &str) -> String;

    /// Every resource of this type on the host, by name (each starts with its deployment's
    /// id and a `-`).
    fn resources(&self, host: &Host) -> std::io::Result<Vec<String>>;

    /// Removes what a crash left half-made (staging files and dirs); run at start, before
    /// anything converges.
    fn sweep(&self, _host: &Host) -> std::io::Result<()> {
        Ok(())
    }

    /// Removes one resource; no error when it is already gone.
    fn remove(&self, host: &Host, resource: &str) -> Result<(), String>;

    /// Stops a resource no deployment accounts for and moves it into the dir `into` (on the
    /// data dir's file system), keeping everything it holds: the node never destroys in
    /// place what it cannot account for.
    fn quarantine(&self, host: &Host, resource: &str, into: &Path) -> Result<(), String>;

    /// Whether workloads of this type can be watched at all: the monitor looks only at
    /// deployments that have one, never reading the others.
    fn monitors(&self) -> bool {
        false
    }

    /// Whether the monitor watches this workload (it runs something that can die).
    fn watched(&self, _workload: &Workload) -> bool {
        false
    }

    /// Looks at a watched workload: the result to record when something changed.
    fn monitor(&self, _host: &Host, _id: &str, _workload: &Workload) -> Option<WorkloadResult> {
        None
    }

    /// Forgets what it kept about deployment `id` (its workloads are being removed).
    fn forget(&self, _id: &str) {}

    /// The console log of a workload and the name of what writes it, for `logs`.
    fn console(
        &self,
        _host: &Host,
        _id: &str,
        workload: &str,
    ) -> Result<(PathBuf, String), Console> {
        Err(Console::None(format!(
            "{workload:?} is a {} workload, which has no console",
            self.type_name()
        )))
    }

    /// Whether what writes a console (see [`Kind::console`]) still runs.
    fn console_active(&self, _host: &Host, _writer: &str) -> bool {
        false
    }

    /// Opens an exec or copy session in a workload, for `exec` and `cp`.
    fn session(
        &self,
        _host: &Host,
        _id: &str,
        workload: &str,
        _open: zos_init::Open,
    ) -> Result<zos_vmm::Session, Console> {
        Err(Console::None(format!(
            "{workload:?} is a {} workload: it runs no container to exec in or copy from",
            self.type_name()
        )))
    }
}

/// Why a workload has no console to show or cannot open a session.
pub enum Console {
    /// Its type has none.
    None(String),
    /// It has none yet (or any more).
    Missing(String),
    /// Not now: it is stopped.
    Stopped(String),
}

/// The registered workload types.
#[derive(Clone)]
pub struct Kinds(Vec<Arc<dyn Kind>>);

impl Kinds {
    /// The types this node runs: the one place that lists them.
    pub fn builtin() -> Kinds {
        Kinds::new(vec![
            Arc::new(Ip),
            Arc::new(Network),
            Arc::new(Zmount),
            Arc::new(Zmachine::default()),
        ])
    }

    /// A registry of `kinds` (tests register their own).
    pub fn new(mut kinds: Vec<Arc<dyn Kind>>) -> Kinds {
        kinds.sort_by_key(|k| k.rank());
        Kinds(kinds)
    }

    /// Every type, lowest rank first.
    pub fn all(&self) -> impl Iterator<Item = &dyn Kind> {
        self.0.iter().map(|k| k.as_ref())
    }

    /// The module of a workload's type. A type with no module here is a node built without
    /// it: refused at admission by [`Kinds::check`], so it never reaches convergence.
    pub fn of(&self, spec: &WorkloadSpec) -> Option<&dyn Kind> {
        self.named(spec.type_name())
    }

    /// The module of the type named `type_name`.
    pub fn named(&self, type_name: &str) -> Option<&dyn Kind> {
        self.all().find(|k| k.type_name() == type_name)
    }

    /// Checks every workload of a deployment against the node; the error names the
    /// workload.
    pub fn check(&self, host: &Host, workloads: &[Workload]) -> Result<(), String> {
        for (i, w) in workloads.iter().enumerate() {
            let place = format!("workloads[{i}] (name {:?})", w.name.as_str());
            let kind = self.of(&w.spec).ok_or_else(|| {
                format!(
                    "{place}: this node does not run {} workloads",
                    w.spec.type_name()
                )
            })?;
            kind.check(host, &w.spec)
                .map_err(|e| format!("{place}: {e}"))?;
        }
        Ok(())
    }

    /// Checks the workloads of an updated deployment against what the others hold (see
    /// [`Kind::check_update`]); the error names the workload.
    pub fn check_update(&self, workloads: &[Workload]) -> Result<(), String> {
        for (i, w) in workloads.iter().enumerate() {
            if let Some(kind) = self.of(&w.spec) {
                kind.check_update(w, workloads)
                    .map_err(|e| format!("workloads[{i}] (name {:?}): {e}", w.name.as_str()))?;
            }
        }
        Ok(())
    }

    /// What the workloads of `d` that are not deleted claim (see [`Claim`]).
    pub fn claims(&self, d: &zos_types::Deployment) -> Vec<Claim> {
        d.workloads
            .iter()
            .filter(|w| !is_deleted(w))
            .filter_map(|w| self.of(&w.spec).map(|k| k.claims(&d.owner, &d.name, w)))
            .flatten()
            .collect()
    }

    /// What the workloads that are not deleted hold.
    pub fn demand(&self, workloads: &[Workload]) -> Resources {
        workloads
            .iter()
            .filter(|w| !is_deleted(w))
            .filter_map(|w| self.of(&w.spec).map(|k| k.demand(&w.spec)))
            .fold(Resources::default(), crate::capacity::add)
    }
}

/// The host-side id of a deployment, which names its resources `<id>-<workload>`: a hash of
/// owner and name, so no user text reaches host paths, and at 104 bits no one can make their
/// deployment collide with another owner's (a VM name stays within 64 characters).
pub fn deployment_id(owner: &PublicKey, name: &str) -> String {
    let digest = Sha256::digest(crate::store::key(owner, name).as_bytes());
    hex::encode(&digest[..13])
}

/// Whether `resource` belongs to deployment `id`.
pub fn belongs_to(resource: &str, id: &str) -> bool {
    resource
        .strip_prefix(id)
        .is_some_and(|rest| rest.starts_with('-'))
}

/// The deployment id a resource name starts with.
pub fn owner_id(resource: &str) -> Option<&str> {
    resource.split_once('-').map(|(id, _)| id)
}

/// Whether the workload was deleted.
pub fn is_deleted(w: &Workload) -> bool {
    state(w) == Some(ResultState::Deleted)
}

/// The workload's state, if it has a result.
pub fn state(w: &Workload) -> Option<ResultState> {
    w.result.as_ref().map(|r| r.state)
}

/// The step of a workload whose result is `r`: usable by later workloads when it is ok.
pub fn step_of(r: WorkloadResult) -> Step {
    let usable = match r.state {
        ResultState::Ok => Ok(()),
        _ => Err(r.message.clone()),
    };
    Step {
        result: Some(r),
        usable,
    }
}

/// The names in `names` that start with `prefix`, without it (resources kept under
/// host-wide names that carry the node's tag).
pub fn strip_all(names: &[String], prefix: &str) -> Vec<String> {
    names
        .iter()
        .filter_map(|n| n.strip_prefix(prefix).map(str::to_string))
        .collect()
}

/// A result recorded now.
pub fn result(
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

/// The time in unix seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The names in `dir` (not starting with `.`: staging and hidden files), sorted.
pub(crate) fn names_in(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_vm_names_and_differ_per_owner() {
        let (a, b) = (
            zos_types::Keypair::generate(),
            zos_types::Keypair::generate(),
        );
        let id = deployment_id(&a.public(), "web");
        assert_eq!(id.len(), 26);
        assert_ne!(id, deployment_id(&b.public(), "web"));
        assert_ne!(id, deployment_id(&a.public(), "web2"));
        let longest = Zmachine::default().resource(&id, &"w".repeat(36));
        assert!(zos_vmm::is_valid_name(&longest), "{longest}");
        assert!(belongs_to(&longest, &id));
        assert!(!belongs_to(&longest, &id[..25]));
        assert_eq!(owner_id(&longest), Some(id.as_str()));
    }

    #[test]
    fn every_type_of_zos_types_has_a_module() {
        let kinds = Kinds::builtin();
        let names: Vec<&str> = kinds.all().map(|k| k.type_name()).collect();
        let mut expected: Vec<&str> = zos_types::WORKLOAD_TYPES.to_vec();
        expected.sort();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(sorted, expected);
        // Networks and disks come before the machines that join and mount them.
        assert_eq!(names, ["ip", "network", "zmount", "zmachine"]);
    }

    #[test]
    fn one_owners_ranges_clash_anothers_do_not() {
        let (a, b) = (
            zos_types::Keypair::generate().public(),
            zos_types::Keypair::generate().public(),
        );
        let range = |owner, r: &str| Claim::Range {
            owner,
            range: r.parse().unwrap(),
            network: "lan".into(),
        };
        let why = range(a, "10.20.0.0/16")
            .clash(&range(a, "10.0.0.0/8"), "web")
            .unwrap();
        assert!(why.contains("overlaps 10.0.0.0/8"), "{why}");
        assert!(why.contains("deployment \"web\""), "{why}");
        assert_eq!(
            range(a, "10.20.0.0/16").clash(&range(b, "10.20.0.0/16"), "x"),
            None
        );
        assert_eq!(
            range(a, "10.20.0.0/16").clash(&range(a, "10.21.0.0/16"), "x"),
            None
        );
    }
}
